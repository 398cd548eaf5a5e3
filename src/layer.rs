//! The [`RateLimitLayer`] and its builder: one `Arc` of engine state, so
//! every service the layer makes — and every clone of those — shares one
//! budget.

use std::sync::Arc;

use tower_layer::Layer;

use crate::clock::{Clock, SystemClock};
use crate::config::OnStoreError;
use crate::engine::{Controller, Engine, Hooks, PostQueue};
use crate::identity::{ChoosePlan, Identify};
use crate::policy::Policy;
use crate::reject::{Hook, OnReject};
use crate::service::RateLimit;
use crate::setup::{Deployment, Setup};
use crate::store::{AnyStore, MemoryStore, MemoryStoreConfig, Store, StoreError};

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
/// Use [`RateLimitLayer::builder`] for a clock, a store, a rejection hook or
/// a failure mode of your own; [`RateLimitLayer::controller`] (or the
/// shortcuts [`reload`](RateLimitLayer::reload) and
/// [`set_plan`](RateLimitLayer::set_plan)) changes the configuration at
/// runtime, see [`Controller`].
#[derive(Debug)]
pub struct RateLimitLayer<St = AnyStore> {
    engine: Arc<Engine<St>>,
}

impl<St> Clone for RateLimitLayer<St> {
    fn clone(&self) -> Self {
        RateLimitLayer {
            engine: Arc::clone(&self.engine),
        }
    }
}

impl RateLimitLayer<AnyStore> {
    /// A layer enforcing `policy` with the store its configuration asks
    /// for — Redis when it has a `store.redis` section (feature `redis`;
    /// the store connects on its first decision, or see
    /// [`RedisStore::connect`](crate::store::RedisStore::connect)), else a
    /// memory store capped at `store.max_keys` — the system clock, the
    /// policy's 429 format and its failure mode (`on_error`, failing open
    /// by default). The store is chosen once: a reload does not change it.
    pub fn new(setup: impl Into<Setup>) -> Self {
        Self::builder(setup).build()
    }

    /// A builder, starting from what [`RateLimitLayer::new`] does.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tierlimit::clock::ManualClock;
    /// use tierlimit::config::{Config, Limit, Tier};
    /// use tierlimit::{OnStoreError, RateLimitLayer};
    ///
    /// let policy = Config::new()
    ///     .tier("api", Tier::new().limit(Limit::sliding("m", 60, Duration::from_secs(60))))
    ///     .default_tier("api")
    ///     .build()
    ///     .unwrap();
    /// let layer = RateLimitLayer::builder(policy)
    ///     .clock(ManualClock::new(Duration::from_secs(1_700_000_000)))
    ///     .on_store_error(OnStoreError::CLOSED)
    ///     .build();
    /// # let _ = layer;
    /// ```
    pub fn builder(setup: impl Into<Setup>) -> RateLimitLayerBuilder<AnyStore> {
        let Setup { policy, deployment } = setup.into();
        RateLimitLayerBuilder {
            policy,
            store: store_for(&deployment),
            clock: Arc::new(SystemClock),
            hook: None,
            on_error: deployment.on_error,
            fallback_keys: deployment.max_keys,
            max_post_in_flight: crate::engine::DEFAULT_POST_IN_FLIGHT,
            who: Hooks::default(),
        }
    }

    /// [`RateLimitLayer::builder`], which now honours `store.redis` itself.
    ///
    /// # Errors
    ///
    /// None any more (the Redis URLs are checked when the setup is built).
    #[deprecated(note = "`RateLimitLayer::new` and `builder` honour `store.redis` now")]
    pub fn configured(
        setup: impl Into<Setup>,
    ) -> Result<RateLimitLayerBuilder<AnyStore>, StoreError> {
        Ok(Self::builder(setup))
    }
}

/// The store a deployment asks for (see [`RateLimitLayer::new`]).
fn store_for(deployment: &Deployment) -> AnyStore {
    let memory = || MemoryStore::new(MemoryStoreConfig::default().max_keys(deployment.max_keys));
    match &deployment.redis {
        None => AnyStore::Memory(memory()),
        #[cfg(feature = "redis")]
        Some(r) => match crate::store::RedisStore::new(r.clone()) {
            Ok(store) => AnyStore::Redis(store),
            // Settings that `Deployment::check` was not asked about: a
            // store that fails every decision, so that `on_error` says
            // what happens (and the error is logged and counted), rather
            // than a panic or a silent memory store.
            Err(e) => AnyStore::Broken(Arc::new(e.to_string())),
        },
        #[cfg(not(feature = "redis"))]
        Some(_) => AnyStore::Broken(Arc::new(
            "store.redis: this build of tierlimit has no `redis` feature".into(),
        )),
    }
}

/// Builds a [`RateLimitLayer`]; made by [`RateLimitLayer::builder`].
#[derive(Debug)]
#[must_use]
pub struct RateLimitLayerBuilder<St> {
    policy: Policy,
    store: St,
    clock: Arc<dyn Clock>,
    hook: Option<Hook>,
    on_error: OnStoreError,
    /// The cap of the memory store [`OnStoreError::Fallback`] falls back on.
    fallback_keys: usize,
    max_post_in_flight: usize,
    who: Hooks,
}

impl<St: Store> RateLimitLayerBuilder<St> {
    /// Uses `clock` for time (a [`ManualClock`](crate::clock::ManualClock)
    /// in tests).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Keeps counters in `store` instead of a memory store.
    pub fn store<St2: Store>(self, store: St2) -> RateLimitLayerBuilder<St2> {
        RateLimitLayerBuilder {
            policy: self.policy,
            store,
            clock: self.clock,
            hook: self.hook,
            on_error: self.on_error,
            fallback_keys: self.fallback_keys,
            max_post_in_flight: self.max_post_in_flight,
            who: self.who,
        }
    }

    /// Says who each caller is with `hook` (any `Fn(&Parts) ->
    /// Option<Identified>`; `None` from it falls back to the policy's
    /// rules). See [`identity`](crate::identity#hooks).
    pub fn identify(mut self, hook: impl Identify) -> Self {
        self.who.identify = Some(Arc::new(hook));
        self
    }

    /// Picks each request's plan with `hook` (any `Fn(&Parts,
    /// &Identity<'_>) -> Option<String>`): a plan it names outranks the
    /// plan assignments; `None`, or a name that is not a plan, leaves the
    /// plan to them. See [`identity`](crate::identity#hooks).
    pub fn choose_plan(mut self, hook: impl ChoosePlan) -> Self {
        self.who.plan = Some(Arc::new(hook));
        self
    }

    /// Builds 429 responses with `hook` instead of the configured format.
    /// The hook sees the request head and the [`Rejection`](crate::reject::Rejection);
    /// `Retry-After` and the rate-limit headers are still added when it
    /// leaves them out.
    pub fn on_reject(mut self, hook: impl OnReject) -> Self {
        self.hook = Some(Hook(Arc::new(hook)));
        self
    }

    /// What to do when the store cannot decide (default: fail open).
    pub fn on_store_error(mut self, mode: OnStoreError) -> Self {
        self.on_error = mode;
        self
    }

    /// Most post-charges of a store that must be awaited running at once in
    /// the background (default 10 000); past it they are dropped and counted.
    pub fn max_post_charges_in_flight(mut self, n: usize) -> Self {
        self.max_post_in_flight = n;
        self
    }

    /// The layer.
    pub fn build(self) -> RateLimitLayer<St> {
        let control = Controller::new(self.policy);
        let fallback = (self.on_error == OnStoreError::Fallback)
            .then(|| MemoryStore::new(MemoryStoreConfig::default().max_keys(self.fallback_keys)));
        let engine = Engine::new(
            control,
            self.store,
            self.clock,
            self.hook,
            (self.on_error, fallback),
            PostQueue::new(self.max_post_in_flight),
            self.who,
        );
        let engine = Arc::new(engine);
        let weak: std::sync::Weak<Engine<St>> = Arc::downgrade(&engine);
        engine.control.attach(weak);
        RateLimitLayer { engine }
    }
}

impl<St: Store> RateLimitLayer<St> {
    /// A handle to reload the policy and assign plans at runtime, usable
    /// without naming the store type.
    pub fn controller(&self) -> Controller {
        self.engine.control.clone()
    }

    /// A tower service answering `GET` with the caller's usage of every
    /// limit as JSON, counting nothing; see [`usage`](crate::usage).
    pub fn usage_service(&self) -> crate::usage::UsageService {
        self.engine.control.usage_service()
    }

    /// The policy in force now.
    pub fn policy(&self) -> Policy {
        self.engine.control.policy()
    }

    /// Assigns plan `plan` to `subject` (an API key given as `&str`, or a
    /// [`PlanSubject`](crate::PlanSubject)), from the next request on; see
    /// [`Controller::set_plan`].
    ///
    /// # Errors
    ///
    /// `plan` is not a plan of the policy in force, it has no plans, or
    /// the subject's id could never match a request.
    pub fn set_plan(
        &self,
        subject: impl Into<crate::PlanSubject>,
        plan: &str,
    ) -> Result<(), crate::ConfigError> {
        self.engine.control.set_plan(subject, plan)
    }

    /// The plan `subject` gets now; see [`Controller::plan_of`].
    pub fn plan_of(&self, subject: impl Into<crate::PlanSubject>) -> Option<String> {
        self.engine.control.plan_of(subject)
    }

    /// Swaps in a new policy atomically; see [`Controller::reload`].
    pub fn reload(&self, policy: impl Into<Policy>) {
        self.engine.control.reload(policy);
    }

    /// The store.
    pub fn store(&self) -> &St {
        &self.engine.store
    }

    /// Post-charges dropped so far (too many in flight, or no runtime to
    /// run them); always 0 with a store that charges at once.
    pub fn post_charges_dropped(&self) -> u64 {
        self.engine.post.dropped()
    }

    /// Post-charges the store failed to make so far.
    pub fn post_charge_failures(&self) -> u64 {
        self.engine.post.failures()
    }

    /// Requests that waited for room instead of a 429 (`delay_up_to`), each
    /// counted once.
    pub fn requests_delayed(&self) -> u64 {
        self.engine
            .waits
            .delayed
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Blocks started so far (`block_for`; a block started by two
    /// requests at once counts twice).
    pub fn blocks_started(&self) -> u64 {
        self.engine
            .blocks_started
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Requests waiting for room now.
    pub fn requests_waiting(&self) -> u64 {
        self.engine
            .waits
            .waiting
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Post-charges running in the background now.
    pub fn post_charges_in_flight(&self) -> usize {
        self.engine.post.in_flight()
    }
}

impl<S, St> Layer<S> for RateLimitLayer<St> {
    type Service = RateLimit<S, St>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit::new(inner, Arc::clone(&self.engine))
    }
}
