//! The engine's log lines: anonymous requests (once), and each admitted or
//! rejected request at DEBUG (shadow-mode rejections at INFO), with a short
//! keyed hash of the caller, never its key.

use std::sync::atomic::Ordering;

use super::Engine;
use crate::observe;
use crate::policy::Rules;
use crate::reject::Rejection;
use crate::store::{Batch, Store};

impl<St: Store> Engine<St> {
    /// Counts a request that nothing identifies (once per request: the
    /// fallback store looks the request up again without this), and says
    /// once at WARN why such requests happen and how to avoid them.
    pub(super) fn report_anonymous(&self, policy: &Rules) {
        let choice = policy.anonymous;
        observe::anonymous(choice);
        if !self.warned_anonymous.load(Ordering::Relaxed)
            && !self.warned_anonymous.swap(true, Ordering::Relaxed)
        {
            #[cfg(feature = "tracing")]
            tracing::warn!(
                target: "tierlimit",
                anonymous = ?choice,
                "a request with no API key, no user and no client address: such requests {}. \
                 Serve with connect info (axum: `app.into_make_service_with_connect_info::<SocketAddr>()`) \
                 or insert `tierlimit::identity::ClientAddr` so that each client counts alone, \
                 or set `identity.anonymous` to `refuse`",
                match choice {
                    crate::config::Anonymous::Refuse => "are refused with 401",
                    _ => "all share one budget",
                }
            );
        }
    }
}

/// Rejections are logged at DEBUG: under abuse an INFO line per 429 would
/// turn every rejected request into a log write (the metrics count them
/// all). Would-be rejections in shadow mode are logged at INFO, since seeing
/// them is the point of shadow mode.
#[cfg(feature = "tracing")]
pub(super) fn trace_rejected(r: &Rejection, shadow: bool, caller: impl FnOnce() -> String) {
    macro_rules! event {
        ($level:expr, $msg:literal) => {
            tracing::event!(
                target: "tierlimit",
                $level,
                caller = %caller(),
                tier = %r.tier,
                limit = %r.limit,
                capacity = r.capacity,
                remaining = r.remaining,
                retry_after = r.retry_after_secs(),
                $msg
            )
        };
    }
    if shadow {
        event!(
            tracing::Level::INFO,
            "rate limit exceeded (shadow mode: not enforced)"
        );
    } else {
        event!(tracing::Level::DEBUG, "rate limit exceeded");
    }
}

#[cfg(not(feature = "tracing"))]
pub(super) fn trace_rejected(_: &Rejection, _: bool, _: impl FnOnce() -> String) {}

#[cfg(feature = "tracing")]
pub(super) fn trace_admitted(policy: &Rules, batch: &Batch) {
    if tracing::enabled!(target: "tierlimit", tracing::Level::DEBUG) {
        for i in 0..batch.len() {
            let (Some(o), l) = (
                batch.outcome(i),
                &policy.limits[batch.limit(i).label as usize],
            ) else {
                continue;
            };
            tracing::debug!(
                target: "tierlimit",
                tier = %l.tier,
                limit = %l.name,
                capacity = o.view.capacity,
                remaining = o.view.remaining(),
                "rate limit remaining"
            );
        }
    }
}

#[cfg(not(feature = "tracing"))]
pub(super) fn trace_admitted(_: &Rules, _: &Batch) {}
