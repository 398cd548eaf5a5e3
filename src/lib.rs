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
//!   exact moment the request would be admitted, never an estimate (see
//!   [`store::WindowSpec`]).
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
//! `Setup::from_file("policy.json")?` (the [`Policy`] and the [`Deployment`]
//! of its `store` section), which [`RateLimitLayer::new`] takes.
//!
//! ## How a request is decided
//!
//! One engine owns the decision; the layer, the service, the response future
//! and the body only adapt it to tower and http-body. Data flows one way:
//!
//! request head → [`identity`] (API key, user, tenant, IP) → [`Policy`]
//! (route tier, plan, global tier → one [`store::LimitSpec`] per limit) →
//! [`store`] (check and charge all limits at once, or none; answered now or
//! awaited) → response (+ rate-limit headers, + a guard that post-charges
//! latency / tokens / error responses when the body ends) or 429
//! ([`reject`]).
//!
//! The [`Policy`] is immutable. Runtime plan assignments live in the layer's
//! own table and a reload is one atomic swap ([`Controller`]).
//!
//! ## Cargo features
//!
//! None is on by default: the default build is the layer, the memory store
//! and the policy, and nothing else.
//!
//! | feature | what it adds |
//! | --- | --- |
//! | `axum` | reads the client IP from axum's `ConnectInfo<SocketAddr>`; `client::ReplayBody` for axum's `Body` |
//! | `tracing` | `tracing` events: rejections (debug; info in shadow mode; with a short keyed hash of the caller, never the key), remaining figures (debug), store failures (warn, at most one line per 10 s), Redis warnings |
//! | `metrics` | the counters and histograms listed below, through the `metrics` facade |
//! | `redis` | `store::RedisStore`: counters in Redis or a Redis Cluster, shared by every instance (`store.redis` in a file) |
//! | `tz` | fixed windows in IANA time zones (`time_zone`), via `jiff`, with a bundled database for systems without one |
//! | `client` | `client::RetryLayer`: an HTTP client layer that waits and retries as rate-limited APIs ask, and paces itself |
//! | `reqwest` | `client::RetryMiddleware` for `reqwest` through `reqwest-middleware` (implies `client`) |
//! | `full` | all of the above (what the example gateway and the whole test suite use) |
//!
//! ## Metrics
//!
//! With the `metrics` feature, through the `metrics` facade (labels in
//! parentheses; API keys never appear in a label):
//!
//! | metric | kind | what it counts |
//! | --- | --- | --- |
//! | `tierlimit_admitted_total` (`tier`, `limit`) | counter | requests admitted, per limit they were checked against |
//! | `tierlimit_rejected_total` (`tier`, `limit`) | counter | requests refused, per refusing limit |
//! | `tierlimit_shadow_rejected_total` (`tier`, `limit`) | counter | shadow mode: requests that would have been refused |
//! | `tierlimit_exempt_total` | counter | requests on exempt routes |
//! | `tierlimit_blocks_started_total` (`tier`, `limit`) | counter | blocks started (`block_for`) |
//! | `tierlimit_delayed_total` | counter | requests that waited for room instead of a 429 (`delay_up_to`) |
//! | `tierlimit_waiting` | gauge | requests waiting for room now |
//! | `tierlimit_anonymous_total` (`action`: `share`, `refuse`) | counter | requests with no API key, user or client address |
//! | `tierlimit_unknown_plans_total` | counter | requests whose plan hook named no plan of the policy |
//! | `tierlimit_store_errors_total` (`kind`, `on_error`) | counter | decisions the store could not make |
//! | `tierlimit_post_charges_dropped_total` | counter | post-charges dropped (too many in flight, no runtime) |
//! | `tierlimit_post_charge_errors_total` | counter | post-charges the store failed to make |
//! | `tierlimit_evictions_total` | counter | memory store entries evicted at `max_keys` |
//! | `tierlimit_refusals_cached_total` | counter | Redis store refusals answered from the local cache |
//! | `tierlimit_redis_errors_total` (`cause`: `wrong_password`, `password_missing`, `no_permission`, `refused`, `unknown_host`, `tls`, `timeout`, `out_of_memory`, `other`) | counter | Redis store: failed connection attempts and calls, by cause |
//! | `tierlimit_leases_taken_total` / `tierlimit_lease_units_taken_total` | counter | Redis store: leases on busy counters taken, and the units they reserved |
//! | `tierlimit_lease_decisions_total` | counter | Redis store: decisions answered from a lease, without a round trip |
//! | `tierlimit_lease_units_returned_total` / `tierlimit_lease_units_stranded_total` | counter | Redis store: unused lease units given back, and those that could not be (they leave with their window) |
//! | `tierlimit_redis_ready` | gauge | Redis store: 1 while connected and answering, 0 during an outage |
//! | `tierlimit_decision_seconds` | histogram | time to decide a request |
//! | `tierlimit_client_retries_total` | counter | client layer: requests sent again |
//! | `tierlimit_client_waits_total` (`cause`) | counter | client layer: waits before a request |
//! | `tierlimit_client_wait_seconds` (`cause`) | histogram | client layer: how long it waited |
//! | `tierlimit_client_gave_up_total` (`reason`) | counter | client layer: requests it stopped retrying |
//!
//! Without `axum`, insert [`identity::ClientAddr`] into request extensions
//! (a plain hyper server knows the peer address when it accepts).
//!
//! ## When the store fails
//!
//! A store that cannot decide (a remote store down or too slow) is handled
//! by [`OnStoreError`], set with [`RateLimitLayerBuilder::on_store_error`]:
//! **open** by default (forward, without rate-limit headers; as Envoy and
//! Kong do), or **closed** (503 with `Retry-After`, never 429). Every failure
//! is counted and logged (rate-limited). The memory store never fails.
//!
//! ## Response headers
//!
//! ### Which limit is reported
//!
//! A request is often checked against several limits, but the
//! `X-RateLimit-*` family has room for one. On an admitted request the
//! report is the limit with the **least remaining relative to its capacity**
//! (ties: the sooner reset), i.e. the one a client is closest to hitting. On a
//! rejected request it is the refusing limit that frees up **last** (the one
//! `Retry-After` waits for).
//!
//! ### Other styles
//!
//! * `ietf` (draft-ietf-httpapi-ratelimit-headers, its latest text):
//!   `RateLimit-Policy` lists every limit the request was checked against
//!   as `"name";q=<capacity>;w=<window seconds>`. `qu` is sent only with a
//!   unit of the draft's registry other than the default `requests`
//!   (`qu="concurrent-requests"` for requests in flight); other units go in
//!   a vendor parameter (`tierlimit-unit="tokens"`, `"latency-ms"`). A
//!   window that is not whole seconds has no `w` (the draft has no
//!   sub-second windows) but `tierlimit-window-ms=<ms>`. `RateLimit` gives
//!   each one's `"name";r=<remaining>;t=<seconds>`, `t` being what the
//!   draft says: the seconds (rounded up) until quota is next made
//!   available, i.e. until the oldest counted cost of a sliding window
//!   leaves (the end of a fixed window); for a refused limit never later
//!   than its `Retry-After`; left out when nothing is counted. Limit names
//!   are structured-field strings: a policy with `ietf` headers refuses
//!   names that are not printable ASCII. Block counters and limits on
//!   requests in flight are listed only while they refuse.
//! * `qstash`: each limit with a `family` fills that family's headers
//!   (`RateLimit-*`, `Burst-RateLimit-*`, `x-ratelimit-*-requests`,
//!   `x-ratelimit-*-tokens`); a family appears only when one of its limits
//!   applied to the request. Resets are Unix seconds.
//!
//! ### Cascades
//!
//! A cascade group reports the limit the request was charged to (the one
//! being drawn from); when every member is full, the one that frees up
//! first. The other members are left out of `X-RateLimit-*` and `qstash`
//! headers, and listed in `ietf` ones.
//!
//! ### What the reset figures promise
//!
//! `X-RateLimit-Reset` (and the `qstash` families' resets) are, as the
//! vendor pages say, Unix seconds: the instant the reported limit is back
//! to full capacity, **rounded up** to a whole second, so the real instant
//! is up to a second earlier (a client may read it as "no later than"). The
//! IETF `t` is the seconds until *some* quota is available again (see
//! above). `Retry-After` is the seconds (rounded up, at least 1) until the
//! refused request fits, and never earlier than the `t` of a refusing
//! limit.
//!
//! ### `X-RateLimit-Reset`
//!
//! Unix seconds (rounded up) at which the reported limit is back to its full
//! capacity: the end of the current window for a fixed window; for a sliding
//! window, one window after the latest counted request (never more than the
//! window from now). A limit with nothing counted reports the current
//! second.
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

#![cfg_attr(docsrs, feature(doc_cfg))]
#[cfg(feature = "client")]
#[cfg_attr(docsrs, doc(cfg(feature = "client")))]
pub mod client;
pub mod clock;
pub mod config;
pub mod identity;
pub mod policy;
pub mod reject;
pub mod store;
pub mod usage;

mod body;
mod engine;
mod error;
mod future;
mod headers;
mod layer;
mod observe;
mod plans;
mod service;
mod setup;
mod sharing;
mod window;

pub use body::RateLimitBody;
pub use config::Config;
pub use config::{Anonymous, OnStoreError};
pub use engine::{Controller, ShadowRejection};
pub use error::{ConfigError, ConfigErrorKind};
pub use future::ResponseFuture;
pub use layer::{RateLimitLayer, RateLimitLayerBuilder};
pub use plans::PlanSubject;

/// The README's Rust code, compiled and run by `cargo test` as doctests,
/// so the README cannot drift from the crate.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub use policy::Policy;
pub use service::RateLimit;
pub use setup::{Deployment, Setup};
