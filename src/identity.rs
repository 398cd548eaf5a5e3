//! Who the caller is: API key, user, tenant, client IP.
//!
//! * **API key**: the configured header (default `x-api-key`), else the token
//!   of `Authorization: Bearer <token>` when enabled.
//! * **User** and **tenant**: the [`UserId`] and [`TenantId`] request
//!   extensions, which the application's own authentication layer inserts
//!   before this layer runs.
//! * **Client IP**: the peer address, from the [`ClientAddr`] extension (set it
//!   in a plain hyper server) or, with the `axum` feature, axum's
//!   `ConnectInfo<SocketAddr>`. `X-Forwarded-For` and `Forwarded` are used
//!   only when the peer is a configured trusted proxy.
//!   An IPv6 client is keyed by its network, the first `ipv6_prefix` bits
//!   of its address (default 64, as express-rate-limit and actix-governor
//!   do): a host usually holds a whole /64 and could otherwise send every
//!   request from a fresh address, each with a fresh budget. IPv4-mapped
//!   IPv6 addresses (`::ffff:a.b.c.d`) count as IPv4.
//! * **Caller**: the first present of API key → user → IP; with none of
//!   them the caller is anonymous ([`crate::Anonymous`] says what such
//!   requests get).
//!
//! A `Bearer` token is an API key only when the application inserted no
//! [`UserId`]: an application that authenticates users (say, from a JWT in
//! that very header) has said who the caller is, and the raw token — new
//! at every refresh — must not stand in for the user. An API key in the
//! configured header always counts: it names a key on purpose.
//!
//! # Hooks
//!
//! To say yourself who the caller is (a claim of a token, a session, a
//! lookup), give the layer an [`Identify`] hook
//! ([`RateLimitLayerBuilder::identify`](crate::RateLimitLayerBuilder::identify)):
//! any `Fn(&Parts) -> Option<Identified>`. `None` falls back to the rules
//! above ([`DefaultIdentify`] always does). The values a hook gives go
//! through the same rules as read ones: trimmed, and ignored when empty or
//! longer than `max_key_len`. A [`ChoosePlan`] hook
//! ([`RateLimitLayerBuilder::choose_plan`](crate::RateLimitLayerBuilder::choose_plan))
//! picks the plan the same way, e.g. from a `plan` claim.
//!
//! ```
//! use std::time::Duration;
//! use http::request::Parts;
//! use tierlimit::config::{Config, Limit, Tier};
//! use tierlimit::identity::{Identified, Identity};
//! use tierlimit::RateLimitLayer;
//!
//! let policy = Config::new()
//!     .tier("standard", Tier::new().limit(Limit::sliding("m", 60, Duration::from_secs(60))))
//!     .tier("premium", Tier::new().limit(Limit::sliding("m", 600, Duration::from_secs(60))))
//!     .plans("standard", [("k", "standard")])
//!     .build()
//!     .unwrap();
//! let layer = RateLimitLayer::builder(policy)
//!     // Callers by the `x-account` header your gateway sets after checking a token.
//!     .identify(|req: &Parts| {
//!         let account = req.headers.get("x-account")?.to_str().ok()?;
//!         Some(Identified::new().user(account))
//!     })
//!     // Their plan from another header (unknown names get the default plan).
//!     .choose_plan(|req: &Parts, _: &Identity<'_>| {
//!         Some(req.headers.get("x-plan")?.to_str().ok()?.to_owned())
//!     })
//!     .build();
//! # let _ = layer;
//! ```
//!
//! # Odd values
//!
//! Values are hashed (keyed SipHash) before they reach a store, so any bytes
//! are safe to count. An API key or identity value that is **empty** (after
//! trimming spaces) or **longer than `max_key_len`** bytes (default 256) is
//! treated as absent, and the next identity in line is used: an oversized key
//! cannot make the limiter hash megabytes, nor mint an unlimited supply of
//! distinct counters cheaply. A **non-UTF-8** API key is counted by its bytes
//! but never matches a plan assignment (those are UTF-8), so it gets the
//! default plan. A request with none of the parts a scope needs shares one
//! "anonymous" counter for that part.
//!
//! # Deployment caveat
//!
//! Forwarding headers are trivially forged. Configure `trusted_proxies` with
//! the addresses of *your* load balancers only; with an empty list (the
//! default) the peer address is always the client. Behind a proxy that is not
//! listed, every client appears as the proxy's address and shares its budget.

use std::net::{IpAddr, SocketAddr};

use http::request::Parts;
use http::{header, HeaderMap, HeaderName};
use ipnet::IpNet;

/// The authenticated user, inserted into request extensions by the
/// application's authentication layer.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct UserId(pub String);

/// The caller's tenant, inserted into request extensions by the application's
/// authentication layer.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TenantId(pub String);

/// Who a caller is, as an [`Identify`] hook says: owned values, since a
/// hook usually computes them (a token's claims, a lookup).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Identified {
    /// The API key.
    pub api_key: Option<String>,
    /// The user id.
    pub user: Option<String>,
    /// The tenant id.
    pub tenant: Option<String>,
    /// The client address (IPv6: cut to `ipv6_prefix` bits as read ones
    /// are).
    pub ip: Option<IpAddr>,
}

impl Identified {
    /// Nothing known yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// With this API key.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// With this user id.
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    /// With this tenant id.
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }

    /// With this client address.
    pub fn ip(mut self, ip: IpAddr) -> Self {
        self.ip = Some(ip);
        self
    }

    /// As an [`Identity`] under `config`'s rules: values trimmed, and
    /// absent when empty or longer than `max_key_len`.
    pub fn identity<'a>(&'a self, config: &IdentityConfig) -> Identity<'a> {
        let max = config.max_key_len;
        Identity {
            api_key: self
                .api_key
                .as_deref()
                .and_then(|k| usable(k.as_bytes(), max)),
            user: self.user.as_deref().and_then(|u| usable_str(u, max)),
            tenant: self.tenant.as_deref().and_then(|t| usable_str(t, max)),
            ip: self.ip.map(|ip| config.network_of(canonical(ip))),
        }
    }
}

/// Says who sent a request. Implemented for every
/// `Fn(&Parts) -> Option<Identified>`; `None` means "read it as the policy
/// says" ([`DefaultIdentify`]). See [the module docs](self#hooks).
pub trait Identify: Send + Sync + 'static {
    /// Who sent `request`, or `None` for the policy's rules.
    fn identify(&self, request: &Parts) -> Option<Identified>;
}

impl<F> Identify for F
where
    F: Fn(&Parts) -> Option<Identified> + Send + Sync + 'static,
{
    fn identify(&self, request: &Parts) -> Option<Identified> {
        self(request)
    }
}

/// The policy's own rules: headers, extensions, the peer address (see
/// [the module docs](self)).
#[derive(Clone, Copy, Debug, Default)]
pub struct DefaultIdentify;

impl Identify for DefaultIdentify {
    fn identify(&self, _: &Parts) -> Option<Identified> {
        None
    }
}

/// Picks the plan of a request, by name. Implemented for every
/// `Fn(&Parts, &Identity<'_>) -> Option<String>`. `None` leaves it to the
/// plan assignments ([`DefaultPlan`]); a name that is not a plan of the
/// policy in force also does, and is counted
/// (`tierlimit_unknown_plans_total`, [`Controller::unknown_plans`](crate::Controller::unknown_plans)).
pub trait ChoosePlan: Send + Sync + 'static {
    /// The plan of `request`, whose identity is `id`.
    fn plan(&self, request: &Parts, id: &Identity<'_>) -> Option<String>;
}

impl<F> ChoosePlan for F
where
    F: Fn(&Parts, &Identity<'_>) -> Option<String> + Send + Sync + 'static,
{
    fn plan(&self, request: &Parts, id: &Identity<'_>) -> Option<String> {
        self(request, id)
    }
}

/// Plans from the plan assignments alone (runtime, then configured, then
/// the default plan).
#[derive(Clone, Copy, Debug, Default)]
pub struct DefaultPlan;

impl ChoosePlan for DefaultPlan {
    fn plan(&self, _: &Parts, _: &Identity<'_>) -> Option<String> {
        None
    }
}

/// The TCP peer address; insert it in a plain hyper server (axum users get it
/// from `ConnectInfo` with the `axum` feature).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientAddr(pub SocketAddr);

/// Parses a CIDR block (`10.0.0.0/8`, `2001:db8::/32`) or a bare address
/// (a /32 or /128).
pub(crate) fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let (a, p) = match s.trim().split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s.trim(), None),
    };
    let addr: IpAddr = a
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not an IP address or CIDR block"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match p {
        None => max,
        Some(p) => p
            .trim()
            .parse::<u8>()
            .ok()
            .filter(|&n| n <= max)
            .ok_or_else(|| format!("`{s}` has a prefix length outside 0..={max}"))?,
    };
    IpNet::new(addr, prefix).map_err(|e| format!("`{s}`: {e}"))
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// How identities are read from requests.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct IdentityConfig {
    /// Header carrying the API key; `None` disables it. Default `x-api-key`.
    pub api_key_header: Option<HeaderName>,
    /// Whether `Authorization: Bearer <token>` carries an API key. Default on.
    pub bearer: bool,
    /// Proxies whose `X-Forwarded-For` / `Forwarded` headers are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Longest identity value used, in bytes; longer ones count as absent.
    pub max_key_len: usize,
    /// IPv6 clients are keyed by this many leading bits of their address
    /// (default 64).
    pub ipv6_prefix: u8,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            api_key_header: Some(HeaderName::from_static("x-api-key")),
            bearer: true,
            trusted_proxies: Vec::new(),
            max_key_len: 256,
            ipv6_prefix: 64,
        }
    }
}

/// The identity parts of one request, borrowed from it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Identity<'a> {
    /// The API key's bytes.
    pub api_key: Option<&'a [u8]>,
    /// The user id.
    pub user: Option<&'a str>,
    /// The tenant id.
    pub tenant: Option<&'a str>,
    /// The client address (IPv6: its network, see
    /// [`IdentityConfig::ipv6_prefix`]).
    pub ip: Option<IpAddr>,
}

/// The caller: first present of API key → user → IP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Caller<'a> {
    /// Identified by API key.
    ApiKey(&'a [u8]),
    /// Identified by user id.
    User(&'a str),
    /// Identified by client address.
    Ip(IpAddr),
    /// Nothing identifies the caller.
    Anonymous,
}

impl<'a> Identity<'a> {
    /// The caller of this request.
    pub fn caller(&self) -> Caller<'a> {
        if let Some(k) = self.api_key {
            Caller::ApiKey(k)
        } else if let Some(u) = self.user {
            Caller::User(u)
        } else if let Some(ip) = self.ip {
            Caller::Ip(ip)
        } else {
            Caller::Anonymous
        }
    }

    /// The caller as text for a plan lookup (API key or user id), if any.
    pub fn plan_key(&self) -> Option<&'a str> {
        match self.caller() {
            Caller::ApiKey(k) => std::str::from_utf8(k).ok(),
            Caller::User(u) => Some(u),
            _ => None,
        }
    }
}

fn usable(v: &[u8], max: usize) -> Option<&[u8]> {
    let v = v.trim_ascii();
    (!v.is_empty() && v.len() <= max).then_some(v)
}

fn usable_str(v: &str, max: usize) -> Option<&str> {
    usable(v.as_bytes(), max).and_then(|b| std::str::from_utf8(b).ok())
}

impl IdentityConfig {
    /// Reads the identity of a request from its head.
    pub fn extract<'a>(&self, req: &'a Parts) -> Identity<'a> {
        let headers = &req.headers;
        let max = self.max_key_len;
        let mut api_key = self
            .api_key_header
            .as_ref()
            .and_then(|h| headers.get(h))
            .and_then(|v| usable(v.as_bytes(), max));
        let ext = &req.extensions;
        // A bearer token stands for a caller only when the application has
        // not said who the caller is (see the module docs).
        if api_key.is_none() && self.bearer && ext.get::<UserId>().is_none() {
            api_key = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| bearer_token(v.as_bytes()))
                .and_then(|t| usable(t, max));
        }
        let user = ext.get::<UserId>().and_then(|u| usable_str(&u.0, max));
        let tenant = ext.get::<TenantId>().and_then(|t| usable_str(&t.0, max));
        let peer = peer_addr(req);
        let ip = peer.map(|p| self.network_of(self.client_ip(canonical(p), headers)));
        Identity {
            api_key,
            user,
            tenant,
            ip,
        }
    }

    /// The address a client is keyed by: IPv4 as is, IPv6 cut to
    /// `ipv6_prefix` bits (a host usually holds a whole /64 and can send
    /// every request from a new address in it).
    pub fn network_of(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V6(v6) => {
                let bits = u32::from(self.ipv6_prefix.min(128));
                let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
                IpAddr::V6((u128::from(v6) & mask).into())
            }
            v4 => v4,
        }
    }

    fn trusted(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }

    /// The client address: the peer, or — when the peer is a trusted proxy —
    /// the rightmost address in the forwarding chain that is not itself a
    /// trusted proxy. `Forwarded` is preferred to `X-Forwarded-For`.
    /// Unparseable entries stop the walk at the last address known good.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.trusted(peer) {
            return peer;
        }
        let mut chain: Vec<Option<IpAddr>> = Vec::new();
        let forwarded: Vec<_> = headers.get_all(header::FORWARDED).iter().collect();
        if !forwarded.is_empty() {
            for v in forwarded {
                let Ok(v) = v.to_str() else {
                    chain.push(None);
                    continue;
                };
                for elem in v.split(',') {
                    let for_ = elem.split(';').find_map(|pair| {
                        let (k, val) = pair.split_once('=')?;
                        k.trim().eq_ignore_ascii_case("for").then(|| val.trim())
                    });
                    chain.push(for_.and_then(parse_forwarded_for));
                }
            }
        } else {
            for v in headers.get_all("x-forwarded-for") {
                let Ok(v) = v.to_str() else {
                    chain.push(None);
                    continue;
                };
                chain.extend(v.split(',').map(|s| parse_node(s.trim())));
            }
        }
        let mut client = peer;
        for hop in chain.into_iter().rev() {
            match hop {
                Some(ip) => {
                    client = canonical(ip);
                    if !self.trusted(client) {
                        break;
                    }
                }
                None => break,
            }
        }
        client
    }
}

fn bearer_token(v: &[u8]) -> Option<&[u8]> {
    let v = v.trim_ascii();
    if v.len() > 7 && v[..6].eq_ignore_ascii_case(b"bearer") && v[6] == b' ' {
        Some(v[7..].trim_ascii())
    } else {
        None
    }
}

fn parse_node(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    s.parse::<SocketAddr>().ok().map(|a| a.ip())
}

fn parse_forwarded_for(v: &str) -> Option<IpAddr> {
    let v = v.trim_matches('"');
    if let Some(rest) = v.strip_prefix('[') {
        // "[2001:db8::1]:4711"
        return rest.split(']').next()?.parse().ok();
    }
    parse_node(v)
}

fn peer_addr(req: &Parts) -> Option<IpAddr> {
    if let Some(a) = req.extensions.get::<ClientAddr>() {
        return Some(a.0.ip());
    }
    #[cfg(feature = "axum")]
    if let Some(a) = req
        .extensions
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
    {
        return Some(a.0.ip());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn trusting(nets: &[&str]) -> IdentityConfig {
        IdentityConfig {
            trusted_proxies: nets.iter().map(|n| parse_cidr(n).unwrap()).collect(),
            ..IdentityConfig::default()
        }
    }

    #[test]
    fn cidr() {
        let c = trusting(&["10.0.0.0/8"]);
        assert!(c.trusted(ip("10.1.2.3")));
        assert!(c.trusted(ip("::ffff:10.1.2.3")));
        assert!(!c.trusted(ip("11.0.0.1")));
        assert!(trusting(&["0.0.0.0/0"]).trusted(ip("1.2.3.4")));
        assert!(trusting(&["2001:db8::/32"]).trusted(ip("2001:db8::1")));
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("nope").is_err());
        assert_eq!(parse_cidr("1.2.3.4").unwrap().prefix_len(), 32);
    }

    fn cfg() -> IdentityConfig {
        trusting(&["10.0.0.0/8"])
    }

    fn parts(req: Request<()>) -> Parts {
        req.into_parts().0
    }

    #[test]
    fn forwarded_headers_only_from_trusted_proxies() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            "6.6.6.6, 1.2.3.4, 10.0.0.7".parse().unwrap(),
        );
        assert_eq!(cfg().client_ip(ip("10.0.0.1"), &h), ip("1.2.3.4"));
        assert_eq!(cfg().client_ip(ip("8.8.8.8"), &h), ip("8.8.8.8"));
        let mut h = HeaderMap::new();
        h.insert(
            header::FORWARDED,
            "for=\"[2001:db8::1]:80\", for=10.0.0.9".parse().unwrap(),
        );
        assert_eq!(cfg().client_ip(ip("10.0.0.1"), &h), ip("2001:db8::1"));
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "garbage".parse().unwrap());
        assert_eq!(cfg().client_ip(ip("10.0.0.1"), &h), ip("10.0.0.1"));
    }

    #[test]
    fn api_key_sources_and_odd_values() {
        let c = IdentityConfig::default();
        let req = Request::builder()
            .header("x-api-key", "  k1 ")
            .body(())
            .unwrap();
        assert_eq!(c.extract(&parts(req)).api_key, Some(&b"k1"[..]));
        let req = Request::builder()
            .header("authorization", "Bearer tok")
            .body(())
            .unwrap();
        assert_eq!(c.extract(&parts(req)).api_key, Some(&b"tok"[..]));
        let req = Request::builder().header("x-api-key", "").body(()).unwrap();
        assert_eq!(c.extract(&parts(req)).api_key, None);
        let long = "k".repeat(300);
        let req = Request::builder()
            .header("x-api-key", long)
            .body(())
            .unwrap();
        assert_eq!(c.extract(&parts(req)).api_key, None);
        let req = Request::builder()
            .header(
                "x-api-key",
                http::HeaderValue::from_bytes(b"\xff\xfe").unwrap(),
            )
            .body(())
            .unwrap();
        let p = parts(req);
        let id = c.extract(&p);
        assert_eq!(id.api_key, Some(&b"\xff\xfe"[..]));
        assert_eq!(id.plan_key(), None);
    }
}
