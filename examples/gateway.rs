//! The example gateway: a demo API behind `tierlimit`, with an admin API,
//! Prometheus metrics and structured logs.
//!
//! Run it with one of the shipped vendor policies:
//!
//! ```sh
//! cargo run --release --features full --example gateway -- --config examples/policies/qarion.json
//! # options: --listen 127.0.0.1:3000   --no-limit (serve without limiting: a baseline)
//! #          --no-metrics (no Prometheus recorder; /metrics answers 404)
//! #          --governor N (limit with tower_governor instead: N a minute per
//! #          x-api-key, its headers on; the load script's comparison)
//! #          --redis redis://127.0.0.1:6379 (counters in Redis, overriding the
//! #          file's store.redis: run two gateways on one Redis, one budget)
//! #          --redis-cluster redis://127.0.0.1:7000,redis://127.0.0.1:7001 (a cluster)
//! ```
//!
//! Then try:
//!
//! ```sh
//! # The demo API answers any path and method with a small JSON body.
//! curl -si -H 'x-api-key: k1' localhost:3000/api/datasets        # X-RateLimit-* headers
//! for i in $(seq 1 61); do curl -s -o /dev/null -w '%{http_code} ' -H 'x-api-key: k1' localhost:3000/x; done
//! # query parameters: sleep_ms=N (answer later), status=N (answer with that
//! # status), tokens=N (report N tokens in the policy's token header)
//! curl -si 'localhost:3000/llm/v1/chat/completions?tokens=500' -X POST -H 'authorization: Bearer k2'
//! # identity: x-api-key or Authorization: Bearer (API key), x-user-id, x-tenant-id
//! curl -si -H 'x-tenant-id: acme' -H 'x-user-id: alice' localhost:3000/api/v1/items
//!
//! # Where the caller stands on every limit of its plan and tiers, counting
//! # nothing (identified as the limiter identifies it):
//! curl -s -H 'x-api-key: k1' localhost:3000/rate-limit
//!
//! # Exempt: health, readiness (503 while Redis cannot be used, saying why)
//! # and Prometheus metrics.
//! curl -s localhost:3000/health; curl -s localhost:3000/ready
//! curl -s localhost:3000/metrics | grep tierlimit
//!
//! # Admin (set TIERLIMIT_ADMIN_TOKEN before starting; unset, admin routes are 404):
//! curl -si -X PATCH localhost:3000/admin/api-keys/k1 -H "authorization: Bearer $TIERLIMIT_ADMIN_TOKEN" \
//!      -H 'content-type: application/json' -d '{"rate_limit_tier": "premium"}'
//! # a user's or a tenant's plan (an API key's plan comes first, then the
//! # user's, then the tenant's):
//! curl -si -X PATCH localhost:3000/admin/users/alice -H "authorization: Bearer $TIERLIMIT_ADMIN_TOKEN" \
//!      -d '{"rate_limit_tier": "premium"}'
//! curl -si -X PATCH localhost:3000/admin/tenants/acme -H "authorization: Bearer $TIERLIMIT_ADMIN_TOKEN" \
//!      -d '{"rate_limit_tier": "premium"}'
//! curl -si -X POST localhost:3000/admin/reload -H "authorization: Bearer $TIERLIMIT_ADMIN_TOKEN"
//! # lift the blocks (`block_for`) of API key k1:
//! curl -si -X DELETE localhost:3000/admin/blocks/k1 -H "authorization: Bearer $TIERLIMIT_ADMIN_TOKEN"
//! # 10 wrong tokens a minute from one address, and every admin call from it
//! # is answered 429 (with Retry-After) until the oldest leaves the minute.
//! ```
//!
//! Logs go to stderr (`RUST_LOG=tierlimit=debug` shows remaining figures);
//! API keys never appear in them, only a short keyed hash of the caller.

// Also compiled into tests/gateway.rs as a module, where main is unused.
#![allow(dead_code, missing_docs, missing_debug_implementations)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tierlimit::config::{Config, Cost, ErrorFormat, HeaderStyle, Limit, ScopePart, Tier};
use tierlimit::identity::{Identity, TenantId, UserId};
use tierlimit::store::{AnyStore, RedisStoreConfig};
use tierlimit::{ConfigError, PlanSubject, RateLimitLayer};

/// Command-line options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub config: PathBuf,
    pub listen: SocketAddr,
    pub no_limit: bool,
    pub no_metrics: bool,
    pub redis: Option<RedisFlag>,
    /// `--governor N`: limit the demo API with `tower_governor` instead (N
    /// requests a minute per `x-api-key`, headers on): the load script's
    /// point of comparison.
    pub governor: Option<u32>,
    /// `--jwt-secret` and `--api-key-query`: how callers say who they are.
    pub auth: Auth,
}

/// How the demo API's callers say who they are (besides `x-api-key`,
/// `x-user-id` and `x-tenant-id`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Auth {
    /// `--jwt-secret`: callers by the `sub` of a verified HS256 JWT.
    pub jwt_secret: Option<String>,
    /// `--api-key-query NAME`: a request without `x-api-key` takes its API
    /// key from this query parameter (as APIs that accept `?api_key=` do;
    /// the load script uses it with `oha`, which varies URLs, not headers).
    pub api_key_query: Option<String>,
}

/// What limits the demo API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limiter {
    /// This crate, as the policy file says.
    Tierlimit,
    /// Nothing (`--no-limit`): the baseline.
    None,
    /// `tower_governor`, N requests a minute per `x-api-key` (`--governor`).
    Governor(u32),
}

/// The command line, as clap reads it.
#[derive(clap::Parser, Debug)]
#[command(
    name = "gateway",
    about = "A demo API behind tierlimit, with an admin API and Prometheus metrics"
)]
struct Args {
    /// The policy file (e.g. examples/policies/qarion.json).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Where to listen.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// Serve without limiting (a baseline for load tests).
    #[arg(long)]
    no_limit: bool,
    /// No Prometheus recorder (/metrics answers 404).
    #[arg(long)]
    no_metrics: bool,
    /// Limit with tower_governor instead: N requests a minute per x-api-key.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    governor: Option<u32>,
    /// Counters in this Redis (overrides the file's store.redis).
    #[arg(long, value_name = "URL", conflicts_with = "redis_cluster")]
    redis: Option<String>,
    /// Counters in this Redis Cluster (one node is enough).
    #[arg(long, value_name = "URL,URL,...", value_delimiter = ',')]
    redis_cluster: Option<Vec<String>>,
    /// Callers are the `sub` of an HS256 JWT in `Authorization: Bearer`,
    /// signed with this secret; their plan the `plan` claim when it names
    /// one. A missing, expired or badly signed token gets 401.
    #[arg(
        long,
        value_name = "SECRET",
        env = "TIERLIMIT_JWT_SECRET",
        hide_env_values = true
    )]
    jwt_secret: Option<String>,
    /// A request without `x-api-key` takes its API key from this query
    /// parameter (e.g. `api_key`).
    #[arg(long, value_name = "NAME")]
    api_key_query: Option<String>,
}

/// Reads the command line (without the program name).
///
/// # Errors
///
/// A missing `--config`, an unknown or malformed argument, or `--help`
/// (`clap::Error::exit` prints it and exits with the right code).
pub fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Options, clap::Error> {
    use clap::Parser;
    let a = Args::try_parse_from(std::iter::once("gateway".to_owned()).chain(args))?;
    let redis = match (a.redis, a.redis_cluster) {
        (Some(url), _) => Some(RedisFlag::Url(url)),
        (None, Some(nodes)) => Some(RedisFlag::Cluster(nodes)),
        (None, None) => None,
    };
    Ok(Options {
        config: a.config,
        listen: a.listen,
        no_limit: a.no_limit,
        no_metrics: a.no_metrics,
        redis,
        governor: a.governor,
        auth: Auth {
            jwt_secret: a.jwt_secret.filter(|s| !s.is_empty()),
            api_key_query: a.api_key_query.filter(|s| !s.is_empty()),
        },
    })
}

/// Everything the handlers share.
#[derive(Clone)]
pub struct Gateway {
    pub layer: RateLimitLayer<AnyStore>,
    /// `--redis` / `--redis-cluster`, which override the file's
    /// `store.redis` (reloads too).
    pub redis: Option<RedisFlag>,
    pub config_path: PathBuf,
    pub admin_token: Option<Arc<str>>,
    pub metrics: Option<PrometheusHandle>,
    pub tokens_header: HeaderName,
}

/// `--redis URL` or `--redis-cluster URL,URL,...`: "URL" or "URL,URL,..."
/// (a list of one or more nodes is a cluster when given as `--redis-cluster`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedisFlag {
    Url(String),
    Cluster(Vec<String>),
}

/// Reads the configuration file and checks its syntax (`setup` checks the
/// values); `redis` overrides where its counters live (the file's other
/// `store.redis` settings stay).
pub fn load(path: &Path, redis: Option<&RedisFlag>) -> Result<Config, ConfigError> {
    let mut config = Config::from_file(path)?;
    if let Some(flag) = redis {
        let mut section = config
            .store
            .redis
            .take()
            .unwrap_or_else(|| RedisStoreConfig::new(""));
        match flag {
            RedisFlag::Url(url) => {
                section.url = url.clone();
                section.cluster.clear();
            }
            RedisFlag::Cluster(nodes) => {
                section.url = nodes.first().cloned().unwrap_or_default();
                section.cluster = nodes.clone();
            }
        }
        config = config.redis(section);
    }
    Ok(config)
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An error and its causes, `: `-separated (an error's `Display` says only
/// its own part).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        next = cause.source();
    }
    text
}

/// The header the demo API reports tokens in: the first `tokens` cost
/// header of the policy, else `x-usage-tokens`.
fn tokens_header(config: &Config) -> HeaderName {
    config
        .tiers
        .values()
        .flat_map(|t| {
            t.limits
                .iter()
                .chain(t.groups.iter().flat_map(|g| g.limits.iter()))
        })
        .find_map(|l| match &l.cost {
            Cost::Tokens(h) => HeaderName::from_bytes(h.as_bytes()).ok(),
            _ => None,
        })
        .unwrap_or(HeaderName::from_static("x-usage-tokens"))
}

/// `GET /ready`: 200 when the rate-limit store can decide (the memory
/// store always; Redis when connected and answering), else 503 with what
/// is wrong (for a readiness probe).
async fn ready(State(gw): State<Gateway>) -> Response {
    let problem = match gw.layer.store() {
        AnyStore::Redis(redis) if !redis.is_ready() => Some(redis.problem().map_or_else(
            || "not connected to Redis yet".to_owned(),
            |p| p.to_string(),
        )),
        _ => None,
    };
    match problem {
        None => Json(serde_json::json!({"status": "ready"})).into_response(),
        Some(p) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "not ready", "problem": p})),
        )
            .into_response(),
    }
}

/// Builds the gateway's router.
///
/// # Errors
///
/// The configuration file is missing or invalid.
pub fn build(
    config_path: &Path,
    admin_token: Option<String>,
    metrics: Option<PrometheusHandle>,
    no_limit: bool,
) -> Result<(Router, Gateway), BoxError> {
    build_with(config_path, admin_token, metrics, no_limit, None)
}

/// [`build`], with `--redis`.
pub fn build_with(
    config_path: &Path,
    admin_token: Option<String>,
    metrics: Option<PrometheusHandle>,
    no_limit: bool,
    redis: Option<RedisFlag>,
) -> Result<(Router, Gateway), BoxError> {
    let limiter = if no_limit {
        Limiter::None
    } else {
        Limiter::Tierlimit
    };
    build_full(
        config_path,
        admin_token,
        metrics,
        limiter,
        redis,
        Auth::default(),
    )
}

/// [`build_with`], with any [`Limiter`], and `--jwt-secret`.
pub fn build_full(
    config_path: &Path,
    admin_token: Option<String>,
    metrics: Option<PrometheusHandle>,
    limiter: Limiter,
    redis: Option<RedisFlag>,
    auth: Auth,
) -> Result<(Router, Gateway), BoxError> {
    let Auth {
        jwt_secret,
        api_key_query,
    } = auth;
    let config = load(config_path, redis.as_ref())?;
    let tokens_header = tokens_header(&config);
    let mut builder = RateLimitLayer::builder(config.setup()?);
    if jwt_secret.is_some() {
        // The plan a verified token names (see `jwt_auth`).
        builder = builder.choose_plan(|req: &Parts, _: &Identity<'_>| {
            req.extensions.get::<TokenPlan>().map(|p| p.0.clone())
        });
    }
    let layer = builder.build();
    let gw = Gateway {
        redis,
        layer: layer.clone(),
        config_path: config_path.to_owned(),
        admin_token: admin_token.filter(|t| !t.is_empty()).map(Into::into),
        metrics,
        tokens_header,
    };
    let demo = Router::new().fallback(demo).with_state(gw.clone());
    let demo = match limiter {
        // `GET /rate-limit`: the caller's usage of every limit, outside
        // the limiter (reading spends nothing), inside the JWT check.
        Limiter::Tierlimit => demo
            .layer(layer.clone())
            .route_service("/rate-limit", layer.usage_service()),
        Limiter::None => demo,
        Limiter::Governor(n) => demo.layer(governor_layer(n)?),
    };
    // Outside the limiter: a request with a bad token is never counted.
    let demo = match jwt_secret {
        Some(secret) => {
            let key = Arc::new(jsonwebtoken::DecodingKey::from_secret(secret.as_bytes())?);
            demo.layer(middleware::from_fn_with_state(key, jwt_auth))
        }
        None => demo,
    };
    let router = Router::new()
        .route(
            "/health",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/ready", get(ready))
        .route("/metrics", get(metrics_text))
        .with_state(gw.clone())
        .merge(admin_routes(&gw, &config)?)
        .merge(demo)
        .layer(middleware::from_fn_with_state(
            api_key_query.map(Arc::<str>::from),
            stand_in_auth,
        ));
    Ok((router, gw))
}

/// Wrong admin tokens allowed per client address in a sliding minute;
/// past them, every admin call from that address gets 429 until the
/// oldest failure leaves the minute (the right token too, so a guesser
/// learns nothing from the answers).
pub const ADMIN_FAILURES_PER_MINUTE: u32 = 10;

/// The admin API, behind this crate's own limiter: each 401 costs its
/// client address one of [`ADMIN_FAILURES_PER_MINUTE`] (the policy's
/// trusted proxies apply, as for the demo API); successes cost nothing.
fn admin_routes(gw: &Gateway, config: &Config) -> Result<Router, BoxError> {
    let failures = Limit::sliding(
        "admin-auth-failures",
        ADMIN_FAILURES_PER_MINUTE,
        Duration::from_secs(60),
    )
    .scope([ScopePart::Ip])
    .cost_kind(Cost::ErrorResponses(401, 401));
    let policy = Config::new()
        .tier("admin", Tier::new().limit(failures))
        .default_tier("admin")
        .trusted_proxies(config.identity.trusted_proxies.clone())
        .headers(HeaderStyle::None)
        .errors(ErrorFormat::Problem)
        .build()?;
    let limiter = RateLimitLayer::new(policy);
    Ok(Router::new()
        .route("/admin/api-keys/{id}", patch(set_tier))
        .route("/admin/users/{id}", patch(set_tier))
        .route("/admin/tenants/{id}", patch(set_tier))
        .route("/admin/reload", post(reload))
        .route("/admin/blocks/{id}", axum::routing::delete(lift_blocks))
        .with_state(gw.clone())
        .layer(limiter))
}

/// `tower_governor` keyed by `x-api-key`.
#[derive(Clone, Copy, Debug)]
struct ApiKeyHeader;

impl tower_governor::key_extractor::KeyExtractor for ApiKeyHeader {
    type Key = HeaderValue;

    fn extract<T>(
        &self,
        req: &axum::http::Request<T>,
    ) -> Result<HeaderValue, tower_governor::GovernorError> {
        req.headers()
            .get("x-api-key")
            .cloned()
            .ok_or(tower_governor::GovernorError::UnableToExtractKey)
    }
}

/// `tower_governor` with `n` requests a minute (burst `n`) per `x-api-key`,
/// with its rate-limit headers on.
fn governor_layer(
    n: u32,
) -> Result<
    tower_governor::GovernorLayer<
        ApiKeyHeader,
        governor::middleware::StateInformationMiddleware,
        Body,
    >,
    BoxError,
> {
    let config = tower_governor::governor::GovernorConfigBuilder::default()
        .key_extractor(ApiKeyHeader)
        .period(Duration::from_secs(60) / n)
        .burst_size(n)
        .use_headers()
        .finish()
        .ok_or("--governor: an invalid quota")?;
    Ok(tower_governor::GovernorLayer::new(config))
}

/// Moves the demo identity headers into the extensions tierlimit reads;
/// with `--api-key-query NAME`, a request without `x-api-key` takes it from
/// the query parameter NAME (for tierlimit and tower_governor alike).
async fn stand_in_auth(
    State(key_query): State<Option<Arc<str>>>,
    mut req: Request,
    next: Next,
) -> Response {
    if let Some(name) = key_query.as_deref() {
        if !req.headers().contains_key("x-api-key") {
            let key = req.uri().query().and_then(|q| {
                q.split('&')
                    .filter_map(|kv| kv.split_once('='))
                    .find(|(k, _)| *k == name)
                    .and_then(|(_, v)| HeaderValue::from_str(v).ok())
            });
            if let Some(key) = key {
                req.headers_mut().insert("x-api-key", key);
            }
        }
    }
    let text = |req: &Request, name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    if let Some(u) = text(&req, "x-user-id") {
        req.extensions_mut().insert(UserId(u));
    }
    if let Some(t) = text(&req, "x-tenant-id") {
        req.extensions_mut().insert(TenantId(t));
    }
    next.run(req).await
}

/// The claims `--jwt-secret` reads.
#[derive(serde::Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    plan: Option<String>,
}

/// The plan a verified token names, for the layer's plan hook.
#[derive(Clone, Debug)]
struct TokenPlan(String);

/// `--jwt-secret`: verifies the bearer token (HS256, `exp` required and in
/// the future) and makes its `sub` the caller (`UserId`) and its `plan`
/// claim the plan; anything else is 401 with a problem body.
async fn jwt_auth(
    State(key): State<Arc<jsonwebtoken::DecodingKey>>,
    mut req: Request,
    next: Next,
) -> Response {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(token) = token else {
        return unauthorized("send a token: Authorization: Bearer <JWT>");
    };
    let validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    match jsonwebtoken::decode::<Claims>(token.trim(), &key, &validation) {
        Ok(data) => {
            req.extensions_mut().insert(UserId(data.claims.sub));
            if let Some(plan) = data.claims.plan {
                req.extensions_mut().insert(TokenPlan(plan));
            }
            next.run(req).await
        }
        Err(e) => unauthorized(&format!("the token is not valid: {e}")),
    }
}

/// 401 with an RFC 9457 problem body and a Bearer challenge.
fn unauthorized(detail: &str) -> Response {
    let body = serde_json::json!({
        "type": "about:blank",
        "title": "Unauthorized",
        "status": 401,
        "detail": detail,
    });
    (
        StatusCode::UNAUTHORIZED,
        [
            (header::CONTENT_TYPE, "application/problem+json"),
            (header::WWW_AUTHENTICATE, "Bearer"),
        ],
        body.to_string(),
    )
        .into_response()
}

/// The demo API: any path, any method.
async fn demo(
    State(gw): State<Gateway>,
    Query(q): Query<HashMap<String, String>>,
    req: Request,
) -> Response {
    let num = |k: &str| q.get(k).and_then(|v| v.parse::<u64>().ok());
    if let Some(ms) = num("sleep_ms") {
        tokio::time::sleep(Duration::from_millis(ms.min(120_000))).await;
    }
    let status = num("status")
        .and_then(|s| u16::try_from(s).ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    let body = serde_json::json!({
        "ok": status.is_success(),
        "method": req.method().as_str(),
        "path": req.uri().path(),
    });
    let mut resp = (status, Json(body)).into_response();
    if let Some(t) = num("tokens") {
        resp.headers_mut()
            .insert(gw.tokens_header.clone(), HeaderValue::from(t));
    }
    resp
}

async fn metrics_text(State(gw): State<Gateway>) -> Response {
    match &gw.metrics {
        Some(h) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            h.render(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "metrics are not enabled").into_response(),
    }
}

/// Compares in constant time (`subtle`): the time depends on the lengths only.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

/// A JSON error body. The message is cut to 200 characters: no answer
/// echoes unbounded input (a 60 KB plan name, a serde message quoting a
/// field name).
fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    let mut msg = msg.into();
    if let Some((at, _)) = msg.char_indices().nth(200) {
        msg.truncate(at);
        msg.push('…');
    }
    (status, Json(serde_json::json!({"error": msg}))).into_response()
}

/// `None` when authorised; else the response to send (404 without a token
/// configured, 401 for a wrong or missing one).
fn admin_denied(gw: &Gateway, headers: &HeaderMap) -> Option<Response> {
    let Some(expected) = &gw.admin_token else {
        return Some(error(StatusCode::NOT_FOUND, "not found"));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if same_secret(given.trim().as_bytes(), expected.as_bytes()) {
        None
    } else {
        Some(error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong admin token",
        ))
    }
}

/// `PATCH /admin/{api-keys,users,tenants}/{id}`: the plan of that API
/// key, user or tenant.
async fn set_tier(
    State(gw): State<Gateway>,
    UrlPath(id): UrlPath<String>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Some(denied) = admin_denied(&gw, &headers) {
        return denied;
    }
    let Ok(bytes) = axum::body::to_bytes(body, 64 * 1024).await else {
        return error(StatusCode::BAD_REQUEST, "body too large");
    };
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Patch {
        rate_limit_tier: String,
    }
    let patch: Patch = match serde_json::from_slice(&bytes) {
        Ok(p) => p,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("expected {{\"rate_limit_tier\": \"...\"}}: {e}"),
            )
        }
    };
    let (subject, what) = match uri.path().split('/').nth(2) {
        Some("users") => (PlanSubject::User(id), "user"),
        Some("tenants") => (PlanSubject::Tenant(id), "tenant"),
        _ => (PlanSubject::ApiKey(id), "api key"),
    };
    match gw.layer.set_plan(subject, &patch.rate_limit_tier) {
        Ok(()) => {
            tracing::info!(target: "gateway", plan = %patch.rate_limit_tier, "{what} plan changed");
            Json(serde_json::json!({"rate_limit_tier": patch.rate_limit_tier})).into_response()
        }
        Err(e) => error(StatusCode::UNPROCESSABLE_ENTITY, e.message()),
    }
}

/// `DELETE /admin/blocks/{api key}`: lifts every block (`block_for`) of
/// that API key at once, for every gateway sharing the store.
async fn lift_blocks(
    State(gw): State<Gateway>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(denied) = admin_denied(&gw, &headers) {
        return denied;
    }
    let who = Identity {
        api_key: Some(id.as_bytes()),
        ..Identity::default()
    };
    match gw.layer.controller().lift_blocks(&who).await {
        Ok(n) => {
            tracing::info!(target: "gateway", counters = n, "blocks lifted");
            Json(serde_json::json!({"lifted": n})).into_response()
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, chain(&e)),
    }
}

async fn reload(State(gw): State<Gateway>, headers: HeaderMap) -> Response {
    if let Some(denied) = admin_denied(&gw, &headers) {
        return denied;
    }
    // The policy: the store was chosen at start-up (a restart changes it).
    match load(&gw.config_path, gw.redis.as_ref()).and_then(|c| c.policy()) {
        Ok(policy) => {
            gw.layer.reload(policy);
            tracing::info!(target: "gateway", file = %gw.config_path.display(), "configuration reloaded");
            Json(serde_json::json!({"reloaded": true})).into_response()
        }
        Err(e) => {
            tracing::warn!(target: "gateway", error = %chain(&e), "reload refused; the old configuration stays");
            error(StatusCode::UNPROCESSABLE_ENTITY, chain(&e))
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

#[tokio::main]
async fn main() {
    let opts = match parse_args(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => e.exit(),
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let metrics = if opts.no_metrics {
        None
    } else {
        match PrometheusBuilder::new().install_recorder() {
            Ok(h) => Some(h),
            Err(e) => {
                eprintln!("gateway: metrics disabled: {e}");
                None
            }
        }
    };
    if let Some(h) = metrics.clone() {
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                h.run_upkeep();
            }
        });
    }
    let token = std::env::var("TIERLIMIT_ADMIN_TOKEN").ok();
    let limiter = match (opts.no_limit, opts.governor) {
        (true, _) => Limiter::None,
        (false, Some(n)) => Limiter::Governor(n),
        (false, None) => Limiter::Tierlimit,
    };
    let built = build_full(
        &opts.config,
        token,
        metrics,
        limiter,
        opts.redis.clone(),
        opts.auth.clone(),
    );
    let (router, gw) = match built {
        Ok(r) => r,
        Err(e) => {
            eprintln!("gateway: {}: {}", opts.config.display(), chain(&*e));
            std::process::exit(1);
        }
    };
    // An unreachable Redis is no reason not to start: the configured
    // failure mode applies until it answers.
    // The store logs the outcome itself (the cause, once, when it fails).
    if let AnyStore::Redis(redis) = gw.layer.store() {
        let _ = redis.connect().await;
    }
    let listener = match tokio::net::TcpListener::bind(opts.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("gateway: cannot listen on {}: {e}", opts.listen);
            std::process::exit(1);
        }
    };
    let addr = listener.local_addr().unwrap_or(opts.listen);
    tracing::info!(
        target: "gateway",
        %addr,
        config = %opts.config.display(),
        limiting = !opts.no_limit,
        "listening"
    );
    println!("listening on http://{addr}");
    let served = axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown_signal())
    .await;
    // What the store's leases hold goes back to Redis now, not when it
    // leaves its window.
    if let AnyStore::Redis(redis) = gw.layer.store() {
        if let Err(e) = redis.shutdown().await {
            eprintln!("gateway: giving back leases: {}", chain(&e));
        }
    }
    if let Err(e) = served {
        eprintln!("gateway: server error: {e}");
        std::process::exit(1);
    }
}
