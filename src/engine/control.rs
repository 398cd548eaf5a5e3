//! [`Controller`]: the policy in force and the runtime plan assignments of
//! a running layer, changed without a restart.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use arc_swap::ArcSwap;

use crate::error::ConfigError;
use crate::observe::Counters;
use crate::plans::{PlanSubject, PlanTable, SharedPlans};
use crate::policy::Policy;
use crate::usage::{Peek, Usage, UsageError, UsageService};

/// The policy in force and the metric handles of its limits, swapped
/// together by a reload.
#[derive(Debug)]
pub(crate) struct Active {
    pub(crate) policy: Policy,
    pub(crate) counters: Counters,
}

impl Active {
    fn new(policy: Policy) -> Self {
        let counters = Counters::new(policy.rules.limit_names());
        Active { policy, counters }
    }
}

#[derive(Debug)]
pub(super) struct ControlInner {
    pub(super) active: ArcSwap<Active>,
    /// Runtime plan assignments; its generation also counts reloads.
    pub(super) plans: Arc<PlanTable>,
    /// Requests whose plan hook named no plan of the policy in force.
    pub(super) unknown_plans: AtomicU64,
    /// The engine of the layer, for usage reports (weak: the engine holds
    /// this controller).
    pub(super) peek: std::sync::OnceLock<Weak<dyn Peek>>,
}

/// A handle on a running layer's configuration: swap the policy, assign
/// plans. Cheap to clone, shared with the layer it came from
/// ([`RateLimitLayer::controller`](crate::RateLimitLayer::controller)), and
/// not generic over the store, so an admin API can hold one.
///
/// # Reloads and plan assignments
///
/// The policy is immutable; a reload swaps it for another in one atomic
/// step (requests read it without a lock; a request in flight finishes with
/// the policy it started with). Counters live in the store, keyed by tier,
/// scope and each limit's definition, so a limit whose definition did not
/// change keeps its counters across the swap; a changed limit starts from
/// zero.
///
/// Runtime plan assignments live in a table of their own that a reload
/// never touches, so none is ever lost, whatever the timing. They are kept
/// by plan name and take precedence over the file's assignments while the
/// policy in force has a plan of that name.
#[derive(Clone, Debug)]
pub struct Controller {
    pub(super) inner: Arc<ControlInner>,
}

impl Controller {
    pub(crate) fn new(policy: Policy) -> Self {
        Controller {
            inner: Arc::new(ControlInner {
                active: ArcSwap::from_pointee(Active::new(policy)),
                plans: Arc::new(PlanTable::default()),
                unknown_plans: AtomicU64::new(0),
                peek: std::sync::OnceLock::new(),
            }),
        }
    }

    /// The policy in force now (a cheap clone).
    pub fn policy(&self) -> Policy {
        self.inner.active.load().policy.clone()
    }

    /// Swaps in `policy` atomically (a [`Setup`](crate::Setup) gives its
    /// policy: the store is chosen once, when the layer is built); see
    /// [reloads](Controller#reloads-and-plan-assignments).
    pub fn reload(&self, policy: impl Into<Policy>) {
        self.inner
            .active
            .store(Arc::new(Active::new(policy.into())));
        self.inner.plans.bump();
    }

    pub(super) fn generation(&self) -> u64 {
        self.inner.plans.generation()
    }

    /// The runtime plan assignments as a store shares them.
    pub(crate) fn shared_plans(&self) -> SharedPlans {
        SharedPlans(Arc::clone(&self.inner.plans))
    }

    /// Assigns plan `plan` to `subject` (an API key given as `&str`, or a
    /// [`PlanSubject`]: an API key, a user or a tenant), from the next
    /// request on.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tierlimit::config::{Config, Limit, Tier};
    /// use tierlimit::{PlanSubject, RateLimitLayer};
    ///
    /// let policy = Config::new()
    ///     .tier("standard", Tier::new().limit(Limit::sliding("m", 60, Duration::from_secs(60))))
    ///     .tier("premium", Tier::new().limit(Limit::sliding("m", 300, Duration::from_secs(60))))
    ///     .plans("standard", [("k", "standard")])
    ///     .build()
    ///     .unwrap();
    /// let layer = RateLimitLayer::new(policy);
    /// layer.set_plan("vip", "premium").unwrap();
    /// layer.set_plan(PlanSubject::Tenant("acme".into()), "premium").unwrap();
    /// assert_eq!(layer.plan_of("vip").as_deref(), Some("premium"));
    /// // A user with the same id as the API key is another caller.
    /// assert_eq!(layer.plan_of(PlanSubject::User("vip".into())).as_deref(), Some("standard"));
    /// assert!(layer.set_plan("  spaced  ", "premium").is_err());
    /// ```
    ///
    /// # Errors
    ///
    /// The policy in force has no plans, or no plan named `plan`
    /// ([`ConfigErrorKind::Unknown`](crate::ConfigErrorKind::Unknown); the
    /// message quotes at most 64 characters of the name), or the subject's
    /// id could never match a request: empty, with leading or trailing
    /// white space (identities are trimmed), or longer than the policy's
    /// `max_key_len` ([`ConfigErrorKind::Invalid`](crate::ConfigErrorKind::Invalid)).
    pub fn set_plan(&self, subject: impl Into<PlanSubject>, plan: &str) -> Result<(), ConfigError> {
        let subject = subject.into();
        let active = self.inner.active.load();
        let policy = &active.policy.rules;
        if !policy.has_plans() {
            return Err(ConfigError::unknown("plans", "no plans are configured"));
        }
        if !policy.has_plan(plan) {
            let plans: Vec<&str> = policy.plan_names().collect();
            let what = if policy.tier_names_contain(plan) {
                "is a route or global tier, not a plan"
            } else {
                "is no plan"
            };
            return Err(ConfigError::unknown(
                "plan",
                format!(
                    "`{}` {what}; the plans are {}",
                    crate::error::quoted(plan),
                    plans.join(", ")
                ),
            ));
        }
        policy
            .check_plan_id(subject.id())
            .map_err(|m| ConfigError::invalid("key", m))?;
        self.inner.plans.set(&subject, plan);
        Ok(())
    }

    /// Removes the runtime plan assignment of `subject` (the configured
    /// one applies again); whether there was one.
    pub fn clear_plan(&self, subject: impl Into<PlanSubject>) -> bool {
        self.inner.plans.remove(&subject.into())
    }

    /// The plan `subject` gets now from its own assignment: the runtime
    /// one while the policy has that plan, else the configured one, else
    /// the default plan. (A request also falls back from its API key to
    /// its user and tenant; see [`PlanSubject`].)
    pub fn plan_of(&self, subject: impl Into<PlanSubject>) -> Option<String> {
        let subject = subject.into();
        let (kind, id) = subject.parts();
        let active = self.inner.active.load();
        let policy = &active.policy.rules;
        self.inner
            .plans
            .resolve(kind, id, |plan| {
                policy.has_plan(plan).then(|| plan.to_owned())
            })
            .or_else(|| policy.configured_plan(subject.clone()).map(str::to_owned))
    }

    /// Requests whose [`ChoosePlan`](crate::identity::ChoosePlan) hook
    /// named a plan the policy in force does not have (they got their
    /// assigned or default plan).
    pub fn unknown_plans(&self) -> u64 {
        self.inner.unknown_plans.load(Ordering::Relaxed)
    }

    /// Where the caller of a request with head `parts` stands on every
    /// limit that can apply to it, counting nothing; see
    /// [`usage`](crate::usage).
    ///
    /// # Errors
    ///
    /// [`UsageError::Anonymous`] when nothing identifies the caller and the
    /// policy refuses that; [`UsageError::Store`] when the store cannot be
    /// read; [`UsageError::NoLayer`] when the layer is gone.
    pub fn usage(
        &self,
        parts: &http::request::Parts,
    ) -> impl std::future::Future<Output = Result<Usage, UsageError>> + Send + 'static {
        let engine = self.inner.peek.get().and_then(Weak::upgrade);
        let fut = engine.map(|e| e.usage(parts));
        async move {
            match fut {
                Some(f) => f.await,
                None => Err(UsageError::NoLayer),
            }
        }
    }

    /// Lifts every block (`block_for`) of the caller `id` at once, on every
    /// tier, for every instance sharing the store (requests under a
    /// capacity modifier count apart and are not lifted). Returns how many
    /// block counters were emptied (0: the policy blocks nothing).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tierlimit::config::{Config, Limit, Tier};
    /// use tierlimit::identity::Identity;
    /// use tierlimit::RateLimitLayer;
    ///
    /// let policy = Config::new()
    ///     .tier("api", Tier::new().limit(
    ///         Limit::sliding("m", 60, Duration::from_secs(60)).block_for(Duration::from_secs(600))))
    ///     .default_tier("api")
    ///     .build()
    ///     .unwrap();
    /// let layer = RateLimitLayer::new(policy);
    /// let id = Identity { api_key: Some(b"k1"), ..Identity::default() };
    /// let lifted = futures_block_on(layer.controller().lift_blocks(&id)).unwrap();
    /// assert_eq!(lifted, 1);
    /// # fn futures_block_on<F: std::future::Future>(f: F) -> F::Output {
    /// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// The store could not empty the counters (or cannot at all: a store
    /// of your own must implement [`Store::reset`](crate::store::Store::reset)),
    /// or the layer is gone.
    pub fn lift_blocks(
        &self,
        id: &crate::identity::Identity<'_>,
    ) -> impl std::future::Future<Output = Result<usize, crate::store::StoreError>> + Send + 'static
    {
        let engine = self.inner.peek.get().and_then(Weak::upgrade);
        let fut = engine.map(|e| e.lift_blocks(id));
        async move {
            match fut {
                Some(f) => f.await,
                None => Err(crate::store::StoreError::new(
                    crate::store::StoreErrorKind::Unavailable,
                    "the rate-limit layer is gone",
                )),
            }
        }
    }

    /// A tower service answering `GET` with the caller's usage as JSON;
    /// see [`UsageService`].
    pub fn usage_service(&self) -> UsageService {
        UsageService::new(self.inner.peek.get().cloned())
    }

    /// Called once by the layer's builder.
    pub(crate) fn attach(&self, engine: Weak<dyn Peek>) {
        let _ = self.inner.peek.set(engine);
    }

    /// Every runtime plan assignment (subject, plan), in no particular order.
    pub fn runtime_plans(&self) -> Vec<(PlanSubject, String)> {
        self.inner.plans.all()
    }
}
