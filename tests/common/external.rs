//! A store written from the crate's public items alone, sharing no code with
//! the memory store: every counter is a log of charges summed per bucket
//! index with the bucket's latest stamp, and the [`WindowSpec`] helpers say
//! when each bucket stops counting.
//! Both decisions and post-charges are answered at once (the awaited store
//! covers answers that come later).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use tierlimit::clock::Timestamp;
use tierlimit::store::{
    Answer, Batch, CounterKey, Outcome, PostCharge, Receipt, Refusal, Store, StoreError, Verdict,
    View, WindowSpec,
};

/// Charges summed by bucket index: (latest stamp, cost).
type Log = BTreeMap<u64, (Timestamp, u64)>;

/// Counters as logs of charges, by (key, tag).
#[derive(Clone, Debug, Default)]
pub struct LogStore {
    logs: Arc<Mutex<HashMap<(CounterKey, u16), Log>>>,
}

/// The buckets of `log` still counted at `now`, as (forget instant, cost):
/// a bucket's cost stops counting at the helper's answer for the latest
/// stamp charged to it.
fn live(log: &Log, w: &WindowSpec, now: Timestamp) -> Vec<(Timestamp, u64)> {
    log.iter()
        .map(|(idx, (last, c))| (w.forget_at(*idx, *last), *c))
        .filter(|(f, _)| *f > now)
        .collect()
}

/// Charges `cost` at `now` (a forgotten bucket is dropped whole first: no
/// later charge lands in it).
fn charge(log: &mut Log, w: &WindowSpec, now: Timestamp, cost: u64) {
    log.retain(|idx, (last, _)| w.forget_at(*idx, *last) > now);
    let stamp = w.stamp(now);
    let bucket = log.entry(w.index(now)).or_insert((stamp, 0));
    bucket.0 = bucket.0.max(stamp);
    bucket.1 += cost;
}

fn view(log: &Log, w: &WindowSpec, capacity: u64, now: Timestamp) -> View {
    let live = live(log, w, now);
    let reset = live.iter().map(|(f, _)| *f).max().unwrap_or(w.stamp(now));
    // The oldest counted bucket leaves first.
    let frees = live.iter().map(|(f, _)| *f).min().filter(|f| *f < reset);
    View::new(capacity, live.iter().map(|(_, c)| c).sum(), reset).with_frees_at(frees)
}

/// Whether `need` more units fit, and if not, when they will.
fn fits(
    log: &Log,
    w: &WindowSpec,
    capacity: u64,
    now: Timestamp,
    need: u64,
) -> Result<(), Refusal> {
    if need > capacity {
        return Err(Refusal::NeverFits);
    }
    let mut live = live(log, w, now);
    let used: u64 = live.iter().map(|(_, c)| c).sum();
    if used + need <= capacity {
        return Ok(());
    }
    live.sort_unstable();
    let mut freed = 0;
    for (at, cost) in live {
        freed += cost;
        if freed >= used + need - capacity {
            return Err(Refusal::Full { retry_at: at });
        }
    }
    unreachable!("the live entries add up to `used`")
}

impl Store for LogStore {
    type Decide = std::future::Ready<Result<Batch, StoreError>>;
    type Charge = std::future::Ready<Result<(), StoreError>>;

    fn decide(&self, now: Timestamp, mut batch: Batch) -> Answer<Batch, Self::Decide> {
        let mut logs = self.logs.lock().unwrap();
        let empty = Log::new();
        // Figures are measured from the decision's stamp.
        let stamp = batch.limits().next().map(|l| l.window.stamp(now));
        if let Some(stamp) = stamp {
            batch.set_decided_at(stamp);
        }
        // First every verdict, charging nothing.
        let mut i = 0;
        while i < batch.len() {
            let group = batch.limit(i).cascade;
            let end = match group {
                None => i + 1,
                Some(g) => (i..batch.len())
                    .find(|&j| batch.limit(j).cascade != Some(g))
                    .unwrap_or(batch.len()),
            };
            let mut taken = false;
            for j in i..end {
                let l = *batch.limit(j);
                let log = logs.get(&(l.key, l.tag)).unwrap_or(&empty);
                let v = view(log, &l.window, l.capacity, now);
                let verdict = if taken {
                    Verdict::Passed
                } else {
                    match fits(log, &l.window, l.capacity, now, l.check_cost()) {
                        Ok(()) => {
                            taken = group.is_some();
                            Verdict::Room(Receipt::new(l.key, l.window.index(now)))
                        }
                        Err(r) => Verdict::Refused(r),
                    }
                };
                batch.record(j, Outcome::new(v, verdict));
            }
            i = end;
        }
        // Then all or nothing.
        if batch.admitted() {
            for j in 0..batch.len() {
                let l = *batch.limit(j);
                let Some(Verdict::Room(_)) = batch.outcome(j).map(|o| o.verdict) else {
                    continue;
                };
                if l.charge_cost() == 0 {
                    continue;
                }
                let log = logs.entry((l.key, l.tag)).or_default();
                charge(log, &l.window, now, l.charge_cost());
                let o = *batch.outcome(j).unwrap();
                batch.record(
                    j,
                    Outcome::new(view(log, &l.window, l.capacity, now), o.verdict),
                );
            }
        }
        Answer::Now(Ok(batch))
    }

    fn charge_after(&self, now: Timestamp, charges: Vec<PostCharge>) -> Answer<(), Self::Charge> {
        let mut logs = self.logs.lock().unwrap();
        for c in charges {
            // The receipt names the counter the store charged at admission
            // (and, here, the bucket).
            let log = logs.entry((c.receipt.key(), c.limit.tag)).or_default();
            if c.give_back {
                // Units held for a request that ended: out of their bucket,
                // which keeps its stamp; a bucket gone holds nothing.
                if let Some(bucket) = log.get_mut(&c.receipt.data()) {
                    bucket.1 = bucket.1.saturating_sub(c.cost);
                }
                continue;
            }
            charge(log, &c.limit.window, now, c.cost);
        }
        Answer::Now(Ok(()))
    }
}
