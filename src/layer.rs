//! The [`RateLimitLayer`]: holds the shared state (policy, store, clock,
//! rejection hook) behind one `Arc`, so every service it makes — and every
//! clone of those — shares one budget.

use std::sync::Arc;

use bytes::Bytes;
use http::Response;
use tower_layer::Layer;

use crate::clock::{Clock, SystemClock};
use crate::future::Next;
use crate::headers;
use crate::policy::Policy;
use crate::reject::{self, Hook, OnReject, Rejection};
use crate::service::RateLimit;
use crate::store::{Batch, MemoryStore, MemoryStoreConfig, Store, StoreError};
use crate::window::Refusal;

/// State shared by every clone of the layer and its services.
#[derive(Debug)]
pub(crate) struct Shared<St> {
    pub(crate) policy: Arc<Policy>,
    pub(crate) store: St,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) hook: Option<Hook>,
}

impl<St: Store> Shared<St> {
    /// Turns a store's answer into what the service does next.
    ///
    /// A store error fails open: the request is forwarded without rate-limit
    /// headers (the memory store never fails; remote stores get a configurable
    /// behaviour with their own issue).
    pub(crate) fn next(&self, now: u64, decided: Result<Batch, StoreError>) -> Next {
        let Ok(batch) = decided else {
            return Next::Forward(None);
        };
        let report = headers::pick(&batch);
        if batch.admitted {
            return Next::Forward(report);
        }
        let policy = &*self.policy;
        if let Some(slot) = batch
            .slots
            .iter()
            .find(|s| s.refusal == Some(Refusal::NeverFits))
        {
            let limit = &policy.limits[slot.meta as usize];
            return Next::Answer(reject::never_fits(&limit.name, slot.cost, slot.capacity));
        }
        let retry_at = batch.retry_at().unwrap_or(now);
        let retry_after = headers::ceil_secs(retry_at.saturating_sub(now)).max(1);
        let Some(report) = report else {
            return Next::Answer(reject::internal_error());
        };
        let slot = &batch.slots[report.slot];
        let limit = &policy.limits[slot.meta as usize];
        let rejection = Rejection {
            tier: limit.tier.clone(),
            limit: limit.name.clone(),
            capacity: report.limit,
            remaining: report.remaining,
            window: limit.window,
            retry_after,
            reset: report.reset,
        };
        let mut resp: Response<Bytes> =
            reject::response(policy.errors, self.hook.as_ref(), &rejection);
        headers::apply(policy.headers, &report, resp.headers_mut());
        Next::Answer(resp)
    }
}

/// Applies a rate-limit [`Policy`] to a service.
///
/// ```
/// use std::time::Duration;
/// use tierlimit::config::{Config, Limit, Tier};
/// use tierlimit::RateLimitLayer;
///
/// let policy = Config::new()
///     .tier("api", Tier::new().limit(Limit::sliding("per-minute", 60, Duration::from_secs(60))))
///     .default_tier("api")
///     .build()
///     .unwrap();
/// let layer = RateLimitLayer::new(policy);
/// # let _ = layer;
/// ```
#[derive(Debug)]
pub struct RateLimitLayer<St = MemoryStore> {
    shared: Arc<Shared<St>>,
}

impl<St> Clone for RateLimitLayer<St> {
    fn clone(&self) -> Self {
        RateLimitLayer {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl RateLimitLayer<MemoryStore> {
    /// A layer enforcing `policy` with a memory store (capped at the
    /// policy's `store.max_keys`) and the system clock.
    pub fn new(policy: Policy) -> Self {
        let store = MemoryStore::new(MemoryStoreConfig::default().max_keys(policy.max_keys));
        RateLimitLayer {
            shared: Arc::new(Shared {
                policy: Arc::new(policy),
                store,
                clock: Arc::new(SystemClock),
                hook: None,
            }),
        }
    }
}

impl<St: Store + Clone> RateLimitLayer<St> {
    fn rebuild<St2>(self, f: impl FnOnce(Shared<St>) -> Shared<St2>) -> RateLimitLayer<St2> {
        let shared = match Arc::try_unwrap(self.shared) {
            Ok(s) => s,
            Err(arc) => Shared {
                policy: Arc::clone(&arc.policy),
                store: arc.store.clone(),
                clock: Arc::clone(&arc.clock),
                hook: arc.hook.clone(),
            },
        };
        RateLimitLayer {
            shared: Arc::new(f(shared)),
        }
    }

    /// Uses `clock` for time (a [`ManualClock`](crate::clock::ManualClock) in
    /// tests). Call before the layer makes services: services made earlier
    /// keep the old clock.
    pub fn with_clock(self, clock: impl Clock) -> Self {
        self.rebuild(|s| Shared {
            clock: Arc::new(clock),
            ..s
        })
    }

    /// Uses `store` for counters.
    pub fn with_store<St2: Store>(self, store: St2) -> RateLimitLayer<St2> {
        self.rebuild(|s| Shared {
            policy: s.policy,
            store,
            clock: s.clock,
            hook: s.hook,
        })
    }

    /// Builds 429 responses with `hook` instead of the configured format.
    /// `Retry-After` and the rate-limit headers are still added when the
    /// hook leaves them out.
    pub fn on_reject(self, hook: impl OnReject) -> Self {
        self.rebuild(|s| Shared {
            hook: Some(Hook(Arc::new(hook))),
            ..s
        })
    }

    /// The policy, e.g. to change a caller's plan with
    /// [`Policy::set_plan`].
    pub fn policy(&self) -> &Arc<Policy> {
        &self.shared.policy
    }

    /// The store.
    pub fn store(&self) -> &St {
        &self.shared.store
    }
}

impl<S, St> Layer<S> for RateLimitLayer<St> {
    type Service = RateLimit<S, St>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit::new(inner, Arc::clone(&self.shared))
    }
}
