//! The [`RateLimitLayer`]: holds the shared state (policy, store, clock,
//! rejection hook) behind one `Arc`, so every service it makes — and every
//! clone of those — shares one budget.

use std::sync::Arc;

use arc_swap::ArcSwap;

use bytes::Bytes;
use http::Response;
use tower_layer::Layer;

use crate::clock::{Clock, SystemClock};
use crate::config::Mode;
use crate::future::{Forwarding, Next};
use crate::headers::{self, LimitInfo, Rendered};
use crate::policy::Policy;
use crate::post::{PostGuard, PostSink};
use crate::reject::{self, Hook, OnReject, Rejection};
use crate::service::RateLimit;
use crate::store::{Batch, MemoryStore, MemoryStoreConfig, PostCharge, Store, StoreError};
use crate::window::Refusal;

/// State shared by every clone of the layer and its services.
#[derive(Debug)]
pub(crate) struct Shared<St> {
    pub(crate) policy: ArcSwap<Policy>,
    pub(crate) store: St,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) hook: Option<Hook>,
}

/// A request was over a limit while the layer ran in shadow mode: it was
/// forwarded anyway. Found in the response's extensions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShadowRejection(pub Rejection);

impl<St: Store> PostSink for Shared<St> {
    fn now(&self) -> u64 {
        self.clock.now_nanos()
    }

    fn charge(&self, now: u64, charges: Vec<PostCharge>) {
        self.store.charge_after(now, charges);
    }
}

impl<St: Store> Shared<St> {
    /// The rejection of a refused batch, given the slot `Retry-After` waits
    /// for and the instant it has room.
    fn rejection(
        policy: &Policy,
        batch: &Batch,
        blocking: usize,
        retry_at: u64,
        now: u64,
    ) -> Option<Rejection> {
        let slot = &batch.slots[blocking];
        let view = slot.view?;
        let limit = &policy.limits[slot.meta as usize];
        Some(Rejection {
            tier: limit.tier.clone(),
            limit: limit.name.clone(),
            capacity: view.capacity,
            remaining: view.remaining(),
            window: limit.window,
            retry_after: headers::ceil_secs(retry_at.saturating_sub(now)).max(1),
            reset: headers::ceil_secs(view.reset_at),
            family: limit.family,
            at_ms: now / 1_000_000,
        })
    }

    fn render(policy: &Policy, batch: &Batch, now: u64) -> Rendered {
        let limits = &policy.limits;
        headers::render(policy.headers, batch, now, |i| {
            let l = &limits[batch.slots[i].meta as usize];
            LimitInfo {
                name: &l.name,
                window_secs: l.window.as_secs() + u64::from(l.window.subsec_nanos() > 0),
                unit: l.cost.unit(),
                family: l.family,
            }
        })
    }

    /// Turns a store's answer into what the service does next.
    ///
    /// A store error fails open: the request is forwarded without rate-limit
    /// headers (the memory store never fails; remote stores get a configurable
    /// behaviour with their own issue).
    ///
    /// `caller` gives a short keyed hash of the caller for logs (never the
    /// raw key); it is only called on rejections.
    pub(crate) fn next(
        self: &Arc<Self>,
        policy: &Policy,
        now: u64,
        decided: Result<Batch, StoreError>,
        caller: impl FnOnce() -> String,
    ) -> Next {
        let Ok(batch) = decided else {
            return Next::Forward(Forwarding::default());
        };
        let rendered = Self::render(policy, &batch, now);
        if batch.admitted {
            trace_admitted(policy, &batch);
            crate::observe::admitted(policy, &batch);
            let post: Vec<_> = batch
                .slots
                .iter()
                .filter(|s| s.post)
                .filter_map(|s| {
                    let key = s.charged_key()?;
                    let limit = &policy.limits[s.meta as usize];
                    let charge = PostCharge {
                        key,
                        tag: s.tag,
                        spec: s.spec,
                        cost: 0,
                    };
                    Some((charge, limit.cost.clone()))
                })
                .collect();
            let guard = (!post.is_empty()).then(|| {
                let sink: Arc<dyn PostSink> = self.clone();
                PostGuard::new(sink, now, post)
            });
            return Next::Forward(Forwarding {
                rendered,
                guard,
                shadow: None,
            });
        }
        let Some(blocking) = batch.blocking_slot() else {
            return Next::Answer(reject::internal_error());
        };
        // No instant at which every blocking group has room: a cost that can
        // never fit (a modifier shrank a capacity below it).
        let Some(retry_at) = batch.retry_at() else {
            let slot = batch
                .slots
                .iter()
                .find(|s| s.refusal == Some(Refusal::NeverFits))
                .unwrap_or(&batch.slots[blocking]);
            let limit = &policy.limits[slot.meta as usize];
            return Next::Answer(reject::never_fits(&limit.name, slot.cost, slot.capacity));
        };
        let Some(rejection) = Self::rejection(policy, &batch, blocking, retry_at, now) else {
            return Next::Answer(reject::internal_error());
        };
        let shadow = policy.mode == Mode::Shadow;
        crate::observe::rejected(policy, batch.slots[blocking].meta, shadow);
        trace_rejected(&rejection, shadow, caller);
        if policy.mode == Mode::Shadow {
            return Next::Forward(Forwarding {
                rendered,
                guard: None,
                shadow: Some(Box::new(rejection)),
            });
        }
        let mut resp: Response<Bytes> =
            reject::response(policy.errors, self.hook.as_ref(), &rejection);
        headers::apply(&rendered, resp.headers_mut());
        Next::Answer(resp)
    }
}

/// Rejections are logged at DEBUG: under abuse an INFO line per 429 would
/// turn every rejected request into a log write (the metrics count them
/// all). Would-be rejections in shadow mode are logged at INFO, since seeing
/// them is the point of shadow mode.
#[cfg(feature = "tracing")]
fn trace_rejected(r: &Rejection, shadow: bool, caller: impl FnOnce() -> String) {
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
                retry_after = r.retry_after,
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
fn trace_rejected(_: &Rejection, _: bool, _: impl FnOnce() -> String) {}

#[cfg(feature = "tracing")]
fn trace_admitted(policy: &Policy, batch: &Batch) {
    if tracing::enabled!(target: "tierlimit", tracing::Level::DEBUG) {
        for s in &batch.slots {
            let (Some(v), l) = (s.view, &policy.limits[s.meta as usize]) else {
                continue;
            };
            tracing::debug!(
                target: "tierlimit",
                tier = %l.tier,
                limit = %l.name,
                capacity = v.capacity,
                remaining = v.remaining(),
                "rate limit remaining"
            );
        }
    }
}

#[cfg(not(feature = "tracing"))]
fn trace_admitted(_: &Policy, _: &Batch) {}

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
///
/// # Runtime reconfiguration
///
/// [`RateLimitLayer::reload`] swaps the whole policy atomically (an
/// `ArcSwap`: requests read it without a lock, and a request in flight
/// finishes with the policy it started with). Counters live in the store,
/// keyed by tier, scope and each limit's definition, so a limit whose
/// definition did not change keeps its counters across the swap; a changed
/// limit starts from zero. Plan assignments made at runtime with
/// [`RateLimitLayer::set_plan`] carry over to the new policy when their plan
/// still exists there (they take precedence over the file's assignments).
/// The memory store's key cap is set when the layer is made and does not
/// change on reload.
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
                policy: ArcSwap::from_pointee(policy),
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
                policy: ArcSwap::new(arc.policy.load_full()),
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

    /// The policy in force now.
    pub fn policy(&self) -> Arc<Policy> {
        self.shared.policy.load_full()
    }

    /// Assigns plan `plan` to the caller with API key (or user id) `key`,
    /// from the next request on; the assignment survives reloads while the
    /// plan exists.
    ///
    /// # Errors
    ///
    /// `plan` is not a plan of the current policy, or it has no plans.
    pub fn set_plan(&self, key: &str, plan: &str) -> Result<(), crate::ConfigError> {
        self.shared.policy.load().set_plan(key, plan)
    }

    /// Swaps in a new policy atomically; see
    /// [runtime reconfiguration](RateLimitLayer#runtime-reconfiguration).
    pub fn reload(&self, policy: Policy) {
        let old = self.shared.policy.load();
        policy.adopt_runtime_plans(&old);
        self.shared.policy.store(Arc::new(policy));
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
