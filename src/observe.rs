//! Metrics (feature `metrics`), through the `metrics` facade: install a
//! recorder (e.g. `metrics-exporter-prometheus`) and these appear.
//!
//! | metric | kind | labels |
//! | --- | --- | --- |
//! | `tierlimit_admitted_total` | counter | `tier`, `limit`: every limit that took the charge |
//! | `tierlimit_rejected_total` | counter | `tier`, `limit`: the limit `Retry-After` waits for |
//! | `tierlimit_shadow_rejected_total` | counter | `tier`, `limit`: would-be rejections in shadow mode |
//! | `tierlimit_exempt_total` | counter | none |
//! | `tierlimit_decision_seconds` | histogram | none: time to decide (policy lookup and store) |
//!
//! Labels are tier and limit names from the configuration, never identities:
//! API keys appear nowhere. Counter handles are registered the first time a
//! limit is used, with the recorder installed at that moment.

use crate::policy::Policy;
use crate::store::Batch;

#[cfg(feature = "metrics")]
mod on {
    use std::sync::OnceLock;
    use std::time::Instant;

    use metrics::{Counter, Histogram};

    use crate::policy::Policy;
    use crate::store::Batch;

    /// The counters of one limit.
    #[derive(Clone, Debug)]
    pub(crate) struct LimitCounters {
        admitted: Counter,
        rejected: Counter,
        shadow: Counter,
    }

    impl LimitCounters {
        fn new(tier: &str, limit: &str) -> Self {
            let labels = [("tier", tier.to_owned()), ("limit", limit.to_owned())];
            LimitCounters {
                admitted: metrics::counter!("tierlimit_admitted_total", &labels),
                rejected: metrics::counter!("tierlimit_rejected_total", &labels),
                shadow: metrics::counter!("tierlimit_shadow_rejected_total", &labels),
            }
        }
    }

    fn counters(policy: &Policy, meta: u32) -> Option<&LimitCounters> {
        let l = policy.limits.get(meta as usize)?;
        Some(
            l.counters
                .get_or_init(|| LimitCounters::new(&l.tier, &l.name)),
        )
    }

    pub(crate) fn admitted(policy: &Policy, batch: &Batch) {
        for s in batch.slots.iter().filter(|s| s.chosen) {
            if let Some(c) = counters(policy, s.meta) {
                c.admitted.increment(1);
            }
        }
    }

    pub(crate) fn rejected(policy: &Policy, meta: u32, shadow: bool) {
        if let Some(c) = counters(policy, meta) {
            if shadow {
                c.shadow.increment(1);
            } else {
                c.rejected.increment(1);
            }
        }
    }

    pub(crate) fn exempt() {
        static EXEMPT: OnceLock<Counter> = OnceLock::new();
        EXEMPT
            .get_or_init(|| metrics::counter!("tierlimit_exempt_total"))
            .increment(1);
    }

    pub(crate) type Start = Instant;

    pub(crate) fn start() -> Start {
        Instant::now()
    }

    pub(crate) fn decided(started: Start) {
        static DECISION: OnceLock<Histogram> = OnceLock::new();
        DECISION
            .get_or_init(|| metrics::histogram!("tierlimit_decision_seconds"))
            .record(started.elapsed().as_secs_f64());
    }
}

#[cfg(feature = "metrics")]
pub(crate) use on::LimitCounters;

/// Per-limit counters (nothing without the `metrics` feature).
#[cfg(not(feature = "metrics"))]
#[derive(Clone, Debug)]
pub(crate) struct LimitCounters;

pub(crate) fn admitted(policy: &Policy, batch: &Batch) {
    #[cfg(feature = "metrics")]
    on::admitted(policy, batch);
    #[cfg(not(feature = "metrics"))]
    let _ = (policy, batch);
}

pub(crate) fn rejected(policy: &Policy, meta: u32, shadow: bool) {
    #[cfg(feature = "metrics")]
    on::rejected(policy, meta, shadow);
    #[cfg(not(feature = "metrics"))]
    let _ = (policy, meta, shadow);
}

pub(crate) fn exempt() {
    #[cfg(feature = "metrics")]
    on::exempt();
}

#[cfg(feature = "metrics")]
pub(crate) fn start() -> on::Start {
    on::start()
}

/// Nothing to time without the `metrics` feature.
#[cfg(not(feature = "metrics"))]
#[derive(Clone, Copy, Debug)]
pub(crate) struct NotTimed;

#[cfg(not(feature = "metrics"))]
pub(crate) fn start() -> NotTimed {
    NotTimed
}

#[cfg(feature = "metrics")]
pub(crate) fn decided(started: on::Start) {
    on::decided(started);
}

#[cfg(not(feature = "metrics"))]
pub(crate) fn decided(_: NotTimed) {}
