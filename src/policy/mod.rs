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

mod route;

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::ops::Range;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::HeaderName;
use siphasher::sip128::{Hasher128, SipHasher13};

use route::{literal_segments, parse_methods, with_segments, PathPattern, RouteRule, RouteTarget};

use crate::config::{
    Combine, Config, Cost, ErrorFormat, Family, HeaderStyle, Limit, Mode, OnStoreError,
    RedisSection, ScopePart, WindowKind, EXEMPT,
};
use crate::error::ConfigError;
use crate::identity::{Caller, Identity, IdentityConfig};
use crate::plans::PlanTable;
use crate::store::{Batch, Charge, CounterKey, LimitSpec};
use crate::window::{Shape, WindowSpec, DEFAULT_PRECISION, MAX_PRECISION};

/// Most limits in one tier (a request checks at most three tiers).
pub const MAX_TIER_LIMITS: usize = 20;

/// The key of the counter-key hash (SipHash-1-3).
///
/// For counters in this process (the memory store) it is random per process,
/// so that nobody can choose identities whose counters land in one map
/// bucket; it is stable across reloads, so unchanged limits keep their
/// counters. Counters in Redis must be found under the same key by every
/// instance, so there the key is derived from the configuration
/// ([`redis_secret`]); Redis hashes key names with its own random seed.
pub(crate) fn hash_secret() -> (u64, u64) {
    static SECRET: OnceLock<(u64, u64)> = OnceLock::new();
    *SECRET.get_or_init(|| {
        let a = std::collections::hash_map::RandomState::new();
        let b = std::collections::hash_map::RandomState::new();
        let mut ha = a.build_hasher();
        ha.write_u64(0x7469_6572);
        let mut hb = b.build_hasher();
        hb.write_u64(0x6c69_6d69);
        (ha.finish(), hb.finish())
    })
}

/// The counter-key secret shared by every instance using the Redis keys
/// under `prefix` (and `extra`, the configuration's `store.redis.secret`).
fn redis_secret(prefix: &str, extra: &str) -> (u64, u64) {
    let mut h = SipHasher13::new_with_keys(0x7469_6572_6c69_6d69, 0x7265_6469_735f_6b65);
    h.write(b"tierlimit counter keys in redis\0");
    h.write(prefix.as_bytes());
    h.write(&[0]);
    h.write(extra.as_bytes());
    let k = h.finish128();
    (k.h1, k.h2)
}

type Secret = (u64, u64);

fn sip(secret: Secret) -> SipHasher13 {
    SipHasher13::new_with_keys(secret.0, secret.1)
}

/// A checked `store.redis` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RedisSettings {
    pub(crate) url: String,
    /// The nodes of a cluster; empty for a single server.
    pub(crate) cluster: Vec<String>,
    pub(crate) timeout: Duration,
    pub(crate) prefix: String,
}

fn compile_redis(r: &RedisSection) -> Result<RedisSettings, ConfigError> {
    let err = |field: &str, msg: &str| ConfigError::invalid(format!("store.redis.{field}"), msg);
    let url = match (&r.url, r.cluster.first()) {
        (Some(_), Some(_)) => {
            return Err(err(
                "cluster",
                "give `url` (one server) or `cluster`, not both",
            ))
        }
        (Some(u), None) => u,
        (None, Some(u)) => u,
        (None, None) => {
            return Err(err(
                "url",
                "is required (`redis://host:port`), or `cluster` with the nodes",
            ))
        }
    };
    let redis_url = |u: &str| u.starts_with("redis://") || u.starts_with("rediss://");
    if !redis_url(url) {
        return Err(err("url", "must start with `redis://` or `rediss://`"));
    }
    if let Some(i) = r.cluster.iter().position(|u| !redis_url(u)) {
        return Err(ConfigError::invalid(
            format!("store.redis.cluster[{i}]"),
            "must start with `redis://` or `rediss://`",
        ));
    }
    if r.timeout_ms == 0 || r.timeout_ms > 60_000 {
        return Err(err("timeout_ms", "must be between 1 and 60000"));
    }
    if r.prefix.is_empty() || r.prefix.contains(['{', '}']) {
        return Err(err("prefix", "must be non-empty text without `{` or `}`"));
    }
    if !cfg!(feature = "redis") {
        return Err(ConfigError::invalid(
            "store.redis",
            "this build of tierlimit has no `redis` feature",
        ));
    }
    // What the store will open: a URL redis-rs refuses is refused here.
    #[cfg(feature = "redis")]
    {
        let bad = |field: String, e: redis::RedisError| {
            ConfigError::invalid(field, format!("not a Redis URL redis-rs accepts: {e}"))
        };
        if r.cluster.is_empty() {
            redis::Client::open(url.as_str()).map_err(|e| bad("store.redis.url".into(), e))?;
        } else {
            redis::cluster::ClusterClient::new(r.cluster.iter().map(String::as_str))
                .map_err(|e| bad("store.redis.cluster".into(), e))?;
        }
    }
    Ok(RedisSettings {
        url: url.clone(),
        cluster: r.cluster.clone(),
        timeout: Duration::from_millis(r.timeout_ms),
        prefix: r.prefix.clone(),
    })
}

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

/// A compiled, checked, immutable configuration.
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
    pub(crate) max_keys: usize,
    /// The Redis the counters live in, if any (read when a layer is made).
    pub(crate) redis: Option<RedisSettings>,
    /// The counter-key hash key (see [`hash_secret`]).
    secret: Secret,
    /// What to do when the store cannot decide.
    pub(crate) on_error: OnStoreError,
    modifiers: Vec<CompiledModifier>,
    tenant_users: TenantUsersFn,
}

#[derive(Clone)]
struct TenantUsersFn(TenantUsers);

impl std::fmt::Debug for TenantUsersFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TenantUsers(..)")
    }
}

/// A UTC offset in nanoseconds.
/// A UTC offset in milliseconds.
fn parse_offset(s: &str) -> Result<i64, String> {
    let bad = || format!("`{s}` is not a UTC offset such as \"+02:00\" or \"-05:30\"");
    let (sign, rest) = match s.as_bytes().first() {
        Some(b'+') => (1i64, &s[1..]),
        Some(b'-') => (-1i64, &s[1..]),
        _ if s == "Z" || s == "UTC" => return Ok(0),
        _ => return Err(bad()),
    };
    let (h, m) = rest.split_once(':').ok_or_else(bad)?;
    let h: i64 = h.parse().map_err(|_| bad())?;
    let m: i64 = m.parse().map_err(|_| bad())?;
    if h > 18 || m > 59 || h.to_string().len() > 2 {
        return Err(bad());
    }
    Ok(sign * (h * 3600 + m * 60) * 1000)
}

fn compile_limit(
    secret: Secret,
    tier: &str,
    l: &Limit,
    path: &str,
) -> Result<CompiledLimit, ConfigError> {
    let err = |field: &str, msg: String| ConfigError::invalid(format!("{path}.{field}"), msg);
    if l.name.trim().is_empty() {
        return Err(err("name", "must not be empty".into()));
    }
    if l.capacity == 0 {
        return Err(err("capacity", "must be greater than zero".into()));
    }
    if l.capacity > u64::from(u32::MAX) {
        return Err(err("capacity", format!("must be at most {}", u32::MAX)));
    }
    if l.window.is_zero() {
        return Err(err("window", "must be greater than zero".into()));
    }
    // Windows count in whole milliseconds (rounded up).
    let window_ms = u64::try_from(l.window.as_nanos().div_ceil(1_000_000))
        .ok()
        .filter(|&n| n <= 366 * 86_400 * 1000)
        .ok_or_else(|| err("window", "must be at most 366 days".into()))?;
    match &l.cost {
        Cost::Requests(0) => return Err(err("cost", "must be greater than zero".into())),
        Cost::Requests(n) if *n > l.capacity => {
            return Err(err(
                "cost",
                format!(
                    "a request costing {n} can never fit a capacity of {}",
                    l.capacity
                ),
            ))
        }
        Cost::Tokens(h) if HeaderName::from_bytes(h.as_bytes()).is_err() => {
            return Err(err("cost", format!("`{h}` is not a valid header name")))
        }
        _ => {}
    }
    if let Some(f) = l.tenant_aggregate {
        if !(f.is_finite() && f > 0.0) {
            return Err(err(
                "tenant_aggregate",
                "must be a factor greater than zero".into(),
            ));
        }
        if l.scope.contains(&ScopePart::Tenant) && l.scope.len() == 1 {
            return Err(err(
                "tenant_aggregate",
                "needs a per-user scope (the aggregate is the per-tenant one)".into(),
            ));
        }
    }
    let spec = match l.kind {
        WindowKind::Sliding => {
            if l.utc_offset.is_some() {
                return Err(err("utc_offset", "applies to fixed windows only".into()));
            }
            if l.time_zone.is_some() {
                return Err(err("time_zone", "applies to fixed windows only".into()));
            }
            let p = l.precision.unwrap_or(DEFAULT_PRECISION);
            if p == 0 || p > MAX_PRECISION {
                return Err(err(
                    "precision",
                    format!("must be between 1 and {MAX_PRECISION}"),
                ));
            }
            if l.precision.is_some() && window_ms < u64::from(p) {
                return Err(err(
                    "precision",
                    format!("is finer than one millisecond per sub-bucket (the window is {window_ms} ms)"),
                ));
            }
            WindowSpec::sliding_ms(window_ms, p)
        }
        WindowKind::Fixed => {
            if l.precision.is_some() {
                return Err(err("precision", "applies to sliding windows only".into()));
            }
            match (&l.utc_offset, &l.time_zone) {
                (Some(_), Some(_)) => {
                    return Err(err(
                        "time_zone",
                        "set either `time_zone` or `utc_offset`, not both".into(),
                    ))
                }
                (_, Some(name)) => {
                    let zone = crate::window::lookup_zone(name).map_err(|m| err("time_zone", m))?;
                    WindowSpec::zoned_ms(window_ms, zone)
                }
                (Some(o), None) => WindowSpec::fixed_ms(
                    window_ms,
                    parse_offset(o).map_err(|m| err("utc_offset", m))?,
                ),
                (None, None) => WindowSpec::fixed_ms(window_ms, 0),
            }
        }
    };
    let mut seen = Vec::new();
    for (i, part) in l.scope.iter().enumerate() {
        if seen.contains(part) {
            return Err(err(
                &format!("scope[{i}]"),
                format!("`{part:?}` is listed twice"),
            ));
        }
        seen.push(*part);
    }
    // The fingerprint covers everything that gives the counter its meaning,
    // so a reload keeps counters exactly when the definition is unchanged.
    let mut h = sip(secret);
    h.write(b"limit\0");
    h.write(tier.as_bytes());
    h.write(&[0]);
    h.write(l.name.as_bytes());
    h.write(&[0]);
    h.write_u64(l.capacity);
    h.write(format!("{:?}", l.cost).as_bytes());
    match spec.shape() {
        Shape::Sliding {
            bucket_ms,
            window_ms,
            reach,
        } => {
            h.write_u8(3);
            h.write_u64(bucket_ms);
            h.write_u64(window_ms);
            h.write_u32(reach);
        }
        Shape::Fixed {
            len_ms,
            offset_ms,
            zone,
        } => {
            h.write_u8(4);
            h.write_u64(len_ms);
            h.write_i64(offset_ms);
            if let Some(z) = zone {
                h.write(b"zone\0");
                h.write(z.resolved().as_bytes());
            }
        }
    }
    for part in &l.scope {
        h.write_u8(*part as u8);
    }
    let group = |what: &[u8]| {
        let mut g = sip(secret);
        g.write(what);
        g.write(tier.as_bytes());
        g.write(&[0]);
        for part in &l.scope {
            g.write_u8(*part as u8);
        }
        g.finish128().as_u128()
    };
    let tag = (h.finish128().as_u128() as u16).max(1);
    Ok(CompiledLimit {
        name: l.name.clone(),
        tier: tier.to_owned(),
        capacity: l.capacity,
        window: l.window,
        spec,
        cost: l.cost.clone(),
        family: l.family,
        aggregate: None,
        scope: l.scope.clone(),
        group_mask: group(b"group\0"),
        overflow_key: group(b"overflow\0"),
        tag,
        scope_id: 0,
        template: LimitSpec::new(CounterKey::default(), spec, 1, 1),
    })
}

/// Fills in each limit's scope id and store template, once every limit of
/// the policy is known (a limit's label is its index).
fn finish_limits(limits: &mut [CompiledLimit]) {
    let mut scopes: Vec<Vec<ScopePart>> = Vec::new();
    for (li, l) in limits.iter_mut().enumerate() {
        let id = match scopes.iter().position(|s| *s == l.scope) {
            Some(i) => i,
            None => {
                scopes.push(l.scope.clone());
                scopes.len() - 1
            }
        };
        l.scope_id = u16::try_from(id).unwrap_or(u16::MAX);
        let charge = match l.cost {
            Cost::Requests(n) => Charge::Now(n),
            _ => Charge::After,
        };
        l.template = LimitSpec::new(CounterKey::default(), l.spec, scaled(l.capacity as f64), 1)
            .with_charge(charge)
            .with_tag(l.tag)
            .with_overflow_key(CounterKey::from_u128(l.overflow_key))
            .with_label(u32::try_from(li).unwrap_or(u32::MAX));
    }
}

/// A capacity (times a modifier's factor) rounded down, within
/// 1 ..= `u32::MAX`.
fn scaled(capacity: f64) -> u64 {
    (capacity.floor() as u64).clamp(1, u64::from(u32::MAX))
}

impl TryFrom<&Config> for Policy {
    type Error = ConfigError;

    /// Checks `c` and compiles it.
    ///
    /// # Errors
    ///
    /// The first problem found, with its path: e.g.
    /// `tiers.premium.limits[1].window: must be greater than zero`,
    /// `routes[2].tier: unknown tier \`gold\``.
    fn try_from(c: &Config) -> Result<Policy, ConfigError> {
        Policy::compile(c)
    }
}

impl TryFrom<Config> for Policy {
    type Error = ConfigError;

    /// Checks `c` and compiles it; see `TryFrom<&Config>`.
    fn try_from(c: Config) -> Result<Policy, ConfigError> {
        Policy::compile(&c)
    }
}

impl Config {
    /// Checks the configuration and compiles it into a [`Policy`]; the same
    /// as `Policy::try_from(&config)`.
    ///
    /// # Errors
    ///
    /// The first problem found, with its path: e.g.
    /// `tiers.premium.limits[1].window: must be greater than zero`,
    /// `routes[2].tier: unknown tier \`gold\``.
    pub fn build(&self) -> Result<Policy, ConfigError> {
        Policy::compile(self)
    }
}

impl Policy {
    /// Reads, checks and compiles a JSON configuration
    /// ([`Config::from_json`], then [`Config::build`]).
    ///
    /// # Errors
    ///
    /// As those two.
    pub fn from_json(text: &str) -> Result<Policy, ConfigError> {
        Config::from_json(text)?.build()
    }

    /// Reads, checks and compiles a JSON configuration file.
    ///
    /// # Errors
    ///
    /// The file cannot be read, or [`Policy::from_json`] refuses it.
    pub fn from_file(path: impl AsRef<std::path::Path>) -> Result<Policy, ConfigError> {
        Config::from_file(path)?.build()
    }

    fn compile(c: &Config) -> Result<Policy, ConfigError> {
        let secret = match &c.store.redis {
            Some(r) => redis_secret(&r.prefix, r.secret.as_deref().unwrap_or("")),
            None => hash_secret(),
        };
        let mut limits = Vec::new();
        let mut tiers = Vec::new();
        let mut tier_index = HashMap::new();
        let mut tier_names = Vec::new();
        for (name, tier) in &c.tiers {
            let base = format!("tiers.{name}");
            if name.trim().is_empty() {
                return Err(ConfigError::invalid(
                    "tiers",
                    "a tier name must not be empty",
                ));
            }
            if name == EXEMPT {
                return Err(ConfigError::invalid(
                    base,
                    "`exempt` is reserved for routes and cannot name a tier",
                ));
            }
            let start = limits.len();
            let mut names: Vec<&str> = Vec::new();
            let mut groups = Vec::new();
            let listed = std::iter::once((format!("{base}.limits"), &tier.limits, false)).chain(
                tier.groups.iter().enumerate().map(|(g, grp)| {
                    (
                        format!("{base}.groups[{g}].limits"),
                        &grp.limits,
                        grp.combine == Combine::Cascade,
                    )
                }),
            );
            for (gpath, group, cascade) in listed {
                if group.is_empty() {
                    if cascade {
                        return Err(ConfigError::invalid(
                            gpath,
                            "a cascade needs at least one limit",
                        ));
                    }
                    continue;
                }
                let gstart = limits.len();
                for (i, l) in group.iter().enumerate() {
                    let path = format!("{gpath}[{i}]");
                    if names.contains(&l.name.as_str()) {
                        return Err(ConfigError::invalid(
                            format!("{path}.name"),
                            format!("`{}` is used twice in tier `{name}`", l.name),
                        ));
                    }
                    names.push(&l.name);
                    if cascade && l.tenant_aggregate.is_some() {
                        return Err(ConfigError::invalid(
                            format!("{path}.tenant_aggregate"),
                            "is not supported inside a cascade",
                        ));
                    }
                    limits.push(compile_limit(secret, name, l, &path)?);
                }
                if cascade {
                    // Shortest window first (stable: ties keep their order).
                    limits[gstart..].sort_by_key(|l| l.spec.window_ms());
                }
                groups.push((gstart..limits.len(), cascade));
            }
            // Tenant aggregates: a per-tenant companion of each such limit,
            // in a group of their own.
            let astart = limits.len();
            for l in tier
                .limits
                .iter()
                .chain(tier.groups.iter().flat_map(|g| g.limits.iter()))
            {
                let Some(factor) = l.tenant_aggregate else {
                    continue;
                };
                let Some(base_limit) = limits[start..astart].iter().find(|c| c.name == l.name)
                else {
                    continue;
                };
                let mut agg = base_limit.clone();
                agg.name = format!("{} (tenant)", l.name);
                agg.scope = vec![ScopePart::Tenant];
                agg.aggregate = Some(factor);
                let mut g = sip(secret);
                g.write(b"aggregate\0");
                g.write(name.as_bytes());
                g.write(&[0]);
                agg.group_mask = g.finish128().as_u128();
                agg.overflow_key = agg.group_mask ^ 1;
                limits.push(agg);
            }
            if limits.len() > astart {
                groups.push((astart..limits.len(), false));
            }
            if limits.len() - start > MAX_TIER_LIMITS {
                return Err(ConfigError::invalid(
                    base,
                    format!("has more than {MAX_TIER_LIMITS} limits"),
                ));
            }
            // Tags tell apart the limits of one tier that share a key.
            for i in start..limits.len() {
                while limits[start..i].iter().any(|o| {
                    o.group_mask == limits[i].group_mask
                        && o.scope == limits[i].scope
                        && o.tag == limits[i].tag
                }) {
                    limits[i].tag = limits[i].tag.checked_add(1).unwrap_or(1);
                }
            }
            tier_index.insert(name.clone(), tiers.len());
            tier_names.push(name.clone());
            tiers.push(CompiledTier {
                groups,
                limit_count: limits.len() - start,
            });
        }
        let find = |path: String, name: &str| {
            tier_index
                .get(name)
                .copied()
                .ok_or_else(|| ConfigError::unknown(path, format!("unknown tier `{name}`")))
        };
        let mut routes = Vec::new();
        for (i, r) in c.routes.iter().enumerate() {
            let methods = parse_methods(&r.methods)
                .map_err(|(j, m)| ConfigError::invalid(format!("routes[{i}].methods[{j}]"), m))?;
            let pattern = PathPattern::parse(&r.path)
                .map_err(|m| ConfigError::invalid(format!("routes[{i}].path"), m))?;
            let target = if r.tier == EXEMPT {
                RouteTarget::Exempt
            } else {
                RouteTarget::Tier(find(format!("routes[{i}].tier"), &r.tier)?)
            };
            routes.push(RouteRule {
                methods,
                pattern,
                target,
            });
        }
        let default_tier = match &c.default_tier {
            Some(t) => Some(find("default_tier".into(), t)?),
            None => None,
        };
        let global = match &c.global {
            Some(t) => Some(find("global".into(), t)?),
            None => None,
        };
        let mut assignments: [HashMap<Box<str>, usize>; crate::plans::KINDS] = Default::default();
        let default_plan = match &c.plans {
            Some(p) => {
                let d = find("plans.default".into(), &p.default)?;
                let kinds = [
                    ("assignments", &p.assignments),
                    ("users", &p.users),
                    ("tenants", &p.tenants),
                ];
                for (kind, (field, map)) in kinds.into_iter().enumerate() {
                    for (key, plan) in map {
                        let at = || format!("plans.{field}.{}", crate::error::quoted(key));
                        plan_id_ok(key, c.identity.max_key_len)
                            .map_err(|m| ConfigError::invalid(at(), m))?;
                        let t = find(at(), plan)?;
                        assignments[kind].insert(key.clone().into_boxed_str(), t);
                    }
                }
                Some(d)
            }
            None => None,
        };
        let id = &c.identity;
        let api_key_header = match &id.api_key_header {
            Some(h) => Some(HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
                ConfigError::invalid(
                    "identity.api_key_header",
                    format!("`{h}` is not a valid header name"),
                )
            })?),
            None => None,
        };
        let mut trusted_proxies = Vec::new();
        for (i, s) in id.trusted_proxies.iter().enumerate() {
            trusted_proxies.push(
                crate::identity::parse_cidr(s).map_err(|m| {
                    ConfigError::invalid(format!("identity.trusted_proxies[{i}]"), m)
                })?,
            );
        }
        if id.ipv6_prefix > 128 {
            return Err(ConfigError::invalid(
                "identity.ipv6_prefix",
                format!("{} is not a prefix length (0 ..= 128)", id.ipv6_prefix),
            ));
        }
        if id.max_key_len == 0 {
            return Err(ConfigError::invalid(
                "identity.max_key_len",
                "must be greater than zero",
            ));
        }
        if c.store.max_keys == 0 {
            return Err(ConfigError::invalid(
                "store.max_keys",
                "must be greater than zero",
            ));
        }
        let redis = c.store.redis.as_ref().map(compile_redis).transpose()?;
        let mut modifiers = Vec::new();
        for (i, m) in c.modifiers.iter().enumerate() {
            let header = HeaderName::from_bytes(m.header.as_bytes()).map_err(|_| {
                ConfigError::invalid(
                    format!("modifiers[{i}].header"),
                    format!("`{}` is not a valid header name", m.header),
                )
            })?;
            if !(m.factor.is_finite() && m.factor > 0.0) {
                return Err(ConfigError::invalid(
                    format!("modifiers[{i}].factor"),
                    "must be a number greater than zero",
                ));
            }
            modifiers.push(CompiledModifier {
                header,
                equals: m.equals.trim().to_owned(),
                factor: m.factor,
            });
        }
        if modifiers.len() > 16 {
            return Err(ConfigError::invalid("modifiers", "at most 16 modifiers"));
        }
        let users: HashMap<String, u64> = c.tenant_users.clone().into_iter().collect();
        let tenant_users: TenantUsers =
            Arc::new(move |t: &str| users.get(t).copied().unwrap_or(1).max(1));
        let identity = IdentityConfig {
            api_key_header,
            bearer: id.bearer,
            trusted_proxies,
            max_key_len: id.max_key_len,
            ipv6_prefix: id.ipv6_prefix,
        };
        finish_limits(&mut limits);
        // The tiers a route, `default_tier` or `global` uses.
        let mut routed = vec![false; tier_names.len()];
        let targets = routes.iter().filter_map(|r| match r.target {
            RouteTarget::Tier(t) => Some(t),
            RouteTarget::Exempt => None,
        });
        for t in targets.chain(default_tier).chain(global) {
            routed[t] = true;
        }
        let mut is_plan = vec![false; tier_names.len()];
        if default_plan.is_some() {
            // Plans: the default, those assignments name, and every tier
            // nothing else uses.
            let named = assignments.iter().flat_map(|m| m.values().copied());
            for t in named.chain(default_plan) {
                is_plan[t] = true;
            }
            for (t, r) in routed.iter().enumerate() {
                is_plan[t] |= !r;
            }
        } else if let Some(t) = routed.iter().position(|r| !r) {
            // A tier nothing uses limits nothing: say so rather than let a
            // typo in a route's tier name pass unnoticed.
            return Err(ConfigError::invalid(
                format!("tiers.{}", tier_names[t]),
                "no route, `default_tier`, `global` or plan uses this tier, so it limits nothing",
            ));
        }
        Ok(Policy {
            limits,
            tiers,
            tier_index,
            tier_names,
            routes,
            default_tier,
            default_plan,
            is_plan,
            assignments,
            global,
            identity,
            anonymous: id.anonymous,
            headers: c.headers,
            errors: c.errors,
            mode: c.mode,
            max_keys: c.store.max_keys,
            redis,
            secret,
            on_error: c
                .store
                .redis
                .as_ref()
                .map_or(OnStoreError::Open, |r| r.on_error),
            modifiers,
            tenant_users: TenantUsersFn(tenant_users),
        })
    }

    /// Uses `users` to count the users of a tenant for tenant aggregates
    /// (instead of the configuration's `tenant_users` map).
    pub fn with_tenant_users(
        mut self,
        users: impl Fn(&str) -> u64 + Send + Sync + 'static,
    ) -> Self {
        self.tenant_users = TenantUsersFn(Arc::new(users));
        self
    }

    /// Whether `name` is a plan that callers can be assigned to: plans are
    /// configured and `name` is the default plan, a tier an assignment
    /// names, or a tier that no route, `default_tier` or `global` uses.
    pub fn has_plan(&self, name: &str) -> bool {
        self.plan_index(name).is_some()
    }

    /// The names of the plans (see [`Policy::has_plan`]), in the order of
    /// the configuration's tiers.
    pub fn plan_names(&self) -> impl Iterator<Item = &str> + '_ {
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
    pub fn has_plans(&self) -> bool {
        self.default_plan.is_some()
    }

    /// The plan the configuration gives `subject` (an API key as `&str`,
    /// or a [`PlanSubject`](crate::PlanSubject)): its assignment in the
    /// file, else the default plan. Runtime assignments are the layer's,
    /// see `RateLimitLayer::plan_of`.
    pub fn configured_plan(&self, subject: impl Into<crate::PlanSubject>) -> Option<&str> {
        let subject = subject.into();
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
        plan_id_ok(id, self.identity.max_key_len)
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
        let h = scope_hash(hash_secret(), &[ScopePart::Caller], id);
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

    /// How this policy reads identities from requests (API key header,
    /// trusted proxies, IPv6 prefix): `policy.identity().extract(&parts)`
    /// gives the identity the layer would see.
    pub fn identity(&self) -> &IdentityConfig {
        &self.identity
    }

    /// The store batch for a request with `method`, `path` and identity
    /// `id`, or `None` when the route is exempt: what the layer asks the
    /// store. Use it to rate-limit work that is not an HTTP request (a
    /// WebSocket message, a job). The plan is the configured one (runtime
    /// assignments are the layer's); header-based capacity modifiers do not
    /// apply here.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tierlimit::clock::Timestamp;
    /// use tierlimit::config::{Config, Limit, Tier};
    /// use tierlimit::identity::Identity;
    /// use tierlimit::store::MemoryStore;
    ///
    /// let policy = Config::new()
    ///     .tier("t", Tier::new().limit(Limit::sliding("m", 1, Duration::from_secs(60))))
    ///     .default_tier("t")
    ///     .build()
    ///     .unwrap();
    /// let store = MemoryStore::default();
    /// let id = Identity { api_key: Some(b"key-1"), ..Identity::default() };
    /// let batch = policy.batch_for(&http::Method::GET, "/jobs", &id).unwrap();
    /// let now = Timestamp::from_secs(1_700_000_000);
    /// assert!(store.decide_now(now, batch.clone()).admitted());
    /// assert!(!store.decide_now(now, batch).admitted());
    /// ```
    pub fn batch_for(&self, method: &http::Method, path: &str, id: &Identity<'_>) -> Option<Batch> {
        let route_tier = self.route_tier(method, path)?;
        let plan = self.plan(id, None);
        Some(self.batch(route_tier, plan, id, (1.0, 0)))
    }

    /// The batch of a request with these route tiers, plan, identity and
    /// modifier (factor, matched set).
    pub(crate) fn batch(
        &self,
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
        let count: usize = picked
            .iter()
            .flatten()
            .chain(&extra)
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
                        let h = scope_hash(self.secret, &l.scope, id);
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
        for &t in picked.iter().flatten() {
            add(t);
        }
        if let Some(t) = extra {
            add(t);
        }
        batch
    }
}

/// Whether a plan assignment to `id` can match a request whose identity
/// values are trimmed and at most `max_len` bytes; else why not.
fn plan_id_ok(id: &str, max_len: usize) -> Result<(), String> {
    let trimmed = id.trim_matches(|c: char| c.is_ascii_whitespace());
    if trimmed.is_empty() {
        Err("an assignment key must not be empty or blank".into())
    } else if trimmed != id {
        Err(
            "an assignment key cannot start or end with white space (identities are trimmed)"
                .into(),
        )
    } else if id.len() > max_len {
        Err(format!(
            "an assignment key is at most {max_len} bytes (identity.max_key_len), this one is {}",
            id.len()
        ))
    } else {
        Ok(())
    }
}

fn ip_octets(ip: std::net::IpAddr) -> ([u8; 16], usize) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&v4.octets());
            (b, 4)
        }
        std::net::IpAddr::V6(v6) => (v6.octets(), 16),
    }
}

fn scope_hash(secret: Secret, scope: &[ScopePart], id: &Identity<'_>) -> u128 {
    let mut h = sip(secret);
    let ip = id.ip.map(ip_octets);
    let ip = ip.as_ref().map(|(b, n)| &b[..*n]);
    for part in scope {
        let (tag, bytes): (u64, Option<&[u8]>) = match part {
            ScopePart::ApiKey => (1, id.api_key),
            ScopePart::User => (2, id.user.map(str::as_bytes)),
            ScopePart::Tenant => (3, id.tenant.map(str::as_bytes)),
            ScopePart::Ip => (4, ip),
            ScopePart::Caller => match id.caller() {
                Caller::ApiKey(k) => (5, Some(k)),
                Caller::User(u) => (6, Some(u.as_bytes())),
                Caller::Ip(_) => (7, ip),
                _ => (8, None),
            },
        };
        // One word of tag, presence and length, then the bytes: no two
        // identities collide by concatenation.
        match bytes {
            Some(b) => {
                h.write_u64(tag | 1 << 8 | (b.len() as u64) << 16);
                h.write(b);
            }
            None => h.write_u64(tag),
        }
    }
    h.finish128().as_u128()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets() {
        assert_eq!(parse_offset("+02:00").unwrap(), 7200 * 1000);
        assert_eq!(parse_offset("-05:30").unwrap(), -19800 * 1000);
        assert_eq!(parse_offset("Z").unwrap(), 0);
        assert!(parse_offset("02:00").is_err());
        assert!(parse_offset("+25:00").is_err());
    }
}
