//! Redis Cluster: slot numbers, the health of each node's slots, decisions
//! across slots with give-backs, and connecting to the cluster anew.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::clock::Timestamp;
use crate::store::{Batch, CounterKey, LimitSpec, StoreError, StoreErrorKind, Verdict};

use super::connection::{tls, Conn, Target, FAILURES_TO_OPEN, OPEN_FOR};
use super::problem::RedisProblem;
use super::script::fill_one;
use super::Inner;

/// Failures of a group of cluster slots.
#[derive(Debug, Default)]
pub(super) struct Health {
    /// Failures in a row.
    pub(super) failures: AtomicU32,
    /// Milliseconds since `epoch` until which its circuit is open.
    pub(super) open_until: AtomicU64,
    /// Milliseconds since `epoch` (+1) of its first failure in a row; 0
    /// while it succeeds.
    pub(super) failing_since: AtomicU64,
}

/// Slots in a cluster, and in one group of [`Health`].
pub(super) const SLOTS: u16 = 16_384;

pub(super) const GROUP_SLOTS: u16 = 128;

/// A group failing this long (every call in a row) gets the cluster
/// connection made anew, at most once per [`REBUILD_EVERY`].
pub(super) const REBUILD_AFTER: Duration = Duration::from_millis(1_000);

pub(super) const REBUILD_EVERY: Duration = Duration::from_millis(1_000);

/// A limit's charge given back to the bucket it was charged in.
#[derive(Clone, Copy, Debug)]
pub(super) struct GiveBack {
    pub(super) limit: LimitSpec,
    pub(super) index: u64,
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

/// A cluster client whose connection gives up as the store does: each
/// attempt and each answer within `timeout`, few retries close together
/// (redis-rs's defaults retry 16 times, waiting up to minutes between
/// tries: requests then pile up behind a dead master long after its
/// replica took over).
pub(super) fn cluster_client<'a>(
    nodes: impl Iterator<Item = &'a str>,
    timeout: Duration,
    certs: tls::Certificates,
) -> redis::RedisResult<redis::cluster::ClusterClient> {
    let b = redis::cluster::ClusterClientBuilder::new(nodes.collect::<Vec<_>>())
        .connection_timeout(timeout)
        .response_timeout(timeout)
        .retries(2)
        .min_retry_wait(10)
        .max_retry_wait(100);
    #[cfg(feature = "redis-tls")]
    let b = match certs {
        Some(certs) => b.certs(certs),
        None => b,
    };
    #[cfg(not(feature = "redis-tls"))]
    let _ = certs;
    b.build()
}

impl Inner {
    /// The health of the group of cluster slots holding `slot`.
    pub(super) fn group(&self, slot: u16) -> &Health {
        &self.groups[usize::from(slot / GROUP_SLOTS)]
    }

    /// Whether the circuit of any of these cluster slots is open.
    pub(super) fn slots_open(&self, slots: &[u16]) -> bool {
        let now = self.millis();
        slots
            .iter()
            .any(|&s| now < self.group(s).open_until.load(Ordering::Relaxed))
    }

    /// Books a cluster call to `slot`: its group's circuit, and when the
    /// group has failed for [`REBUILD_AFTER`], a new connection.
    pub(super) fn slot_result(&self, slot: u16, ok: bool) {
        let g = self.group(slot);
        if ok {
            self.watch.answering();
            g.failures.store(0, Ordering::Relaxed);
            g.open_until.store(0, Ordering::Relaxed);
            g.failing_since.store(0, Ordering::Relaxed);
            return;
        }
        let now = self.millis();
        let _ = g
            .failing_since
            .compare_exchange(0, now + 1, Ordering::Relaxed, Ordering::Relaxed);
        if g.failures.fetch_add(1, Ordering::Relaxed) + 1 >= FAILURES_TO_OPEN {
            g.open_until
                .store(now + OPEN_FOR.as_millis() as u64, Ordering::Relaxed);
        }
        let since = g.failing_since.load(Ordering::Relaxed);
        if since != 0 && now + 1 >= since + REBUILD_AFTER.as_millis() as u64 {
            self.rebuild();
        }
    }

    /// Makes a new cluster connection in the background (at most one at a
    /// time, one per [`REBUILD_EVERY`]) and uses it from then on; the old
    /// one is dropped with the requests it still held. redis-rs's cluster
    /// connection can stop routing a failed master's slots to its promoted
    /// replica when many requests were in flight at the crash; a new
    /// connection reads the topology afresh.
    pub(super) fn rebuild(&self) {
        let Target::Cluster(client) = &self.target else {
            return;
        };
        let now = self.millis();
        let last = self.rebuilt_at.load(Ordering::Relaxed);
        if last != 0 && now < last + REBUILD_EVERY.as_millis() as u64 {
            return;
        }
        if self.rebuilding.swap(true, Ordering::AcqRel) {
            return;
        }
        self.rebuilt_at.store(now.max(1), Ordering::Relaxed);
        let (Ok(rt), Some(me)) = (tokio::runtime::Handle::try_current(), self.me()) else {
            self.rebuilding.store(false, Ordering::Release);
            return;
        };
        let client = client.clone();
        rt.spawn(async move {
            let made = tokio::time::timeout(
                me.timeout.max(Duration::from_millis(500)) * 4,
                client.get_async_connection(),
            )
            .await;
            match made {
                Ok(Ok(conn)) => {
                    me.live.store(Some(Arc::new(Conn::Cluster(conn))));
                    me.rebuilds.fetch_add(1, Ordering::Relaxed);
                    // Every group gets its chance on the new connection.
                    for g in me.groups.iter() {
                        g.open_until.store(0, Ordering::Relaxed);
                        g.failing_since.store(0, Ordering::Relaxed);
                    }
                    #[cfg(feature = "tracing")]
                    tracing::warn!(
                        target: "tierlimit",
                        "Redis Cluster: some slots failed for a second in a row; \
                         connected to the cluster anew"
                    );
                }
                Ok(Err(e)) => me
                    .watch
                    .trouble(RedisProblem::of(&e), "connecting to the cluster anew"),
                Err(_) => {
                    #[cfg(feature = "tracing")]
                    tracing::warn!(
                        target: "tierlimit",
                        "Redis Cluster: connecting anew timed out; trying again shortly"
                    );
                }
            }
            me.rebuilding.store(false, Ordering::Release);
        });
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
            let call = self.call(conn, Some(now), &[&sub], &charges, &[]);
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
            });
            o.view.used = o.view.used.saturating_sub(l.charge_cost());
            sub.record(i, o);
        }
        let slot = back.first().and_then(|g| self.slot_of(g.limit.key));
        let call = self.call(conn, Some(now), &[], &[], &back);
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
