//! Plan sharing: each layer whose store offers a [`SharedHash`] (the Redis
//! store does) shares its runtime plan assignments
//! ([`Controller::set_plan`](crate::Controller::set_plan)) with every
//! instance through it. The layer owns this component; the store only
//! gives the hash.
//!
//! A change made here is written at once (on the next tick) and every
//! assignment is read four times a second, so a change is in force
//! everywhere within a second, and a new or restarted instance starts with
//! them. Every write also sets a marker field that no removal deletes:
//! when the hash is found gone after it was seen (`FLUSHALL`, a restart
//! without persistence, eviction), the layer writes back the assignments
//! it knows and logs that at WARN, instead of forgetting them. Any number
//! of layers may share one store: each has its own table and its own
//! component.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::plans::{PlanTable, SharedPlans};
use crate::store::{SharedHash, StoreError};

/// How often the assignments are written and read.
const EVERY: Duration = Duration::from_millis(250);

/// A field every write sets, and no removal deletes: a hash seen with it
/// and then found without it was emptied by Redis, not by an instance
/// clearing its last assignment.
pub(crate) const MARK: &str = "!tierlimit";

/// One layer's plan sharing.
#[derive(Debug)]
pub(crate) struct PlanSharing {
    table: Weak<PlanTable>,
    hash: Arc<dyn SharedHash>,
    /// Changes made here, waiting to be written.
    writes: Mutex<Vec<(String, Option<String>)>>,
    /// Whether the hash was seen with its marker.
    seen: AtomicBool,
    started: AtomicBool,
}

impl PlanSharing {
    /// Shares `plans` through `hash`: changes made here are queued for the
    /// next write. The task starts with [`PlanSharing::start`].
    pub(crate) fn new(plans: &SharedPlans, hash: Arc<dyn SharedHash>) -> Arc<PlanSharing> {
        let sharing = Arc::new(PlanSharing {
            table: Arc::downgrade(&plans.0),
            hash,
            writes: Mutex::new(Vec::new()),
            seen: AtomicBool::new(false),
            started: AtomicBool::new(false),
        });
        let weak = Arc::downgrade(&sharing);
        plans.on_change(move |key, plan| {
            if let Some(s) = weak.upgrade() {
                if let Ok(mut w) = s.writes.lock() {
                    w.push((key.to_owned(), plan.map(str::to_owned)));
                }
            }
        });
        sharing
    }

    /// Starts the task that shares the assignments, once, on the current
    /// tokio runtime (a later call tries again when there was none). It
    /// ends when the layer is dropped.
    pub(crate) fn start(self: &Arc<Self>) {
        if self.started.load(Ordering::Relaxed) || self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.started.store(false, Ordering::Release);
            return;
        };
        let me = Arc::clone(self);
        rt.spawn(async move {
            let mut tick = tokio::time::interval(EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(table) = me.table.upgrade() else {
                    return;
                };
                if let Err(e) = me.sync(&SharedPlans(table)).await {
                    #[cfg(feature = "tracing")]
                    tracing::debug!(target: "tierlimit", error = %crate::error::Chain(&e), "plan assignments not shared");
                    #[cfg(not(feature = "tracing"))]
                    let _ = e;
                }
            }
        });
    }

    /// Writes the changes made here, then reads every assignment.
    pub(crate) async fn sync(&self, plans: &SharedPlans) -> Result<(), StoreError> {
        let writes = self
            .writes
            .lock()
            .map(|mut w| std::mem::take(&mut *w))
            .unwrap_or_default();
        if !writes.is_empty() {
            let mut all = vec![(MARK.to_owned(), Some("1".to_owned()))];
            all.extend(writes.iter().cloned());
            if let Err(e) = self.hash.write(all).await {
                if let Ok(mut w) = self.writes.lock() {
                    let mut back = writes;
                    back.append(&mut w);
                    *w = back;
                }
                return Err(e);
            }
        }
        let mut all = self.hash.read().await?;
        if all.remove(MARK).is_some() {
            self.seen.store(true, Ordering::Relaxed);
        } else if self.seen.load(Ordering::Relaxed) {
            // The hash was lost: write back what this layer knows rather
            // than forget it everywhere.
            return self.reassert(plans).await;
        }
        plans.replace(all);
        Ok(())
    }

    /// Writes every assignment this layer knows back to the hash, which was
    /// lost, and says so.
    async fn reassert(&self, plans: &SharedPlans) -> Result<(), StoreError> {
        let known: HashMap<String, String> = plans.all().into_iter().collect();
        let mut all = vec![(MARK.to_owned(), Some("1".to_owned()))];
        all.extend(known.iter().map(|(k, p)| (k.clone(), Some(p.clone()))));
        let written = self.hash.write(all).await;
        #[cfg(feature = "tracing")]
        tracing::warn!(
            target: "tierlimit",
            hash = %self.hash.name(),
            written_back = known.len(),
            "the runtime plan assignments vanished from the shared store (FLUSHALL, a restart \
             without persistence, or eviction); this instance wrote back the ones it knows. \
             Rate-limit counters were most likely lost too: every caller's budget started again"
        );
        written
    }
}
