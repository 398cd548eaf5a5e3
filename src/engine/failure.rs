//! What the engine does when its store cannot decide: the failure mode
//! ([`OnStoreError`]: open, closed, or a local fallback store), and logging
//! the failure without turning an outage into a log line per request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http::request::Parts;

use super::{answer, Action, Active, Engine, Forwarding, Lookup};
use crate::clock::Timestamp;
use crate::config::OnStoreError;
use crate::observe;
use crate::reject;
use crate::store::{Store, StoreError};

/// When the last store-error line was written, and the errors since.
#[derive(Debug, Default)]
pub(super) struct ErrorLog {
    /// Unix second of the last line.
    last: AtomicU64,
    /// Errors not logged since that line.
    unlogged: AtomicU64,
}

impl<St: Store> Engine<St> {
    /// A store error: counted, logged (rate-limited), then the failure mode.
    pub(super) fn store_failed(
        self: &Arc<Self>,
        active: &Active,
        parts: &Parts,
        now: Timestamp,
        e: &StoreError,
    ) -> Action {
        observe::store_error(e.kind(), self.on_error.label());
        self.log_store_error(e);
        match self.on_error {
            OnStoreError::Closed { retry_after } => {
                answer(parts, reject::store_unavailable(retry_after))
            }
            OnStoreError::Fallback => {
                let batch = match self.batch_of(&active.policy.rules, parts, false) {
                    Lookup::Check { batch, .. } => Some(batch),
                    _ => None,
                };
                let local = self.fallback.as_ref().zip(batch);
                let Some((store, batch)) = local else {
                    return Action::Forward(Forwarding::default());
                };
                let decided = store.decide_now(now, batch);
                self.next(active, parts, (now, decided.len()), Ok(decided), None)
            }
            _ => Action::Forward(Forwarding::default()),
        }
    }

    /// Logs store errors at WARN, at most one line every 10 seconds (with
    /// the number of errors since the last line): an outage must not turn
    /// every request into a log write.
    fn log_store_error(&self, e: &StoreError) {
        let now_s = self.clock.now().as_nanos() / 1_000_000_000;
        let last = self.error_log.last.load(Ordering::Relaxed);
        if now_s < last + 10
            || self
                .error_log
                .last
                .compare_exchange(last, now_s, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            self.error_log.unlogged.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let skipped = self.error_log.unlogged.swap(0, Ordering::Relaxed);
        #[cfg(feature = "tracing")]
        tracing::warn!(
            target: "tierlimit",
            error = %crate::error::Chain(e),
            on_error = self.on_error.label(),
            errors_since_last_log = skipped,
            "rate-limit store failed"
        );
        #[cfg(not(feature = "tracing"))]
        let _ = (e, skipped);
    }
}
