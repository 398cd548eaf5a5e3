//! The policy table: limits, tiers, route rules and plans, compiled from a
//! [`Config`] and looked up once per request.
//!
//! A [`Policy`] is immutable: build it with `Policy::try_from(config)` (or
//! [`Config::build`]) and share it. Plan assignments made at runtime live in
//! the layer's own table, never in the policy, and a reload replaces the
//! whole policy in one atomic swap.
//!
//! For each request the policy finds
//!
//! 1. the **route tier**: the first route rule matching method and path, else
//!    the default tier (a rule may say `exempt`: no counting, no headers);
//! 2. the **plan**: the caller's runtime assignment, else its configured
//!    assignment, else the default plan;
//! 3. the **global** tier, if configured;
//!
//! and turns every limit of those tiers into one store
//! [`LimitSpec`], keyed by a keyed 128-bit hash of
//! (tier, limit definition, scope key). A tier reached twice (say, the route
//! tier is also the plan) is checked once.

mod compile;
mod keys;
mod route;

pub use keys::KeySecret;

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;

use route::{literal_segments, with_segments, RouteRule, RouteTarget};

use crate::config::{Config, Cost, ErrorFormat, Family, HeaderStyle, Mode, ScopePart};
use crate::error::ConfigError;
use crate::identity::{Identity, IdentityConfig};
use crate::plans::PlanTable;
use crate::store::{Batch, CounterKey, LimitSpec};
use crate::window::WindowSpec;
use compile::scaled;

/// Most limits in one tier (a request checks at most three tiers).
pub const MAX_TIER_LIMITS: usize = 20;

/// A compiled limit.
#[derive(Clone, Debug)]
pub(crate) struct CompiledLimit {
    pub(crate) name: String,
    pub(crate) tier: String,
    pub(crate) capacity: u64,
    pub(crate) window: Duration,
    pub(crate) spec: WindowSpec,
    pub(crate) cost: Cost,
    pub(crate) family: Option<Family>,
    /// Set on the tenant-aggregate companion of a limit: capacity is
    /// multiplied by users in the tenant × this factor.
    pub(crate) aggregate: Option<f64>,
    /// The tier's `delay_up_to` and `queue`, when it lets refused requests
    /// wait.
    pub(crate) delay: Option<Delay>,
    /// The limit's `block_for` (a limit that blocks).
    pub(crate) block_for: Option<Duration>,
    /// Set on the block counter of a limit with `block_for`: that limit's
    /// label. Checked as a post-charged limit of the limit's capacity
    /// (refusing while a block counts), charged only to start a block.
    pub(crate) block_of: Option<u32>,
    /// A limit on requests in flight (`"kind": "concurrent"`).
    pub(crate) concurrent: bool,
    scope: Vec<ScopePart>,
    /// Mixed into the scope hash to make the key of the (tier, scope)
    /// counters this limit lives in.
    group_mask: u128,
    /// Key of the shared overflow entry of that (tier, scope).
    overflow_key: u128,
    /// Which counter under the key: from the limit's definition, so a
    /// reload keeps counters exactly when the definition is unchanged.
    tag: u16,
    /// Limits with equal scopes have equal ids (per policy): a request
    /// hashes each scope once.
    scope_id: u16,
    /// The store limit of a request before its key, cascade group and any
    /// capacity change are filled in (made once the policy is complete).
    template: LimitSpec,
}

/// How long a tier lets a refused request wait, and how many of one scope
/// may wait at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Delay {
    pub(crate) up_to: Duration,
    pub(crate) queue: u32,
}

#[derive(Clone, Debug)]
struct CompiledTier {
    /// Groups of limits (indices into `Policy::limits`) and whether each is
    /// a cascade (then ordered shortest window first).
    groups: Vec<(Range<usize>, bool)>,
    limit_count: usize,
}

/// Users per tenant, for tenant aggregates.
pub type TenantUsers = Arc<dyn Fn(&str) -> u64 + Send + Sync>;

#[derive(Clone, Debug)]
struct CompiledModifier {
    header: HeaderName,
    equals: String,
    factor: f64,
}

/// The route tiers of a request: one for a canonical path, up to two for
/// another spelling (see [`route`]'s docs); `None` is no route tier.
pub(crate) type RouteTiers = [Option<usize>; 2];

/// A compiled, checked, immutable rate-limit policy: limits, tiers, route
/// rules, plans, how callers are identified, the headers and 429 bodies.
/// Where its counters live is not the policy's: that is the
/// [`Deployment`](crate::Deployment) (see [`Setup`](crate::Setup)).
///
/// Cloning is cheap (one reference count): the compiled tables are shared.
///
/// ```
/// use std::time::Duration;
/// use tierlimit::config::{Config, Limit, Tier};
/// use tierlimit::Policy;
///
/// let config = Config::new()
///     .tier("standard", Tier::new().limit(Limit::sliding("per-minute", 60, Duration::from_secs(60))))
///     .tier("premium", Tier::new().limit(Limit::sliding("per-minute", 300, Duration::from_secs(60))))
///     .plans("standard", [("key-123", "premium")]);
/// let policy = Policy::try_from(config).unwrap();
/// assert_eq!(policy.configured_plan("key-123"), Some("premium"));
/// assert_eq!(policy.configured_plan("someone-else"), Some("standard"));
/// ```
#[derive(Clone, Debug)]
pub struct Policy {
    pub(crate) rules: Arc<Rules>,
}

/// What a [`Policy`] holds.
#[derive(Clone, Debug)]
pub(crate) struct Rules {
    pub(crate) limits: Vec<CompiledLimit>,
    tiers: Vec<CompiledTier>,
    tier_index: HashMap<String, usize>,
    tier_names: Vec<String>,
    routes: Vec<RouteRule>,
    default_tier: Option<usize>,
    default_plan: Option<usize>,
    /// Per tier, whether it is a plan: the default plan, a tier an
    /// assignment names, or any tier no route, `default_tier` or `global`
    /// uses (only when plans are configured).
    is_plan: Vec<bool>,
    /// Configured plans by subject kind (API key, user, tenant).
    assignments: [HashMap<Box<str>, usize>; crate::plans::KINDS],
    global: Option<usize>,
    pub(crate) identity: IdentityConfig,
    pub(crate) anonymous: crate::config::Anonymous,
    pub(crate) headers: HeaderStyle,
    pub(crate) errors: ErrorFormat,
    pub(crate) mode: Mode,
    modifiers: Vec<CompiledModifier>,
    tenant_users: TenantUsersFn,
    /// Whether any limit is charged after the response (latency, tokens,
    /// error responses) or gives units back (requests in flight): without
    /// one, an admitted request needs no guard.
    pub(crate) post_charged: bool,
    /// Whether any limit counts requests in flight.
    pub(crate) concurrent: bool,
    /// Whether any limit blocks (`block_for`).
    pub(crate) blocks: bool,
    /// Whether any tier lets refused requests wait (`delay_up_to`).
    pub(crate) delays: bool,
    /// Whether any limit is reported in headers only while it refuses (a
    /// block counter, a limit on requests in flight).
    pub(crate) aside: bool,
}

#[derive(Clone)]
struct TenantUsersFn(TenantUsers);

impl std::fmt::Debug for TenantUsersFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TenantUsers(..)")
    }
}

impl Policy {
    /// Reads, checks and compiles a JSON configuration
    /// ([`Config::from_json`], then [`Config::build`]).
    ///
    /// # Errors
    ///
    /// As those two: among them, a file whose `store` section says where
    /// counters live (`store.redis`, `store.max_keys`) is refused, since a
    /// policy does not carry that; read such a file with
    /// [`Setup::from_json`](crate::Setup::from_json).
    pub fn from_json(text: &str) -> Result<Policy, ConfigError> {
        Config::from_json(text)?.build()
    }

    /// Reads, checks and compiles a JSON configuration file; see
    /// [`Policy::from_json`] (and [`Setup::from_file`](crate::Setup::from_file)
    /// for a file with a `store` section).
    ///
    /// # Errors
    ///
    /// The file cannot be read, or [`Policy::from_json`] refuses it.
    pub fn from_file(path: impl AsRef<std::path::Path>) -> Result<Policy, ConfigError> {
        Config::from_file(path)?.build()
    }

    /// Uses `users` to count the users of a tenant for tenant aggregates
    /// (instead of the configuration's `tenant_users` map).
    pub fn with_tenant_users(
        mut self,
        users: impl Fn(&str) -> u64 + Send + Sync + 'static,
    ) -> Self {
        Arc::make_mut(&mut self.rules).tenant_users = TenantUsersFn(Arc::new(users));
        self
    }

    /// Whether `name` is a plan that callers can be assigned to: plans are
    /// configured and `name` is the default plan, a tier an assignment
    /// names, or a tier that no route, `default_tier` or `global` uses.
    pub fn has_plan(&self, name: &str) -> bool {
        self.rules.has_plan(name)
    }

    /// The names of the plans (see [`Policy::has_plan`]), in the order of
    /// the configuration's tiers.
    pub fn plan_names(&self) -> impl Iterator<Item = &str> + '_ {
        self.rules.plan_names()
    }

    /// Whether plans are configured at all.
    pub fn has_plans(&self) -> bool {
        self.rules.has_plans()
    }

    /// The plan the configuration gives `subject` (an API key as `&str`,
    /// or a [`PlanSubject`](crate::PlanSubject)): its assignment in the
    /// file, else the default plan. Runtime assignments are the layer's,
    /// see `RateLimitLayer::plan_of`.
    pub fn configured_plan(&self, subject: impl Into<crate::PlanSubject>) -> Option<&str> {
        self.rules.configured_plan(subject.into())
    }

    /// How this policy reads identities from requests (API key header,
    /// trusted proxies, IPv6 prefix): `policy.identity().extract(&parts)`
    /// gives the identity the layer would see.
    pub fn identity(&self) -> &IdentityConfig {
        &self.rules.identity
    }

    /// The store batch for a request with `method`, `path` and identity
    /// `id`, or `None` when the route is exempt: what the layer asks the
    /// store. Use it to rate-limit work that is not an HTTP request (a
    /// WebSocket message, a job). The plan is the configured one (runtime
    /// assignments are the layer's); header-based capacity modifiers do not
    /// apply here. Counter keys are made with `secret`: the
    /// [`key_secret`](crate::store::Store::key_secret) of the store that
    /// decides the batch (a layer on the same store then counts the same
    /// counters).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tierlimit::clock::Timestamp;
    /// use tierlimit::config::{Config, Limit, Tier};
    /// use tierlimit::identity::Identity;
    /// use tierlimit::store::{MemoryStore, Store};
    ///
    /// let policy = Config::new()
    ///     .tier("t", Tier::new().limit(Limit::sliding("m", 1, Duration::from_secs(60))))
    ///     .default_tier("t")
    ///     .build()
    ///     .unwrap();
    /// let store = MemoryStore::default();
    /// let id = Identity { api_key: Some(b"key-1"), ..Identity::default() };
    /// let batch = policy.batch_for(store.key_secret(), &http::Method::GET, "/jobs", &id).unwrap();
    /// let now = Timestamp::from_secs(1_700_000_000);
    /// assert!(store.decide_now(now, batch.clone()).admitted());
    /// assert!(!store.decide_now(now, batch).admitted());
    /// ```
    pub fn batch_for(
        &self,
        secret: KeySecret,
        method: &http::Method,
        path: &str,
        id: &Identity<'_>,
    ) -> Option<Batch> {
        let rules = &self.rules;
        let route_tier = rules.route_tier(method, path)?;
        let plan = rules.plan(id, None);
        Some(rules.batch(&secret, route_tier, plan, id, (1.0, 0)))
    }
}

impl Rules {
    /// Whether `name` is a plan that callers can be assigned to: plans are
    /// configured and `name` is the default plan, a tier an assignment
    /// names, or a tier that no route, `default_tier` or `global` uses.
    pub(crate) fn has_plan(&self, name: &str) -> bool {
        self.plan_index(name).is_some()
    }

    /// The names of the plans (see [`Policy::has_plan`]), in the order of
    /// the configuration's tiers.
    pub(crate) fn plan_names(&self) -> impl Iterator<Item = &str> + '_ {
        self.tier_names
            .iter()
            .zip(&self.is_plan)
            .filter(|(_, p)| **p)
            .map(|(n, _)| n.as_str())
    }

    /// Whether the policy has a tier named `name` (a plan or not).
    pub(crate) fn tier_names_contain(&self, name: &str) -> bool {
        self.tier_index.contains_key(name)
    }

    /// The index of plan `name`, if the policy has a plan of that name.
    pub(crate) fn plan_index(&self, name: &str) -> Option<usize> {
        let t = self.tier_index.get(name).copied()?;
        self.is_plan[t].then_some(t)
    }

    /// Whether plans are configured at all.
    pub(crate) fn has_plans(&self) -> bool {
        self.default_plan.is_some()
    }

    /// The plan the configuration gives `subject` (an API key as `&str`,
    /// or a [`PlanSubject`](crate::PlanSubject)): its assignment in the
    /// file, else the default plan. Runtime assignments are the layer's,
    /// see `RateLimitLayer::plan_of`.
    pub(crate) fn configured_plan(&self, subject: crate::PlanSubject) -> Option<&str> {
        let (kind, id) = subject.parts();
        let idx = self.assignments[kind]
            .get(id)
            .copied()
            .or(self.default_plan)?;
        Some(self.tier_names[idx].as_str())
    }

    /// Whether `id` could ever be a request's identity under this policy
    /// (a plan assignment to it can match); else why not.
    pub(crate) fn check_plan_id(&self, id: &str) -> Result<(), String> {
        compile::plan_id_ok(id, self.identity.max_key_len)
    }

    /// Whether `label` names a limit of this policy.
    pub(crate) fn has_label(&self, label: u32) -> bool {
        (label as usize) < self.limits.len()
    }

    /// The tier and limit names of every compiled limit, indexed as the
    /// labels of the store limits this policy makes (for metrics).
    pub(crate) fn limit_names(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.limits
            .iter()
            .map(|l| (l.tier.as_str(), l.name.as_str()))
    }

    /// The plan of a request: that of its API key, else of its user, else
    /// of its tenant (each: runtime assignment while the plan exists, then
    /// configured assignment), else the default plan.
    pub(crate) fn plan(&self, id: &Identity<'_>, runtime: Option<&PlanTable>) -> Option<usize> {
        let default = self.default_plan?;
        let key = id.api_key.and_then(|k| std::str::from_utf8(k).ok());
        for (kind, subject) in [key, id.user, id.tenant].into_iter().enumerate() {
            let Some(subject) = subject else {
                continue;
            };
            let assigned = runtime
                .and_then(|r| r.resolve(kind, subject, |name| self.plan_index(name)))
                .or_else(|| {
                    let configured = &self.assignments[kind];
                    (!configured.is_empty())
                        .then(|| configured.get(subject).copied())
                        .flatten()
                });
            if assigned.is_some() {
                return assigned;
            }
        }
        Some(default)
    }

    /// A short keyed hash of the caller, for logs: never the raw key.
    pub(crate) fn caller_tag(&self, id: &Identity<'_>) -> String {
        let h = keys::scope_hash(KeySecret::per_process(), &[ScopePart::Caller], id);
        format!("{:08x}", (h >> 96) as u32)
    }

    /// The route tiers of a request, or `None` when the request is exempt.
    /// A path spelled canonically has one; any other spelling is checked
    /// against what its normalised form and its literal spelling match
    /// (see [`route`]'s docs), and is exempt only when both are.
    pub(crate) fn route_tier(&self, method: &http::Method, path: &str) -> Option<RouteTiers> {
        if self.routes.is_empty() {
            return Some([self.default_tier, None]);
        }
        with_segments(path, |segs, canonical| {
            let normalised = self.rule_for(method, segs);
            if canonical {
                return normalised.map(|t| [t, None]);
            }
            self.odd_spelling(method, path, normalised)
        })
    }

    /// The route tiers of a path not spelled canonically, whose normalised
    /// form gets `normalised` (see [`Policy::route_tier`]).
    #[cold]
    fn odd_spelling(
        &self,
        method: &http::Method,
        path: &str,
        normalised: Option<Option<usize>>,
    ) -> Option<RouteTiers> {
        let literal = self.rule_for(method, &literal_segments(path));
        match (normalised, literal) {
            (None, None) => None,
            (a, b) => Some([a.flatten(), b.flatten().filter(|t| Some(*t) != a.flatten())]),
        }
    }

    /// The tier the first matching rule gives (`Some(None)`: no route
    /// tier), or `None` for an exempt rule.
    #[inline]
    fn rule_for<S: AsRef<str>>(&self, method: &http::Method, segs: &[S]) -> Option<Option<usize>> {
        for r in &self.routes {
            if r.matches(method, segs) {
                return match r.target {
                    RouteTarget::Exempt => None,
                    RouteTarget::Tier(t) => Some(Some(t)),
                };
            }
        }
        Some(self.default_tier)
    }

    /// The capacity factor and the set of matched modifiers of a request.
    pub(crate) fn modifier_of(&self, headers: &http::HeaderMap) -> (f64, u32) {
        let mut factor = 1.0;
        let mut bits = 0u32;
        for (i, m) in self.modifiers.iter().enumerate() {
            let hit = headers
                .get(&m.header)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.trim() == m.equals);
            if hit {
                factor *= m.factor;
                bits |= 1 << i;
            }
        }
        (factor, bits)
    }

    /// The limits a usage report covers for a caller on `plan`: its plan
    /// tier, every route tier, the default tier and the global tier, each
    /// limit once (a peek reads each alone and charges nothing: see
    /// [`Store::peek`](crate::store::Store::peek)).
    pub(crate) fn usage_batch(
        &self,
        secret: &KeySecret,
        plan: Option<usize>,
        id: &Identity<'_>,
        modifier: (f64, u32),
    ) -> Batch {
        let mut tiers: Vec<usize> = Vec::new();
        let routes = self.routes.iter().filter_map(|r| match r.target {
            RouteTarget::Tier(t) => Some(t),
            RouteTarget::Exempt => None,
        });
        for t in plan
            .into_iter()
            .chain(routes)
            .chain(self.default_tier)
            .chain(self.global)
        {
            if !tiers.contains(&t) {
                tiers.push(t);
            }
        }
        let mut out = Batch::with_capacity(MAX_TIER_LIMITS);
        let mut seen = std::collections::HashSet::new();
        for t in tiers {
            // The tier as a route tier, with no plan: its own limits come
            // first (the global tier's, after them, in its own turn).
            let batch = self.batch(secret, [Some(t), None], None, id, modifier);
            for l in batch.limits().take(self.tiers[t].limit_count) {
                if seen.insert((l.key, l.tag)) {
                    out.push(*l);
                }
            }
        }
        out
    }

    /// The block counters (`block_for`) of every tier for the caller `id`
    /// (requests without a capacity modifier).
    pub(crate) fn block_counters(&self, secret: &KeySecret, id: &Identity<'_>) -> Vec<LimitSpec> {
        let mut out = Vec::new();
        for t in 0..self.tiers.len() {
            let batch = self.batch(secret, [Some(t), None], None, id, (1.0, 0));
            for l in batch.limits().take(self.tiers[t].limit_count) {
                if self.limits[l.label as usize].block_of.is_some() {
                    out.push(*l);
                }
            }
        }
        out
    }

    /// The batch of a request with these route tiers, plan, identity and
    /// modifier (factor, matched set), its counter keys made with `secret`.
    pub(crate) fn batch(
        &self,
        secret: &KeySecret,
        route: RouteTiers,
        plan: Option<usize>,
        id: &Identity<'_>,
        modifier: (f64, u32),
    ) -> Batch {
        let (factor, bits) = modifier;
        // Requests under a modifier count apart from the others.
        let mod_mask = u128::from(bits).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835);
        let mut picked: [Option<usize>; 3] = [route[0], plan, self.global];
        // A tier reached twice is checked once.
        if picked[1] == picked[0] {
            picked[1] = None;
        }
        if picked[2] == picked[0] || picked[2] == picked[1] {
            picked[2] = None;
        }
        // The second route tier of an odd spelling (rare), last.
        let extra = route[1].filter(|t| !picked.contains(&Some(*t)));
        let tiers = [picked[0], picked[1], picked[2], extra];
        let count: usize = tiers
            .iter()
            .flatten()
            .map(|&t| self.tiers[t].limit_count)
            .sum();
        let mut batch = Batch::with_capacity(count);
        // Hash each distinct scope once (requests rarely have more than 4).
        let mut memo: [Option<(u16, u128)>; 4] = [None; 4];
        let mut cascade_id = 0u16;
        let mut add = |t: usize| {
            for (range, cascade) in &self.tiers[t].groups {
                let group = cascade.then(|| {
                    cascade_id += 1;
                    cascade_id
                });
                for l in &self.limits[range.clone()] {
                    let known = memo
                        .iter()
                        .flatten()
                        .find(|(s, _)| *s == l.scope_id)
                        .map(|(_, h)| *h);
                    let scope_hash = known.unwrap_or_else(|| {
                        let h = keys::scope_hash(*secret, &l.scope, id);
                        if let Some(free) = memo.iter_mut().find(|m| m.is_none()) {
                            *free = Some((l.scope_id, h));
                        }
                        h
                    });
                    let mut spec = l.template;
                    spec.key = CounterKey::from_u128(scope_hash ^ l.group_mask ^ mod_mask);
                    spec.overflow_key = CounterKey::from_u128(l.overflow_key ^ mod_mask);
                    spec.cascade = group;
                    if factor != 1.0 || l.aggregate.is_some() {
                        let mut capacity = l.capacity as f64 * factor;
                        if let Some(agg) = l.aggregate {
                            let users = id.tenant.map_or(1, |t| (self.tenant_users.0)(t).max(1));
                            capacity *= users as f64 * agg;
                        }
                        spec.capacity = scaled(capacity);
                    }
                    batch.push(spec);
                }
            }
        };
        // One call site: the closure is inlined into the loop.
        for &t in tiers.iter().flatten() {
            add(t);
        }
        batch
    }
}
