//! The configuration: a Rust builder and a JSON file with the same power.
//!
//! [`Config`] is both: build it with methods, or read it with
//! [`Config::from_json`] (which refuses malformed JSON, wrong types and
//! unknown fields). Either way [`Config::build`] (or
//! `Policy::try_from(config)`) checks every value and compiles it into an
//! immutable [`Policy`](crate::Policy); a bad configuration is refused with
//! a [`ConfigError`] naming the path, the problem and its
//! [kind](crate::ConfigErrorKind).
//!
//! The configuration types are `#[non_exhaustive]`: make them with their
//! constructors and builder methods, or from JSON.
//!
//! # The JSON file format
//!
//! ```json
//! {
//!   "identity": { "api_key_header": "x-api-key", "bearer": true,
//!                 "trusted_proxies": ["10.0.0.0/8"], "max_key_len": 256,
//!                 "ipv6_prefix": 64, "anonymous": "share" },
//!   "tiers": {
//!     "standard": { "limits": [
//!       { "name": "per-minute", "capacity": 60, "window": "1m" },
//!       { "name": "per-hour", "capacity": 1000, "window": "1h", "precision": 60 } ] },
//!     "premium": { "limits": [ { "name": "per-minute", "capacity": 300, "window": "1m" } ] },
//!     "daily": { "groups": [ { "combine": "all", "limits": [
//!       { "name": "day", "capacity": 500, "window": "1d", "kind": "fixed",
//!         "utc_offset": "+02:00", "scope": ["tenant", "user"], "cost": 1 } ] } ] }
//!   },
//!   "routes": [
//!     { "methods": ["GET"], "path": "/health", "tier": "exempt" },
//!     { "methods": ["POST"], "path": "/v2/publish/**", "tier": "daily" }
//!   ],
//!   "default_tier": null,
//!   "plans": { "default": "standard", "assignments": { "key-123": "premium" } },
//!   "global": null,
//!   "headers": "x-ratelimit",
//!   "errors": "qarion",
//!   "store": { "max_keys": 1048576 }
//! }
//! ```
//!
//! | field | meaning | default |
//! | --- | --- | --- |
//! | `identity.ipv6_prefix` | IPv6 clients are keyed by this many leading bits (0 ..= 128); IPv4-mapped addresses count as IPv4 | 64 |
//! | `identity.anonymous` | requests with no API key, user or client address: `share` one budget, or `refuse` them with 401 | `share` |
//! | `tiers.NAME.limits` | limits that must all have room (one `all` group) | `[]` |
//! | `tiers.NAME.groups[].combine` | `all` (every limit must have room) or `cascade` (shortest window first, the first with room is charged) | `all` |
//! | `limit.name` | unique within the tier | required |
//! | `limit.capacity` | cost units per window, 1 ..= 4 294 967 295 | required |
//! | `limit.window` | `"500ms"`, `"30s"`, `"5m"`, `"1h"`, `"1d"`, `"1h 30m"` (read by `humantime`), or whole seconds as a number | required |
//! | `limit.kind` | `sliding`, `fixed` (clock-aligned) or `concurrent` (requests in flight; `window` is then the longest a unit is held, see *Requests in flight*) | `sliding` |
//! | `limit.precision` | sub-buckets of a sliding window, 1 ..= 3600, each at least 1 ms (see *Sliding windows*) | 30 |
//! | `limit.utc_offset` | `fixed` only: `"+HH:MM"`/`"-HH:MM"`, where day windows reset at local midnight | `"+00:00"` |
//! | `limit.time_zone` | `fixed` only, feature `tz`: an IANA name (`"Europe/Amsterdam"`) or `"local"` (the server's zone: `TZ`, else `/etc/localtime`, else UTC); windows follow its wall clock across daylight saving changes; not with `utc_offset` | none (UTC) |
//! | `limit.scope` | identity parts keying the counter: `api_key`, `user`, `tenant`, `ip`, `caller`; `[]` is one global counter | `["caller"]` |
//! | `limit.cost` | a number (units per request, must fit the capacity), `"requests"`, `"latency"` (ms until the body ends), `{"tokens": "<response header>"}`, `{"error_responses": "500-599"}` | 1 |
//! | `limit.family` | `qstash` header family: `daily`, `burst`, `chat-requests`, `chat-tokens` | none |
//! | `limit.block_for` | a duration (1 s ..= 30 days): the request that finds this limit exhausted blocks its scope on this tier for that long (see *Blocking an abuser*); not inside a cascade | none |
//! | `limit.tenant_aggregate` | also count per tenant with capacity × users in the tenant × this factor | none |
//! | `tiers.NAME.delay_up_to` | a request this tier's limits refuse, but that has room within this long (at most 10 minutes), waits and is then admitted instead of a 429 (see *Waiting instead of refusing* below) | none |
//! | `tiers.NAME.queue` | with `delay_up_to`: most requests of one scope waiting at once on one instance, 1 ..= 1 000 000 | the tier's smallest capacity |
//! | `routes[]` | `methods` (absent, `[]` or `["*"]`: any), `path` pattern, `tier` (a tier name or `exempt`); first match wins | `[]` |
//! | `default_tier` | route tier of requests no route matches; `null`: none (every tier must be used: by a route, `default_tier`, `global`, or as a plan; an unused one is an error) | `null` |
//! | `plans.default` / `plans.assignments` / `plans.users` / `plans.tenants` | the plan (a tier) of callers without an assignment / by API key / by user id / by tenant id (a request takes its API key's, else its user's, else its tenant's, else the default); a key that could never match (empty, spaces around it, longer than `identity.max_key_len`) is an error | no plans |
//! | `global` | a tier checked on every non-exempt request | `null` |
//! | `headers` | `x-ratelimit`, `ietf`, `qstash` or `none` | `x-ratelimit` |
//! | `errors` | 429 body: `qarion`, `qlik`, `gather`, `qstash`, `problem` | `problem` |
//! | `mode` | `enforce`, or `shadow` (count, add headers, never reject) | `enforce` |
//! | `modifiers[]` | `{"header", "equals", "factor"}`: matching requests get every capacity × factor, in counters of their own | `[]` |
//! | `tenant_users` | users per tenant for tenant aggregates (absent tenant: 1) | `{}` |
//! | `store.max_keys` | most entries (tier × scope key) the memory store tracks | 1 048 576 |
//! | `store.redis.url` / `cluster` | counters in this Redis (feature `redis`), or in the Redis Cluster of these nodes | none: memory |
//! | `store.redis.on_error` | `open` (forward unlimited), `closed` (503 + `Retry-After: 1`) or `fallback` (a local memory store until Redis answers) | `open` |
//! | `store.redis.timeout_ms` / `prefix` | how long a decision waits for Redis; prefix of its keys | 50 / `tierlimit` |
//! | `store.redis.secret` | the text the key of the hash naming counters in Redis is derived from (give every instance the same) | none (the empty text) |
//! | `store.redis.max_pending_charges` | most post-charges waiting to be sent to Redis | 100 000 |
//! | `store.redis.lease_ms` / `lease_max_units` | longest life of a lease on a busy counter (0: none), and most units one holds | 250 / 10 000 |
//!
//! The `store` section is the [`Deployment`](crate::Deployment): read the
//! whole file with [`Setup::from_file`](crate::Setup::from_file) (or
//! [`Config::setup`]); [`Config::build`] and `Policy::from_file` compile the
//! policy alone and refuse a file whose `store` section is not the default.
//!
//! # Costs measured after the response
//!
//! A limit whose cost is `latency`, `tokens` or `error_responses` cannot know
//! the cost at admission. It **admits while its used amount is below its
//! capacity**, and the cost is charged exactly once when the response body
//! ends or is dropped (client gone), or when the inner service fails (which
//! counts as a 500 for `error_responses`). The hard "never above capacity"
//! guarantee therefore holds for request costs only; a post-charged limit
//! can overshoot by the cost of the requests in flight when it fills up.
//!
//! # Requests in flight
//!
//! A `"kind": "concurrent"` limit counts requests of one scope in flight
//! at once (GitHub's 100 concurrent requests; Stripe's concurrent-request
//! limiter): a request takes `cost` units (1 by default) at admission and
//! gives them back when its response body ends or is dropped, when the
//! inner service fails, panics or the request is cancelled. Over capacity
//! it gets 429 with `Retry-After: 1` (when requests in flight end is not
//! known). Its `window` is the longest a unit is held: a unit not given
//! back by then (a request that runs longer, an instance that died
//! holding it) stops counting, so nothing leaks for longer. Shared across
//! instances on Redis; never leased. In the rate-limit headers it shows
//! only while it refuses; the usage report lists it (`unit`
//! `concurrent-requests`). Not in a cascade, not with `block_for` or
//! `tenant_aggregate`.
//!
//! ```json
//! { "name": "in-flight", "kind": "concurrent", "capacity": 100, "window": "5m" }
//! ```
//!
//! # Blocking an abuser
//!
//! With `"block_for": "10m"` on a limit, the request that finds the limit
//! exhausted (refused by it) starts a block of ten minutes for its scope
//! on that tier, as Cloudflare's mitigation timeout does: during it every
//! request of that scope on the tier is refused with 429, `Retry-After`
//! being what is left of the block, even when the window has room again.
//! The block is a counter of its own beside the limit's (a window of the
//! block's length, shared across instances on Redis); the 429 names the
//! limit that was exceeded, and the usage report lists the block as
//! `"<limit> (block)"`. A plan change to
//! another tier leaves it behind; `Controller::lift_blocks` (the example
//! gateway: `DELETE /admin/blocks/{api key}`) lifts it at once. Lifting
//! a block leaves the limit's own window as it is: a caller still over the
//! limit starts a new block with its next refused request.
//! `RateLimitLayer::blocks_started` and the metric
//! `tierlimit_blocks_started_total{tier, limit}` count blocks started.
//!
//! # Waiting instead of refusing
//!
//! With `"delay_up_to": "2s"` on a tier, a request its limits refuse, but
//! that the store says has room within two seconds of its arrival, is not
//! answered 429: it waits (a tokio timer in its response future, no thread
//! held) until the instant the window has room, is then decided again by
//! the store and admitted and charged, as nginx `limit_req` without
//! `nodelay` and Kong's throttling do. Exactness holds: nothing is admitted
//! before its window has room; a request that loses its slot to another
//! waits again while its first deadline allows, else gets the 429.
//!
//! - Every limit that refuses the request must be in a tier with
//!   `delay_up_to`; the smallest of their delays applies.
//! - At most `queue` requests of one scope (the counter of the limit that
//!   frees last) wait at once on one instance (default: the tier's
//!   smallest capacity); past it, or when the wait would be longer, 429 as
//!   before. A waiting request whose client goes away gives its place
//!   back and charges nothing.
//! - `RateLimitLayer::requests_delayed` / `requests_waiting` and the
//!   metrics `tierlimit_delayed_total` and `tierlimit_waiting` count them.
//! - The timer needs a tokio runtime with time enabled (`#[tokio::main]`
//!   has it); outside a runtime the request gets its 429. In shadow mode
//!   nothing waits.
//!
//! # Cascades
//!
//! A `cascade` group takes its limits shortest window first: a request is
//! charged to the first with room and refused only when all are full; its
//! `Retry-After` is when the first of them has room again. Post-charged
//! costs go to the limit chosen at admission. The crate docs say what the
//! headers report (`Response headers`).
//!
//! # Sliding windows
//!
//! Time is counted in whole milliseconds: a request at `t` is stamped with
//! `t` rounded up to the millisecond. A sliding window of length `W` with
//! precision `P` keeps `P` sub-buckets of `W / P` (rounded up to a whole
//! millisecond); each sub-bucket remembers its cost and the stamp of the
//! latest request it took, and that cost counts until exactly `W` after that
//! stamp. So:
//!
//! * never more than `capacity` is admitted in any interval of length `W`
//!   (also across instances sharing a Redis store);
//! * a burst (requests within one sub-bucket) stops counting exactly `W`
//!   after its last request, to the millisecond;
//! * traffic spread over a sub-bucket is counted until `W` after the
//!   sub-bucket's latest request, so an early request in it may count up to
//!   one sub-bucket less one millisecond (`W / P - 1 ms`: 1.999 s of a
//!   minute at the default 30) longer than an exact log would count it;
//!   never shorter;
//! * `Retry-After`, `X-RateLimit-Reset`, `RateLimit-Reset` and IETF `t` are
//!   never more than `W` from the decision (rounded up to whole seconds
//!   where the header carries seconds).
//!
//! `precision` may not make a sub-bucket shorter than one millisecond.
//!
//! # Fixed windows and time zones
//!
//! Fixed windows follow UTC, a fixed UTC offset (`utc_offset`), or, with the
//! `tz` feature, the wall clock of a time zone (`time_zone`): an IANA name
//! such as `"America/New_York"`, or `"local"` for the server's zone (`TZ`,
//! else `/etc/localtime`, else UTC). Zones are read from the system's time
//! zone database, with a copy bundled in the binary for systems that have
//! none. A limit may not set both, and an unknown zone is refused when the
//! configuration is built.
//!
//! A zoned window resets when the local wall clock crosses a multiple of
//! its length: a day window at local midnight, an hour window at local
//! `:00` (also in zones with `:30` or `:45` offsets). Across daylight saving
//! changes:
//!
//! * the day the clocks go forward is 23 hours long, and so is its day
//!   window; the hour window of the skipped hour is empty;
//! * the day the clocks go back is 25 hours long, and so is its day window.
//!   The wall clock repeats an hour; windows never do: the window holding
//!   the repeated hour lasts until the wall clock first passes its end
//!   (an hour window there lasts two hours). Windows never come back.
//!
//! Several instances sharing counters (Redis) must agree on the zone: name
//! it rather than using `local` when they may run in different zones. With
//! Redis, a zoned window's boundary is placed by the deciding instance's
//! clock.
//!
//! A request is checked against its route tier, its plan and the global tier
//! at once; each limit counts per (tier, limit, scope key), so tiers never
//! share a budget. The name `exempt` is reserved for routes.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use crate::error::{ConfigError, ConfigErrorKind};

/// The route target that means "exempt": neither counted nor given headers.
/// Reserved: no tier may have this name.
pub const EXEMPT: &str = "exempt";

/// How a sliding or fixed window counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum WindowKind {
    /// In every interval of the window's length, admitted cost ≤ capacity.
    #[default]
    Sliding,
    /// Resets on clock boundaries (minute at :00, hour at :00, day at midnight).
    Fixed,
    /// Requests in flight at once: capacity units are taken at admission
    /// and given back when the response ends; `window` is the longest a
    /// unit is held (see *Requests in flight*).
    Concurrent,
}

/// One identity part of a counter's scope.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ScopePart {
    /// The API key.
    ApiKey,
    /// The user id extension.
    User,
    /// The tenant id extension.
    Tenant,
    /// The client IP.
    Ip,
    /// First present of API key → user → IP.
    Caller,
}

/// How a group combines its limits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Combine {
    /// Every limit must have room; an admitted request is charged to all.
    #[default]
    All,
    /// Limits are taken shortest window first: the request is charged to the
    /// first with room and refused only when all are full.
    Cascade,
}

/// Whether the layer rejects, or only reports what it would reject.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Mode {
    /// Over the limit is a 429.
    #[default]
    Enforce,
    /// Count and add headers, never reject; would-be rejections are marked
    /// on the response ([`crate::ShadowRejection`]) and logged.
    Shadow,
}

/// The header family a limit reports in, for the `qstash` header style.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Family {
    /// `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset`.
    Daily,
    /// `Burst-RateLimit-Limit`, `Burst-RateLimit-Remaining`, `Burst-RateLimit-Reset`.
    Burst,
    /// `x-ratelimit-limit-requests`, `x-ratelimit-remaining-requests`, `x-ratelimit-reset-requests`.
    ChatRequests,
    /// `x-ratelimit-limit-tokens`, `x-ratelimit-remaining-tokens`, `x-ratelimit-reset-tokens`.
    ChatTokens,
}

impl Family {
    /// How the family is named in `qstash` 429 bodies.
    pub fn label(self) -> &'static str {
        match self {
            Family::Daily => "daily",
            Family::Burst => "burst",
            Family::ChatRequests => "chat-requests",
            Family::ChatTokens => "chat-tokens",
        }
    }
}

/// What one request costs a limit.
///
/// In JSON: a number (that many units per request), `"requests"` (1),
/// `"latency"`, `{"tokens": "x-usage-tokens"}`, or
/// `{"error_responses": "500-599"}`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Cost {
    /// This many units per request, charged at admission.
    Requests(u64),
    /// Milliseconds (rounded up) from admission until the response body
    /// ends or is dropped, charged then.
    Latency,
    /// The amount the response reports in this header (0 when absent or not
    /// a number), charged when the body ends or is dropped.
    Tokens(String),
    /// 1 per response whose status is in this inclusive range (an inner
    /// service error counts as 500), charged when the body ends or is dropped.
    ErrorResponses(u16, u16),
}

impl Cost {
    /// Whether the cost is known only after the response.
    pub fn is_post(&self) -> bool {
        !matches!(self, Cost::Requests(_))
    }

    /// The IETF quota unit of this cost.
    pub fn unit(&self) -> &'static str {
        match self {
            Cost::Requests(_) | Cost::ErrorResponses(..) => "request",
            Cost::Latency => "latency-ms",
            Cost::Tokens(_) => "tokens",
        }
    }
}

fn parse_status_range(s: &str) -> Result<(u16, u16), String> {
    let bad = || format!("`{s}` is not a status or status range such as \"500-599\"");
    let (lo, hi) = match s.split_once('-') {
        Some((a, b)) => (a.trim(), b.trim()),
        None => (s.trim(), s.trim()),
    };
    let lo: u16 = lo.parse().map_err(|_| bad())?;
    let hi: u16 = hi.parse().map_err(|_| bad())?;
    if !(100..=999).contains(&lo) || !(100..=999).contains(&hi) || lo > hi {
        return Err(bad());
    }
    Ok((lo, hi))
}

impl<'de> Deserialize<'de> for Cost {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(u64),
            Word(String),
            Map(std::collections::BTreeMap<String, String>),
        }
        let expected = "a number, \"requests\", \"latency\", {\"tokens\": \"header\"} or {\"error_responses\": \"500-599\"}";
        match Raw::deserialize(d).map_err(|_| de::Error::custom(format!("expected {expected}")))? {
            Raw::Num(n) => Ok(Cost::Requests(n)),
            Raw::Word(w) => match w.as_str() {
                "requests" => Ok(Cost::Requests(1)),
                "latency" => Ok(Cost::Latency),
                other => Err(de::Error::custom(format!(
                    "unknown cost `{other}`, expected {expected}"
                ))),
            },
            Raw::Map(m) if m.len() == 1 => {
                let (k, v) = m.into_iter().next().unwrap_or_default();
                match k.as_str() {
                    "tokens" => Ok(Cost::Tokens(v)),
                    "error_responses" => parse_status_range(&v)
                        .map(|(lo, hi)| Cost::ErrorResponses(lo, hi))
                        .map_err(de::Error::custom),
                    other => Err(de::Error::custom(format!(
                        "unknown cost `{other}`, expected {expected}"
                    ))),
                }
            }
            Raw::Map(_) => Err(de::Error::custom(format!("expected {expected}"))),
        }
    }
}

/// A capacity multiplier for requests carrying a header value, e.g. sandbox
/// apps at half capacity. Matching requests count in counters of their own.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Modifier {
    /// Request header to look at.
    pub header: String,
    /// Value it must have (compared exactly, after trimming spaces).
    pub equals: String,
    /// Multiplier of every capacity, greater than zero.
    pub factor: f64,
}

impl Modifier {
    /// Requests whose `header` equals `equals` get every capacity × `factor`.
    pub fn new(header: impl Into<String>, equals: impl Into<String>, factor: f64) -> Self {
        Modifier {
            header: header.into(),
            equals: equals.into(),
            factor,
        }
    }
}

/// Which rate-limit headers responses carry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize)]
#[non_exhaustive]
pub enum HeaderStyle {
    /// `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset`.
    #[default]
    #[serde(rename = "x-ratelimit")]
    XRateLimit,
    /// `RateLimit-Policy` and `RateLimit`, as Structured Fields per
    /// draft-ietf-httpapi-ratelimit-headers.
    #[serde(rename = "ietf")]
    Ietf,
    /// One header family per limit, as each limit's `family` says.
    #[serde(rename = "qstash")]
    Qstash,
    /// No rate-limit headers (`Retry-After` is still sent on 429).
    #[serde(rename = "none")]
    None,
}

/// The body of a 429 response.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorFormat {
    /// RFC 9457 `application/problem+json`.
    #[default]
    Problem,
    /// `{"detail":"Rate limit exceeded. Try again in N seconds."}`
    Qarion,
    /// `{"errors":[{"code":"HTTP-429","title":"API rate limit reached.",...}]}`
    Qlik,
    /// `{"error":{"code":"RATE_LIMIT_EXCEEDED",...},"meta":{"requestId":...}}`
    Gather,
    /// A JSON error naming the limit family that was hit.
    Qstash,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    humantime::parse_duration(s).map_err(|e| {
        format!("`{s}` is not a duration such as \"30s\", \"5m\", \"1h\", \"1d\": {e}")
    })
}

fn de_opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de_duration(d).map(Some)
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration such as \"30s\", \"5m\", \"1h\", \"1d\", or whole seconds")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
            Ok(Duration::from_secs(v))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
            u64::try_from(v)
                .map(Duration::from_secs)
                .map_err(|_| E::custom("a duration cannot be negative"))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
            parse_duration(v).map_err(E::custom)
        }
    }
    d.deserialize_any(V)
}

fn default_scope() -> Vec<ScopePart> {
    vec![ScopePart::Caller]
}

fn one_request() -> Cost {
    Cost::Requests(1)
}

/// One limit: `capacity` cost units per `window`.
///
/// ```
/// use std::time::Duration;
/// use tierlimit::config::{Limit, ScopePart};
///
/// let per_minute = Limit::sliding("per-minute", 60, Duration::from_secs(60));
/// let daily = Limit::fixed("day", 500, Duration::from_secs(86_400))
///     .utc_offset("+02:00")
///     .scope([ScopePart::Tenant, ScopePart::User]);
/// # let _ = (per_minute, daily);
/// ```
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Limit {
    /// Name, unique within its tier; shown in 429 bodies and metrics.
    pub name: String,
    /// Cost units admitted per window (1 ..= `u32::MAX`).
    pub capacity: u32,
    /// Window length.
    #[serde(deserialize_with = "de_duration")]
    pub window: Duration,
    /// Sliding or fixed.
    #[serde(default)]
    pub kind: WindowKind,
    /// Sub-buckets of a sliding window.
    #[serde(default)]
    pub precision: Option<u32>,
    /// Fixed windows: the UTC offset whose clock they follow.
    #[serde(default)]
    pub utc_offset: Option<String>,
    /// Fixed windows: the time zone whose wall clock they follow, an IANA
    /// name or `local` (feature `tz`). Not together with `utc_offset`.
    #[serde(default)]
    pub time_zone: Option<String>,
    /// Identity parts keying the counter.
    #[serde(default = "default_scope")]
    pub scope: Vec<ScopePart>,
    /// What a request costs.
    #[serde(default = "one_request")]
    pub cost: Cost,
    /// Header family for the `qstash` header style.
    #[serde(default)]
    pub family: Option<Family>,
    /// Also count per tenant, with capacity × users in the tenant × this
    /// factor (the tenant's aggregate limit).
    #[serde(default)]
    pub tenant_aggregate: Option<f64>,
    /// The request that finds this limit exhausted blocks its scope on
    /// this tier for this long (Cloudflare's mitigation timeout); see
    /// *Blocking an abuser* below.
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub block_for: Option<Duration>,
}

impl Limit {
    fn new(name: impl Into<String>, capacity: u32, window: Duration, kind: WindowKind) -> Self {
        Limit {
            name: name.into(),
            capacity,
            window,
            kind,
            precision: None,
            utc_offset: None,
            time_zone: None,
            scope: default_scope(),
            cost: Cost::Requests(1),
            family: None,
            tenant_aggregate: None,
            block_for: None,
        }
    }

    /// A sliding-window limit scoped to the caller.
    pub fn sliding(name: impl Into<String>, capacity: u32, window: Duration) -> Self {
        Self::new(name, capacity, window, WindowKind::Sliding)
    }

    /// At most `capacity` requests of the caller in flight at once; a unit
    /// not given back (a request still running, an instance that died)
    /// stops counting after `hold` (see *Requests in flight*).
    pub fn concurrent(name: impl Into<String>, capacity: u32, hold: Duration) -> Self {
        Self::new(name, capacity, hold, WindowKind::Concurrent)
    }

    /// A clock-aligned (fixed) window limit scoped to the caller, in UTC.
    pub fn fixed(name: impl Into<String>, capacity: u32, window: Duration) -> Self {
        Self::new(name, capacity, window, WindowKind::Fixed)
    }

    /// Blocks the scope for `block` once this limit is found exhausted
    /// (see *Blocking an abuser*).
    pub fn block_for(mut self, block: Duration) -> Self {
        self.block_for = Some(block);
        self
    }

    /// Sets the sub-bucket count of a sliding window.
    pub fn precision(mut self, precision: u32) -> Self {
        self.precision = Some(precision);
        self
    }

    /// Sets the UTC offset (`"+HH:MM"`) of a fixed window.
    pub fn utc_offset(mut self, offset: impl Into<String>) -> Self {
        self.utc_offset = Some(offset.into());
        self
    }

    /// Sets the time zone of a fixed window: an IANA name
    /// (`"Europe/Amsterdam"`) or `"local"` (feature `tz`).
    pub fn time_zone(mut self, zone: impl Into<String>) -> Self {
        self.time_zone = Some(zone.into());
        self
    }

    /// Sets the identity parts keying the counter (`[]`: one global counter).
    pub fn scope(mut self, parts: impl IntoIterator<Item = ScopePart>) -> Self {
        self.scope = parts.into_iter().collect();
        self
    }

    /// Sets the cost units charged per request.
    pub fn cost(mut self, cost: u64) -> Self {
        self.cost = Cost::Requests(cost);
        self
    }

    /// Sets what a request costs (latency, tokens, error responses...).
    pub fn cost_kind(mut self, cost: Cost) -> Self {
        self.cost = cost;
        self
    }

    /// Sets the header family (for the `qstash` header style).
    pub fn family(mut self, family: Family) -> Self {
        self.family = Some(family);
        self
    }

    /// Adds the tenant aggregate: capacity × users in the tenant × `factor`.
    pub fn tenant_aggregate(mut self, factor: f64) -> Self {
        self.tenant_aggregate = Some(factor);
        self
    }
}

/// A group of limits combined one way.
///
/// ```
/// use std::time::Duration;
/// use tierlimit::config::{Group, Limit, Tier};
///
/// let buckets = Group::cascade([
///     Limit::fixed("minute", 100, Duration::from_secs(60)),
///     Limit::fixed("hour", 2600, Duration::from_secs(3600)),
/// ]);
/// let tier = Tier::new().group(buckets);
/// # let _ = tier;
/// ```
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Group {
    /// How the limits combine.
    #[serde(default)]
    pub combine: Combine,
    /// The limits.
    pub limits: Vec<Limit>,
}

impl Group {
    /// A group whose limits must all have room.
    pub fn all(limits: impl IntoIterator<Item = Limit>) -> Self {
        Group {
            combine: Combine::All,
            limits: limits.into_iter().collect(),
        }
    }

    /// A cascade: shortest window first, the first with room is charged.
    pub fn cascade(limits: impl IntoIterator<Item = Limit>) -> Self {
        Group {
            combine: Combine::Cascade,
            limits: limits.into_iter().collect(),
        }
    }
}

/// A named set of limit groups; a request must pass every group.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Tier {
    /// Limits of an implicit `all` group.
    #[serde(default)]
    pub limits: Vec<Limit>,
    /// Further groups.
    #[serde(default)]
    pub groups: Vec<Group>,
    /// A request this tier's limits refuse, but that would have room
    /// within this long, waits for its slot and is then admitted (nginx
    /// `limit_req` without `nodelay`) instead of a 429; see the policy
    /// docs' *Waiting instead of refusing*.
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub delay_up_to: Option<Duration>,
    /// Most requests of one scope waiting at once on one instance (with
    /// `delay_up_to`); default: the tier's smallest capacity.
    #[serde(default)]
    pub queue: Option<u32>,
}

impl Tier {
    /// An empty tier.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a limit to the tier's `all` group.
    pub fn limit(mut self, limit: Limit) -> Self {
        self.limits.push(limit);
        self
    }

    /// Adds a group.
    pub fn group(mut self, group: Group) -> Self {
        self.groups.push(group);
        self
    }

    /// Lets a refused request wait up to `wait` for room (see
    /// [`Tier::delay_up_to`](Tier#structfield.delay_up_to)).
    pub fn delay_up_to(mut self, wait: Duration) -> Self {
        self.delay_up_to = Some(wait);
        self
    }

    /// Most requests of one scope waiting at once (with `delay_up_to`).
    pub fn queue(mut self, n: u32) -> Self {
        self.queue = Some(n);
        self
    }
}

/// A route rule: methods + path pattern → tier, or `exempt`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Route {
    /// Methods taken; empty or `*` means any.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Path pattern: literal segments, `{param}` or `*` for one segment,
    /// `**` (last) for the rest; see the `policy` module docs.
    pub path: String,
    /// A tier name, or `exempt`.
    pub tier: String,
}

impl Route {
    /// A rule sending `methods` + `path` to `tier` (or `"exempt"`).
    pub fn new<I, M>(methods: I, path: impl Into<String>, tier: impl Into<String>) -> Self
    where
        I: IntoIterator<Item = M>,
        M: Into<String>,
    {
        Route {
            methods: methods.into_iter().map(Into::into).collect(),
            path: path.into(),
            tier: tier.into(),
        }
    }

    /// A rule making `methods` + `path` exempt.
    pub fn exempt<I, M>(methods: I, path: impl Into<String>) -> Self
    where
        I: IntoIterator<Item = M>,
        M: Into<String>,
    {
        Self::new(methods, path, EXEMPT)
    }
}

/// Collects (key, plan) pairs into a map.
fn pairs<I, K, P>(items: I) -> BTreeMap<String, String>
where
    I: IntoIterator<Item = (K, P)>,
    K: Into<String>,
    P: Into<String>,
{
    items
        .into_iter()
        .map(|(k, p)| (k.into(), p.into()))
        .collect()
}

/// Callers' plans: each plan is a tier.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Plans {
    /// Plan of callers without an assignment.
    pub default: String,
    /// API key → plan name.
    #[serde(default)]
    pub assignments: BTreeMap<String, String>,
    /// User id → plan name (requests without an API key that has one).
    #[serde(default)]
    pub users: BTreeMap<String, String>,
    /// Tenant id → plan name (requests whose API key and user have none).
    #[serde(default)]
    pub tenants: BTreeMap<String, String>,
}

/// How identities are read (see [`crate::identity`]).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct IdentitySection {
    /// Header carrying the API key; `null` disables it.
    pub api_key_header: Option<String>,
    /// Whether `Authorization: Bearer` carries an API key.
    pub bearer: bool,
    /// CIDR blocks of trusted proxies.
    pub trusted_proxies: Vec<String>,
    /// Longest identity value used, in bytes.
    pub max_key_len: usize,
    /// IPv6 clients are keyed by this many leading bits of their address
    /// (0 ..= 128; default 64: one /64, as a host usually holds).
    pub ipv6_prefix: u8,
    /// What requests that nothing identifies get (no API key, no user, no
    /// client address).
    pub anonymous: Anonymous,
}

impl Default for IdentitySection {
    fn default() -> Self {
        IdentitySection {
            api_key_header: Some("x-api-key".into()),
            bearer: true,
            trusted_proxies: Vec::new(),
            max_key_len: 256,
            ipv6_prefix: 64,
            anonymous: Anonymous::Share,
        }
    }
}

/// What a request that nothing identifies (no API key, no user, no client
/// address) gets. Such requests happen when a service is served without
/// connect info (`axum::serve(listener, app)` rather than
/// `app.into_make_service_with_connect_info::<SocketAddr>()`) and the caller
/// sends no API key; the layer says so once at WARN and counts them
/// (`tierlimit_anonymous_total`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Anonymous {
    /// Every such request shares one budget per limit (one noisy client
    /// can use it all up for the others).
    #[default]
    Share,
    /// Such requests are answered `401 Unauthorized` with a JSON problem
    /// body saying how to identify, and never reach the store.
    Refuse,
}

/// What the layer does when its store cannot decide.
///
/// The default is [`OnStoreError::Open`], as Envoy and Kong do: a rate
/// limiter that is down should not take the API down with it. In JSON:
/// `"open"`, `"closed"` (`Retry-After: 1`) or `"fallback"`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OnStoreError {
    /// Forward the request unlimited, without rate-limit headers.
    #[default]
    Open,
    /// Answer `503 Service Unavailable` with `Retry-After` and a JSON
    /// problem body (never 429: the caller did nothing wrong). The inner
    /// service is not called.
    Closed {
        /// What `Retry-After` says (whole seconds, at least 1).
        retry_after: Duration,
    },
    /// Decide on a memory store of this instance, with the same policy,
    /// until the store answers again. With N instances, up to N times a
    /// limit may be admitted meanwhile (each counts alone), and what was
    /// counted locally is not carried over to the store.
    Fallback,
}

impl OnStoreError {
    /// Fail closed with `Retry-After: 1`.
    pub const CLOSED: OnStoreError = OnStoreError::Closed {
        retry_after: Duration::from_secs(1),
    };

    pub(crate) fn label(self) -> &'static str {
        match self {
            OnStoreError::Open => "open",
            OnStoreError::Closed { .. } => "closed",
            OnStoreError::Fallback => "fallback",
        }
    }
}

impl<'de> Deserialize<'de> for OnStoreError {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let word = String::deserialize(d)?;
        match word.as_str() {
            "open" => Ok(OnStoreError::Open),
            "closed" => Ok(OnStoreError::CLOSED),
            "fallback" => Ok(OnStoreError::Fallback),
            other => Err(de::Error::custom(format!(
                "unknown variant `{other}`, expected `open`, `closed` or `fallback`"
            ))),
        }
    }
}

/// A whole configuration; see the [module docs](self) for the file format.
///
/// ```
/// use std::time::Duration;
/// use tierlimit::config::{Config, Limit, Route, Tier};
///
/// let policy = Config::new()
///     .tier("standard", Tier::new()
///         .limit(Limit::sliding("per-minute", 60, Duration::from_secs(60)))
///         .limit(Limit::sliding("per-hour", 1000, Duration::from_secs(3600))))
///     .tier("premium", Tier::new().limit(Limit::sliding("per-minute", 300, Duration::from_secs(60))))
///     .plans("standard", [("key-123", "premium")])
///     .route(Route::exempt(["GET"], "/health"))
///     .build()
///     .unwrap();
/// # let _ = policy;
/// ```
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Config {
    /// Identity settings.
    #[serde(default)]
    pub identity: IdentitySection,
    /// Tiers by name.
    #[serde(default)]
    pub tiers: BTreeMap<String, Tier>,
    /// Route rules, first match wins.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// Route tier of requests no rule matches.
    #[serde(default)]
    pub default_tier: Option<String>,
    /// Callers' plans.
    #[serde(default)]
    pub plans: Option<Plans>,
    /// A tier checked on every non-exempt request.
    #[serde(default)]
    pub global: Option<String>,
    /// Response header style.
    #[serde(default)]
    pub headers: HeaderStyle,
    /// 429 body format.
    #[serde(default)]
    pub errors: ErrorFormat,
    /// Where the counters live: the [`Deployment`](crate::Deployment)
    /// half of the file (see [`Config::setup`]).
    #[serde(default)]
    pub store: crate::Deployment,
    /// Enforce, or shadow (never reject).
    #[serde(default)]
    pub mode: Mode,
    /// Capacity multipliers chosen per request.
    #[serde(default)]
    pub modifiers: Vec<Modifier>,
    /// Users per tenant, for tenant aggregates (a tenant not listed counts as
    /// one user). Applications can supply their own resolver instead with
    /// [`Policy::with_tenant_users`](crate::Policy::with_tenant_users).
    #[serde(default)]
    pub tenant_users: BTreeMap<String, u64>,
}

/// A path as serde_path_to_error writes it, without the segments it could
/// not name (`?`, e.g. inside an object whose key is malformed) and
/// without its `.` for the document itself: `tiers.t.?` is `tiers.t`.
fn known_path(path: &str) -> String {
    if path == "." {
        return String::new();
    }
    path.split('.')
        .filter(|seg| *seg != "?")
        .collect::<Vec<_>>()
        .join(".")
}

impl Config {
    /// An empty configuration (it limits nothing until tiers are added).
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads a JSON configuration. This checks the syntax, the types and
    /// the field names; [`Config::build`] checks the values.
    ///
    /// # Errors
    ///
    /// Malformed JSON, unknown fields and wrong types
    /// ([`ConfigErrorKind::Syntax`]), naming the path of the offending value.
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        // serde_json's description, with " at line L column C", is the
        // message (not also a source, which would say it twice).
        let syntax = |path: String, e: serde_json::Error| {
            ConfigError::new(ConfigErrorKind::Syntax, path, e.to_string())
        };
        let de = &mut serde_json::Deserializer::from_str(text);
        let config = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
            let path = known_path(&e.path().to_string());
            syntax(path, e.into_inner())
        })?;
        // Nothing but white space may follow the document.
        de.end().map_err(|e| syntax(String::new(), e))?;
        Ok(config)
    }

    /// Reads a JSON configuration file (see [`Config::from_json`]).
    ///
    /// # Errors
    ///
    /// The file cannot be read ([`ConfigErrorKind::Io`]), or
    /// [`Config::from_json`] refuses it.
    pub fn from_file(path: impl AsRef<std::path::Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            let msg = format!("cannot read {}", path.display());
            ConfigError::new(ConfigErrorKind::Io, "", msg).with_source(e)
        })?;
        Self::from_json(&text)
    }

    /// Adds (or replaces) tier `name`.
    pub fn tier(mut self, name: impl Into<String>, tier: Tier) -> Self {
        self.tiers.insert(name.into(), tier);
        self
    }

    /// Appends a route rule.
    pub fn route(mut self, route: Route) -> Self {
        self.routes.push(route);
        self
    }

    /// Sets the route tier of unmatched requests.
    pub fn default_tier(mut self, name: impl Into<String>) -> Self {
        self.default_tier = Some(name.into());
        self
    }

    /// Sets the plans: a default plan and API key → plan assignments
    /// (see [`Config::user_plans`] and [`Config::tenant_plans`] for the
    /// others).
    pub fn plans<I, K, P>(mut self, default: impl Into<String>, assignments: I) -> Self
    where
        I: IntoIterator<Item = (K, P)>,
        K: Into<String>,
        P: Into<String>,
    {
        let (users, tenants) = self
            .plans
            .take()
            .map(|p| (p.users, p.tenants))
            .unwrap_or_default();
        self.plans = Some(Plans {
            default: default.into(),
            assignments: pairs(assignments),
            users,
            tenants,
        });
        self
    }

    /// Adds user id → plan assignments (after [`Config::plans`], which
    /// sets the default plan).
    pub fn user_plans<I, K, P>(mut self, assignments: I) -> Self
    where
        I: IntoIterator<Item = (K, P)>,
        K: Into<String>,
        P: Into<String>,
    {
        let plans = self.plans.get_or_insert_with(Plans::default);
        plans.users.extend(pairs(assignments));
        self
    }

    /// Adds tenant id → plan assignments (after [`Config::plans`], which
    /// sets the default plan).
    pub fn tenant_plans<I, K, P>(mut self, assignments: I) -> Self
    where
        I: IntoIterator<Item = (K, P)>,
        K: Into<String>,
        P: Into<String>,
    {
        let plans = self.plans.get_or_insert_with(Plans::default);
        plans.tenants.extend(pairs(assignments));
        self
    }

    /// Sets the global tier.
    pub fn global(mut self, name: impl Into<String>) -> Self {
        self.global = Some(name.into());
        self
    }

    /// Sets the response header style.
    pub fn headers(mut self, style: HeaderStyle) -> Self {
        self.headers = style;
        self
    }

    /// Sets the 429 body format.
    pub fn errors(mut self, format: ErrorFormat) -> Self {
        self.errors = format;
        self
    }

    /// Trusts `X-Forwarded-For`/`Forwarded` from peers in these CIDR blocks.
    pub fn trusted_proxies<I, S>(mut self, cidrs: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.identity.trusted_proxies = cidrs.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the API key header (`None` to read no header).
    pub fn api_key_header(mut self, name: Option<&str>) -> Self {
        self.identity.api_key_header = name.map(str::to_owned);
        self
    }

    /// Whether `Authorization: Bearer <token>` carries an API key.
    pub fn bearer(mut self, on: bool) -> Self {
        self.identity.bearer = on;
        self
    }

    /// Sets the longest identity value used, in bytes.
    pub fn max_key_len(mut self, bytes: usize) -> Self {
        self.identity.max_key_len = bytes;
        self
    }

    /// Keys IPv6 clients by this many leading bits of their address.
    pub fn ipv6_prefix(mut self, bits: u8) -> Self {
        self.identity.ipv6_prefix = bits;
        self
    }

    /// Sets what requests that nothing identifies get.
    pub fn anonymous(mut self, anonymous: Anonymous) -> Self {
        self.identity.anonymous = anonymous;
        self
    }

    /// Sets the mode.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Adds a capacity modifier: requests whose `header` equals `value`
    /// get every capacity multiplied by `factor`, in counters of their own.
    pub fn modifier(mut self, header: &str, value: &str, factor: f64) -> Self {
        self.modifiers.push(Modifier::new(header, value, factor));
        self
    }

    /// Sets the number of users of a tenant (for tenant aggregates).
    pub fn tenant_users(mut self, tenant: &str, users: u64) -> Self {
        self.tenant_users.insert(tenant.into(), users);
        self
    }

    /// Sets the cap on counters tracked by the memory store.
    pub fn max_keys(mut self, max_keys: usize) -> Self {
        self.store.max_keys = max_keys;
        self
    }

    /// Keeps the counters in Redis (feature `redis`).
    pub fn redis(mut self, redis: crate::store::RedisStoreConfig) -> Self {
        self.store.redis = Some(redis);
        self
    }

    /// What to do when the store cannot decide (`store.redis.on_error`).
    pub fn on_store_error(mut self, mode: OnStoreError) -> Self {
        self.store.on_error = mode;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1d").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse_duration("1h 30m").unwrap(), Duration::from_secs(5400));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }
}
