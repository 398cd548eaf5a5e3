//! [`WindowSpec`]: the shape of one limit's window and the counting rule
//! that goes with it (which bucket a charge goes to, when it is forgotten).

use std::time::Duration;

use super::millis::{ceil_ms, floor_ms, ms, ms_to_ns, stamp_nanos};
use super::zone::{lookup as lookup_zone, ZoneRef};
use crate::clock::Timestamp;

/// Default number of sub-buckets of a sliding window.
///
/// With 30, a one-minute window counts in 2-second buckets and a one-hour
/// window in 2-minute buckets: spread-out traffic is counted at most that
/// much longer than an exact sliding log would count it.
pub const DEFAULT_PRECISION: u32 = 30;

/// Largest accepted precision (sub-buckets per sliding window).
pub const MAX_PRECISION: u32 = 3600;

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
pub struct WindowSpec(pub(super) Shape);

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
    pub(super) fn fixed_parts(&self) -> Option<(u64, i64, Option<ZoneRef>)> {
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
    pub(super) fn forget_ms(&self, idx: u64, last: u64) -> u64 {
        match self.0 {
            Shape::Sliding { window_ms, .. } => last.saturating_add(window_ms),
            Shape::Fixed { .. } => self.end_ms(idx),
        }
    }

    /// The fixed window that the millisecond `ms` falls in: the local time
    /// (in the offset, or on the zone's running wall clock) divided by the
    /// length.
    pub(super) fn fixed_index(&self, ms: u64) -> u64 {
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
    pub(super) fn index_of_last(&self, last: u64) -> u64 {
        match self.0 {
            Shape::Sliding { bucket_ms, .. } => last / bucket_ms,
            Shape::Fixed { .. } => self.fixed_index(last),
        }
    }
}
