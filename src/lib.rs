//! # tierlimit
//!
//! HTTP API rate limiting the way API vendors publish it, as a
//! [`tower`](https://docs.rs/tower) layer for axum and hyper: **tiers** picked
//! by route and by the caller's **plan**, counted per API key, user, tenant or
//! IP in **sliding** or **clock-aligned** windows, answered with
//! `X-RateLimit-*` headers and a 429 body in the format you configure.
//!
//! * **Exact**: a sliding window never admits more than its capacity in *any*
//!   interval of its length, also under concurrency; `Retry-After` is the
//!   exact moment the request would be admitted, never an estimate
//!   ([`window`]).
//! * **From configuration**: a Rust builder and a JSON file with the same
//!   power, checked strictly ([`config`]).
//! * **Shared budget**: every clone of the service shares one set of counters.
//!
//! ## Quick start (axum)
//!
//! ```
//! use std::time::Duration;
//! use axum::{routing::get, Router};
//! use tierlimit::config::{Config, ErrorFormat, Limit, Route, Tier};
//! use tierlimit::RateLimitLayer;
//!
//! let policy = Config::new()
//!     .tier("standard", Tier::new()
//!         .limit(Limit::sliding("per-minute", 60, Duration::from_secs(60)))
//!         .limit(Limit::sliding("per-hour", 1000, Duration::from_secs(3600))))
//!     .tier("premium", Tier::new()
//!         .limit(Limit::sliding("per-minute", 300, Duration::from_secs(60))))
//!     .plans("standard", [("key-of-a-big-customer", "premium")])
//!     .route(Route::exempt(["GET"], "/health"))
//!     .errors(ErrorFormat::Qarion)
//!     .build()
//!     .expect("valid policy");
//!
//! let layer = RateLimitLayer::new(policy);
//! let app: Router = Router::new()
//!     .route("/items", get(|| async { "items" }))
//!     .route("/health", get(|| async { "ok" }))
//!     .layer(layer.clone());
//!
//! // Later, without a restart: move a key to another plan.
//! layer.set_plan("key-123", "premium").unwrap();
//!
//! // Or swap the whole policy, keeping the counters of unchanged limits.
//! # let new_policy = tierlimit::Config::new().build().unwrap();
//! layer.reload(new_policy);
//! # let _ = app;
//! ```
//!
//! The same policy as a file: see [`config`] for the format, then
//! `Config::from_file("policy.json")?.build()?`.
//!
//! ## How a request is decided
//!
//! request → [`identity`] (API key, user, tenant, IP) → [`policy`] (route tier,
//! plan, global tier → one slot per limit) → [`store`] (check and charge all
//! limits at once, or none) → response (+ [`headers`]) or 429 ([`reject`]).
//!
//! ## Cargo features
//!
//! | feature | default | what it adds |
//! | --- | --- | --- |
//! | `axum` | no | reads the client IP from axum's `ConnectInfo<SocketAddr>` |
//! | `tracing` | no | `tracing` events: rejections (info, with a short keyed hash of the caller, never the key), remaining figures (debug) |
//! | `metrics` | no | counters by tier and limit, a decision-latency histogram (see below) |
//!
//! ## Metrics
//!
//! With the `metrics` feature, through the `metrics` facade:
//! `tierlimit_admitted_total`, `tierlimit_rejected_total`,
//! `tierlimit_shadow_rejected_total` (labels `tier`, `limit`),
//! `tierlimit_exempt_total`, and the histogram `tierlimit_decision_seconds`.
//!
//! Without `axum`, insert [`identity::ClientAddr`] into request extensions
//! (a plain hyper server knows the peer address when it accepts).
//!
//! ## Differences from `tower::limit::RateLimit`
//!
//! * tower's `RateLimit` keeps its state per service instance and cannot be
//!   cloned with a shared budget, so behind axum (which clones services) it
//!   does not limit at all. [`RateLimit`] keeps state behind an `Arc`: every
//!   clone shares one budget.
//! * tower's answers "over the limit" with `Pending` from `poll_ready`
//!   (back-pressure). [`RateLimit`] answers with a **429 response** and
//!   `poll_ready` only asks the inner service, as an HTTP API should.
//! * Limits are per caller (key, user, tenant, IP), not per service.
//!
//! ## Deployment caveat: proxies
//!
//! `X-Forwarded-For` and `Forwarded` are believed only from peers listed in
//! `identity.trusted_proxies`. Behind a load balancer, list its addresses, or
//! every client shares the balancer's budget; never list `0.0.0.0/0`, or any
//! client can pick its own address. See [`identity`].

pub mod clock;
pub mod config;
pub mod identity;
pub mod policy;
pub mod reject;
pub mod store;

mod body;
mod engine;
mod error;
mod future;
mod headers;
mod layer;
mod observe;
mod plans;
mod service;
mod window;

pub use body::RateLimitBody;
pub use config::Config;
pub use engine::{Controller, OnStoreError, ShadowRejection};
pub use error::{ConfigError, ConfigErrorKind};
pub use future::ResponseFuture;
pub use layer::{RateLimitLayer, RateLimitLayerBuilder};
pub use policy::Policy;
pub use service::RateLimit;
