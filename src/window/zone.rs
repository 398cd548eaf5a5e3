//! Fixed windows on the wall clock of a real time zone (feature `tz`).
//!
//! A zoned fixed window of length `W` resets whenever the zone's **wall
//! clock** crosses a multiple of `W` counted from the Unix epoch in local
//! time: a day window at local midnight, an hour window at local `:00`, also
//! in zones with `:30` and `:45` offsets and on days of 23 or 25 hours.
//!
//! The wall clock runs backwards when a zone falls back (the repeated hour).
//! Windows must not: a window that ended must not come back. So windows
//! follow the **running maximum** of the wall clock: during a repeated hour
//! the wall clock is held at the latest local time already reached until it
//! catches up. The effect:
//!
//! * on a 25-hour day, the day window lasts 25 hours; an hour window that
//!   contains the repeated hour lasts two (it ends when the wall clock
//!   reaches its end for the first time after the repeat);
//! * on a 23-hour day, the day window lasts 23 hours and the window of the
//!   skipped hour is empty;
//! * a window ends at the first instant the (running) wall clock reaches
//!   its end.
//!
//! Zones are looked up once by name and kept for the life of the process
//! (one per distinct name), so a [`WindowSpec`](super::WindowSpec) stays a
//! small `Copy` value.

#[cfg(feature = "tz")]
pub(crate) use imp::*;
#[cfg(not(feature = "tz"))]
pub(crate) use none::*;

#[cfg(feature = "tz")]
mod imp {
    use std::fmt;
    use std::hash::{Hash, Hasher};
    use std::sync::atomic::{fence, AtomicI64, AtomicU64, Ordering};
    use std::sync::Mutex;

    use jiff::tz::TimeZone;

    /// Milliseconds in which a fold's raised wall clock can still matter:
    /// offsets stay within ±26 h, so a fold's peak is passed within 52 h.
    const FOLD_REACH_MS: i64 = 52 * 3_600_000;
    /// No offset reaches 26 h: the wall clock is below `t + OFFSET_BOUND_MS`.
    const OFFSET_BOUND_MS: i64 = 26 * 3_600_000;
    /// Transitions looked at before giving up on an exotic zone.
    const MAX_STEPS: usize = 64;

    /// A time zone looked up once and kept for the life of the process.
    #[derive(Debug)]
    pub(crate) struct Zone {
        id: u16,
        /// The name it was configured with (`local` stays `local`).
        name: Box<str>,
        /// The IANA name it resolved to, when known.
        resolved: Option<Box<str>>,
        tz: TimeZone,
        /// The stretch of time around the latest lookup where the wall
        /// clock is simply `t + offset`.
        period: Period,
    }

    /// `[from, until)` (Unix ms) where the running wall clock is `t + off`:
    /// no offset change, and past any raised wall clock of a fall back.
    /// A sequence lock over atomics: readers never block or contend.
    #[derive(Debug)]
    struct Period {
        seq: AtomicU64,
        from: AtomicI64,
        until: AtomicI64,
        off: AtomicI64,
    }

    impl Period {
        fn new() -> Self {
            Period {
                seq: AtomicU64::new(0),
                from: AtomicI64::new(i64::MAX),
                until: AtomicI64::new(i64::MIN),
                off: AtomicI64::new(0),
            }
        }

        /// (from, until, off), unless a writer is busy.
        fn get(&self) -> Option<(i64, i64, i64)> {
            let s1 = self.seq.load(Ordering::Acquire);
            if s1 & 1 == 1 {
                return None;
            }
            let got = (
                self.from.load(Ordering::Relaxed),
                self.until.load(Ordering::Relaxed),
                self.off.load(Ordering::Relaxed),
            );
            fence(Ordering::Acquire);
            (self.seq.load(Ordering::Relaxed) == s1).then_some(got)
        }

        /// Replaces the period, unless another writer is busy.
        fn set(&self, from: i64, until: i64, off: i64) {
            let s = self.seq.load(Ordering::Relaxed);
            if s & 1 == 1
                || self
                    .seq
                    .compare_exchange(s, s + 1, Ordering::Acquire, Ordering::Relaxed)
                    .is_err()
            {
                return;
            }
            fence(Ordering::Release);
            self.from.store(from, Ordering::Relaxed);
            self.until.store(until, Ordering::Relaxed);
            self.off.store(off, Ordering::Relaxed);
            self.seq.store(s + 2, Ordering::Release);
        }
    }

    /// A reference to an interned [`Zone`]; equal when the zone is.
    #[derive(Clone, Copy)]
    pub(crate) struct ZoneRef(&'static Zone);

    impl PartialEq for ZoneRef {
        fn eq(&self, other: &Self) -> bool {
            self.0.id == other.0.id
        }
    }

    impl Eq for ZoneRef {}

    impl Hash for ZoneRef {
        fn hash<H: Hasher>(&self, state: &mut H) {
            self.0.id.hash(state);
        }
    }

    impl fmt::Debug for ZoneRef {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "{}", self.0.name)
        }
    }

    static ZONES: Mutex<Vec<&'static Zone>> = Mutex::new(Vec::new());

    /// The zone called `name`: an IANA name, or `local` for the server's
    /// zone (`TZ`, else `/etc/localtime`; UTC when neither says one, as the
    /// C library does). Unknown names are an error that says why.
    pub(crate) fn lookup(name: &str) -> Result<ZoneRef, String> {
        let mut zones = ZONES.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(z) = zones.iter().find(|z| &*z.name == name) {
            return Ok(ZoneRef(z));
        }
        let tz = if name == "local" {
            TimeZone::try_system().unwrap_or(TimeZone::UTC)
        } else {
            TimeZone::get(name).map_err(|_| {
                format!(
                    "`{name}` is not a time zone known to this system's time zone database \
                     (an IANA name such as `Europe/Amsterdam`, or `local`)"
                )
            })?
        };
        let id =
            u16::try_from(zones.len()).map_err(|_| "too many distinct time zones".to_owned())?;
        let resolved = tz.iana_name().map(Box::from);
        let zone: &'static Zone = Box::leak(Box::new(Zone {
            id,
            name: name.into(),
            resolved,
            tz,
            period: Period::new(),
        }));
        zones.push(zone);
        Ok(ZoneRef(zone))
    }

    impl ZoneRef {
        /// The configured name (`local` or an IANA name).
        pub(crate) fn name(&self) -> &'static str {
            &self.0.name
        }

        /// What the zone resolved to (for `local`, the system's zone name
        /// when it has one): what counters are keyed by.
        pub(crate) fn resolved(&self) -> &'static str {
            self.0.resolved.as_deref().unwrap_or(&self.0.name)
        }

        /// The offset in force at `ms` (Unix milliseconds), in ms.
        fn offset_ms(&self, ms: i64) -> i64 {
            match jiff::Timestamp::from_millisecond(ms) {
                Ok(ts) => i64::from(self.0.tz.to_offset(ts).seconds()) * 1000,
                Err(_) => 0,
            }
        }

        /// The running maximum of the wall clock at `ms`: local time as
        /// milliseconds since the local epoch, never going back.
        pub(crate) fn wall_ms(&self, ms: i64) -> i64 {
            if let Some((from, until, off)) = self.0.period.get() {
                if from <= ms && ms < until {
                    return ms + off;
                }
            }
            let wall = self.wall_ms_slow(ms);
            self.remember(ms, wall);
            wall
        }

        /// Remembers the period around `ms` when the wall clock there is
        /// plainly `ms + offset`: it stays so until the next offset change
        /// (a raised wall clock only falls behind as time goes on).
        fn remember(&self, ms: i64, wall: i64) {
            let off = self.offset_ms(ms);
            if wall != ms.saturating_add(off) {
                return;
            }
            let Ok(ts) = jiff::Timestamp::from_millisecond(ms) else {
                return;
            };
            let until = self
                .0
                .tz
                .following(ts)
                .map(|tr| tr.timestamp().as_millisecond())
                .find(|at| *at > ms)
                .unwrap_or(i64::MAX);
            self.0.period.set(ms, until, off);
        }

        /// [`wall_ms`](Self::wall_ms) from the zone's rules alone.
        pub(crate) fn wall_ms_slow(&self, ms: i64) -> i64 {
            let mut wall = ms.saturating_add(self.offset_ms(ms));
            let Ok(next) = jiff::Timestamp::from_millisecond(ms.saturating_add(1)) else {
                return wall;
            };
            // Falls back at or before `ms` whose peak is still ahead of the
            // wall clock.
            for tr in self.0.tz.preceding(next).take(MAX_STEPS) {
                let at = tr.timestamp().as_millisecond();
                if at > ms {
                    continue;
                }
                if at < ms.saturating_sub(FOLD_REACH_MS) {
                    break;
                }
                let before = self.offset_ms(at - 1);
                let after = i64::from(tr.offset().seconds()) * 1000;
                if before > after {
                    wall = wall.max(at - 1 + before);
                }
            }
            wall
        }

        /// The first instant (Unix ms) at which the running wall clock
        /// reaches `wall` (local ms).
        pub(crate) fn instant_of_wall(&self, wall: i64) -> i64 {
            if let Some((from, until, off)) = self.0.period.get() {
                // Inside the period the wall clock is `t + off` and rises
                // by 1 per ms: it first reaches `wall` at `wall - off`.
                let at = wall.saturating_sub(off);
                if from < at && at < until {
                    return at;
                }
            }
            self.instant_of_wall_slow(wall)
        }

        /// [`instant_of_wall`](Self::instant_of_wall) from the zone's rules
        /// alone.
        pub(crate) fn instant_of_wall_slow(&self, wall: i64) -> i64 {
            // The wall clock is below `wall` here, whatever the zone.
            let mut cur = wall.saturating_sub(OFFSET_BOUND_MS + 1);
            for _ in 0..MAX_STEPS {
                let reach = wall.saturating_sub(self.offset_ms(cur));
                let Ok(from) = jiff::Timestamp::from_millisecond(cur) else {
                    return reach;
                };
                let next = self
                    .0
                    .tz
                    .following(from)
                    .map(|tr| (tr.timestamp().as_millisecond(), tr.offset()))
                    .find(|(at, _)| *at > cur);
                match next {
                    Some((at, offset)) if at <= reach => {
                        // The offset changes first. A jump forward over
                        // `wall` (a skipped hour) reaches it at once.
                        if at.saturating_add(i64::from(offset.seconds()) * 1000) >= wall {
                            return at;
                        }
                        cur = at;
                    }
                    _ => return reach,
                }
            }
            wall.saturating_sub(self.offset_ms(cur))
        }
    }
}

#[cfg(not(feature = "tz"))]
mod none {
    /// Without the `tz` feature there are no zones: this type has no value.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub(crate) enum ZoneRef {}

    /// Without the `tz` feature every zone name is refused.
    pub(crate) fn lookup(_name: &str) -> Result<ZoneRef, String> {
        Err("needs the `tz` feature of tierlimit (time zones from the IANA database)".into())
    }

    impl ZoneRef {
        pub(crate) fn name(&self) -> &'static str {
            match *self {}
        }

        pub(crate) fn resolved(&self) -> &'static str {
            match *self {}
        }

        pub(crate) fn wall_ms(&self, _ms: i64) -> i64 {
            match *self {}
        }

        pub(crate) fn instant_of_wall(&self, _wall: i64) -> i64 {
            match *self {}
        }
    }
}
