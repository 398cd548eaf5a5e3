//! The counting maths: sliding and clock-aligned (fixed) windows.
//!
//! Everything here is pure: functions take "now" as an argument and never read a
//! clock, so they can be property-tested against a brute-force model
//! (`model_tests.rs`). Only the window shape ([`WindowSpec`]) and the figures a
//! decision reports ([`View`], [`Refusal`]) are public, through
//! [`crate::store`]; the counters themselves are private to the memory store.
//!
//! # Sliding windows
//!
//! A sliding window of length `W` with precision `P` counts admitted cost in
//! sub-buckets of width `B = W / P`, aligned to the Unix epoch. A request at time
//! `t` falls in bucket `k = floor(t / B)`; it is admitted when the cost counted
//! in buckets `k-P ..= k` plus its own cost fits in the capacity.
//!
//! Checking `P + 1` buckets (not `P`) is what makes the guarantee hard: every
//! interval of length `W` lies inside some `P + 1` consecutive buckets, and the
//! last admission into any such run of buckets saw all of them. So **in every
//! interval of length `W` the admitted cost never exceeds the capacity**.
//! The price is coarseness: a cost admitted at `x` stops counting at the end of
//! bucket `floor(x / B) + P`, which is at most one bucket width `B` later than
//! an exact sliding log would forget it. A request may therefore be admitted up
//! to `B` later than an exact log would admit it, never earlier.
//!
//! # Fixed windows
//!
//! A fixed window of length `W` with a UTC offset `o` resets whenever
//! `t + o` crosses a multiple of `W`: a one-minute window at `:00` seconds,
//! an hour at `:00`, a day at local midnight of that offset.
//!
//! # Memory
//!
//! A counter ([`Cell`]) with a single non-empty bucket is 16 bytes inline; only
//! when a sliding counter holds cost in two or more buckets does it allocate a
//! ring of `P + 1` bucket counts.

use std::fmt;
use std::time::Duration;

use crate::clock::Timestamp;

#[cfg(test)]
mod model_tests;

/// Default number of sub-buckets of a sliding window.
///
/// With 30, a one-minute window counts in 2-second buckets and a one-hour
/// window in 2-minute buckets: a request is admitted at most that much later
/// than an exact sliding log would admit it.
pub const DEFAULT_PRECISION: u32 = 30;

/// Largest accepted precision (sub-buckets per sliding window).
pub const MAX_PRECISION: u32 = 3600;

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// The shape of one limit's window, as a store needs it to count.
///
/// The helpers ([`WindowSpec::index`], [`WindowSpec::forget_at`]) are the
/// whole counting rule, so a store written outside this crate counts exactly
/// as the memory store does:
///
/// * a cost charged at `t` goes to bucket `index(t)`;
/// * it counts until `forget_at(index(t))`;
/// * a request fits when the cost still counted plus its own is at most the
///   capacity.
///
/// ```
/// use std::time::Duration;
/// use tierlimit::clock::Timestamp;
/// use tierlimit::store::WindowSpec;
///
/// // One minute in 30 buckets of 2 s: a cost charged at t = 1000 s (bucket
/// // 500) counts until the end of bucket 530, at 1062 s.
/// let spec = WindowSpec::sliding(Duration::from_secs(60), 30);
/// assert!(spec.is_sliding());
/// assert_eq!((spec.bucket(), spec.reach()), (Duration::from_secs(2), 30));
/// let i = spec.index(Timestamp::from_secs(1000));
/// assert_eq!(spec.forget_at(i), Timestamp::from_secs(1062));
/// // A fixed minute resets on the next :00.
/// let fixed = WindowSpec::fixed(Duration::from_secs(60), 0);
/// assert_eq!(fixed.utc_offset_secs(), Some(0));
/// let j = fixed.index(Timestamp::from_secs(1000));
/// assert_eq!(fixed.forget_at(j), Timestamp::from_secs(1020));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WindowSpec(Shape);

/// The inside of a [`WindowSpec`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Shape {
    /// A sliding window of `precision` buckets of `bucket_nanos` each.
    Sliding {
        /// Width of one sub-bucket, in nanoseconds (at least 1).
        bucket_nanos: u64,
        /// Number of sub-buckets in the window (`P`, at least 1).
        precision: u32,
    },
    /// A window that resets on clock boundaries.
    Fixed {
        /// Window length in nanoseconds (at least 1).
        len_nanos: u64,
        /// Offset of the local time from UTC, in nanoseconds (east positive).
        offset_nanos: i64,
    },
}

impl WindowSpec {
    /// A sliding window of length `window` split into `precision` sub-buckets
    /// (clamped to 1 ..= [`MAX_PRECISION`]).
    ///
    /// When the window is not a multiple of `precision` nanoseconds, the
    /// bucket width is rounded up, so the effective window is at most
    /// `precision - 1` nanoseconds longer (never shorter) than asked. A zero
    /// window is raised to one nanosecond per bucket.
    pub fn sliding(window: Duration, precision: u32) -> Self {
        Self::sliding_nanos(
            u64::try_from(window.as_nanos()).unwrap_or(u64::MAX),
            precision,
        )
    }

    /// A fixed window of length `len` aligned to clock boundaries in the UTC
    /// offset `utc_offset_secs` (east positive): a day window resets at that
    /// offset's midnight.
    pub fn fixed(len: Duration, utc_offset_secs: i32) -> Self {
        Self::fixed_nanos(
            u64::try_from(len.as_nanos()).unwrap_or(u64::MAX),
            i64::from(utc_offset_secs) * NANOS_PER_SEC as i64,
        )
    }

    /// The bucket (sliding) or window (fixed) that `now` falls in.
    pub fn index(&self, now: Timestamp) -> u64 {
        self.index_at(now.as_nanos())
    }

    /// When a cost charged in bucket or window `index` stops counting: the
    /// end of the window for a fixed window; for a sliding window, the end of
    /// bucket `index + precision`.
    pub fn forget_at(&self, index: u64) -> Timestamp {
        Timestamp::from_nanos(self.forget_at_ns(index))
    }

    /// How many buckets before the current one still count: the precision
    /// of a sliding window, 0 for a fixed window.
    pub fn reach(&self) -> u64 {
        match self.0 {
            Shape::Sliding { precision, .. } => u64::from(precision),
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
        Duration::from_nanos(match self.0 {
            Shape::Sliding { bucket_nanos, .. } => bucket_nanos,
            Shape::Fixed { len_nanos, .. } => len_nanos,
        })
    }

    /// The UTC offset a fixed window's boundaries follow (east positive, in
    /// seconds); `None` for a sliding window.
    pub fn utc_offset_secs(&self) -> Option<i32> {
        match self.0 {
            Shape::Sliding { .. } => None,
            Shape::Fixed { offset_nanos, .. } => {
                i32::try_from(offset_nanos / NANOS_PER_SEC as i64).ok()
            }
        }
    }

    pub(crate) fn shape(&self) -> Shape {
        self.0
    }

    /// The window's length.
    pub fn window(&self) -> Duration {
        Duration::from_nanos(self.window_nanos())
    }

    pub(crate) fn sliding_nanos(window_nanos: u64, precision: u32) -> Self {
        let precision = precision.clamp(1, MAX_PRECISION);
        let bucket_nanos = window_nanos.div_ceil(u64::from(precision)).max(1);
        WindowSpec(Shape::Sliding {
            bucket_nanos,
            precision,
        })
    }

    pub(crate) fn fixed_nanos(len_nanos: u64, offset_nanos: i64) -> Self {
        WindowSpec(Shape::Fixed {
            len_nanos: len_nanos.max(1),
            offset_nanos,
        })
    }

    pub(crate) fn index_at(&self, now: u64) -> u64 {
        match self.0 {
            Shape::Sliding { bucket_nanos, .. } => now / bucket_nanos,
            Shape::Fixed {
                len_nanos,
                offset_nanos,
            } => {
                let local = i128::from(now) + i128::from(offset_nanos);
                let idx = local.div_euclid(i128::from(len_nanos));
                u64::try_from(idx).unwrap_or(0)
            }
        }
    }

    /// The instant (ns since the epoch) at which window/bucket `idx` ends.
    fn end_of(&self, idx: u64) -> u64 {
        match self.0 {
            Shape::Sliding { bucket_nanos, .. } => {
                idx.saturating_add(1).saturating_mul(bucket_nanos)
            }
            Shape::Fixed {
                len_nanos,
                offset_nanos,
            } => {
                let end = (i128::from(idx) + 1) * i128::from(len_nanos) - i128::from(offset_nanos);
                u64::try_from(end.max(0)).unwrap_or(u64::MAX)
            }
        }
    }

    fn forget_at_ns(&self, idx: u64) -> u64 {
        match self.0 {
            Shape::Sliding { precision, .. } => self.end_of(idx + u64::from(precision)),
            Shape::Fixed { .. } => self.end_of(idx),
        }
    }

    pub(crate) fn window_nanos(&self) -> u64 {
        match self.0 {
            Shape::Sliding {
                bucket_nanos,
                precision,
            } => bucket_nanos.saturating_mul(u64::from(precision)),
            Shape::Fixed { len_nanos, .. } => len_nanos,
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
    /// `remaining` is back to `capacity`. Equal to "now" when nothing is
    /// counted.
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
/// several buckets moves to a boxed ring of `P + 1` counts.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Cell {
    /// At most one non-empty bucket (always so for fixed windows).
    One {
        /// Low 32 bits of the bucket/window index.
        idx: u32,
        /// Cost counted in that bucket.
        count: u32,
        /// Unix second after which the cell is certainly empty.
        idle_at: u32,
    },
    /// Several non-empty buckets of a sliding window.
    Ring(Box<Ring>),
}

/// The ring of sub-bucket counts of a busy sliding counter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Ring {
    newest: u64,
    total: u64,
    idle_at: u32,
    counts: Box<[u32]>,
}

impl fmt::Debug for Cell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cell::One { idx, count, .. } => f
                .debug_struct("Cell::One")
                .field("idx", idx)
                .field("count", count)
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
        Cell::One {
            idx: 0,
            count: 0,
            idle_at: 0,
        }
    }
}

fn secs_ceil(nanos: u64) -> u32 {
    u32::try_from(nanos.div_ceil(NANOS_PER_SEC)).unwrap_or(u32::MAX)
}

/// Resolves the full bucket index of a stored low-32-bit index, relative to
/// the current index. Returns `None` when the stored bucket lies in the future
/// of `now_idx` (the clock went back), in which case callers treat "now" as
/// that bucket.
fn age_of(stored: u32, now_idx: u64) -> i64 {
    // Wrapping difference interpreted as signed: correct while the stored
    // bucket is within 2^31 buckets of now, which eviction guarantees.
    i64::from((now_idx as u32).wrapping_sub(stored) as i32)
}

impl Cell {
    /// Cost held in its buckets (some may have left the window already).
    pub(crate) fn held(&self) -> u64 {
        match self {
            Cell::One { count, .. } => u64::from(*count),
            Cell::Ring(r) => r.total,
        }
    }

    /// Unix second after which this counter is certainly empty (safe to evict).
    pub(crate) fn idle_at(&self) -> u32 {
        match self {
            Cell::One { idle_at, .. } => *idle_at,
            Cell::Ring(r) => r.idle_at,
        }
    }

    /// Drops cost that has left the window at `now` and returns the effective
    /// current bucket index (never before the newest stored bucket).
    fn slide(&mut self, spec: &WindowSpec, now: u64) -> u64 {
        let now_idx = spec.index_at(now);
        let reach = spec.reach();
        match self {
            Cell::One { idx, count, .. } => {
                if *count == 0 {
                    // Empty: whatever index is stored means nothing.
                    *idx = now_idx as u32;
                    return now_idx;
                }
                let age = age_of(*idx, now_idx);
                if age < 0 {
                    // Clock went back: stay in the stored bucket.
                    return now_idx.wrapping_add(age.unsigned_abs());
                }
                if age as u64 > reach {
                    *count = 0;
                }
                if *count == 0 {
                    *idx = now_idx as u32;
                }
                now_idx
            }
            Cell::Ring(ring) => {
                if now_idx <= ring.newest {
                    return ring.newest;
                }
                let slots = ring.counts.len() as u64;
                let steps = now_idx - ring.newest;
                if steps >= slots {
                    ring.counts.iter_mut().for_each(|c| *c = 0);
                    ring.total = 0;
                } else {
                    for j in ring.newest + 1..=now_idx {
                        let slot = &mut ring.counts[(j % slots) as usize];
                        ring.total -= u64::from(*slot);
                        *slot = 0;
                    }
                }
                ring.newest = now_idx;
                if ring.total == 0 {
                    // Quiet again: give the ring back and return to 16 bytes.
                    *self = Cell::One {
                        idx: now_idx as u32,
                        count: 0,
                        idle_at: 0,
                    };
                }
                now_idx
            }
        }
    }

    /// Cost counted at `now` (after sliding).
    fn used(&self) -> u64 {
        match self {
            Cell::One { count, .. } => u64::from(*count),
            Cell::Ring(r) => r.total,
        }
    }

    /// The index of the newest non-empty bucket, if any.
    fn newest_nonempty(&self, cur: u64) -> Option<u64> {
        match self {
            Cell::One { count: 0, .. } => None,
            Cell::One { idx, .. } => Some(cur - age_of(*idx, cur).max(0) as u64),
            Cell::Ring(r) => {
                let slots = r.counts.len() as u64;
                (0..slots)
                    .map(|back| r.newest - back.min(r.newest))
                    .find(|&j| r.counts[(j % slots) as usize] > 0)
            }
        }
    }

    fn view(&self, spec: &WindowSpec, capacity: u64, now: u64, cur: u64) -> View {
        let reset_at = Timestamp::from_nanos(match self.newest_nonempty(cur) {
            Some(j) => spec.forget_at_ns(j),
            None => now,
        });
        View {
            capacity,
            used: self.used(),
            reset_at,
        }
    }

    /// Earliest instant at which `need` units of counted cost have left.
    fn freed_at(&self, spec: &WindowSpec, cur: u64, need: u64) -> u64 {
        match self {
            Cell::One { idx, .. } => {
                let j = cur - age_of(*idx, cur).max(0) as u64;
                spec.forget_at_ns(j)
            }
            Cell::Ring(r) => {
                let slots = r.counts.len() as u64;
                let oldest = r.newest.saturating_sub(slots - 1);
                let mut freed = 0u64;
                for j in oldest..=r.newest {
                    freed += u64::from(r.counts[(j % slots) as usize]);
                    if freed >= need {
                        return spec.forget_at_ns(j);
                    }
                }
                spec.forget_at_ns(r.newest)
            }
        }
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
        let cur = self.slide(spec, now);
        let view = self.view(spec, capacity, now, cur);
        (view, self.fits(spec, capacity, cur, cost))
    }

    fn fits(&self, spec: &WindowSpec, capacity: u64, cur: u64, cost: u64) -> Result<(), Refusal> {
        if cost > capacity {
            return Err(Refusal::NeverFits);
        }
        let used = self.used();
        if used + cost <= capacity {
            return Ok(());
        }
        let retry_at = Timestamp::from_nanos(self.freed_at(spec, cur, used + cost - capacity));
        Err(Refusal::Full { retry_at })
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
    ) -> Result<(View, u64), (View, Refusal)> {
        let cur = self.slide(spec, now);
        if let Err(refusal) = self.fits(spec, capacity, cur, check) {
            return Err((self.view(spec, capacity, now, cur), refusal));
        }
        if charge > 0 {
            self.add(spec, cur, charge);
        }
        Ok((self.view(spec, capacity, now, cur), cur))
    }

    /// Charges `cost` at `now` whatever the capacity: for costs measured
    /// after the response, which cannot be refused any more.
    pub(crate) fn charge_unchecked(&mut self, spec: &WindowSpec, now: u64, cost: u64) {
        if cost == 0 {
            return;
        }
        let cur = self.slide(spec, now);
        self.add(spec, cur, cost);
    }

    /// Adds `cost` to bucket `cur` (the effective current bucket) without any
    /// capacity check, and keeps the idle time up to date.
    fn add(&mut self, spec: &WindowSpec, cur: u64, cost: u64) {
        let cost32 = u32::try_from(cost).unwrap_or(u32::MAX);
        let idle = secs_ceil(spec.forget_at_ns(cur));
        match self {
            Cell::One {
                idx,
                count,
                idle_at,
            } => {
                let age = age_of(*idx, cur);
                if *count == 0 || age <= 0 {
                    *idx = if *count == 0 { cur as u32 } else { *idx };
                    *count = count.saturating_add(cost32);
                    *idle_at = idle.max(*idle_at);
                    return;
                }
                // A second non-empty bucket: move to a ring.
                let Shape::Sliding { precision, .. } = spec.0 else {
                    // Fixed windows always slide to the current window first.
                    *idx = cur as u32;
                    *count = cost32;
                    *idle_at = idle;
                    return;
                };
                let slots = u64::from(precision) + 1;
                let old = cur - age as u64;
                let mut counts = vec![0u32; slots as usize].into_boxed_slice();
                counts[(old % slots) as usize] = *count;
                counts[(cur % slots) as usize] = cost32;
                let total = u64::from(*count) + u64::from(cost32);
                *self = Cell::Ring(Box::new(Ring {
                    newest: cur,
                    total,
                    idle_at: idle,
                    counts,
                }));
            }
            Cell::Ring(r) => {
                let slots = r.counts.len() as u64;
                let slot = &mut r.counts[(cur % slots) as usize];
                let before = *slot;
                *slot = slot.saturating_add(cost32);
                r.total += u64::from(*slot - before);
                r.idle_at = idle.max(r.idle_at);
            }
        }
    }

    /// Gives back `cost` charged in bucket `charged_idx` (as returned by
    /// [`Cell::try_charge`]). Cost whose bucket has left the window is gone
    /// already and nothing happens.
    pub(crate) fn refund(&mut self, spec: &WindowSpec, now: u64, charged_idx: u64, cost: u64) {
        let cur = self.slide(spec, now);
        let cost32 = u32::try_from(cost).unwrap_or(u32::MAX);
        match self {
            Cell::One { idx, count, .. } => {
                if *count > 0 && u64::from(*idx) == charged_idx & 0xffff_ffff {
                    *count = count.saturating_sub(cost32);
                }
            }
            Cell::Ring(r) => {
                let slots = r.counts.len() as u64;
                if charged_idx + slots > cur && charged_idx <= r.newest {
                    let slot = &mut r.counts[(charged_idx % slots) as usize];
                    let take = (*slot).min(cost32);
                    *slot -= take;
                    r.total -= u64::from(take);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = NANOS_PER_SEC;

    #[test]
    fn sliding_admits_capacity_then_refuses_with_exact_retry() {
        let spec = WindowSpec::sliding_nanos(60 * S, 60);
        let mut cell = Cell::default();
        let t0 = 1_000 * S;
        for i in 0..3 {
            let (view, _) = cell.try_charge(&spec, 3, t0 + i * S, 1).unwrap();
            assert_eq!(view.used, i + 1);
        }
        let (view, refusal) = cell.try_charge(&spec, 3, t0 + 3 * S, 1).unwrap_err();
        assert_eq!(view.remaining(), 0);
        // The first charge (bucket 1000) stops counting at the end of bucket 1060.
        assert_eq!(
            refusal,
            Refusal::Full {
                retry_at: Timestamp::from_secs(1061)
            }
        );
        assert!(cell.try_charge(&spec, 3, 1061 * S - 1, 1).is_err());
        assert!(cell.try_charge(&spec, 3, 1061 * S, 1).is_ok());
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
            .try_charge(&spec, 1, 19_000 * day + 22 * 3600 * S, 1)
            .is_ok());
    }

    #[test]
    fn never_fits_is_its_own_refusal() {
        let spec = WindowSpec::sliding_nanos(S, 10);
        let mut cell = Cell::default();
        let (_, refusal) = cell.try_charge(&spec, 5, S, 6).unwrap_err();
        assert_eq!(refusal, Refusal::NeverFits);
    }

    #[test]
    fn refund_undoes_a_charge() {
        let spec = WindowSpec::sliding_nanos(10 * S, 10);
        let mut cell = Cell::default();
        cell.try_charge(&spec, 2, S, 1).unwrap();
        let (_, idx) = cell.try_charge(&spec, 2, 2 * S, 1).unwrap();
        cell.refund(&spec, 2 * S, idx, 1);
        assert!(cell.try_charge(&spec, 2, 2 * S, 1).is_ok());
        assert!(cell.try_charge(&spec, 2, 2 * S, 1).is_err());
    }

    #[test]
    fn clock_going_back_charges_the_newest_bucket() {
        let spec = WindowSpec::sliding_nanos(10 * S, 10);
        let mut cell = Cell::default();
        cell.try_charge(&spec, 2, 100 * S, 1).unwrap();
        cell.try_charge(&spec, 2, 50 * S, 1).unwrap();
        assert!(cell.try_charge(&spec, 2, 100 * S, 1).is_err());
    }

    #[test]
    fn cell_is_small() {
        assert_eq!(std::mem::size_of::<Cell>(), 16);
    }
}
