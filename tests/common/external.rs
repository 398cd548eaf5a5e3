//! A store written from the crate's public items alone, sharing no code with
//! the memory store: every counter is an exact log of (bucket index, cost)
//! charges, and the [`WindowSpec`] helpers say when each stops counting.
//! Both decisions and post-charges are answered at once (the awaited store
//! covers answers that come later).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tierlimit::clock::Timestamp;
use tierlimit::store::{
    Answer, Batch, CounterKey, Outcome, PostCharge, Receipt, Refusal, Store, StoreError, Verdict,
    View, WindowSpec,
};

type Log = Vec<(u64, u64)>;

/// Counters as logs of (bucket index, cost), by (key, tag).
#[derive(Clone, Debug, Default)]
pub struct LogStore {
    logs: Arc<Mutex<HashMap<(CounterKey, u16), Log>>>,
}

/// Cost of `log` still counted at `now`.
fn counted(log: &Log, w: &WindowSpec, now: Timestamp) -> u64 {
    log.iter()
        .filter(|(idx, _)| w.forget_at(*idx) > now)
        .map(|(_, c)| c)
        .sum()
}

fn view(log: &Log, w: &WindowSpec, capacity: u64, now: Timestamp) -> View {
    let live = log.iter().filter(|(idx, _)| w.forget_at(*idx) > now);
    let reset = live.map(|(idx, _)| w.forget_at(*idx)).max().unwrap_or(now);
    View::new(capacity, counted(log, w, now), reset)
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
    let used = counted(log, w, now);
    if used + need <= capacity {
        return Ok(());
    }
    let mut live: Vec<(u64, u64)> = log
        .iter()
        .copied()
        .filter(|(idx, _)| w.forget_at(*idx) > now)
        .collect();
    live.sort_unstable();
    let mut freed = 0;
    for (idx, cost) in live {
        freed += cost;
        if freed >= used + need - capacity {
            return Err(Refusal::Full {
                retry_at: w.forget_at(idx),
            });
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
                log.push((l.window.index(now), l.charge_cost()));
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
            // The receipt names the counter the store charged at admission.
            logs.entry((c.receipt.key(), c.limit.tag))
                .or_default()
                .push((c.limit.window.index(now), c.cost));
        }
        Answer::Now(Ok(()))
    }
}
