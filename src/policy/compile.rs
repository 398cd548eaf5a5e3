//! Compiling a [`Config`] into the [`Rules`] of a [`Policy`]: every check
//! of the policy half of a configuration, with the path of what is wrong.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;

use super::keys;
use super::route::{parse_methods, PathPattern, RouteRule, RouteTarget};
use super::{
    CompiledLimit, CompiledModifier, CompiledTier, Policy, Rules, TenantUsers, TenantUsersFn,
    MAX_TIER_LIMITS,
};
use crate::config::{Combine, Config, Cost, HeaderStyle, Limit, ScopePart, WindowKind, EXEMPT};
use crate::error::ConfigError;
use crate::identity::IdentityConfig;
use crate::store::{Charge, CounterKey, LimitSpec};
use crate::window::{WindowSpec, DEFAULT_PRECISION, MAX_PRECISION};

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

fn compile_limit(tier: &str, l: &Limit, path: &str) -> Result<CompiledLimit, ConfigError> {
    let err = |field: &str, msg: String| ConfigError::invalid(format!("{path}.{field}"), msg);
    if l.name.trim().is_empty() {
        return Err(err("name", "must not be empty".into()));
    }
    if l.capacity == 0 {
        return Err(err("capacity", "must be greater than zero".into()));
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
        Cost::Requests(n) if *n > u64::from(l.capacity) => {
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
    if l.kind == WindowKind::Concurrent {
        if !matches!(l.cost, Cost::Requests(_)) {
            return Err(err(
                "cost",
                "a concurrent limit counts requests: a number of units, or `requests`".into(),
            ));
        }
        if l.block_for.is_some() {
            return Err(err(
                "block_for",
                "does not apply to a concurrent limit".into(),
            ));
        }
        if l.tenant_aggregate.is_some() {
            return Err(err(
                "tenant_aggregate",
                "does not apply to a concurrent limit".into(),
            ));
        }
    }
    let spec = match l.kind {
        WindowKind::Sliding | WindowKind::Concurrent => {
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
    let tag = keys::limit_tag(tier, l, spec);
    Ok(CompiledLimit {
        name: l.name.clone(),
        tier: tier.to_owned(),
        capacity: u64::from(l.capacity),
        window: l.window,
        spec,
        cost: l.cost.clone(),
        family: l.family,
        aggregate: None,
        delay: None,
        block_for: l.block_for,
        block_of: None,
        concurrent: l.kind == WindowKind::Concurrent,
        scope: l.scope.clone(),
        group_mask: keys::group_fingerprint(b"group\0", tier, &l.scope),
        overflow_key: keys::group_fingerprint(b"overflow\0", tier, &l.scope),
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
            // A block counter refuses while a block counts (it is charged
            // the limit's capacity when one starts) and charges nothing.
            Cost::Requests(_) if l.block_of.is_some() => Charge::After,
            // Held while the request is in flight.
            Cost::Requests(n) if l.concurrent => Charge::Held(n),
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
pub(super) fn scaled(capacity: f64) -> u64 {
    (capacity.floor() as u64).clamp(1, u64::from(u32::MAX))
}

impl TryFrom<&Config> for Policy {
    type Error = ConfigError;

    /// Checks `c` and compiles it; see [`Config::build`].
    fn try_from(c: &Config) -> Result<Policy, ConfigError> {
        c.build()
    }
}

impl TryFrom<Config> for Policy {
    type Error = ConfigError;

    /// Checks `c` and compiles it; see [`Config::build`].
    fn try_from(c: Config) -> Result<Policy, ConfigError> {
        c.build()
    }
}

impl Config {
    /// Checks the configuration and compiles it into a [`Policy`].
    ///
    /// A policy does not say where its counters live, so a configuration
    /// whose `store` section is not the default (`store.redis`,
    /// `store.max_keys`) is refused here rather than half used: build it
    /// with [`Config::setup`] (the policy and its
    /// [`Deployment`](crate::Deployment)), which
    /// [`RateLimitLayer::new`](crate::RateLimitLayer::new) takes.
    ///
    /// # Errors
    ///
    /// The first problem found, with its path: e.g.
    /// `tiers.premium.limits[1].window: must be greater than zero`,
    /// `routes[2].tier: unknown tier \`gold\``.
    pub fn build(&self) -> Result<Policy, ConfigError> {
        if self.store != crate::Deployment::default() {
            return Err(ConfigError::invalid(
                "store",
                "says where counters live, which a Policy does not carry: \
                 build this configuration with `Config::setup` (or read the file \
                 with `Setup::from_file`) and give that to `RateLimitLayer::new`",
            ));
        }
        self.policy()
    }

    /// Checks and compiles the policy half of the configuration: everything
    /// but its `store` section, which is ignored (a reload takes this: the
    /// store is chosen once, when the layer is built).
    ///
    /// # Errors
    ///
    /// As [`Config::build`], except that the `store` section is not read.
    pub fn policy(&self) -> Result<Policy, ConfigError> {
        Ok(Policy {
            rules: Arc::new(compile(self)?),
        })
    }
}

/// Checks `c`'s policy (everything but its `store` section) and compiles it.
pub(super) fn compile(c: &Config) -> Result<Rules, ConfigError> {
    if c.headers == HeaderStyle::Ietf {
        ietf_names(c)?;
    }
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
                if cascade && l.kind == WindowKind::Concurrent {
                    return Err(ConfigError::invalid(
                        format!("{path}.kind"),
                        "a concurrent limit cannot be in a cascade",
                    ));
                }
                if cascade && l.block_for.is_some() {
                    return Err(ConfigError::invalid(
                        format!("{path}.block_for"),
                        "is not supported inside a cascade",
                    ));
                }
                if cascade && l.tenant_aggregate.is_some() {
                    return Err(ConfigError::invalid(
                        format!("{path}.tenant_aggregate"),
                        "is not supported inside a cascade",
                    ));
                }
                limits.push(compile_limit(name, l, &path)?);
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
            let Some(base_limit) = limits[start..astart].iter().find(|c| c.name == l.name) else {
                continue;
            };
            let mut agg = base_limit.clone();
            agg.name = format!("{} (tenant)", l.name);
            agg.scope = vec![ScopePart::Tenant];
            agg.aggregate = Some(factor);
            agg.group_mask = keys::group_fingerprint(b"aggregate\0", name, &[]);
            agg.overflow_key = agg.group_mask ^ 1;
            limits.push(agg);
        }
        if limits.len() > astart {
            groups.push((astart..limits.len(), false));
        }
        // Blocks: a counter beside each limit with `block_for`, in a group
        // of their own.
        let bstart = limits.len();
        for k in start..astart {
            if let Some(block) = limits[k].block_for {
                let companion = block_counter(name, &limits[k], k, block, &base)?;
                limits.push(companion);
            }
        }
        if limits.len() > bstart {
            groups.push((bstart..limits.len(), false));
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
        let delay = tier_delay(tier, &limits[start..], &base)?;
        for l in &mut limits[start..] {
            l.delay = delay;
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
            crate::identity::parse_cidr(s)
                .map_err(|m| ConfigError::invalid(format!("identity.trusted_proxies[{i}]"), m))?,
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
    // Costs after the response, and units given back when it ends.
    let post_charged = limits
        .iter()
        .any(|l| !matches!(l.cost, Cost::Requests(_)) || l.concurrent);
    let concurrent = limits.iter().any(|l| l.concurrent);
    let blocks = limits.iter().any(|l| l.block_of.is_some());
    let delays = limits.iter().any(|l| l.delay.is_some());
    Ok(Rules {
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
        modifiers,
        tenant_users: TenantUsersFn(tenant_users),
        post_charged,
        concurrent,
        blocks,
        delays,
        aside: concurrent || blocks,
    })
}

/// Whether a plan assignment to `id` can match a request whose identity
/// values are trimmed and at most `max_len` bytes; else why not.
pub(super) fn plan_id_ok(id: &str, max_len: usize) -> Result<(), String> {
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

/// The block counter of limit `l` (label `label`) of tier `tier`, for
/// blocks of `block` (`base`: the tier's path in errors).
fn block_counter(
    tier: &str,
    l: &CompiledLimit,
    label: usize,
    block: Duration,
    base: &str,
) -> Result<CompiledLimit, ConfigError> {
    if block < Duration::from_secs(1) || block > Duration::from_secs(30 * 86_400) {
        return Err(ConfigError::invalid(
            format!("{base}: limit `{}`.block_for", l.name),
            "must be 1 second ..= 30 days",
        ));
    }
    let block_ms = u64::try_from(block.as_millis()).unwrap_or(u64::MAX);
    let spec = WindowSpec::sliding_ms(block_ms, DEFAULT_PRECISION);
    let mut c = l.clone();
    c.name = format!("{} (block)", l.name);
    c.window = block;
    c.spec = spec;
    c.cost = Cost::Requests(1);
    c.family = None;
    c.delay = None;
    c.block_for = None;
    c.block_of = Some(u32::try_from(label).unwrap_or(u32::MAX));
    // From its definition, as every limit's tag: a reload that keeps it
    // keeps its blocks.
    let mut def = Limit::sliding(
        c.name.clone(),
        u32::try_from(l.capacity).unwrap_or(u32::MAX),
        block,
    );
    def.scope = l.scope.clone();
    c.tag = keys::limit_tag(tier, &def, spec);
    Ok(c)
}

/// With the `ietf` headers every limit name is sent as a structured-field
/// string, which holds printable ASCII only: other names are refused rather
/// than sent mangled (two names would become one).
fn ietf_names(c: &Config) -> Result<(), ConfigError> {
    for (tier, t) in &c.tiers {
        let limits = t
            .limits
            .iter()
            .chain(t.groups.iter().flat_map(|g| g.limits.iter()));
        for l in limits {
            if let Some(bad) = l.name.chars().find(|ch| !(' '..='~').contains(ch)) {
                return Err(ConfigError::invalid(
                    format!("tiers.{tier}: limit `{}`.name", l.name),
                    format!(
                        "the `ietf` headers send limit names as structured-field strings, \
                         printable ASCII only; {bad:?} cannot be sent (rename the limit, or \
                         choose other headers)"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Longest `delay_up_to` a tier may set: a request is held open that long.
const MAX_DELAY: Duration = Duration::from_secs(600);

/// A tier's `delay_up_to` and `queue`, checked (`base`: the tier's path in
/// errors).
fn tier_delay(
    tier: &crate::config::Tier,
    limits: &[CompiledLimit],
    base: &str,
) -> Result<Option<super::Delay>, ConfigError> {
    let Some(up_to) = tier.delay_up_to else {
        if tier.queue.is_some() {
            return Err(ConfigError::invalid(
                format!("{base}.queue"),
                "applies only with `delay_up_to`",
            ));
        }
        return Ok(None);
    };
    if up_to.is_zero() || up_to > MAX_DELAY {
        return Err(ConfigError::invalid(
            format!("{base}.delay_up_to"),
            "must be more than 0 and at most 10 minutes",
        ));
    }
    let smallest = limits.iter().map(|l| l.capacity).min().unwrap_or(1);
    let queue = match tier.queue {
        Some(0) | Some(1_000_001..) => {
            return Err(ConfigError::invalid(
                format!("{base}.queue"),
                "must be 1 ..= 1000000",
            ))
        }
        Some(n) => n,
        None => u32::try_from(smallest.clamp(1, 1_000_000)).unwrap_or(1_000_000),
    };
    Ok(Some(super::Delay { up_to, queue }))
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
