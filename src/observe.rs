//! Metrics (feature `metrics`), through the `metrics` facade: install a
//! recorder (e.g. `metrics-exporter-prometheus`) and they appear. The crate
//! docs' "Metrics" table is the one list of them (names, labels, what each
//! counts); this module counts the layer's, `store::memory` and
//! `store::redis` count theirs, and `client` the client layer's.
//!
//! Labels are tier and limit names from the configuration, never identities:
//! API keys appear nowhere. The handles of a policy's limits live next to
//! the policy in the engine (never in the immutable policy itself), are
//! registered the first time a limit is used, and are replaced with the
//! policy on reload.

use crate::store::{Batch, StoreErrorKind};

#[cfg(feature = "metrics")]
mod on {
    use std::sync::OnceLock;

    use metrics::{Counter, Histogram};

    /// The counters of one limit.
    #[derive(Clone, Debug)]
    pub(super) struct LimitCounters {
        pub(super) admitted: Counter,
        pub(super) rejected: Counter,
        pub(super) shadow: Counter,
    }

    impl LimitCounters {
        pub(super) fn new(tier: &str, limit: &str) -> Self {
            let labels = [("tier", tier.to_owned()), ("limit", limit.to_owned())];
            LimitCounters {
                admitted: metrics::counter!("tierlimit_admitted_total", &labels),
                rejected: metrics::counter!("tierlimit_rejected_total", &labels),
                shadow: metrics::counter!("tierlimit_shadow_rejected_total", &labels),
            }
        }
    }

    pub(super) fn counter(
        cell: &'static OnceLock<Counter>,
        make: fn() -> Counter,
    ) -> &'static Counter {
        cell.get_or_init(make)
    }

    /// A raw reading of the CPU's timestamp counter: a decision is timed
    /// with two of them, a few ns each (`Instant::now` is a
    /// `clock_gettime`, tens of ns).
    pub(super) type Start = u64;

    pub(super) fn start() -> Start {
        crate::clock::raw_ticks()
    }

    pub(super) fn decided(started: Start) {
        static DECISION: OnceLock<Histogram> = OnceLock::new();
        let nanos = crate::clock::elapsed_nanos(started);
        DECISION
            .get_or_init(|| metrics::histogram!("tierlimit_decision_seconds"))
            .record(nanos as f64 / 1e9);
    }
}

/// The metric handles of one policy's limits, indexed by limit label.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    #[cfg(feature = "metrics")]
    limits: Vec<(String, String, std::sync::OnceLock<on::LimitCounters>)>,
}

impl Counters {
    /// Handles for limits named (tier, limit), in label order.
    pub(crate) fn new<'a>(names: impl Iterator<Item = (&'a str, &'a str)>) -> Self {
        #[cfg(feature = "metrics")]
        {
            Counters {
                limits: names
                    .map(|(t, l)| (t.to_owned(), l.to_owned(), std::sync::OnceLock::new()))
                    .collect(),
            }
        }
        #[cfg(not(feature = "metrics"))]
        {
            let _ = names;
            Counters {}
        }
    }

    #[cfg(feature = "metrics")]
    fn of(&self, label: u32) -> Option<&on::LimitCounters> {
        let (tier, limit, cell) = self.limits.get(label as usize)?;
        Some(cell.get_or_init(|| on::LimitCounters::new(tier, limit)))
    }

    /// Every limit that took the charge of an admitted batch.
    pub(crate) fn admitted(&self, batch: &Batch) {
        #[cfg(feature = "metrics")]
        for (limit, outcome) in batch.entries() {
            if outcome.is_some_and(|o| o.has_room()) {
                if let Some(c) = self.of(limit.label) {
                    c.admitted.increment(1);
                }
            }
        }
        #[cfg(not(feature = "metrics"))]
        let _ = batch;
    }

    /// The limit a rejection waits for.
    pub(crate) fn rejected(&self, label: u32, shadow: bool) {
        #[cfg(feature = "metrics")]
        if let Some(c) = self.of(label) {
            if shadow {
                c.shadow.increment(1);
            } else {
                c.rejected.increment(1);
            }
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (label, shadow);
    }
}

/// Adds one to the counter `$name` (no labels), registered once.
macro_rules! bump {
    ($name:literal) => {{
        #[cfg(feature = "metrics")]
        {
            static C: std::sync::OnceLock<metrics::Counter> = std::sync::OnceLock::new();
            on::counter(&C, || metrics::counter!($name)).increment(1);
        }
    }};
}

pub(crate) fn exempt() {
    bump!("tierlimit_exempt_total");
}

/// A request whose plan hook named no plan of the policy.
pub(crate) fn unknown_plan() {
    bump!("tierlimit_unknown_plans_total");
}

/// A request that nothing identifies, and what it got.
pub(crate) fn anonymous(choice: crate::config::Anonymous) {
    #[cfg(feature = "metrics")]
    {
        static SHARE: std::sync::OnceLock<metrics::Counter> = std::sync::OnceLock::new();
        static REFUSE: std::sync::OnceLock<metrics::Counter> = std::sync::OnceLock::new();
        match choice {
            crate::config::Anonymous::Refuse => on::counter(
                &REFUSE,
                || metrics::counter!("tierlimit_anonymous_total", "action" => "refuse"),
            ),
            _ => on::counter(
                &SHARE,
                || metrics::counter!("tierlimit_anonymous_total", "action" => "share"),
            ),
        }
        .increment(1);
    }
    #[cfg(not(feature = "metrics"))]
    let _ = choice;
}

/// A store error, and what the layer did about it (`open` or `closed`).
pub(crate) fn store_error(kind: StoreErrorKind, on_error: &'static str) {
    #[cfg(feature = "metrics")]
    {
        let kind = match kind {
            StoreErrorKind::Unavailable => "unavailable",
            StoreErrorKind::Timeout => "timeout",
            _ => "protocol",
        };
        metrics::counter!("tierlimit_store_errors_total", "kind" => kind, "on_error" => on_error)
            .increment(1);
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (kind, on_error);
}

/// A request started (`true`) or stopped (`false`) waiting for room
/// (`delay_up_to`): `tierlimit_delayed_total` counts starts, the gauge
/// `tierlimit_waiting` those waiting now.
pub(crate) fn delayed(started: bool) {
    #[cfg(feature = "metrics")]
    {
        static WAITING: std::sync::OnceLock<metrics::Gauge> = std::sync::OnceLock::new();
        let gauge = WAITING.get_or_init(|| metrics::gauge!("tierlimit_waiting"));
        if started {
            bump!("tierlimit_delayed_total");
            gauge.increment(1.0);
        } else {
            gauge.decrement(1.0);
        }
    }
    #[cfg(not(feature = "metrics"))]
    let _ = started;
}

/// A block started (`block_for`) on limit `limit` of tier `tier`.
pub(crate) fn block_started(tier: &str, limit: &str) {
    #[cfg(feature = "metrics")]
    metrics::counter!(
        "tierlimit_blocks_started_total",
        "tier" => tier.to_owned(),
        "limit" => limit.to_owned()
    )
    .increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = (tier, limit);
}

pub(crate) fn post_charge_dropped() {
    bump!("tierlimit_post_charges_dropped_total");
}

pub(crate) fn post_charge_failed() {
    bump!("tierlimit_post_charge_errors_total");
}

/// When a decision started (nothing without the `metrics` feature).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Start(#[cfg(feature = "metrics")] on::Start);

pub(crate) fn start() -> Start {
    #[cfg(feature = "metrics")]
    {
        Start(on::start())
    }
    #[cfg(not(feature = "metrics"))]
    {
        Start()
    }
}

pub(crate) fn decided(started: Start) {
    #[cfg(feature = "metrics")]
    on::decided(started.0);
    #[cfg(not(feature = "metrics"))]
    let _ = started;
}
