//! Redis Cluster: slot numbers, and decisions across slots with
//! give-backs (the nodes themselves: [`nodes`](super::nodes)).

use std::sync::Arc;

use crate::clock::Timestamp;
use crate::store::{Batch, CounterKey, StoreError, StoreErrorKind, Verdict};

use super::charges::group_by;
use super::connection::{Conn, Target};
use super::script::fill_one;
use super::GiveBack;
use super::Inner;

pub(super) use super::nodes::SLOTS;

impl Inner {
    /// Whether the master of any of these slots is failing (its breaker
    /// open).
    pub(super) fn slots_open(&self, slots: &[u16]) -> bool {
        match &self.target {
            Target::Cluster(nodes) => nodes.failing(slots),
            _ => false,
        }
    }

    pub(super) fn is_cluster(&self) -> bool {
        matches!(self.target, Target::Cluster(_))
    }

    /// The slot number of counters `key` on a cluster; `None` on a single
    /// server.
    pub(super) fn slot_of(&self, key: CounterKey) -> Option<u16> {
        self.is_cluster().then(|| self.slot_number(key))
    }

    /// The number of the cluster slot of counters `key` (what redis-rs's
    /// `Slot::for_key` computes: CRC16 of the hash tag, mod 16 384).
    pub(super) fn slot_number(&self, key: CounterKey) -> u16 {
        let tag = format!("{:032x}", key.as_u128());
        crc16::State::<crc16::XMODEM>::calculate(tag.as_bytes()) % SLOTS
    }

    /// Decides a batch whose limits live in several slots of a cluster: one
    /// script per slot, sent at once; when some slot refuses, what the
    /// others charged is given back. A give-back can make a concurrent
    /// request wait, never admit too much.
    pub(super) async fn decide_across_slots(
        self: &Arc<Self>,
        conn: &Conn,
        now: Timestamp,
        mut batch: Batch,
        slots: Vec<u16>,
    ) -> Result<Batch, StoreError> {
        let parts = group_by(0..slots.len(), |&i| slots[i]);
        // A cascade is decided in one script: its members must share a slot.
        for i in 1..batch.len() {
            let (a, b) = (batch.limit(i - 1).cascade, batch.limit(i).cascade);
            if a.is_some() && a == b && slots[i - 1] != slots[i] {
                return Err(StoreError::new(
                    StoreErrorKind::Protocol,
                    "a cascade's limits live in different cluster slots (give them one scope)",
                ));
            }
        }
        let mut calls = Vec::new();
        for (slot, idx) in &parts {
            let sub = Batch::from_limits(idx.iter().map(|&i| *batch.limit(i)));
            let charges = self.take_pending_in(Some(*slot));
            let call = self.call(conn, Some(now), &[&sub], &[], &charges, &[]);
            calls.push((sub, charges, tokio::spawn(call)));
        }
        let mut decided = Vec::new();
        let mut failure = None;
        for (mut sub, charges, handle) in calls {
            let res = match handle.await {
                Ok(r) => self.finish_call(r, charges, self.slot_of(sub.limit(0).key)),
                Err(e) => Err(StoreError::new(StoreErrorKind::Protocol, e)),
            };
            match res.and_then(|v| fill_one(&mut sub, &v)) {
                Ok(()) => decided.push(sub),
                Err(e) => {
                    failure.get_or_insert(e);
                    decided.push(Batch::default());
                }
            }
        }
        let admitted = failure.is_none() && decided.iter().all(Batch::admitted);
        if !admitted {
            // Give back what admitted slots charged.
            for sub in decided.iter_mut().filter(|b| !b.is_empty() && b.admitted()) {
                self.refund(conn, now, sub).await;
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        let mut at = None;
        for ((_, idx), sub) in parts.iter().zip(&decided) {
            for (j, &i) in idx.iter().enumerate() {
                if let Some(o) = sub.outcome(j) {
                    batch.record(i, *o);
                }
            }
            at = at.max(sub.decided_at());
        }
        if let Some(t) = at {
            batch.set_decided_at(t);
        }
        Ok(batch)
    }

    /// Gives back the charges of an admitted sub-batch (one script call,
    /// to the buckets they were charged in), and shows its counters as they
    /// stand after.
    pub(super) async fn refund(&self, conn: &Conn, now: Timestamp, sub: &mut Batch) {
        let mut back = Vec::new();
        for i in 0..sub.len() {
            let l = *sub.limit(i);
            let Some(mut o) = sub.outcome(i).copied() else {
                continue;
            };
            let Verdict::Room(r) = o.verdict else {
                continue;
            };
            if l.charge_cost() == 0 {
                continue;
            }
            back.push(GiveBack {
                limit: l,
                index: r.data(),
                units: l.charge_cost(),
            });
            o.view.used = o.view.used.saturating_sub(l.charge_cost());
            sub.record(i, o);
        }
        let slot = back.first().and_then(|g| self.slot_of(g.limit.key));
        let call = self.call(conn, Some(now), &[], &[], &[], &back);
        if self.finish_call(call.await, Vec::new(), slot).is_err() {
            #[cfg(feature = "tracing")]
            tracing::warn!(target: "tierlimit", "a refund across cluster slots failed");
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn slot_numbers_are_redis_rs_slots() {
        let store = crate::store::redis::RedisStore::new(
            crate::store::redis::RedisStoreConfig::cluster(["redis://127.0.0.1:1"]).prefix("p"),
        )
        .unwrap();
        for k in [
            0u128,
            1,
            42,
            u128::MAX,
            0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835,
        ] {
            let key = crate::store::CounterKey::from_u128(k);
            let ours = store.inner.slot_number(key);
            let theirs = redis::cluster_routing::Slot::for_key(store.redis_key(key));
            assert_eq!(format!("Slot({ours})"), format!("{theirs:?}"), "{k}");
        }
    }
}
