//! Post-charges (costs measured after responses) waiting in this instance
//! until a decision carries them or the flusher sends them.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::clock::Timestamp;
use crate::store::{PostCharge, Receipt};

use super::GiveBack;
use super::Inner;

pub(super) const FLUSH_EVERY: Duration = Duration::from_millis(10);

/// A post-charge waiting to be sent, with when it was measured: on the
/// caller's clock, and on this process's monotonic clock (so that on the
/// server's clock it lands that long before the server's "now"). With
/// `back`, it is unused units of a lease instead, given back to the bucket
/// of that index.
#[derive(Clone, Copy, Debug)]
pub(super) struct QueuedCharge {
    pub(super) charge: PostCharge,
    pub(super) at: Timestamp,
    pub(super) queued: Instant,
    pub(super) back: Option<u64>,
}

impl QueuedCharge {
    /// Units of a lease given back (not those of a request in flight).
    pub(super) fn is_lease_unit(&self) -> bool {
        self.back.is_some() && !self.charge.give_back
    }

    /// Lease units given back.
    fn back(b: GiveBack) -> QueuedCharge {
        QueuedCharge {
            charge: PostCharge::new(b.limit, Receipt::new(b.limit.key, b.index), b.units),
            at: Timestamp::EPOCH,
            queued: Instant::now(),
            back: Some(b.index),
        }
    }
}

/// `items` grouped by `key`, groups in order of first appearance.
pub(super) fn group_by<T, K: PartialEq>(
    items: impl IntoIterator<Item = T>,
    key: impl Fn(&T) -> K,
) -> Vec<(K, Vec<T>)> {
    let mut groups: Vec<(K, Vec<T>)> = Vec::new();
    for item in items {
        let k = key(&item);
        match groups.iter_mut().find(|(g, _)| *g == k) {
            Some((_, v)) => v.push(item),
            None => groups.push((k, vec![item])),
        }
    }
    groups
}

impl Inner {
    /// Starts the task that sends waiting post-charges when no decision
    /// carries them.
    pub(super) fn start_flusher(self: &Arc<Self>) {
        self.every(&self.flusher, FLUSH_EVERY, |inner| async move {
            if inner.circuit_open() {
                return;
            }
            let Some(conn) = inner.current() else {
                return;
            };
            let mut back = Vec::new();
            inner.leases.sweep(false, &mut back);
            inner.give_back(back);
            // One call per slot (a cluster takes one slot per script).
            let all = inner.take_pending();
            for charges in inner.by_slot(all) {
                let slot = charges
                    .first()
                    .and_then(|w| inner.slot_of(w.charge.receipt.key()));
                let call = inner.call(&conn, None, &[], &[], &charges, &[]);
                let _ = inner.finish_call(call.await, charges, slot);
            }
        });
    }

    /// Queues unused lease units to be given back (with the next call, or
    /// the flusher's within 10 ms).
    pub(super) fn give_back(&self, back: Vec<GiveBack>) {
        if back.is_empty() {
            return;
        }
        let mut lost = 0;
        match self.pending.lock() {
            Ok(mut p) => {
                for b in back {
                    if p.len() < self.max_pending {
                        p.push(QueuedCharge::back(b));
                    } else {
                        lost += b.units;
                    }
                }
            }
            Err(_) => lost = back.iter().map(|b| b.units).sum(),
        }
        self.leases.stranded(lost);
    }

    pub(super) fn take_pending(&self) -> Vec<QueuedCharge> {
        self.pending
            .lock()
            .map(|mut p| std::mem::take(&mut *p))
            .unwrap_or_default()
    }

    /// The waiting charges of `slot` (all of them on a single server).
    pub(super) fn take_pending_in(&self, slot: Option<u16>) -> Vec<QueuedCharge> {
        let (Some(slot), true) = (slot, self.is_cluster()) else {
            return self.take_pending();
        };
        let Ok(mut p) = self.pending.lock() else {
            return Vec::new();
        };
        let (mine, rest): (Vec<QueuedCharge>, Vec<QueuedCharge>) = std::mem::take(&mut *p)
            .into_iter()
            .partition(|w| self.slot_number(w.charge.receipt.key()) == slot);
        *p = rest;
        mine
    }

    /// Charges grouped by slot (one group on a single server, none when no
    /// charge waits).
    pub(super) fn by_slot(&self, charges: Vec<QueuedCharge>) -> Vec<Vec<QueuedCharge>> {
        if charges.is_empty() {
            // Nothing waits: no call at all (the flusher ticks every 10 ms).
            return Vec::new();
        }
        if !self.is_cluster() {
            return vec![charges];
        }
        group_by(charges, |w| self.slot_number(w.charge.receipt.key()))
            .into_iter()
            .map(|(_, v)| v)
            .collect()
    }

    /// Puts charges back at the front of the queue (bounded).
    pub(super) fn requeue(&self, charges: Vec<QueuedCharge>) {
        if let Ok(mut p) = self.pending.lock() {
            let room = self.max_pending.saturating_sub(p.len());
            let lost = charges.len().saturating_sub(room);
            self.dropped.fetch_add(lost as u64, Ordering::Relaxed);
            let stranded = charges.iter().skip(room).filter(|w| w.is_lease_unit());
            self.leases.stranded(stranded.map(|w| w.charge.cost).sum());
            let mut back: Vec<QueuedCharge> = charges.into_iter().take(room).collect();
            back.append(&mut p);
            *p = back;
        }
    }
}
