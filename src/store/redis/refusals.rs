//! Refusals answered locally until they can have room (see
//! [refusals](super#refusals-answered-locally)).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::clock::Timestamp;
use crate::store::{Batch, Outcome};

use super::charges::FLUSH_EVERY;
use super::{Inner, TimeSource};

/// Most refusals cached at once.
pub(super) const MAX_CACHED_REFUSALS: usize = 100_000;

/// A refused batch, remembered until it can have room.
#[derive(Clone, Debug)]
pub(super) struct Refused {
    /// When the refusal may end: on this process's monotonic clock (server
    /// time), or on the caller's clock.
    pub(super) until: Instant,
    pub(super) until_caller: Timestamp,
    /// When Redis decided, on its clock, and when that answer came.
    pub(super) decided_at: Timestamp,
    pub(super) answered: Instant,
    pub(super) outcomes: Vec<Outcome>,
}

/// A hash of what a batch asks: every limit's counter, tag, capacity and
/// units to check. Equal questions get equal answers from equal counters
/// (the key of the refusal cache).
pub(super) fn question(batch: &Batch) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for l in batch.limits() {
        (l.key, l.tag, l.capacity, l.check_cost(), l.cascade).hash(&mut h);
    }
    h.finish()
}

impl Inner {
    /// The cached refusal of `batch`'s shape, filled in, if still in force.
    pub(super) fn cached_refusal(
        &self,
        key: u64,
        caller_now: Timestamp,
        batch: &mut Batch,
    ) -> bool {
        let Some(r) = self.refusals.get(&key) else {
            return false;
        };
        let now = Instant::now();
        let over = match self.time {
            TimeSource::Caller => caller_now >= r.until_caller,
            _ => now >= r.until,
        };
        if over || r.outcomes.len() != batch.len() {
            drop(r);
            self.refusals.remove(&key);
            return false;
        }
        for (i, o) in r.outcomes.iter().enumerate() {
            batch.record(i, *o);
        }
        // "Now" on the clock Redis decided by: its decision plus the time since.
        batch.set_decided_at(match self.time {
            TimeSource::Caller => caller_now,
            _ => r.decided_at + now.saturating_duration_since(r.answered),
        });
        self.refusals_served.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!("tierlimit_refusals_cached_total").increment(1);
        true
    }

    /// Remembers a refused batch until it can have room: other instances
    /// can only add cost, so nothing can have room before that, except
    /// units of leases given back: with leases, at most one lease
    /// lifetime (and the flusher's period), when every lease that held
    /// units of the counters then has ended and given them back.
    pub(super) fn remember_refusal(&self, key: u64, batch: &Batch) {
        let (Some(retry_at), Some(decided_at)) = (batch.retry_at(), batch.decided_at()) else {
            return;
        };
        // Units held for requests in flight come back whenever they end.
        if batch
            .limits()
            .any(|l| matches!(l.charge, crate::store::Charge::Held(_)))
        {
            return;
        }
        let retry_at = match self.leases.life_ms {
            0 => retry_at,
            ms => retry_at.min(decided_at + Duration::from_millis(ms) + FLUSH_EVERY),
        };
        if self.refusals.len() >= MAX_CACHED_REFUSALS {
            let now = Instant::now();
            self.refusals.retain(|_, r| r.until > now);
            if self.refusals.len() >= MAX_CACHED_REFUSALS {
                return;
            }
        }
        let answered = Instant::now();
        let outcomes = (0..batch.len())
            .filter_map(|i| batch.outcome(i).copied())
            .collect();
        self.refusals.insert(
            key,
            Refused {
                until: answered + retry_at.saturating_since(decided_at),
                until_caller: retry_at,
                decided_at,
                answered,
                outcomes,
            },
        );
    }
}
