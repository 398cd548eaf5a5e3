//! Costs known only after the response: latency, tokens, error responses.
//!
//! A [`PostGuard`] is made when a request with post-charged limits is
//! admitted. It travels with the request: in the response future until the
//! inner service answers, then in the response body. It charges **exactly
//! once**, when it is dropped: when the body ends (the guard is dropped at
//! once), when the body is dropped half way (client gone), when the inner
//! service fails, or when the response future itself is dropped.
//!
//! A store that must be awaited to charge hands back a future; the
//! [`PostQueue`] runs it on the tokio runtime, off the request path, with a
//! bounded number in flight. What cannot be run (too many in flight, no
//! runtime) is dropped and counted, and so is a charge the store fails.

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use http::{HeaderMap, StatusCode};

use crate::clock::Timestamp;
use crate::config::Cost;
use crate::observe;
use crate::store::{PostCharge, StoreError};

/// Where post-charges go: the layer's store and clock.
pub(crate) trait PostSink: Send + Sync + 'static {
    fn now(&self) -> Timestamp;
    fn charge(&self, now: Timestamp, charges: Vec<PostCharge>);
}

/// Default bound on post-charge futures in flight.
pub(crate) const DEFAULT_POST_IN_FLIGHT: usize = 10_000;

/// Runs post-charge futures in the background, bounded.
#[derive(Debug)]
pub(crate) struct PostQueue {
    max_in_flight: usize,
    in_flight: Arc<AtomicUsize>,
    dropped: AtomicU64,
    failed: Arc<AtomicU64>,
    /// The runtime of the first request that had to await the store, for
    /// charges made where no runtime is current (a body dropped elsewhere).
    runtime: OnceLock<tokio::runtime::Handle>,
}

impl PostQueue {
    pub(crate) fn new(max_in_flight: usize) -> Self {
        PostQueue {
            max_in_flight: max_in_flight.max(1),
            in_flight: Arc::new(AtomicUsize::new(0)),
            dropped: AtomicU64::new(0),
            failed: Arc::new(AtomicU64::new(0)),
            runtime: OnceLock::new(),
        }
    }

    /// Remembers the current runtime, if any and not done already.
    pub(crate) fn remember_runtime(&self) {
        if self.runtime.get().is_none() {
            if let Ok(h) = tokio::runtime::Handle::try_current() {
                let _ = self.runtime.set(h);
            }
        }
    }

    /// Post-charges dropped so far.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Post-charges the store failed so far.
    pub(crate) fn failures(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// Post-charge futures running now.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub(crate) fn failed(&self, e: &StoreError) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        observe::post_charge_failed();
        #[cfg(feature = "tracing")]
        tracing::debug!(target: "tierlimit", error = %crate::error::Chain(e), "post-charge failed");
        #[cfg(not(feature = "tracing"))]
        let _ = e;
    }

    fn drop_one(&self, why: &'static str) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        observe::post_charge_dropped();
        #[cfg(feature = "tracing")]
        tracing::debug!(target: "tierlimit", why, "post-charge dropped");
        #[cfg(not(feature = "tracing"))]
        let _ = why;
    }

    /// Runs `fut` in the background, or drops it (counted) when too many
    /// are in flight or no runtime can run it.
    pub(crate) fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = Result<(), StoreError>> + Send + 'static,
    {
        let handle = match tokio::runtime::Handle::try_current() {
            Ok(h) => h,
            Err(_) => match self.runtime.get() {
                Some(h) => h.clone(),
                None => return self.drop_one("no tokio runtime"),
            },
        };
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= self.max_in_flight {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return self.drop_one("too many post-charges in flight");
        }
        struct Leave(Arc<AtomicUsize>);
        impl Drop for Leave {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let leave = Leave(Arc::clone(&self.in_flight));
        let failed = Arc::clone(&self.failed);
        handle.spawn(async move {
            let _leave = leave;
            if let Err(e) = fut.await {
                failed.fetch_add(1, Ordering::Relaxed);
                observe::post_charge_failed();
                #[cfg(feature = "tracing")]
                tracing::debug!(target: "tierlimit", error = %crate::error::Chain(&e), "post-charge failed");
                #[cfg(not(feature = "tracing"))]
                let _ = e;
            }
        });
    }
}

/// Charges the post-charged limits of one request when dropped.
pub(crate) struct PostGuard {
    sink: Arc<dyn PostSink>,
    started: Timestamp,
    items: Vec<(PostCharge, Cost)>,
}

impl std::fmt::Debug for PostGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostGuard")
            .field("started", &self.started)
            .field("items", &self.items.len())
            .finish()
    }
}

impl PostGuard {
    pub(crate) fn new(
        sink: Arc<dyn PostSink>,
        started: Timestamp,
        items: Vec<(PostCharge, Cost)>,
    ) -> Self {
        PostGuard {
            sink,
            started,
            items,
        }
    }

    /// Reads tokens and status from the response head.
    pub(crate) fn on_response(&mut self, status: StatusCode, headers: &HeaderMap) {
        for (charge, cost) in &mut self.items {
            match cost {
                Cost::Tokens(header) => {
                    charge.cost = headers
                        .get(header.as_str())
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .unwrap_or(0);
                }
                Cost::ErrorResponses(lo, hi) => {
                    charge.cost = u64::from((*lo..=*hi).contains(&status.as_u16()));
                }
                _ => {}
            }
        }
    }

    /// The inner service failed: counts as a 500 for error responses.
    pub(crate) fn on_error(&mut self) {
        for (charge, cost) in &mut self.items {
            if let Cost::ErrorResponses(lo, hi) = cost {
                charge.cost = u64::from((*lo..=*hi).contains(&500));
            }
        }
    }
}

impl Drop for PostGuard {
    fn drop(&mut self) {
        let now = self.sink.now();
        let elapsed = now.saturating_since(self.started).as_nanos();
        let elapsed_ms = u64::try_from(elapsed.div_ceil(1_000_000)).unwrap_or(u64::MAX);
        let charges: Vec<PostCharge> = self
            .items
            .drain(..)
            .map(|(mut charge, cost)| {
                if cost == Cost::Latency {
                    charge.cost = elapsed_ms;
                }
                charge
            })
            .filter(|c| c.cost > 0)
            .collect();
        if !charges.is_empty() {
            self.sink.charge(now, charges);
        }
    }
}
