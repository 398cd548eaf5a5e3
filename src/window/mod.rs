//! The counting maths: sliding and clock-aligned (fixed) windows.
//!
//! Everything here is pure: functions take "now" as an argument and never read a
//! clock, so they can be property-tested against a brute-force model
//! (`model_tests.rs`). Only the window shape ([`WindowSpec`]) and the figures a
//! decision reports ([`View`], [`Refusal`]) are public, through
//! [`crate::store`]; the counters themselves are private to the memory store.
//!
//! # The millisecond clock
//!
//! Windows count in whole milliseconds. A charge at instant `t` is
//! **stamped** `⌈t⌉`, `t` rounded up to the millisecond; a counted cost whose
//! window ends at the millisecond `e` still counts at `t` while
//! `⌊t⌋ < e`, i.e. while `t < e`. Window lengths and sub-bucket widths are
//! whole milliseconds (rounded up).
//!
//! # Sliding windows
//!
//! A sliding window of length `W` counts admitted cost in sub-buckets of
//! width `B` (about `W / precision`, at least 1 ms), aligned to the Unix
//! epoch: a charge stamped `s` goes to bucket `floor(s / B)`. Each bucket
//! remembers its cost and the stamp of its **last** admission `L`; the
//! bucket's cost counts until `L + W`, then all of it leaves at once. A
//! request is admitted when the cost still counted plus its own fits in the
//! capacity.
//!
//! * **The hard guarantee.** Every admission is stamped no earlier than it
//!   happened, so at any admission `x`, every cost admitted in `(x - W, x]`
//!   sits in a bucket whose last stamp is past `x - W`: it is counted, and
//!   the check saw it. So **in every interval of length `W` the admitted cost
//!   never exceeds the capacity**.
//! * **A burst leaves exactly one window after it.** Cost admitted within one
//!   bucket stops counting exactly `W` after the last of it was admitted (to
//!   the millisecond: the stamp rounds up).
//! * **Spread traffic** is counted at most one bucket late: a cost admitted
//!   at `y` leaves at its bucket's last stamp plus `W`, which is less than
//!   `B` after `⌈y⌉ + W`. A request may therefore be admitted up to `B - 1 ms`
//!   later than an exact sliding log would admit it, never earlier.
//! * **Figures stay within the window.** Every reset and retry instant is
//!   some bucket's `L + W` with `L` at most the current stamp, so it is at
//!   most `W` after the decision (measured from the decision's stamp, which
//!   stores report as the decision instant).
//!
//! # Fixed windows
//!
//! A fixed window of length `W` with a UTC offset `o` resets whenever
//! `t + o` crosses a multiple of `W`: a one-minute window at `:00` seconds,
//! an hour at `:00`, a day at local midnight of that offset. With a time
//! zone (feature `tz`), the same on the zone's wall clock, across daylight
//! saving changes (see `zone.rs`).
//!
//! # Memory
//!
//! A counter ([`Cell`]) with a single non-empty bucket is 16 bytes (the
//! memory store packs it into 8 inside an entry); only when a sliding counter
//! holds cost in two or more buckets does it allocate a ring of one 8-byte
//! slot per bucket.

use std::fmt;
use std::time::Duration;

use crate::clock::Timestamp;

#[cfg(test)]
mod model_tests;
mod zone;
#[cfg(all(test, feature = "tz"))]
mod zone_tests;

pub(crate) use zone::{lookup as lookup_zone, ZoneRef};

/// Default number of sub-buckets of a sliding window.
///
/// With 30, a one-minute window counts in 2-second buckets and a one-hour
/// window in 2-minute buckets: spread-out traffic is counted at most that
/// much longer than an exact sliding log would count it.
pub const DEFAULT_PRECISION: u32 = 30;

/// Largest accepted precision (sub-buckets per sliding window).
pub const MAX_PRECISION: u32 = 3600;

const NANOS_PER_MS: u64 = 1_000_000;

/// `now` (ns) rounded up to the millisecond: the stamp of a charge.
fn ceil_ms(now: u64) -> u64 {
    now.div_ceil(NANOS_PER_MS)
}

/// `now` (ns) rounded down to the millisecond: a cost ending at the
/// millisecond `e` still counts while `floor_ms(now) < e`.
fn floor_ms(now: u64) -> u64 {
    now / NANOS_PER_MS
}

fn ms_to_ns(ms: u64) -> u64 {
    ms.saturating_mul(NANOS_PER_MS)
}

/// The stamp of a charge at `now` (ns): `now` rounded up to the
/// millisecond, in nanoseconds. What a decision reports as its instant.
pub(crate) fn stamp_nanos(now: u64) -> u64 {
    ms_to_ns(ceil_ms(now))
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_nanos().div_ceil(u128::from(NANOS_PER_MS))).unwrap_or(u64::MAX)
}

/// The shape of one limit's window, as a store needs it to count.
///
/// The helpers are the whole counting rule (see the
/// [module docs](crate::store#writing-a-store)), so a store written outside
/// this crate counts exactly as the memory store does:
///
/// * a cost charged at `t` goes to bucket (or fixed window) `index(t)`, and
///   is stamped `stamp(t)`; a bucket remembers the latest stamp charged to
///   it;
/// * the cost of bucket `i` whose latest stamp is `last` counts while
///   `now < forget_at(i, last)`;
/// * a request fits when the cost still counted plus its own is at most the
///   capacity; the reset and retry instants are the `forget_at` of the
///   buckets that must leave.
///
/// ```
/// use std::time::Duration;
/// use tierlimit::clock::Timestamp;
/// use tierlimit::store::WindowSpec;
///
/// // One minute in 30 buckets of 2 s: a cost charged at t = 1000.5 s goes to
/// // bucket 500 and counts for exactly one minute after its stamp.
/// let spec = WindowSpec::sliding(Duration::from_secs(60), 30);
/// assert!(spec.is_sliding());
/// assert_eq!((spec.bucket(), spec.reach()), (Duration::from_secs(2), 30));
/// let t = Timestamp::from_nanos(1_000_500_000_000);
/// let i = spec.index(t);
/// assert_eq!(i, 500);
/// assert_eq!(spec.forget_at(i, spec.stamp(t)), Timestamp::from_nanos(1_060_500_000_000));
/// // A fixed minute resets on the next :00.
/// let fixed = WindowSpec::fixed(Duration::from_secs(60), 0);
/// assert_eq!(fixed.utc_offset_secs(), Some(0));
/// let j = fixed.index(Timestamp::from_secs(1000));
/// assert_eq!(fixed.forget_at(j, Timestamp::from_secs(1000)), Timestamp::from_secs(1020));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WindowSpec(Shape);

/// The inside of a [`WindowSpec`]; every length in whole milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Shape {
    /// A sliding window of `window_ms`, counted in buckets of `bucket_ms`.
    Sliding {
        /// Width of one sub-bucket (1 ..= `u32::MAX`).
        bucket_ms: u64,
        /// Length of the window (at least 1).
        window_ms: u64,
        /// Buckets before the current one that may still count:
        /// `ceil(window_ms / bucket_ms)`.
        reach: u32,
    },
    /// A window that resets on clock boundaries.
    Fixed {
        /// Window length (at least 1).
        len_ms: u64,
        /// Offset of the local time from UTC (east positive); 0 with a zone.
        offset_ms: i64,
        /// The time zone whose wall clock the boundaries follow, if any
        /// (then `offset_ms` is not used).
        zone: Option<ZoneRef>,
    },
}

impl WindowSpec {
    /// A sliding window of length `window` (whole milliseconds, rounded up;
    /// at least 1 ms) counted in `precision` sub-buckets (clamped to
    /// 1 ..= [`MAX_PRECISION`]).
    ///
    /// Sub-buckets are whole milliseconds: when the window is not a multiple
    /// of `precision` milliseconds the bucket width is rounded up (so there
    /// may be fewer buckets), and a window shorter than `precision`
    /// milliseconds gets 1 ms buckets. The window itself is never changed:
    /// cost counts exactly `window` after its bucket's last admission.
    pub fn sliding(window: Duration, precision: u32) -> Self {
        Self::sliding_ms(ms(window), precision)
    }

    /// A fixed window of length `len` (whole milliseconds, rounded up)
    /// aligned to clock boundaries in the UTC offset `utc_offset_secs` (east
    /// positive): a day window resets at that offset's midnight.
    pub fn fixed(len: Duration, utc_offset_secs: i32) -> Self {
        Self::fixed_ms(ms(len), i64::from(utc_offset_secs) * 1000)
    }

    /// A fixed window of length `len` (whole milliseconds, rounded up)
    /// aligned to the wall clock of a time zone: an IANA name
    /// (`"Europe/Amsterdam"`) or `"local"`. A day window resets at local
    /// midnight, also on 23- and 25-hour days (see the `config` module docs,
    /// *Fixed windows and time zones*). `None` when the zone is unknown, or
    /// without the `tz` feature.
    pub fn zoned(len: Duration, time_zone: &str) -> Option<Self> {
        let zone = lookup_zone(time_zone).ok()?;
        Some(Self::zoned_ms(ms(len), zone))
    }

    /// The bucket (sliding) or window (fixed) a charge at `now` goes to.
    pub fn index(&self, now: Timestamp) -> u64 {
        self.index_at(now.as_nanos())
    }

    /// The stamp of a charge at `now`: `now` rounded up to the millisecond.
    pub fn stamp(&self, now: Timestamp) -> Timestamp {
        Timestamp::from_nanos(stamp_nanos(now.as_nanos()))
    }

    /// When the cost of bucket or window `index` stops counting, given the
    /// latest stamp `last` charged to it: `last` plus the window for a
    /// sliding window (`last` rounded up to the millisecond), the end of the
    /// window `index` for a fixed one (`last` is not needed).
    pub fn forget_at(&self, index: u64, last: Timestamp) -> Timestamp {
        Timestamp::from_nanos(ms_to_ns(self.forget_ms(index, ceil_ms(last.as_nanos()))))
    }

    /// How many buckets before the current one may still count: about the
    /// precision of a sliding window, 0 for a fixed window.
    pub fn reach(&self) -> u64 {
        match self.0 {
            Shape::Sliding { reach, .. } => u64::from(reach),
            Shape::Fixed { .. } => 0,
        }
    }

    /// Whether the window slides (else it is fixed to clock boundaries).
    pub fn is_sliding(&self) -> bool {
        matches!(self.0, Shape::Sliding { .. })
    }

    /// The width of one bucket: a sub-bucket of a sliding window, the whole
    /// window of a fixed one.
    pub fn bucket(&self) -> Duration {
        Duration::from_millis(self.bucket_ms())
    }

    /// The UTC offset a fixed window's boundaries follow (east positive, in
    /// seconds); `None` for a sliding window.
    pub fn utc_offset_secs(&self) -> Option<i32> {
        match self.0 {
            Shape::Sliding { .. } => None,
            Shape::Fixed { zone: Some(_), .. } => None,
            Shape::Fixed { offset_ms, .. } => i32::try_from(offset_ms / 1000).ok(),
        }
    }

    pub(crate) fn shape(&self) -> Shape {
        self.0
    }

    /// The window's length.
    pub fn window(&self) -> Duration {
        Duration::from_millis(self.window_ms())
    }

    pub(crate) fn sliding_ms(window_ms: u64, precision: u32) -> Self {
        let window_ms = window_ms.max(1);
        let precision = u64::from(precision.clamp(1, MAX_PRECISION));
        let bucket_ms = window_ms.div_ceil(precision).clamp(1, u64::from(u32::MAX));
        let reach = u32::try_from(window_ms.div_ceil(bucket_ms)).unwrap_or(u32::MAX);
        WindowSpec(Shape::Sliding {
            bucket_ms,
            window_ms,
            reach,
        })
    }

    pub(crate) fn fixed_ms(len_ms: u64, offset_ms: i64) -> Self {
        WindowSpec(Shape::Fixed {
            len_ms: len_ms.max(1),
            offset_ms,
            zone: None,
        })
    }

    pub(crate) fn zoned_ms(len_ms: u64, zone: ZoneRef) -> Self {
        WindowSpec(Shape::Fixed {
            len_ms: len_ms.max(1),
            offset_ms: 0,
            zone: Some(zone),
        })
    }

    /// The time zone a fixed window follows (an IANA name, or `local`), when
    /// it follows one rather than a fixed UTC offset.
    pub fn time_zone(&self) -> Option<&'static str> {
        self.zone().map(|z| z.name())
    }

    pub(crate) fn zone(&self) -> Option<ZoneRef> {
        self.fixed_parts().and_then(|(_, _, zone)| zone)
    }

    pub(crate) fn bucket_ms(&self) -> u64 {
        match self.0 {
            Shape::Sliding { bucket_ms, .. } => bucket_ms,
            Shape::Fixed { len_ms, .. } => len_ms,
        }
    }

    pub(crate) fn window_ms(&self) -> u64 {
        match self.0 {
            Shape::Sliding { window_ms, .. } => window_ms,
            Shape::Fixed { len_ms, .. } => len_ms,
        }
    }

    /// The offset fixed windows are aligned to (0 for sliding ones).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))] // the Redis store's
    pub(crate) fn offset_ms(&self) -> i64 {
        match self.0 {
            Shape::Sliding { .. } => 0,
            Shape::Fixed { offset_ms, .. } => offset_ms,
        }
    }

    pub(crate) fn index_at(&self, now: u64) -> u64 {
        match self.0 {
            Shape::Sliding { bucket_ms, .. } => ceil_ms(now) / bucket_ms,
            Shape::Fixed { .. } => self.fixed_index(floor_ms(now)),
        }
    }

    /// A fixed window's length, offset and zone.
    fn fixed_parts(&self) -> Option<(u64, i64, Option<ZoneRef>)> {
        match self.0 {
            Shape::Fixed {
                len_ms,
                offset_ms,
                zone,
            } => Some((len_ms, offset_ms, zone)),
            Shape::Sliding { .. } => None,
        }
    }

    /// The millisecond at which window `idx` of a fixed window ends.
    pub(crate) fn end_ms(&self, idx: u64) -> u64 {
        let Some((len_ms, offset_ms, zone)) = self.fixed_parts() else {
            return 0;
        };
        let local_end = (i128::from(idx) + 1) * i128::from(len_ms);
        let end = match zone {
            None => local_end - i128::from(offset_ms),
            Some(z) => {
                let wall = i64::try_from(local_end).unwrap_or(i64::MAX);
                i128::from(z.instant_of_wall(wall))
            }
        };
        u64::try_from(end.max(0)).unwrap_or(u64::MAX)
    }

    /// The millisecond at which bucket/window `idx` stops counting, its
    /// latest stamp (ms) being `last`.
    fn forget_ms(&self, idx: u64, last: u64) -> u64 {
        match self.0 {
            Shape::Sliding { window_ms, .. } => last.saturating_add(window_ms),
            Shape::Fixed { .. } => self.end_ms(idx),
        }
    }

    /// The fixed window that the millisecond `ms` falls in: the local time
    /// (in the offset, or on the zone's running wall clock) divided by the
    /// length.
    fn fixed_index(&self, ms: u64) -> u64 {
        let Some((len_ms, offset_ms, zone)) = self.fixed_parts() else {
            return 0;
        };
        let local = match zone {
            None => i128::from(ms) + i128::from(offset_ms),
            Some(z) => i128::from(z.wall_ms(i64::try_from(ms).unwrap_or(i64::MAX))),
        };
        u64::try_from(local.div_euclid(i128::from(len_ms))).unwrap_or(0)
    }

    /// The bucket (sliding) or window (fixed) of a counter whose `last`
    /// millisecond is `last` (see [`Cell::One`]).
    fn index_of_last(&self, last: u64) -> u64 {
        match self.0 {
            Shape::Sliding { bucket_ms, .. } => last / bucket_ms,
            Shape::Fixed { .. } => self.fixed_index(last),
        }
    }
}

/// What one limit looks like at a given instant, after a decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct View {
    /// Capacity of the limit (cost units).
    pub capacity: u64,
    /// Cost counted in the current window (after the charge, when charged).
    pub used: u64,
    /// Instant at which all counted cost has left the window, i.e. when
    /// `remaining` is back to `capacity`. Equal to the decision's stamp when
    /// nothing is counted.
    pub reset_at: Timestamp,
}

impl View {
    /// A view of a limit of `capacity` with `used` counted, full again at
    /// `reset_at`.
    pub fn new(capacity: u64, used: u64, reset_at: Timestamp) -> Self {
        View {
            capacity,
            used,
            reset_at,
        }
    }

    /// Capacity minus used cost, never below zero.
    pub fn remaining(&self) -> u64 {
        self.capacity.saturating_sub(self.used)
    }
}

/// Why a charge was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// Not now; the charge would fit at `retry_at` if nothing else were
    /// admitted meanwhile.
    Full {
        /// Earliest instant at which this charge fits.
        retry_at: Timestamp,
    },
    /// The cost is larger than the capacity: it can never be admitted.
    NeverFits,
}

/// One counter: the state of one limit for one scope key.
///
/// 16 bytes while at most one bucket holds cost; a sliding counter with cost in
/// several buckets moves to a boxed ring of one slot per bucket.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Cell {
    /// At most one non-empty bucket (always so for fixed windows).
    One {
        /// Cost counted in that bucket (0: the counter is empty).
        count: u32,
        /// Milliseconds since the epoch, from which the bucket's index
        /// follows: sliding, the latest stamp charged to the bucket; fixed,
        /// the latest charge's instant rounded down.
        last: u64,
    },
    /// Several non-empty buckets of a sliding window.
    Ring(Box<Ring>),
}

/// The ring of sub-bucket counts of a busy sliding counter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Ring {
    /// Index of the newest bucket (the ring's slots are `newest - reach ..=
    /// newest`).
    newest: u64,
    /// Sum of the slots' counts.
    total: u64,
    /// No bucket before this one holds cost: scans start here rather than
    /// at the oldest slot, so sparse traffic (a few non-empty buckets in a
    /// long window) does not pay for the empty ones on every decision.
    first: u64,
    /// Per bucket: its count (low 32 bits) and its latest stamp as
    /// milliseconds from the bucket's start (high 32 bits).
    slots: Box<[u64]>,
}

/// Where a charge went and what its bucket held before and after it:
/// enough for [`Cell::take_back`] to take it back exactly.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Mark {
    /// The bucket (sliding) or window (fixed) charged.
    pub(crate) idx: u64,
    /// The bucket's latest stamp (ms) and count before the charge.
    last: u64,
    count: u32,
    /// The bucket's count and latest stamp right after it: while they are
    /// still so, nobody else has charged the bucket since. A count of 0:
    /// nothing was charged (a cost known only after the response).
    count_after: u32,
    last_after: u64,
}

impl Mark {
    fn new(idx: u64, (count, last): (u32, u64), (count_after, last_after): (u32, u64)) -> Self {
        Mark {
            idx,
            last,
            count,
            count_after,
            last_after,
        }
    }
}

/// Where a decision stands on the millisecond clock.
#[derive(Clone, Copy, Debug)]
struct At {
    /// The stamp of a charge now (`now` rounded up to the ms).
    stamp: u64,
    /// `now` rounded down to the ms: cost ending at `e` counts while
    /// `floor < e`.
    floor: u64,
    /// The effective current bucket/window: never before the newest one
    /// stored (a clock that went back keeps charging the newest).
    cur: u64,
}

fn slot_count(s: u64) -> u32 {
    s as u32
}

fn slot_offset(s: u64) -> u64 {
    s >> 32
}

fn slot(count: u32, offset: u64) -> u64 {
    u64::from(count) | offset.min(u64::from(u32::MAX)) << 32
}

impl fmt::Debug for Cell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cell::One { count, last } => f
                .debug_struct("Cell::One")
                .field("count", count)
                .field("last", last)
                .finish(),
            Cell::Ring(r) => f
                .debug_struct("Cell::Ring")
                .field("newest", &r.newest)
                .field("total", &r.total)
                .finish(),
        }
    }
}

impl Default for Cell {
    fn default() -> Self {
        Cell::One { count: 0, last: 0 }
    }
}

fn secs_ceil_ms(ms: u64) -> u32 {
    u32::try_from(ms.div_ceil(1000)).unwrap_or(u32::MAX)
}

impl Ring {
    fn slot_of(&self, j: u64) -> usize {
        (j % self.slots.len() as u64) as usize
    }

    /// The oldest bucket index the ring can hold.
    fn oldest(&self) -> u64 {
        self.newest.saturating_sub(self.slots.len() as u64 - 1)
    }

    /// The buckets that may hold cost, oldest first.
    fn live(&self) -> std::ops::RangeInclusive<u64> {
        self.oldest().max(self.first)..=self.newest
    }

    /// The latest stamp (ms) of bucket `j`.
    fn last_of(&self, j: u64, bucket_ms: u64) -> u64 {
        j * bucket_ms + slot_offset(self.slots[self.slot_of(j)])
    }
}

impl Cell {
    /// Folds a ring into one bucket: its total, stamped with the latest
    /// stamp of its oldest non-empty bucket, so that all of it leaves the
    /// window when that bucket does (earlier than the newer buckets would
    /// have). For an entry a new key inherits at the memory store's key
    /// cap, which then stays 8 bytes (see `store::memory`, "The key cap").
    /// A total past `u32::MAX` is left as it is.
    pub(crate) fn fold_into_oldest(&mut self, spec: &WindowSpec) {
        let Cell::Ring(r) = self else {
            return;
        };
        let Ok(count) = u32::try_from(r.total) else {
            return;
        };
        let oldest = r.live().find(|&j| r.slots[r.slot_of(j)] as u32 != 0);
        *self = match oldest {
            Some(j) => Cell::One {
                count,
                last: r.last_of(j, spec.bucket_ms()),
            },
            None => Cell::default(),
        };
    }

    /// Cost held in its buckets (some may have left the window already).
    pub(crate) fn held(&self) -> u64 {
        match self {
            Cell::One { count, .. } => u64::from(*count),
            Cell::Ring(r) => r.total,
        }
    }

    /// Unix second after which this counter is certainly empty (safe to evict).
    pub(crate) fn idle_at(&self, spec: &WindowSpec) -> u32 {
        match (self, spec.0) {
            (Cell::One { count: 0, .. }, _) => 0,
            (Cell::One { last, .. }, _) => {
                secs_ceil_ms(spec.forget_ms(spec.index_of_last(*last), *last))
            }
            (Cell::Ring(r), _) => {
                let newest = r.last_of(r.newest, spec.bucket_ms());
                secs_ceil_ms(spec.forget_ms(r.newest, newest))
            }
        }
    }

    /// Drops cost that has left the window at `now` and says where the
    /// decision stands.
    #[inline(always)]
    fn slide(&mut self, spec: &WindowSpec, now: u64) -> At {
        let (stamp, floor) = (ceil_ms(now), floor_ms(now));
        let k = spec.index_at(now);
        let at = |cur| At { stamp, floor, cur };
        match spec.0 {
            Shape::Fixed { .. } => {
                let Cell::One { count, last } = self else {
                    // Fixed windows never use a ring.
                    *self = Cell::default();
                    return at(k);
                };
                if *count > 0 && spec.index_of_last(*last) < k {
                    *count = 0;
                }
                if *count == 0 {
                    *last = floor;
                }
                // A clock that went back keeps charging the stored window.
                at(k.max(spec.index_of_last(*last)))
            }
            Shape::Sliding {
                bucket_ms,
                window_ms,
                ..
            } => match self {
                Cell::One { count, last } => {
                    if *count > 0 && last.saturating_add(window_ms) <= floor {
                        *count = 0;
                    }
                    if *count == 0 {
                        *last = stamp;
                        return at(k);
                    }
                    // A clock that went back keeps charging the stored bucket.
                    at(k.max(*last / bucket_ms))
                }
                Cell::Ring(ring) => {
                    if k > ring.newest {
                        let slots = ring.slots.len() as u64;
                        if k - ring.newest >= slots {
                            ring.slots.iter_mut().for_each(|s| *s = 0);
                            ring.total = 0;
                        } else {
                            for j in ring.newest + 1..=k {
                                let i = ring.slot_of(j);
                                ring.total -= u64::from(slot_count(ring.slots[i]));
                                ring.slots[i] = 0;
                            }
                        }
                        ring.newest = k;
                    }
                    // Buckets leave in order: drop the oldest while their
                    // window has ended.
                    for j in ring.live() {
                        let i = ring.slot_of(j);
                        let c = slot_count(ring.slots[i]);
                        if c == 0 {
                            continue;
                        }
                        if ring.last_of(j, bucket_ms).saturating_add(window_ms) > floor {
                            ring.first = j;
                            break;
                        }
                        ring.total -= u64::from(c);
                        ring.slots[i] = 0;
                    }
                    let newest = ring.newest;
                    if ring.total == 0 {
                        // Quiet again: give the ring back and return to 16 bytes.
                        *self = Cell::One {
                            count: 0,
                            last: stamp,
                        };
                        return at(k);
                    }
                    at(newest)
                }
            },
        }
    }

    /// Cost counted (after sliding).
    fn used(&self) -> u64 {
        self.held()
    }

    /// Bucket index and latest stamp of each non-empty bucket, oldest first.
    fn buckets(&self, spec: &WindowSpec) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
        let bucket_ms = spec.bucket_ms();
        let (one, ring) = match self {
            Cell::One { count: 0, .. } => (None, None),
            Cell::One { count, last } => (
                Some((spec.index_of_last(*last), *last, u64::from(*count))),
                None,
            ),
            Cell::Ring(r) => (None, Some(r)),
        };
        let from_ring = ring.into_iter().flat_map(move |r| {
            r.live().filter_map(move |j| {
                let c = slot_count(r.slots[r.slot_of(j)]);
                (c > 0).then(|| (j, r.last_of(j, bucket_ms), u64::from(c)))
            })
        });
        one.into_iter().chain(from_ring)
    }

    /// Index and latest stamp of the newest non-empty bucket: the one whose
    /// cost leaves last (a bucket's stamps lie within it, so a newer bucket's
    /// latest stamp is always later).
    fn newest(&self, spec: &WindowSpec) -> Option<(u64, u64)> {
        match self {
            Cell::One { count: 0, .. } => None,
            Cell::One { last, .. } => Some((spec.index_of_last(*last), *last)),
            Cell::Ring(r) => r
                .live()
                .rev()
                .find(|&j| slot_count(r.slots[r.slot_of(j)]) > 0)
                .map(|j| (j, r.last_of(j, spec.bucket_ms()))),
        }
    }

    #[inline(always)]
    fn view(&self, spec: &WindowSpec, capacity: u64, at: At) -> View {
        let reset = self
            .newest(spec)
            .map_or(at.stamp, |(j, last)| spec.forget_ms(j, last));
        View {
            capacity,
            used: self.used(),
            reset_at: Timestamp::from_nanos(ms_to_ns(reset)),
        }
    }

    /// Earliest instant (ms) at which `need` units of counted cost have left.
    fn freed_at(&self, spec: &WindowSpec, at: At, need: u64) -> u64 {
        let mut freed = 0u64;
        let mut when = at.stamp;
        for (j, last, c) in self.buckets(spec) {
            freed += c;
            when = spec.forget_ms(j, last);
            if freed >= need {
                break;
            }
        }
        when
    }

    /// Reads the counter at `now` without charging; `cost` is the charge a
    /// request would make, used to say whether and when it would fit.
    pub(crate) fn peek(
        &mut self,
        spec: &WindowSpec,
        capacity: u64,
        now: u64,
        cost: u64,
    ) -> (View, Result<(), Refusal>) {
        // A sliding counter with one bucket still counting (a burst that
        // spent a limit, the common refusal): its cost all leaves at once,
        // one window after its latest stamp. What the general steps give.
        if let (Cell::One { count, last }, Shape::Sliding { window_ms, .. }) = (&*self, spec.0) {
            let ends = last.saturating_add(window_ms);
            if *count > 0 && ends > floor_ms(now) {
                let used = u64::from(*count);
                let at = Timestamp::from_nanos(ms_to_ns(ends));
                let fit = if cost > capacity {
                    Err(Refusal::NeverFits)
                } else if used.saturating_add(cost) <= capacity {
                    Ok(())
                } else {
                    Err(Refusal::Full { retry_at: at })
                };
                return (View::new(capacity, used, at), fit);
            }
        }
        let at = self.slide(spec, now);
        let view = self.view(spec, capacity, at);
        (view, self.fits(spec, capacity, at, cost))
    }

    #[inline(always)]
    fn fits(&self, spec: &WindowSpec, capacity: u64, at: At, cost: u64) -> Result<(), Refusal> {
        if cost > capacity {
            return Err(Refusal::NeverFits);
        }
        let used = self.used().saturating_add(cost);
        if used <= capacity {
            return Ok(());
        }
        let retry = self.freed_at(spec, at, used - capacity);
        Err(Refusal::Full {
            retry_at: Timestamp::from_nanos(ms_to_ns(retry)),
        })
    }

    #[cfg(test)]
    /// Charges `cost` at `now` if it fits in `capacity`.
    ///
    /// On success returns the view after the charge and the bucket index that
    /// was charged (for [`Cell::refund`]).
    ///
    /// # Errors
    ///
    /// [`Refusal::Full`] with the exact instant at which the charge would fit,
    /// or [`Refusal::NeverFits`] when `cost > capacity`. A refused charge
    /// changes nothing but dropping expired cost.
    pub(crate) fn try_charge(
        &mut self,
        spec: &WindowSpec,
        capacity: u64,
        now: u64,
        cost: u64,
    ) -> Result<(View, u64), (View, Refusal)> {
        self.try_charge_with(spec, capacity, now, cost, cost)
            .map(|(view, mark)| (view, mark.idx))
    }

    /// Like [`Cell::try_charge`], but checks room for `check` units and
    /// charges `charge` units. A cost known only after the response
    /// (latency, tokens) is admitted with `check = 1, charge = 0` — "while
    /// used < capacity" — and charged later with [`Cell::charge_unchecked`].
    ///
    /// # Errors
    ///
    /// As [`Cell::try_charge`], for `check`.
    pub(crate) fn try_charge_with(
        &mut self,
        spec: &WindowSpec,
        capacity: u64,
        now: u64,
        check: u64,
        charge: u64,
    ) -> Result<(View, Mark), (View, Refusal)> {
        if let Some(done) = self.charge_newest(spec, capacity, now, check, charge) {
            return Ok(done);
        }
        let at = self.slide(spec, now);
        if let Err(refusal) = self.fits(spec, capacity, at, check) {
            return Err((self.view(spec, capacity, at), refusal));
        }
        let mark = if charge > 0 {
            let prev = self.add(spec, at, charge);
            Mark::new(at.cur, prev, self.bucket(spec, at.cur))
        } else {
            Mark {
                idx: at.cur,
                ..Mark::default()
            }
        };
        Ok((self.view(spec, capacity, at), mark))
    }

    /// The common case of a sliding counter in one step: the charge falls
    /// in its newest bucket, its oldest counted bucket still counts (so
    /// nothing leaves), and it fits. Exactly what [`Cell::slide`],
    /// [`Cell::fits`], [`Cell::add`] and [`Cell::view`] give then; `None`
    /// in any other case, which they decide.
    fn charge_newest(
        &mut self,
        spec: &WindowSpec,
        capacity: u64,
        now: u64,
        check: u64,
        charge: u64,
    ) -> Option<(View, Mark)> {
        let Shape::Sliding {
            bucket_ms,
            window_ms,
            ..
        } = spec.0
        else {
            return None;
        };
        let stamp = ceil_ms(now);
        let charge32 = u32::try_from(charge).unwrap_or(u32::MAX);
        let r = match self {
            // One bucket: the newest stamp is `last`.
            Cell::One { count, last } => {
                if charge == 0
                    || *count == 0
                    || stamp / bucket_ms != *last / bucket_ms
                    || last.saturating_add(window_ms) <= floor_ms(now)
                    || u64::from(*count).saturating_add(check) > capacity
                {
                    return None;
                }
                let prev = (*count, *last);
                *count = count.saturating_add(charge32);
                *last = (*last).max(stamp);
                let view = View {
                    capacity,
                    used: u64::from(*count),
                    reset_at: Timestamp::from_nanos(ms_to_ns(last.saturating_add(window_ms))),
                };
                let idx = *last / bucket_ms;
                return Some((view, Mark::new(idx, prev, (*count, *last))));
            }
            Cell::Ring(r) => r,
        };
        if charge == 0 || stamp / bucket_ms != r.newest {
            return None;
        }
        let oldest = r.first.max(r.oldest());
        let first = r.slots[r.slot_of(oldest)];
        let ends = r.last_of(oldest, bucket_ms).saturating_add(window_ms);
        if slot_count(first) == 0 || ends <= floor_ms(now) {
            return None;
        }
        if r.total.saturating_add(check) > capacity {
            return None;
        }
        let i = r.slot_of(r.newest);
        let before = slot_count(r.slots[i]);
        let after = before.saturating_add(charge32);
        let start = r.newest * bucket_ms;
        let prev = (before, start + slot_offset(r.slots[i]));
        let offset = slot_offset(r.slots[i]).max(stamp - start);
        r.slots[i] = slot(after, offset);
        r.total += u64::from(after - before);
        let reset = (start + offset).saturating_add(window_ms);
        let view = View {
            capacity,
            used: r.total,
            reset_at: Timestamp::from_nanos(ms_to_ns(reset)),
        };
        Some((view, Mark::new(r.newest, prev, (after, start + offset))))
    }

    /// Charges `cost` at `now` whatever the capacity: for costs measured
    /// after the response, which cannot be refused any more.
    pub(crate) fn charge_unchecked(&mut self, spec: &WindowSpec, now: u64, cost: u64) {
        if cost == 0 {
            return;
        }
        let at = self.slide(spec, now);
        self.add(spec, at, cost);
    }

    /// Adds `cost` to bucket `at.cur`, stamped `at.stamp`, without any
    /// capacity check.
    #[inline(always)]
    fn add(&mut self, spec: &WindowSpec, at: At, cost: u64) -> (u32, u64) {
        let cost32 = u32::try_from(cost).unwrap_or(u32::MAX);
        let Shape::Sliding {
            bucket_ms, reach, ..
        } = spec.0
        else {
            // Fixed: `slide` left one window, the current one (or a later
            // one, if the clock went back).
            let Cell::One { count, last } = self else {
                return (0, 0);
            };
            let prev = (*count, *last);
            *count = count.saturating_add(cost32);
            *last = (*last).max(at.floor);
            return prev;
        };
        let cur = at.cur;
        // The stamp, kept inside the bucket charged (a clock that went back
        // charges a later bucket, from its start).
        let start = cur * bucket_ms;
        let stamp = at.stamp.clamp(start, start + bucket_ms - 1);
        match self {
            Cell::One { count, last } => {
                let prev = (*count, *last);
                if *count == 0 {
                    *count = cost32;
                    *last = stamp;
                    return prev;
                }
                let old = *last / bucket_ms;
                if old == cur {
                    *count = count.saturating_add(cost32);
                    *last = (*last).max(stamp);
                    return prev;
                }
                // A second non-empty bucket: move to a ring.
                let mut ring = Ring {
                    newest: cur,
                    first: old,
                    total: u64::from(*count) + u64::from(cost32),
                    slots: vec![0u64; reach as usize + 1].into_boxed_slice(),
                };
                let (i, j) = (ring.slot_of(old), ring.slot_of(cur));
                ring.slots[i] = slot(*count, *last - old * bucket_ms);
                ring.slots[j] = slot(cost32, stamp - start);
                *self = Cell::Ring(Box::new(ring));
                (0, start)
            }
            Cell::Ring(r) => {
                let i = r.slot_of(cur);
                let (before, was) = (slot_count(r.slots[i]), slot_offset(r.slots[i]));
                let after = before.saturating_add(cost32);
                r.slots[i] = slot(after, was.max(stamp - start));
                r.total += u64::from(after - before);
                (before, start + was)
            }
        }
    }

    /// Gives back `cost` charged in bucket `charged_idx` (as returned by
    /// [`Cell::try_charge`]). Cost whose bucket has left the window is gone
    /// already and nothing happens. The bucket keeps its latest stamp.
    pub(crate) fn refund(&mut self, spec: &WindowSpec, now: u64, charged_idx: u64, cost: u64) {
        self.slide(spec, now);
        let cost32 = u32::try_from(cost).unwrap_or(u32::MAX);
        match self {
            Cell::One { count, last } => {
                if *count > 0 && spec.index_of_last(*last) == charged_idx {
                    *count = count.saturating_sub(cost32);
                }
            }
            Cell::Ring(r) => {
                if charged_idx >= r.oldest() && charged_idx <= r.newest {
                    let i = r.slot_of(charged_idx);
                    let c = slot_count(r.slots[i]);
                    let take = c.min(cost32);
                    r.slots[i] = slot(c - take, slot_offset(r.slots[i]));
                    r.total -= u64::from(take);
                }
            }
        }
    }

    /// Count and latest stamp (ms) of bucket `idx` ((0, 0) when no record
    /// of it is kept).
    fn bucket(&self, spec: &WindowSpec, idx: u64) -> (u32, u64) {
        match self {
            Cell::One { count, last } if spec.index_of_last(*last) == idx => (*count, *last),
            Cell::One { .. } => (0, 0),
            Cell::Ring(r) if idx >= r.oldest() && idx <= r.newest => {
                let s = r.slots[r.slot_of(idx)];
                (slot_count(s), idx * spec.bucket_ms() + slot_offset(s))
            }
            Cell::Ring(_) => (0, 0),
        }
    }

    /// Takes back the charge `mark` describes, after [`Cell::slide`]
    /// dropped whatever has left the window since: exactly (the bucket's
    /// count and latest stamp as they were) when the bucket is as that
    /// charge left it, so nobody else has charged it since; otherwise as
    /// [`Cell::refund`] does, keeping the latest stamp, which may be
    /// another request's. Either way the counter then reads as if the charge
    /// had never been made, or counts `cost` up to one bucket later (on the
    /// safe side), and never loses another request's charge.
    pub(crate) fn take_back(&mut self, spec: &WindowSpec, now: u64, mark: Mark, cost: u64) {
        if mark.count_after == 0 {
            return;
        }
        self.slide(spec, now);
        let (count, last) = self.bucket(spec, mark.idx);
        if count == u32::MAX {
            // A saturated count says nothing about who charged it, nor how
            // much: it stays full rather than lose another's charge.
            return;
        }
        // `count_after` is never 0 here: the bucket holds that charge still.
        let untouched = count == mark.count_after && last == mark.last_after;
        if !untouched {
            self.refund(spec, now, mark.idx, cost);
            return;
        }
        let (count_was, last_was) = (mark.count, mark.last);
        match self {
            Cell::One { count, last } => {
                *count = count_was;
                *last = last_was;
            }
            Cell::Ring(r) => {
                let i = r.slot_of(mark.idx);
                let now_count = slot_count(r.slots[i]);
                let start = mark.idx * spec.bucket_ms();
                r.slots[i] = slot(count_was, last_was.saturating_sub(start));
                r.total = r.total - u64::from(now_count) + u64::from(count_was);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;
    const MS: u64 = NANOS_PER_MS;

    #[test]
    fn a_folded_ring_holds_its_total_until_its_oldest_bucket_leaves() {
        let spec = WindowSpec::sliding_ms(60_000, 60);
        let mut cell = Cell::default();
        let t0 = 1_000 * S;
        for i in 0..5 {
            cell.try_charge(&spec, 10, t0 + i * 10 * S, 1).unwrap();
        }
        assert!(matches!(cell, Cell::Ring(_)));
        cell.fold_into_oldest(&spec);
        assert_eq!(
            cell,
            Cell::One {
                count: 5,
                last: 1_000_000
            }
        );
        // All five leave when the first would: at 1060 s, not 1100 s.
        assert!(cell.try_charge(&spec, 5, 1060 * S - 1, 1).is_err());
        let (view, _) = cell.try_charge(&spec, 5, 1060 * S, 1).unwrap();
        assert_eq!(view.used, 1);
        // A single bucket is left as it is.
        let before = cell.clone();
        cell.fold_into_oldest(&spec);
        assert_eq!(cell, before);
    }

    #[test]
    fn sliding_admits_capacity_then_refuses_until_one_window_after_the_first() {
        let spec = WindowSpec::sliding_ms(60_000, 60);
        let mut cell = Cell::default();
        let t0 = 1_000 * S;
        for i in 0..3 {
            let (view, _) = cell.try_charge(&spec, 3, t0 + i * S, 1).unwrap();
            assert_eq!(view.used, i + 1);
        }
        let (view, refusal) = cell.try_charge(&spec, 3, t0 + 3 * S, 1).unwrap_err();
        assert_eq!(view.remaining(), 0);
        // The first charge (1000 s, alone in its bucket) leaves at 1060 s.
        assert_eq!(
            refusal,
            Refusal::Full {
                retry_at: Timestamp::from_secs(1060)
            }
        );
        assert_eq!(view.reset_at, Timestamp::from_secs(1062));
        assert!(cell.try_charge(&spec, 3, 1060 * S - 1, 1).is_err());
        assert!(cell.try_charge(&spec, 3, 1060 * S, 1).is_ok());
    }

    #[test]
    fn a_burst_leaves_exactly_one_window_after_its_last_request() {
        // The per-second burst of seed 005: 1 s in 10 buckets of 100 ms.
        let spec = WindowSpec::sliding_ms(1000, 10);
        let mut cell = Cell::default();
        let t0 = 1_700_000_000 * S + 3 * MS;
        for i in 0..80 {
            cell.try_charge(&spec, 80, t0 + i * 10_000, 1).unwrap();
        }
        let last = t0 + 79 * 10_000; // 3.79 ms: stamped 4 ms
        let (view, refusal) = cell.try_charge(&spec, 80, last + 1, 1).unwrap_err();
        let back = Timestamp::from_nanos(1_700_000_001 * S + 4 * MS);
        assert_eq!(refusal, Refusal::Full { retry_at: back });
        assert_eq!(view.reset_at, back);
        // 1.05 s later all 80 fit again.
        for i in 0..80 {
            cell.try_charge(&spec, 80, t0 + 1050 * MS + i * 10_000, 1)
                .unwrap();
        }
    }

    #[test]
    fn figures_never_point_past_one_window() {
        let spec = WindowSpec::sliding_ms(60_000, 30);
        let mut cell = Cell::default();
        let now = 1_000 * S + 1_999 * MS; // end of a 2 s bucket
        let (view, _) = cell.try_charge(&spec, 1, now, 1).unwrap();
        assert_eq!(view.reset_at.as_nanos() - now, 60 * S);
        let (_, refusal) = cell.try_charge(&spec, 1, now + 1, 1).unwrap_err();
        let Refusal::Full { retry_at } = refusal else {
            panic!("{refusal:?}")
        };
        assert!(retry_at.as_nanos() - (now + 1) < 60 * S);
    }

    #[test]
    fn fixed_resets_on_the_boundary_in_the_offset() {
        // One-day window at UTC+2: resets at 22:00 UTC.
        let day = 86_400 * S;
        let spec = WindowSpec::fixed(Duration::from_secs(86_400), 2 * 3600);
        let mut cell = Cell::default();
        let t = 19_000 * day + 21 * 3600 * S; // 21:00 UTC = 23:00 local
        cell.try_charge(&spec, 1, t, 1).unwrap();
        let (_, refusal) = cell.try_charge(&spec, 1, t + 1, 1).unwrap_err();
        assert_eq!(
            refusal,
            Refusal::Full {
                retry_at: Timestamp::from_nanos(19_000 * day + 22 * 3600 * S)
            }
        );
        assert!(cell
            .try_charge(&spec, 1, 19_000 * day + 22 * 3600 * S - 1, 1)
            .is_err());
        assert!(cell
            .try_charge(&spec, 1, 19_000 * day + 22 * 3600 * S, 1)
            .is_ok());
    }

    #[test]
    fn never_fits_is_its_own_refusal() {
        let spec = WindowSpec::sliding_ms(1000, 10);
        let mut cell = Cell::default();
        let (_, refusal) = cell.try_charge(&spec, 5, S, 6).unwrap_err();
        assert_eq!(refusal, Refusal::NeverFits);
    }

    #[test]
    fn refund_undoes_a_charge() {
        let spec = WindowSpec::sliding_ms(10_000, 10);
        let mut cell = Cell::default();
        cell.try_charge(&spec, 2, S, 1).unwrap();
        let (_, idx) = cell.try_charge(&spec, 2, 2 * S, 1).unwrap();
        cell.refund(&spec, 2 * S, idx, 1);
        assert!(cell.try_charge(&spec, 2, 2 * S, 1).is_ok());
        assert!(cell.try_charge(&spec, 2, 2 * S, 1).is_err());
    }

    #[test]
    fn clock_going_back_charges_the_newest_bucket() {
        let spec = WindowSpec::sliding_ms(10_000, 10);
        let mut cell = Cell::default();
        cell.try_charge(&spec, 2, 100 * S, 1).unwrap();
        cell.try_charge(&spec, 2, 50 * S, 1).unwrap();
        assert!(cell.try_charge(&spec, 2, 100 * S, 1).is_err());
        // Both leave with the newest bucket's window.
        assert!(cell.try_charge(&spec, 2, 110 * S - 1, 1).is_err());
        assert!(cell.try_charge(&spec, 2, 110 * S, 2).is_ok());
    }

    #[test]
    fn shapes_round_to_whole_milliseconds() {
        let spec = WindowSpec::sliding(Duration::from_millis(10), 30);
        assert_eq!(
            (spec.bucket(), spec.reach()),
            (Duration::from_millis(1), 10)
        );
        let spec = WindowSpec::sliding(Duration::from_millis(1000), 7);
        assert_eq!((spec.bucket_ms(), spec.reach()), (143, 7));
        assert_eq!(spec.window(), Duration::from_secs(1));
        let spec = WindowSpec::sliding(Duration::from_micros(1500), 1);
        assert_eq!(spec.window(), Duration::from_millis(2));
        // A year in one bucket still fits a slot's 32-bit offset.
        let spec = WindowSpec::sliding(Duration::from_secs(366 * 86_400), 1);
        assert!(spec.bucket_ms() <= u64::from(u32::MAX));
        assert_eq!(spec.reach(), 8);
    }

    #[test]
    fn cell_is_small() {
        assert_eq!(std::mem::size_of::<Cell>(), 16);
    }
}
