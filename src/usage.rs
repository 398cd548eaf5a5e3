//! Where a caller stands on every limit, without spending any: what
//! GitHub's `GET /rate_limit` answers, for any policy and any store.
//!
//! The caller is identified exactly as the layer identifies it (the
//! identity and plan hooks, else the policy's rules), and the report covers
//! every tier that can apply to it: its plan, every route tier, the default
//! tier and the global tier, each limit once. For each limit: its name and
//! tier, capacity, used, remaining, reset (Unix seconds, rounded up: when
//! everything counted now has left the window) and window (seconds). A
//! capacity modifier the request's headers match applies, as it would to a
//! request.
//!
//! Reading counts nothing and keeps nothing: no charge, no new counter (the
//! memory store's key cap is untouched), no lease on Redis. On Redis, units
//! that instances hold in leases count as used (as in the headers).
//!
//! From Rust, [`Controller::usage`](crate::Controller::usage); over HTTP,
//! [`UsageService`] (from [`RateLimitLayer::usage_service`](crate::RateLimitLayer::usage_service)),
//! a tower service that axum mounts with `route_service`. Mount it **outside**
//! the rate-limit layer (or make its path exempt): reading usage should not
//! spend budget.
//!
//! ```
//! use std::time::Duration;
//! use tierlimit::config::{Config, Limit, Tier};
//! use tierlimit::RateLimitLayer;
//!
//! let policy = Config::new()
//!     .tier("api", Tier::new()
//!         .limit(Limit::sliding("per-minute", 60, Duration::from_secs(60)))
//!         .limit(Limit::sliding("per-hour", 1000, Duration::from_secs(3600))))
//!     .default_tier("api")
//!     .build()
//!     .unwrap();
//! let layer = RateLimitLayer::new(policy);
//! let request = http::Request::get("/rate-limit").header("x-api-key", "k1").body(()).unwrap();
//! let (parts, ()) = request.into_parts();
//! let usage = futures_lite_block_on(layer.controller().usage(&parts)).unwrap();
//! assert_eq!(usage.limits[0].name, "per-minute");
//! assert_eq!(usage.limits[0].remaining, 60);
//! # fn futures_lite_block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
//! # }
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::request::Parts;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};

use crate::clock::Timestamp;
use crate::store::StoreError;

/// One limit in a [`Usage`] report.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LimitUsage {
    /// The limit's name.
    pub name: String,
    /// The tier it belongs to.
    pub tier: String,
    /// Capacity (after any capacity modifier the request matched).
    pub capacity: u64,
    /// Cost counted in the window now.
    pub used: u64,
    /// Capacity minus used, never below zero.
    pub remaining: u64,
    /// When everything counted now has left the window (`remaining` is
    /// back to `capacity`); the report's instant when nothing is counted.
    pub reset: Timestamp,
    /// The window.
    pub window: Duration,
    /// What its cost counts (`request`, `tokens`, `latency-ms`).
    pub unit: &'static str,
}

/// Where a caller stands on every limit that can apply to it; see the
/// [module docs](self).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Usage {
    /// The instant the figures are taken at (the store's, when it decides
    /// by its own clock).
    pub at: Timestamp,
    /// Every limit, plan tier first, each once.
    pub limits: Vec<LimitUsage>,
}

impl Usage {
    /// The report as JSON: `{"limits": [{"name", "tier", "capacity",
    /// "used", "remaining", "reset", "window", "unit"}, ...]}`, `reset` in
    /// Unix seconds (rounded up), `window` in seconds (fractional below a
    /// second).
    pub fn to_json(&self) -> serde_json::Value {
        let limits: Vec<serde_json::Value> = self
            .limits
            .iter()
            .map(|l| {
                let window = if l.window.subsec_nanos() == 0 {
                    serde_json::json!(l.window.as_secs())
                } else {
                    serde_json::json!(l.window.as_secs_f64())
                };
                serde_json::json!({
                    "name": l.name,
                    "tier": l.tier,
                    "capacity": l.capacity,
                    "used": l.used,
                    "remaining": l.remaining,
                    "reset": l.reset.as_secs_ceil(),
                    "window": window,
                    "unit": l.unit,
                })
            })
            .collect();
        serde_json::json!({ "limits": limits })
    }
}

/// Why a usage report could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UsageError {
    /// Nothing identifies the caller and the policy refuses anonymous
    /// requests (`identity.anonymous: refuse`).
    #[error("the request does not identify a caller, and the policy refuses anonymous callers")]
    Anonymous,
    /// The store could not be read.
    #[error("the rate-limit store could not be read")]
    Store(#[source] StoreError),
    /// The layer this controller belonged to is gone.
    #[error("the rate-limit layer is gone")]
    NoLayer,
}

/// What the layer's engine answers a usage question with.
pub(crate) type UsageFuture = Pin<Box<dyn Future<Output = Result<Usage, UsageError>> + Send>>;

/// The engine, as a controller reads usage through it (not generic over
/// the store).
pub(crate) trait Peek: Send + Sync {
    fn usage(&self, parts: &Parts) -> UsageFuture;

    /// The layer's answer to an anonymous caller the policy refuses.
    fn refused_anonymous(&self) -> Response<Bytes>;

    /// Empties every block counter of the caller `id`; how many there are.
    fn lift_blocks(
        &self,
        id: &crate::identity::Identity<'_>,
    ) -> Pin<Box<dyn Future<Output = Result<usize, StoreError>> + Send>>;
}

/// A tower service answering `GET` with the caller's [`Usage`] as JSON
/// (`Cache-Control: no-store`); made by
/// [`RateLimitLayer::usage_service`](crate::RateLimitLayer::usage_service)
/// or [`Controller::usage_service`](crate::Controller::usage_service).
///
/// Answers: 200 with the report; 401 with the layer's problem body when
/// the caller is anonymous and the policy refuses that; 503 when the store
/// cannot be read; 405 for a method other than `GET` or `HEAD`. Never an
/// error, so axum mounts it as it is:
///
/// ```
/// # #[cfg(feature = "axum")] {
/// use std::time::Duration;
/// use axum::{routing::get, Router};
/// use tierlimit::config::{Config, Limit, Tier};
/// use tierlimit::RateLimitLayer;
///
/// let policy = Config::new()
///     .tier("api", Tier::new().limit(Limit::sliding("m", 60, Duration::from_secs(60))))
///     .default_tier("api")
///     .build()
///     .unwrap();
/// let layer = RateLimitLayer::new(policy);
/// let app: Router = Router::new()
///     .route("/v1/things", get(|| async { "things" }))
///     .layer(layer.clone())
///     // Added after the layer: outside it, so reading spends nothing.
///     .route_service("/rate-limit", layer.usage_service());
/// # let _ = app;
/// # }
/// ```
#[derive(Clone)]
pub struct UsageService {
    /// The layer's engine (weak: the service outliving its layer answers
    /// 503).
    engine: Option<std::sync::Weak<dyn Peek>>,
}

impl std::fmt::Debug for UsageService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsageService").finish_non_exhaustive()
    }
}

impl UsageService {
    pub(crate) fn new(engine: Option<std::sync::Weak<dyn Peek>>) -> Self {
        UsageService { engine }
    }
}

/// The body of a [`UsageService`] response: the whole JSON at once.
#[derive(Debug, Default)]
pub struct UsageBody {
    data: Option<Bytes>,
}

impl UsageBody {
    fn new(data: impl Into<Bytes>) -> Self {
        let data: Bytes = data.into();
        UsageBody {
            data: (!data.is_empty()).then_some(data),
        }
    }
}

impl Body for UsageBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.data.take().map(|d| Ok(Frame::data(d))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}

impl<B> tower_service::Service<Request<B>> for UsageService {
    type Response = Response<UsageBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<UsageBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let (parts, _body) = req.into_parts();
        if parts.method != http::Method::GET && parts.method != http::Method::HEAD {
            let mut resp = problem(
                StatusCode::METHOD_NOT_ALLOWED,
                "Method Not Allowed",
                "the usage report answers GET".into(),
            );
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return Box::pin(std::future::ready(Ok(resp)));
        }
        let head = parts.method == http::Method::HEAD;
        let engine = self.engine.as_ref().and_then(std::sync::Weak::upgrade);
        let fut = engine.as_ref().map(|e| e.usage(&parts));
        Box::pin(async move {
            let answer = match fut {
                Some(f) => f.await,
                None => Err(UsageError::NoLayer),
            };
            let resp = match answer {
                Ok(usage) => {
                    let mut resp = Response::new(UsageBody::new(usage.to_json().to_string()));
                    let h = resp.headers_mut();
                    h.insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                    resp
                }
                Err(UsageError::Anonymous) => match &engine {
                    Some(e) => e.refused_anonymous().map(UsageBody::new),
                    None => layer_gone(),
                },
                Err(UsageError::Store(e)) => {
                    let mut resp = problem(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "Service Unavailable",
                        format!("the rate-limit store could not be read: {e}"),
                    );
                    resp.headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                    resp
                }
                Err(_) => layer_gone(),
            };
            Ok(if head {
                resp.map(|_| UsageBody::default())
            } else {
                resp
            })
        })
    }
}

/// The layer's RFC 9457 problem response, with a usage body.
fn problem(status: StatusCode, title: &'static str, detail: String) -> Response<UsageBody> {
    crate::reject::problem(status, title, detail).map(UsageBody::new)
}

/// 503: the layer this service belonged to is gone.
fn layer_gone() -> Response<UsageBody> {
    problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "Service Unavailable",
        "the rate-limit layer is gone".into(),
    )
}

/// The figures of a peeked batch (see [`Store::peek`](crate::store::Store::peek)).
pub(crate) fn report(
    rules: &crate::policy::Rules,
    batch: &crate::store::Batch,
    sent: usize,
    now: Timestamp,
) -> Result<Usage, UsageError> {
    let bad = || {
        UsageError::Store(StoreError::new(
            crate::store::StoreErrorKind::Protocol,
            "the store left a limit without an outcome, or answered another batch",
        ))
    };
    if batch.len() != sent || !batch.is_decided() {
        return Err(bad());
    }
    let at = batch.decided_at().unwrap_or(now);
    let mut limits = Vec::with_capacity(batch.len());
    for (i, spec) in batch.limits().enumerate() {
        let view = batch.outcome(i).ok_or_else(bad)?.view;
        let l = rules.limits.get(spec.label as usize).ok_or_else(bad)?;
        limits.push(LimitUsage {
            name: l.name.clone(),
            tier: l.tier.clone(),
            capacity: view.capacity,
            used: view.used,
            remaining: view.remaining(),
            reset: view.reset_at,
            window: l.window,
            unit: if l.concurrent {
                "concurrent-requests"
            } else {
                l.cost.unit()
            },
        });
    }
    Ok(Usage { at, limits })
}

/// [`Peek`] for a layer's engine.
pub(crate) fn engine_usage<F>(
    rules: Arc<crate::policy::Rules>,
    sent: usize,
    now: Timestamp,
    answer: crate::store::Answer<crate::store::Batch, F>,
) -> UsageFuture
where
    F: Future<Output = Result<crate::store::Batch, StoreError>> + Send + 'static,
{
    match answer {
        crate::store::Answer::Now(r) => Box::pin(std::future::ready(
            r.map_err(UsageError::Store)
                .and_then(|b| report(&rules, &b, sent, now)),
        )),
        crate::store::Answer::Later(f) => Box::pin(async move {
            let b = f.await.map_err(UsageError::Store)?;
            report(&rules, &b, sent, now)
        }),
    }
}
