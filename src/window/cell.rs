//! [`Cell`]: one counter (one limit, one scope key) and how it checks,
//! charges and takes back costs under a [`WindowSpec`].

use std::fmt;

use super::millis::{ceil_ms, floor_ms, ms_to_ns};
use super::spec::{Shape, WindowSpec};
use super::view::{Refusal, View};
use crate::clock::Timestamp;

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
    pub(super) count_after: u32,
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
        // A ring's oldest counted bucket leaves first (said only when
        // before the reset).
        let frees = match self {
            Cell::Ring(_) => self
                .buckets(spec)
                .next()
                .map(|(j, last, _)| spec.forget_ms(j, last))
                .filter(|&f| f < reset)
                .map(|f| Timestamp::from_nanos(ms_to_ns(f))),
            Cell::One { .. } => None,
        };
        View {
            capacity,
            used: self.used(),
            reset_at: Timestamp::from_nanos(ms_to_ns(reset)),
            frees_at: frees,
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
                    frees_at: None,
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
            frees_at: (ends < reset).then(|| Timestamp::from_nanos(ms_to_ns(ends))),
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
