//! The millisecond clock every window counts on: charges are stamped at
//! their instant rounded up to the millisecond, and a cost ending at the
//! millisecond `e` still counts while the instant rounded down is before
//! `e` (see the [window docs](super#the-millisecond-clock)).

use std::time::Duration;

pub(super) const NANOS_PER_MS: u64 = 1_000_000;

/// `now` (ns) rounded up to the millisecond: the stamp of a charge.
pub(super) fn ceil_ms(now: u64) -> u64 {
    now.div_ceil(NANOS_PER_MS)
}

/// `now` (ns) rounded down to the millisecond: a cost ending at the
/// millisecond `e` still counts while `floor_ms(now) < e`.
pub(super) fn floor_ms(now: u64) -> u64 {
    now / NANOS_PER_MS
}

pub(super) fn ms_to_ns(ms: u64) -> u64 {
    ms.saturating_mul(NANOS_PER_MS)
}

/// The stamp of a charge at `now` (ns): `now` rounded up to the
/// millisecond, in nanoseconds. What a decision reports as its instant.
pub(crate) fn stamp_nanos(now: u64) -> u64 {
    ms_to_ns(ceil_ms(now))
}

/// A duration in whole milliseconds, rounded up.
pub(super) fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_nanos().div_ceil(u128::from(NANOS_PER_MS))).unwrap_or(u64::MAX)
}
