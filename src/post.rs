//! Costs known only after the response: latency, tokens, error responses.
//!
//! A [`PostGuard`] is made when a request with post-charged limits is
//! admitted. It travels with the request: in the response future until the
//! inner service answers, then in the response body. It charges **exactly
//! once**, when it is dropped: when the body ends (the guard is dropped at
//! once), when the body is dropped half way (client gone), when the inner
//! service fails, or when the response future itself is dropped.

use std::sync::Arc;

use http::{HeaderMap, StatusCode};

use crate::config::Cost;
use crate::store::PostCharge;

/// Where post-charges go: the layer's store and clock.
pub(crate) trait PostSink: Send + Sync + 'static {
    fn now(&self) -> u64;
    fn charge(&self, now: u64, charges: Vec<PostCharge>);
}

/// Charges the post-charged limits of one request when dropped.
pub(crate) struct PostGuard {
    sink: Arc<dyn PostSink>,
    started: u64,
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
        started: u64,
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
        let elapsed_ms = now.saturating_sub(self.started).div_ceil(1_000_000);
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
