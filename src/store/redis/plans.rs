//! Runtime plan assignments shared through the hash `PREFIX:plans`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::store::{SharedPlans, StoreError, StoreErrorKind};

use super::connection::Conn;
use super::{unavailable, Inner};

pub(super) const PLANS_EVERY: Duration = Duration::from_millis(250);

/// A field every write of the plans hash sets, and no removal deletes: a
/// hash seen with it and then found without it was emptied by Redis
/// (`FLUSHALL`, a restart without persistence, eviction), not by an
/// instance clearing its last assignment.
pub(super) const PLANS_MARK: &str = "!tierlimit";

impl Inner {
    /// The plan tables of the layers still alive.
    pub(super) fn attached(&self) -> Vec<SharedPlans> {
        let mut tables = self
            .plans
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        tables.retain(|t| t.strong_count() > 0);
        tables
            .iter()
            .filter_map(|t| t.upgrade().map(SharedPlans))
            .collect()
    }

    pub(super) fn plans_key(&self) -> String {
        format!("{}:plans", self.prefix)
    }

    /// Starts the task that shares plan assignments (once a layer gave
    /// them): it writes the changes made here, then reads every assignment,
    /// four times a second.
    pub(super) fn start_plan_sync(self: &Arc<Self>) {
        if self.attached().is_empty() {
            return;
        }
        self.every(&self.plan_sync, PLANS_EVERY, |inner| async move {
            if let Err(e) = inner.sync_plans().await {
                #[cfg(feature = "tracing")]
                tracing::debug!(target: "tierlimit", error = %crate::error::Chain(&e), "plan assignments not shared");
                #[cfg(not(feature = "tracing"))]
                let _ = e;
            }
        });
    }

    pub(super) async fn sync_plans(&self) -> Result<(), StoreError> {
        let tables = self.attached();
        if tables.is_empty() {
            return Ok(());
        }
        if self.circuit_open() {
            return Err(unavailable("Redis failed repeatedly; retrying shortly"));
        }
        let mut conn = self.connection().await?;
        let key = self.plans_key();
        let writes = self
            .plan_writes
            .lock()
            .map(|mut w| std::mem::take(&mut *w))
            .unwrap_or_default();
        if !writes.is_empty() {
            let mut pipe = redis::pipe();
            pipe.cmd("HSET").arg(&key).arg(PLANS_MARK).arg(1).ignore();
            for (k, plan) in &writes {
                match plan {
                    Some(p) => pipe.cmd("HSET").arg(&key).arg(k).arg(p).ignore(),
                    None => pipe.cmd("HDEL").arg(&key).arg(k).ignore(),
                };
            }
            let sent = tokio::time::timeout(self.timeout, pipe.query_async::<()>(&mut conn)).await;
            if !matches!(sent, Ok(Ok(()))) {
                if let Ok(mut w) = self.plan_writes.lock() {
                    let mut back = writes;
                    back.append(&mut w);
                    *w = back;
                }
                return Err(unavailable("plan assignments not written"));
            }
        }
        let mut hgetall = redis::cmd("HGETALL");
        hgetall.arg(&key);
        let read = hgetall.query_async::<HashMap<String, String>>(&mut conn);
        match tokio::time::timeout(self.timeout, read).await {
            Ok(Ok(mut all)) => {
                let marked = all.remove(PLANS_MARK).is_some();
                if marked {
                    self.plans_seen.store(true, Ordering::Relaxed);
                } else if self.plans_seen.load(Ordering::Relaxed) {
                    // Redis lost the hash: write back what this instance
                    // knows rather than forget it everywhere.
                    return self.reassert_plans(&tables, &mut conn, &key).await;
                }
                for table in &tables {
                    table.replace(all.clone());
                }
                Ok(())
            }
            Ok(Err(e)) => Err(StoreError::new(StoreErrorKind::Unavailable, e)),
            Err(e) => Err(StoreError::new(StoreErrorKind::Timeout, e)),
        }
    }

    /// Writes every assignment this instance knows back to the plans hash,
    /// which Redis lost, and says so.
    pub(super) async fn reassert_plans(
        &self,
        tables: &[SharedPlans],
        conn: &mut Conn,
        key: &str,
    ) -> Result<(), StoreError> {
        // What the layers here know (one value per subject).
        let known: HashMap<String, String> = tables.iter().flat_map(SharedPlans::all).collect();
        let mut pipe = redis::pipe();
        pipe.cmd("HSET").arg(key).arg(PLANS_MARK).arg(1).ignore();
        for (k, plan) in &known {
            pipe.cmd("HSET").arg(key).arg(k).arg(plan).ignore();
        }
        let sent = tokio::time::timeout(self.timeout, pipe.query_async::<()>(conn)).await;
        #[cfg(feature = "tracing")]
        tracing::warn!(
            target: "tierlimit",
            key,
            written_back = known.len(),
            "the runtime plan assignments vanished from Redis (FLUSHALL, a restart without \
             persistence, or eviction); this instance wrote back the ones it knows. Rate-limit \
             counters were most likely lost too: every caller's budget started again"
        );
        match sent {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StoreError::new(StoreErrorKind::Unavailable, e)),
            Err(e) => Err(StoreError::new(StoreErrorKind::Timeout, e)),
        }
    }
}
