//! Leases: units of a busy counter reserved in Redis by this instance and
//! spent here, without a round trip (see
//! [leases](super#leases-for-busy-counters)).
//!
//! # Why no window ever admits more than its capacity
//!
//! A lease is taken in the script call that decides a request: the limit
//! is charged the request's cost plus `granted` units, all stamped `until`,
//! where `until` is at most the lease lifetime after the call's stamp and
//! never past the last millisecond of the bucket charged (of the window,
//! for a fixed window). That charge was checked against the capacity like
//! any other: the counter, leases included, never holds more than the
//! capacity.
//!
//! This instance then admits a request from the lease only at an instant
//! `t` with `t <= until` (on Redis's clock: see below), taking its cost
//! from the units left. Had that request been charged in Redis, its cost
//! would have gone to the bucket of `t`, which is the lease's bucket (the
//! lease began in it and `until` is still in it), stamped `t`, and counted
//! while `now < t + window` (sliding) or until the window's end (fixed).
//! The lease's units count, in that same bucket, from the call (before
//! `t`) until `until + window >= t + window`, or the same window's end. So
//! at every instant the counter in Redis counts every unit any instance
//! admitted that would still count, and more: the argument of
//! [`window`](crate::window) (what is admitted in any span of one window
//! is counted at the span's last admission, and the counter never exceeds
//! the capacity) holds unchanged. Units given back are units no request
//! was admitted with.
//!
//! "At most `until` on Redis's clock", as this instance checks it: with
//! the caller's clock ([`TimeSource::Caller`](super::TimeSource)) the
//! instant the layer passes; with the server's clock, this process's
//! monotonic clock, from the instant the decision was *sent*: the server
//! stamped the call later than that, so `sent + (until - stamp)` is never
//! later, on the server's clock, than `until`.
//!
//! # Cascades
//!
//! A cascade's members are all asked for a lease; the script grants one
//! to the member it charges, and the lease records the whole group as that
//! call decided it. It serves the group only while the group is the same
//! and every member before the leased one still refuses by the retry
//! instant the call gave (other instances can only push those later,
//! except for units given back, and the lease lives one lifetime at
//! most): the member that takes the charge is the one Redis would pick.
//! Each admission is counted in the leased member's counter, so the proof
//! above holds member by member.
//!
//! # What this costs
//!
//! Leased units count from the call rather than from their use, and the
//! charged bucket's stamp becomes `until`: a busy counter's reset and
//! `Retry-After` may be up to one lease lifetime later than without
//! leases. Units of a lease that ends unused are stranded until they are
//! given back (the next script call of this instance, or the flusher's,
//! within 10 ms of the end); an instance that dies strands what its leases
//! held until those units leave their window, as any charge would (no
//! store can tell units a dead instance spent from units it did not).
//! Each lease holds at most half the room its limit had left, and at most
//! [`max_units`](super::RedisStoreConfig::lease_max_units).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use dashmap::DashMap;

use crate::clock::Timestamp;
use crate::store::{Batch, Charge, CounterKey, LimitSpec, Outcome, Receipt, Verdict, View};

use super::GiveBack;

/// Most counters whose demand is followed at once (past that, new ones
/// are not leased until some are forgotten).
pub(super) const MAX_TRACKED: usize = 16_384;

/// Requests of one counter on this instance in the last whole lease
/// lifetime (the one before the current) for it to be leased: demand that
/// lasts, not one burst at one instant.
pub(super) const MIN_DEMAND: u64 = 4;

/// An ask that got no answer for this long (in lease lifetimes) is given
/// up (its call failed or timed out): another may be made.
const ASK_STALE: u64 = 4;

/// What a script call asks of one limit beside deciding it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Ask {
    /// Units to reserve for a lease (0: none).
    pub(super) want: u64,
    /// The request's cost, taken from this instance's lease: the limit is
    /// sent costing nothing.
    pub(super) held: Option<Held>,
    /// A cascade member beside the one whose lease serves its group: its
    /// outcome (as the lease recorded it); sent costing nothing too.
    pub(super) cover: Option<Outcome>,
}

impl Ask {
    /// Whether this instance decides the limit (it is sent costing nothing).
    pub(super) fn local(&self) -> bool {
        self.held.is_some() || self.cover.is_some()
    }
}

/// Units taken from a lease for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Held {
    generation: u64,
    pub(super) index: u64,
    units: u64,
    view: View,
    decided_at: Timestamp,
}

/// The leases of one request: one [`Ask`] a limit, or none at all.
#[derive(Debug, Default)]
pub(super) struct Plan {
    pub(super) asks: Vec<Ask>,
    /// When it was sent, on the leases' clock (nanoseconds).
    sent: u64,
}

/// The other members of a cascade group served from one member's lease:
/// (index in the batch, outcome).
type Covers = Vec<(usize, Outcome)>;

/// One counter's lease (perhaps spent or ended) and its demand here.
#[derive(Debug)]
struct Lease {
    /// The limit it was granted for (capacity, window and cost must match).
    limit: LimitSpec,
    left: u64,
    /// The last instant it may be used, on the leases' clock.
    until: u64,
    index: u64,
    generation: u64,
    /// Units of the counter neither used nor held by this lease when it was
    /// granted: what other requests could still have.
    free: u64,
    reset: Timestamp,
    /// Redis's stamp of the call that granted it, and when that call was
    /// sent (the leases' clock).
    stamp: Timestamp,
    sent: u64,
    /// Requests seen in lifetime number `period`, and in the one before.
    period: u64,
    seen: u64,
    before: u64,
    /// When a lease was asked for, not yet answered (0: none).
    asking: u64,
    /// For a cascade member: every member of its group as the granting
    /// call decided them (this one at `pos`); empty otherwise.
    group: Vec<(LimitSpec, Outcome)>,
    pos: usize,
}

impl Lease {
    fn new(limit: LimitSpec) -> Lease {
        Lease {
            limit,
            left: 0,
            until: 0,
            index: 0,
            generation: 0,
            free: 0,
            reset: Timestamp::EPOCH,
            stamp: Timestamp::EPOCH,
            sent: 0,
            period: 0,
            seen: 0,
            before: 0,
            asking: 0,
            group: Vec::new(),
            pos: 0,
        }
    }

    /// What is left, to give back, leaving it empty.
    fn end(&mut self) -> Option<GiveBack> {
        let units = std::mem::take(&mut self.left);
        (units > 0).then_some(GiveBack {
            limit: self.limit,
            index: self.index,
            units,
        })
    }
}

/// Counts, for the store's accessors and metrics.
#[derive(Debug, Default)]
pub(super) struct LeaseCounts {
    pub(super) taken: AtomicU64,
    pub(super) units_taken: AtomicU64,
    pub(super) served: AtomicU64,
    pub(super) returned: AtomicU64,
    pub(super) stranded: AtomicU64,
}

/// This instance's leases.
#[derive(Debug)]
pub(super) struct Leases {
    /// Lifetime in nanoseconds (0: no leases) and in milliseconds.
    life: u64,
    pub(super) life_ms: u64,
    max_units: u64,
    caller_clock: bool,
    epoch: Instant,
    map: DashMap<(CounterKey, u16), Lease>,
    generations: AtomicU64,
    /// The latest instant the layer passed (caller's clock), for the sweep.
    latest: AtomicU64,
    next_sweep: AtomicU64,
    pub(super) counts: LeaseCounts,
}

/// The cost a limit may take from a lease: request costs only.
fn leasable(l: &LimitSpec) -> Option<u64> {
    match l.charge {
        Charge::Now(n) if n > 0 => Some(n),
        _ => None,
    }
}

/// The ask of limit `j` of a batch of `n` limits (the asks made on first
/// use: a request without leases has none).
fn slot(asks: &mut Vec<Ask>, n: usize, j: usize) -> &mut Ask {
    if asks.is_empty() {
        asks.resize(n, Ask::default());
    }
    &mut asks[j]
}

/// The members of the cascade group of limit `i` of `batch` (`i` alone
/// outside cascades).
fn group_of(batch: &Batch, i: usize) -> std::ops::Range<usize> {
    let Some(g) = batch.limit(i).cascade else {
        return i..i + 1;
    };
    let mut start = i;
    while start > 0 && batch.limit(start - 1).cascade == Some(g) {
        start -= 1;
    }
    let mut end = i + 1;
    while end < batch.len() && batch.limit(end).cascade == Some(g) {
        end += 1;
    }
    start..end
}

fn same(a: &LimitSpec, b: &LimitSpec) -> bool {
    a.capacity == b.capacity && a.window == b.window && a.charge == b.charge
}

#[cfg(feature = "metrics")]
fn count(name: &'static str, n: u64) {
    if n > 0 {
        metrics::counter!(name).increment(n);
    }
}

#[cfg(not(feature = "metrics"))]
fn count(_: &'static str, _: u64) {}

impl Leases {
    pub(super) fn new(life: std::time::Duration, max_units: u64, caller_clock: bool) -> Self {
        let life_ms = u64::try_from(life.as_millis()).unwrap_or(u64::MAX);
        Leases {
            life: life_ms.saturating_mul(1_000_000),
            life_ms,
            max_units,
            caller_clock,
            epoch: Instant::now(),
            map: DashMap::new(),
            generations: AtomicU64::new(1),
            latest: AtomicU64::new(0),
            next_sweep: AtomicU64::new(0),
            counts: LeaseCounts::default(),
        }
    }

    /// Now on the leases' clock: the caller's instant, or this process's
    /// monotonic clock (nanoseconds).
    fn clock(&self, now: Timestamp) -> u64 {
        if self.caller_clock {
            let t = now.as_nanos();
            self.latest.fetch_max(t, Ordering::Relaxed);
            t
        } else {
            self.monotonic()
        }
    }

    fn monotonic(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Serves `batch` from leases when every limit has one with room
    /// (outcomes recorded, `None`); otherwise what the script call must
    /// ask: the units taken from leases for some limits, and leases to
    /// take. Leases that ended are added to `back`.
    pub(super) fn serve(
        &self,
        now: Timestamp,
        batch: &mut Batch,
        back: &mut Vec<GiveBack>,
    ) -> Option<Plan> {
        if self.life == 0 {
            return Some(Plan::default());
        }
        let t = self.clock(now);
        let mut plan = Plan {
            asks: Vec::new(),
            sent: t,
        };
        let mut i = 0;
        while i < batch.len() {
            let g = group_of(batch, i);
            i = g.end;
            if batch.limit(g.start).cascade.is_some() {
                self.visit_group(batch, g, t, back, &mut plan.asks);
                continue;
            }
            let l = *batch.limit(g.start);
            let Some(cost) = leasable(&l) else { continue };
            let ask = self.visit(&l, cost, t, back);
            if ask != Ask::default() {
                *slot(&mut plan.asks, batch.len(), g.start) = ask;
            }
        }
        let local = plan.asks.iter().filter(|a| a.local()).count();
        if local == 0 || local < batch.len() {
            return Some(plan);
        }
        let mut decided_at = None;
        for (i, ask) in plan.asks.iter().enumerate() {
            self.record(batch, i, ask);
            if let Some(h) = ask.held {
                decided_at = decided_at.max(Some(h.decided_at));
            }
        }
        if let Some(at) = decided_at {
            batch.set_decided_at(at);
        }
        self.counts.served.fetch_add(1, Ordering::Relaxed);
        count("tierlimit_lease_decisions_total", 1);
        None
    }

    /// One limit of a request: its demand counted; its cost taken from its
    /// lease if that is in force with room; else a lease asked for when the
    /// demand is high enough and none is being asked for.
    fn visit(&self, l: &LimitSpec, cost: u64, t: u64, back: &mut Vec<GiveBack>) -> Ask {
        let Some(mut entry) = self.entry(l) else {
            return Ask::default();
        };
        let lease = &mut *entry;
        self.note(lease, l, t, back);
        if lease.group.is_empty() {
            if let Some(h) = self.take(lease, l, cost, t) {
                return Ask {
                    held: Some(h),
                    ..Ask::default()
                };
            }
        }
        Ask {
            want: self.want(lease, cost, t),
            ..Ask::default()
        }
    }

    /// The members `g` of a cascade group: their demand counted; the
    /// group served from the lease of its first member whose lease was
    /// granted for this same group and still stands (every member before
    /// it still refusing, as the granting call found them, and the lease
    /// in force with room); else leases asked for every member (the script
    /// grants one to the member it charges).
    fn visit_group(
        &self,
        batch: &Batch,
        g: std::ops::Range<usize>,
        t: u64,
        back: &mut Vec<GiveBack>,
        asks: &mut Vec<Ask>,
    ) {
        if g.clone().any(|j| leasable(batch.limit(j)).is_none()) {
            return;
        }
        // The member whose lease serves, what it took, the others' outcomes.
        let mut chosen: Option<(usize, Held, Covers)> = None;
        for j in g.clone() {
            let l = *batch.limit(j);
            let Some(mut entry) = self.entry(&l) else {
                return;
            };
            let lease = &mut *entry;
            self.note(lease, &l, t, back);
            if chosen.is_some() {
                continue;
            }
            let Some(covers) = self.stands(lease, batch, g.clone(), j, t) else {
                continue;
            };
            if let Some(h) = self.take(lease, &l, leasable(&l).unwrap_or(1), t) {
                chosen = Some((j, h, covers));
            }
        }
        let n = batch.len();
        if let Some((j, h, covers)) = chosen {
            slot(asks, n, j).held = Some(h);
            for (k, o) in covers {
                slot(asks, n, k).cover = Some(o);
            }
            return;
        }
        for j in g {
            let l = *batch.limit(j);
            let want = match self.map.get_mut(&(l.key, l.tag)) {
                Some(mut e) => self.want(&mut e, leasable(&l).unwrap_or(1), t),
                None => 0,
            };
            if want > 0 {
                slot(asks, n, j).want = want;
            }
        }
    }

    /// The outcomes of the other members of group `g` when the lease of
    /// member `j` may serve it: granted for this very group (same members,
    /// `j` at the same place), every member before `j` still refusing at
    /// `t` by what the granting call said (until its retry instant, which
    /// other instances can only push later, but for units given back:
    /// the lease lives one lifetime at most).
    fn stands(
        &self,
        lease: &Lease,
        batch: &Batch,
        g: std::ops::Range<usize>,
        j: usize,
        t: u64,
    ) -> Option<Covers> {
        if lease.group.len() != g.len() || lease.pos != j - g.start {
            return None;
        }
        let now = self.server_now(lease, t);
        let mut covers = Vec::with_capacity(g.len() - 1);
        for (k, (spec, outcome)) in g.zip(&lease.group) {
            if spec != batch.limit(k) {
                return None;
            }
            if k == j {
                continue;
            }
            if k < j {
                match outcome.refusal() {
                    Some(crate::store::Refusal::Full { retry_at }) if retry_at > now => {}
                    Some(crate::store::Refusal::NeverFits) => {}
                    _ => return None,
                }
            }
            covers.push((k, *outcome));
        }
        Some(covers)
    }

    /// Now on Redis's clock, as this instance reckons it from a lease.
    fn server_now(&self, lease: &Lease, t: u64) -> Timestamp {
        if self.caller_clock {
            Timestamp::from_nanos(t)
        } else {
            lease.stamp + std::time::Duration::from_nanos(t.saturating_sub(lease.sent))
        }
    }

    /// The lease of `l` (made when this instance follows fewer than
    /// [`MAX_TRACKED`] counters).
    fn entry(
        &self,
        l: &LimitSpec,
    ) -> Option<dashmap::mapref::one::RefMut<'_, (CounterKey, u16), Lease>> {
        let key = (l.key, l.tag);
        match self.map.get_mut(&key) {
            Some(e) => Some(e),
            None if self.map.len() >= MAX_TRACKED => None,
            None => Some(self.map.entry(key).or_insert_with(|| Lease::new(*l))),
        }
    }

    /// One request's demand counted; a lease that ended (or was granted
    /// for another shape of the limit) given back.
    fn note(&self, lease: &mut Lease, l: &LimitSpec, t: u64, back: &mut Vec<GiveBack>) {
        let period = t / self.life;
        if period != lease.period {
            lease.before = if period == lease.period + 1 {
                lease.seen
            } else {
                0
            };
            lease.seen = 0;
            lease.period = period;
        }
        lease.seen += 1;
        if lease.left > 0 && (!same(&lease.limit, l) || t > lease.until) {
            back.extend(lease.end());
        }
    }

    /// `cost` taken from the lease, when it is for `l` and has it.
    fn take(&self, lease: &mut Lease, l: &LimitSpec, cost: u64, t: u64) -> Option<Held> {
        if !same(&lease.limit, l) || lease.left < cost || t > lease.until {
            return None;
        }
        lease.left -= cost;
        let remaining = lease.free.saturating_add(lease.left);
        Some(Held {
            generation: lease.generation,
            index: lease.index,
            units: cost,
            view: View::new(
                l.capacity,
                l.capacity.saturating_sub(remaining),
                lease.reset,
            ),
            decided_at: self.server_now(lease, t),
        })
    }

    /// Units to ask for (0: none): as much as the last whole lifetime used
    /// (Istio's quota prefetch sizes its reservation so too), when that is
    /// at least [`MIN_DEMAND`] requests and no ask is on the wire.
    fn want(&self, lease: &mut Lease, cost: u64, t: u64) -> u64 {
        if lease.asking != 0 && t.saturating_sub(lease.asking) < ASK_STALE * self.life {
            return 0;
        }
        let demand = lease.before;
        if demand < MIN_DEMAND {
            return 0;
        }
        let want = demand.saturating_mul(cost).min(self.max_units);
        if want < cost {
            return 0;
        }
        lease.asking = t.max(1);
        want
    }

    /// Records the outcome this instance decided for limit `i`.
    fn record(&self, batch: &mut Batch, i: usize, ask: &Ask) {
        if let Some(h) = ask.held {
            let key = batch.limit(i).key;
            batch.record(
                i,
                Outcome::new(h.view, Verdict::Room(Receipt::new(key, h.index))),
            );
        } else if let Some(o) = ask.cover {
            batch.record(i, o);
        }
    }

    /// After the script call for `batch` (decided, `values` its seven
    /// values a limit): the outcomes of limits served from leases
    /// recorded (or their units put back when refused), leases granted
    /// kept, the figures of granted limits made the caller's (what the
    /// lease holds is this instance's). `stamp` is the call's.
    pub(super) fn settle(
        &self,
        batch: &mut Batch,
        plan: &Plan,
        values: &[i64],
        stamp: Timestamp,
        back: &mut Vec<GiveBack>,
    ) {
        if plan.asks.is_empty() {
            return;
        }
        let admitted = batch.admitted();
        for (i, ask) in plan.asks.iter().enumerate() {
            let l = *batch.limit(i);
            if admitted {
                self.record(batch, i, ask);
            } else if let Some(h) = ask.held {
                self.put_back(&l, h, back);
            }
            if ask.want == 0 {
                if ask.held.is_none() && admitted {
                    self.own(batch, i);
                }
                continue;
            }
            let r = &values[7 * i..7 * i + 7];
            let granted = u64::try_from(r[5]).unwrap_or(0);
            let until_ms = u64::try_from(r[6]).unwrap_or(0);
            let Some(mut entry) = self.map.get_mut(&(l.key, l.tag)) else {
                // Forgotten meanwhile: nothing to keep it in.
                if granted > 0 {
                    back.push(GiveBack {
                        limit: l,
                        index: u64::try_from(r[4]).unwrap_or(0),
                        units: granted,
                    });
                }
                continue;
            };
            entry.asking = 0;
            if granted == 0 || !admitted {
                continue;
            }
            let Some(outcome) = batch.outcome(i).copied() else {
                continue;
            };
            let used = outcome.view.used.saturating_sub(granted);
            let view = View::new(outcome.view.capacity, used, outcome.view.reset_at);
            batch.record(i, Outcome::new(view, outcome.verdict));
            let stamp_ms = stamp.as_nanos() / 1_000_000;
            let until = if self.caller_clock {
                until_ms.saturating_mul(1_000_000)
            } else {
                plan.sent
                    .saturating_add(until_ms.saturating_sub(stamp_ms).saturating_mul(1_000_000))
            };
            let lease = &mut *entry;
            back.extend(lease.end());
            lease.limit = l;
            lease.left = granted;
            lease.until = until;
            lease.index = u64::try_from(r[4]).unwrap_or(0);
            lease.generation = self.generations.fetch_add(1, Ordering::Relaxed);
            lease.free = l.capacity.saturating_sub(outcome.view.used);
            lease.reset = outcome.view.reset_at;
            lease.stamp = stamp;
            lease.sent = plan.sent;
            // A cascade member's lease serves its group only as this call
            // decided it (see `stands`).
            lease.group.clear();
            lease.pos = 0;
            if l.cascade.is_some() {
                let g = group_of(batch, i);
                lease.pos = i - g.start;
                for k in g {
                    match batch.outcome(k) {
                        Some(o) => lease.group.push((*batch.limit(k), *o)),
                        None => lease.group.clear(),
                    }
                }
            }
            self.counts.taken.fetch_add(1, Ordering::Relaxed);
            self.counts
                .units_taken
                .fetch_add(granted, Ordering::Relaxed);
            count("tierlimit_leases_taken_total", 1);
            count("tierlimit_lease_units_taken_total", granted);
        }
    }

    /// Limit `i` of `batch`, admitted in Redis while this instance holds a
    /// lease on it: what the lease holds is this instance's (not used),
    /// and the lease learns what the counter now holds besides.
    fn own(&self, batch: &mut Batch, i: usize) {
        let l = *batch.limit(i);
        if leasable(&l).is_none() {
            return;
        }
        let Some(mut e) = self.map.get_mut(&(l.key, l.tag)) else {
            return;
        };
        let Some(outcome) = batch.outcome(i).copied() else {
            return;
        };
        if e.left == 0 || !same(&e.limit, &l) {
            return;
        }
        e.free = e.free.min(l.capacity.saturating_sub(outcome.view.used));
        let used = outcome.view.used.saturating_sub(e.left);
        let view = View::new(outcome.view.capacity, used, outcome.view.reset_at);
        batch.record(i, Outcome::new(view, outcome.verdict));
    }

    /// A request Redis refused, served from this instance's leases if they
    /// hold its cost on every limit (a lease granted in the same call, or
    /// while it was on the wire); whether it was.
    pub(super) fn rescue(
        &self,
        now: Timestamp,
        batch: &mut Batch,
        back: &mut Vec<GiveBack>,
    ) -> bool {
        if self.life == 0 || batch.admitted() {
            return false;
        }
        match self.serve(now, batch, back) {
            None => true,
            Some(plan) => {
                self.abandon(batch, &plan, back);
                false
            }
        }
    }

    /// The script call for `plan` failed or was never made: units taken
    /// from leases go back to them, asks are given up.
    pub(super) fn abandon(&self, batch: &Batch, plan: &Plan, back: &mut Vec<GiveBack>) {
        for (i, ask) in plan.asks.iter().enumerate() {
            let l = *batch.limit(i);
            if let Some(h) = ask.held {
                self.put_back(&l, h, back);
            }
            if ask.want > 0 {
                if let Some(mut e) = self.map.get_mut(&(l.key, l.tag)) {
                    e.asking = 0;
                }
            }
        }
    }

    /// Units of `h` not spent: to their lease if it is the same one, else
    /// back to Redis.
    fn put_back(&self, l: &LimitSpec, h: Held, back: &mut Vec<GiveBack>) {
        if let Some(mut e) = self.map.get_mut(&(l.key, l.tag)) {
            if e.generation == h.generation && e.left + h.units > 0 {
                e.left += h.units;
                return;
            }
        }
        back.push(GiveBack {
            limit: *l,
            index: h.index,
            units: h.units,
        });
    }

    /// Leases that ended (or all of them) given back; counters without
    /// demand for two lifetimes forgotten. At most once a lifetime unless
    /// `all`.
    pub(super) fn sweep(&self, all: bool, back: &mut Vec<GiveBack>) {
        if self.life == 0 || self.map.is_empty() {
            return;
        }
        let t = if self.caller_clock {
            self.latest.load(Ordering::Relaxed)
        } else {
            self.monotonic()
        };
        if !all {
            let next = self.next_sweep.load(Ordering::Relaxed);
            if t < next
                || self
                    .next_sweep
                    .compare_exchange(next, t + self.life, Ordering::AcqRel, Ordering::Relaxed)
                    .is_err()
            {
                return;
            }
        }
        let period = t / self.life;
        self.map.retain(|_, lease| {
            if all || t > lease.until {
                back.extend(lease.end());
            }
            lease.left > 0 || lease.asking != 0 || period <= lease.period + 2
        });
    }

    /// Units given back to Redis, or that could not be.
    pub(super) fn returned(&self, units: u64) {
        self.counts.returned.fetch_add(units, Ordering::Relaxed);
        count("tierlimit_lease_units_returned_total", units);
    }

    pub(super) fn stranded(&self, units: u64) {
        self.counts.stranded.fetch_add(units, Ordering::Relaxed);
        count("tierlimit_lease_units_stranded_total", units);
    }
}
