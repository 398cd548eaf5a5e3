//! Where time comes from.
//!
//! Every decision takes "now" from a [`Clock`]: the counting maths never reads
//! a clock itself. An instant is a [`Timestamp`] (nanoseconds since the Unix
//! epoch, so that clock-aligned windows can be computed from it and a remote
//! store can agree with local figures); a length of time is a
//! [`std::time::Duration`].
//!
//! Use [`SystemClock`] in production and [`ManualClock`] in tests.

use std::fmt;
use std::ops::{Add, Sub};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// An instant: nanoseconds since 1970-01-01T00:00:00Z (until the year 2554).
///
/// ```
/// use std::time::Duration;
/// use tierlimit::clock::Timestamp;
///
/// let t = Timestamp::from_secs(1_700_000_000);
/// assert_eq!((t + Duration::from_millis(1500)).as_nanos(), 1_700_000_001_500_000_000);
/// assert_eq!((t + Duration::from_millis(1500)).as_secs_ceil(), 1_700_000_002);
/// assert_eq!(t + Duration::from_secs(2) - t, Duration::from_secs(2));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The Unix epoch.
    pub const EPOCH: Timestamp = Timestamp(0);

    /// The instant `nanos` nanoseconds after the epoch.
    pub const fn from_nanos(nanos: u64) -> Self {
        Timestamp(nanos)
    }

    /// The instant `secs` seconds after the epoch (saturating).
    pub const fn from_secs(secs: u64) -> Self {
        Timestamp(secs.saturating_mul(NANOS_PER_SEC))
    }

    /// Nanoseconds since the epoch.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// Whole seconds since the epoch, rounded up.
    pub const fn as_secs_ceil(self) -> u64 {
        self.0.div_ceil(NANOS_PER_SEC)
    }

    /// Whole milliseconds since the epoch, rounded down.
    pub const fn as_millis(self) -> u64 {
        self.0 / 1_000_000
    }

    /// The time from `earlier` to `self`; zero when `earlier` is later.
    pub fn saturating_since(self, earlier: Timestamp) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }

    /// As a [`SystemTime`].
    pub fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.0)
    }
}

fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The instant a duration after the epoch (saturating).
impl From<Duration> for Timestamp {
    fn from(since_epoch: Duration) -> Timestamp {
        Timestamp(duration_nanos(since_epoch))
    }
}

impl From<SystemTime> for Timestamp {
    /// Instants before the epoch become the epoch.
    fn from(t: SystemTime) -> Timestamp {
        t.duration_since(UNIX_EPOCH)
            .map(Timestamp::from)
            .unwrap_or(Timestamp::EPOCH)
    }
}

impl Add<Duration> for Timestamp {
    type Output = Timestamp;
    /// Saturates at the largest instant.
    fn add(self, d: Duration) -> Timestamp {
        Timestamp(self.0.saturating_add(duration_nanos(d)))
    }
}

impl Sub<Duration> for Timestamp {
    type Output = Timestamp;
    /// Saturates at the epoch.
    fn sub(self, d: Duration) -> Timestamp {
        Timestamp(self.0.saturating_sub(duration_nanos(d)))
    }
}

impl Sub<Timestamp> for Timestamp {
    type Output = Duration;
    /// Saturates at zero.
    fn sub(self, earlier: Timestamp) -> Duration {
        self.saturating_since(earlier)
    }
}

/// A source of the current time.
///
/// Implementations must be cheap: the clock is read once per decision.
/// A clock may go backwards (NTP steps); the stores tolerate that by treating a
/// time before a counter's newest bucket as that bucket, so a step back never
/// refunds or double-counts anything.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// The wall clock, read cheaply.
///
/// Reading `SystemTime` costs a `clock_gettime` call (about 40 ns on the
/// reference VM), which would be a large share of a decision. This clock
/// reads the CPU's timestamp counter through [`quanta`] (a few ns) and anchors
/// it to [`SystemTime::now`] once per second, so it follows NTP adjustments
/// within a second and never drifts further than the TSC does in one second
/// (microseconds). A re-anchoring may step the time back by that much; the
/// stores treat a step back as "still in the newest bucket", so nothing is
/// refunded or double-counted.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

struct Anchored {
    tsc: quanta::Clock,
    base_raw: u64,
    /// Unix nanoseconds minus TSC nanoseconds at the last anchoring.
    offset: AtomicU64,
    /// TSC nanoseconds at which to anchor again.
    next_sync: AtomicU64,
}

impl fmt::Debug for Anchored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Anchored").finish_non_exhaustive()
    }
}

fn wall_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

const RESYNC_NANOS: u64 = NANOS_PER_SEC;

fn anchored() -> &'static Anchored {
    static CLOCK: std::sync::OnceLock<Anchored> = std::sync::OnceLock::new();
    CLOCK.get_or_init(|| {
        let tsc = quanta::Clock::new();
        let base_raw = tsc.raw();
        Anchored {
            offset: AtomicU64::new(wall_nanos()),
            next_sync: AtomicU64::new(RESYNC_NANOS),
            tsc,
            base_raw,
        }
    })
}

/// The CPU's timestamp counter, raw (for measuring short durations with
/// [`elapsed_nanos`]: a few ns a read, where `Instant::now` costs a
/// `clock_gettime`).
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
pub(crate) fn raw_ticks() -> u64 {
    anchored().tsc.raw()
}

/// Nanoseconds from the raw reading `since` ([`raw_ticks`]) to now.
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
pub(crate) fn elapsed_nanos(since: u64) -> u64 {
    let a = anchored();
    a.tsc.delta_as_nanos(since, a.tsc.raw())
}

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.now_nanos())
    }
}

impl SystemClock {
    fn now_nanos(&self) -> u64 {
        let a = anchored();
        let mono = a.tsc.delta_as_nanos(a.base_raw, a.tsc.raw());
        if mono >= a.next_sync.load(Ordering::Relaxed) {
            a.next_sync.store(mono + RESYNC_NANOS, Ordering::Relaxed);
            a.offset
                .store(wall_nanos().wrapping_sub(mono), Ordering::Relaxed);
        }
        mono.wrapping_add(a.offset.load(Ordering::Relaxed))
    }
}

/// A clock that only moves when told to; clones share one time.
///
/// ```
/// use std::time::Duration;
/// use tierlimit::clock::{Clock, ManualClock};
///
/// let clock = ManualClock::new(Duration::from_secs(1_700_000_000));
/// let other = clock.clone();
/// clock.advance(Duration::from_millis(1500));
/// assert_eq!(other.now().as_nanos(), 1_700_000_001_500_000_000);
/// ```
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    nanos: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock standing at `at`: a [`Timestamp`], or a [`Duration`] since
    /// the Unix epoch.
    pub fn new(at: impl Into<Timestamp>) -> Self {
        let clock = Self::default();
        clock.set(at);
        clock
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.nanos.fetch_add(by, Ordering::SeqCst);
    }

    /// Sets the clock to `at` (it may go back).
    pub fn set(&self, at: impl Into<Timestamp>) {
        self.nanos.store(at.into().0, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.nanos.load(Ordering::SeqCst))
    }
}

/// A clock that follows tokio's time from a starting instant: under
/// `tokio::time::pause()` it moves only as tokio's paused time advances, so
/// the limiter and the timers it sets (`delay_up_to`) agree in a test that
/// sleeps through minutes in no time.
///
/// ```
/// use std::time::Duration;
/// use tierlimit::clock::{Clock, TokioClock};
///
/// # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap().block_on(async {
/// let clock = TokioClock::new(Duration::from_secs(1_700_000_000));
/// tokio::time::sleep(Duration::from_secs(90)).await;
/// assert_eq!(clock.now().as_nanos(), 1_700_000_090_000_000_000);
/// # });
/// ```
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    at: Timestamp,
    start: tokio::time::Instant,
}

impl TokioClock {
    /// A clock standing at `at` now (tokio's now; call it inside a runtime
    /// with time enabled).
    pub fn new(at: impl Into<Timestamp>) -> Self {
        TokioClock {
            at: at.into(),
            start: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Timestamp {
        self.at + self.start.elapsed()
    }
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now(&self) -> Timestamp {
        (**self).now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_clock_follows_the_wall_clock() {
        let ours = SystemClock.now_nanos();
        let wall = wall_nanos();
        // Same clock within 50 ms (the anchoring is exact at start-up).
        assert!(ours.abs_diff(wall) < 50_000_000, "{ours} vs {wall}");
        assert!(SystemClock.now_nanos() >= ours);
    }
}
