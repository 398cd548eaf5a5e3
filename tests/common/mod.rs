#![allow(dead_code, missing_docs)]
//! Helpers shared by the integration tests.

#[cfg(feature = "redis")]
pub mod cluster_load;
pub mod external;
pub mod logs;
pub mod redis_server;
pub mod tls;

use std::time::Duration;

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;

use axum::body::Body;
use axum::Router;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use tierlimit::clock::{ManualClock, Timestamp};
use tierlimit::store::{Answer, Batch, MemoryStore, PostCharge, Store, StoreError};
use tierlimit::{Controller, RateLimitLayer};
use tower::ServiceExt;

/// Which store the scenario tests run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The memory store: decides at once.
    Memory,
    /// [`AwaitedStore`]: the memory store behind an await.
    Awaited,
    /// [`external::LogStore`]: a store of exact logs written outside the
    /// crate, sharing no code with the memory store.
    External,
    /// [`tierlimit::store::RedisStore`] on a `redis-server` of the test's own
    /// (the layer's manual clock is passed to Redis).
    Redis,
    /// The same on a three-node Redis Cluster of the test's own.
    RedisCluster,
    /// The same over mutual TLS (certificates made by the test: a private
    /// CA, a server and a client certificate).
    RedisTls,
}

thread_local! {
    static BACKEND: Cell<Backend> = const { Cell::new(Backend::Memory) };
    static SERVER: std::cell::RefCell<Option<redis_server::RedisServer>> =
        const { std::cell::RefCell::new(None) };
    static CLUSTER: std::cell::RefCell<Option<redis_server::RedisCluster>> =
        const { std::cell::RefCell::new(None) };
    static CERTS: std::cell::RefCell<Option<tls::TestCerts>> =
        const { std::cell::RefCell::new(None) };
}

/// The store the current scenario runs on.
pub fn backend() -> Backend {
    BACKEND.with(Cell::get)
}

/// Runs a scenario on `backend` (tokio's test runtime runs on this thread);
/// on Redis, against a `redis-server` of its own (the Redis scenarios are
/// ignored when it is not installed; see `redis_server`).
pub async fn on<F: Future<Output = ()>>(backend: Backend, scenario: F) {
    BACKEND.with(|b| b.set(backend));
    if backend == Backend::Redis {
        let server = redis_server::RedisServer::start();
        SERVER.with(|s| *s.borrow_mut() = Some(server));
    }
    if backend == Backend::RedisCluster {
        let cluster = redis_server::RedisCluster::start();
        CLUSTER.with(|s| *s.borrow_mut() = Some(cluster));
    }
    if backend == Backend::RedisTls {
        let certs = tls::TestCerts::new();
        let server = redis_server::RedisServer::start_tls(certs.dir(), true);
        SERVER.with(|s| *s.borrow_mut() = Some(server));
        CERTS.with(|c| *c.borrow_mut() = Some(certs));
    }
    scenario.await;
    SERVER.with(|s| s.borrow_mut().take());
    CLUSTER.with(|s| s.borrow_mut().take());
    CERTS.with(|c| c.borrow_mut().take());
}

/// The Redis store of the current scenario's server or cluster.
#[cfg(feature = "redis")]
pub fn redis_store() -> tierlimit::store::RedisStore {
    use tierlimit::store::{RedisStore, RedisStoreConfig, TimeSource};
    let config = match backend() {
        Backend::RedisCluster => {
            let urls = CLUSTER.with(|s| s.borrow().as_ref().map(|c| c.urls()));
            RedisStoreConfig::cluster(urls.expect("a cluster scenario"))
        }
        #[cfg(feature = "redis-tls")]
        Backend::RedisTls => {
            use tierlimit::store::RedisTls;
            let url = SERVER.with(|s| s.borrow().as_ref().map(|s| s.tls_url()));
            let tls = CERTS.with(|c| {
                let c = c.borrow();
                let c = c.as_ref().expect("a TLS scenario");
                RedisTls::ca(c.path("ca.pem"))
                    .client_cert(c.path("client.pem"), c.path("client.key"))
            });
            RedisStoreConfig::new(url.expect("a TLS scenario")).tls(tls)
        }
        _ => {
            let url = SERVER.with(|s| s.borrow().as_ref().map(|s| s.url()));
            RedisStoreConfig::new(url.expect("a Redis scenario"))
        }
    };
    let config = config
        .time(TimeSource::Caller)
        .timeout(std::time::Duration::from_secs(2));
    RedisStore::new(config).unwrap()
}

/// Runs each listed scenario (an `async fn name()`) as one test per store:
/// `memory::name`, `awaited::name`, `external::name`, `redis::name`,
/// `redis_cluster::name` and `redis_tls::name` (mutual TLS).
#[macro_export]
macro_rules! on_every_store {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $name() {
                    $crate::common::on($crate::common::Backend::Memory, super::$name()).await
                }
            )*
        }
        mod awaited {
            $(
                #[tokio::test]
                async fn $name() {
                    $crate::common::on($crate::common::Backend::Awaited, super::$name()).await
                }
            )*
        }
        mod external {
            $(
                #[tokio::test]
                async fn $name() {
                    $crate::common::on($crate::common::Backend::External, super::$name()).await
                }
            )*
        }
        #[cfg(feature = "redis")]
        mod redis {
            $(
                #[tokio::test]
                #[cfg_attr(no_redis_server, ignore = "redis-server is not installed")]
                async fn $name() {
                    $crate::common::on($crate::common::Backend::Redis, super::$name()).await
                }
            )*
        }
        #[cfg(feature = "redis")]
        mod redis_cluster {
            $(
                #[tokio::test]
                #[cfg_attr(no_redis_server, ignore = "redis-server is not installed")]
                async fn $name() {
                    $crate::common::on($crate::common::Backend::RedisCluster, super::$name()).await
                }
            )*
        }
        #[cfg(feature = "redis-tls")]
        mod redis_tls {
            $(
                #[tokio::test]
                #[cfg_attr(no_redis_server, ignore = "redis-server is not installed")]
                async fn $name() {
                    $crate::common::on($crate::common::Backend::RedisTls, super::$name()).await
                }
            )*
        }
    };
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A store that must be awaited, written from the crate's public items only:
/// the memory store behind a yield to the runtime, as a remote store would
/// answer after a round trip. Decisions wait before deciding; post-charges
/// are made when first polled and complete after a yield (they run in the
/// background, spawned by the layer).
#[derive(Clone, Debug, Default)]
pub struct AwaitedStore {
    pub inner: MemoryStore,
}

impl Store for AwaitedStore {
    type Decide = BoxFuture<Result<Batch, StoreError>>;
    type Charge = BoxFuture<Result<(), StoreError>>;

    fn decide(&self, now: Timestamp, batch: Batch) -> Answer<Batch, Self::Decide> {
        let inner = self.inner.clone();
        Answer::Later(Box::pin(async move {
            tokio::task::yield_now().await;
            Ok(inner.decide_now(now, batch))
        }))
    }

    fn reset(&self, limits: Vec<tierlimit::store::LimitSpec>) -> tierlimit::store::HashFuture<()> {
        self.inner.reset(limits)
    }

    fn charge_after(&self, now: Timestamp, charges: Vec<PostCharge>) -> Answer<(), Self::Charge> {
        let inner = self.inner.clone();
        Answer::Later(Box::pin(async move {
            let done = match inner.charge_after(now, charges) {
                Answer::Now(r) => r,
                Answer::Later(f) => f.await,
            };
            tokio::task::yield_now().await;
            done
        }))
    }
}

/// 2024-02-17T20:00:00Z: a whole minute, hour and day boundary.
pub const T0: u64 = 1_708_200_000;

pub fn clock() -> ManualClock {
    ManualClock::new(Duration::from_secs(T0))
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    pub fn num(&self, name: &str) -> u64 {
        self.header(name)
            .unwrap_or_else(|| panic!("missing {name}"))
            .parse()
            .unwrap()
    }
}

pub async fn send(app: &Router, req: Request<Body>) -> Reply {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body: String::from_utf8(bytes.to_vec()).unwrap(),
    }
}

pub fn req(method: &str, path: &str) -> http::request::Builder {
    Request::builder().method(method).uri(path)
}

pub async fn get_as(app: &Router, key: &str, path: &str) -> Reply {
    send(
        app,
        req("GET", path)
            .header("x-api-key", key)
            .body(Body::empty())
            .unwrap(),
    )
    .await
}

/// Loads a shipped policy file. So that no test depends on the zone of the
/// machine it runs on, a `"time_zone": "local"` is pinned to UTC here
/// (`tests/time_zones.rs` checks `local` itself, in a child process with
/// its own `TZ`).
pub fn policy(name: &str) -> tierlimit::Config {
    let path = format!(
        "{}/examples/policies/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let text = text.replace(r#""time_zone": "local""#, r#""time_zone": "UTC""#);
    tierlimit::Config::from_json(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The demo API behind the layer, as the example gateway serves it:
/// `sleep_ms=N` (here: the manual clock moves N ms while the handler runs),
/// `status=N`, `tokens=N` (sets `x-usage-tokens`); identity headers
/// `x-user-id` / `x-tenant-id` become extensions; `x-test-peer` sets the
/// peer address (default 127.0.0.1).
/// On the store of the current scenario ([`backend`]); returns the
/// layer's controller.
pub fn demo(config: tierlimit::Config, clock: &ManualClock) -> (Router, Controller) {
    let builder = RateLimitLayer::builder(config.build().unwrap()).clock(clock.clone());
    match backend() {
        Backend::Memory => demo_with(builder.build(), clock),
        Backend::Awaited => demo_with(builder.store(AwaitedStore::default()).build(), clock),
        Backend::External => demo_with(builder.store(external::LogStore::default()).build(), clock),
        #[cfg(feature = "redis")]
        Backend::Redis | Backend::RedisCluster | Backend::RedisTls => {
            demo_with(builder.store(redis_store()).build(), clock)
        }
        #[cfg(not(feature = "redis"))]
        Backend::Redis | Backend::RedisCluster | Backend::RedisTls => {
            unreachable!("Redis scenarios need `redis`")
        }
    }
}

fn demo_with<St: Store>(layer: RateLimitLayer<St>, clock: &ManualClock) -> (Router, Controller) {
    use axum::extract::Query;
    use axum::middleware::{self, Next};
    use axum::response::IntoResponse;
    use std::collections::HashMap;
    use tierlimit::identity::{ClientAddr, TenantId, UserId};

    let handler_clock = clock.clone();
    let handler = move |Query(q): Query<HashMap<String, String>>| {
        let clock = handler_clock.clone();
        async move {
            let num = |k: &str| q.get(k).and_then(|v| v.parse::<u64>().ok());
            if let Some(ms) = num("sleep_ms") {
                clock.advance(Duration::from_millis(ms));
            }
            let status = num("status")
                .and_then(|s| StatusCode::from_u16(s as u16).ok())
                .unwrap_or(StatusCode::OK);
            let mut resp = (status, "{\"ok\":true}").into_response();
            if let Some(t) = num("tokens") {
                resp.headers_mut().insert("x-usage-tokens", t.into());
            }
            resp
        }
    };
    let auth = |mut req: Request<Body>, next: Next| async move {
        let (user, tenant, peer) = {
            let h = |name: &str| {
                req.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            (h("x-user-id"), h("x-tenant-id"), h("x-test-peer"))
        };
        if let Some(u) = user {
            req.extensions_mut().insert(UserId(u));
        }
        if let Some(t) = tenant {
            req.extensions_mut().insert(TenantId(t));
        }
        let peer = peer
            .and_then(|p| p.parse::<std::net::IpAddr>().ok())
            .unwrap_or([127, 0, 0, 1].into());
        req.extensions_mut()
            .insert(ClientAddr(std::net::SocketAddr::new(peer, 40000)));
        next.run(req).await
    };
    let router = Router::new()
        .fallback(axum::routing::any(handler))
        .layer(layer.clone())
        // Outside the limiter, as the example gateway mounts it.
        .route_service("/rate-limit", layer.usage_service())
        .layer(middleware::from_fn(auth));
    (router, layer.controller())
}

/// A request with headers given as pairs.
pub fn call(method: &str, path: &str, headers: &[(&str, &str)]) -> Request<Body> {
    let mut b = req(method, path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Body::empty()).unwrap()
}

/// `inner` behind a layer enforcing `policy` on the store of the current
/// scenario, with the store type erased.
pub fn limited<S, B, R, E>(
    policy: tierlimit::Policy,
    clock: &ManualClock,
    inner: S,
) -> tower::util::BoxCloneSyncService<Request<B>, http::Response<tierlimit::RateLimitBody<R>>, E>
where
    S: tower::Service<Request<B>, Response = http::Response<R>, Error = E>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    R: Send + 'static,
    E: 'static,
{
    use tower::Layer;
    let builder = RateLimitLayer::builder(policy).clock(clock.clone());
    match backend() {
        Backend::Memory => tower::util::BoxCloneSyncService::new(builder.build().layer(inner)),
        Backend::Awaited => tower::util::BoxCloneSyncService::new(
            builder.store(AwaitedStore::default()).build().layer(inner),
        ),
        Backend::External => tower::util::BoxCloneSyncService::new(
            builder
                .store(external::LogStore::default())
                .build()
                .layer(inner),
        ),
        #[cfg(feature = "redis")]
        Backend::Redis | Backend::RedisCluster | Backend::RedisTls => {
            tower::util::BoxCloneSyncService::new(builder.store(redis_store()).build().layer(inner))
        }
        #[cfg(not(feature = "redis"))]
        Backend::Redis | Backend::RedisCluster | Backend::RedisTls => {
            unreachable!("Redis scenarios need `redis`")
        }
    }
}

/// An inner service answering every request 200 with an empty body.
#[derive(Clone, Copy, Debug, Default)]
pub struct Ok200;

impl tower::Service<Request<()>> for Ok200 {
    type Response = http::Response<http_body_util::Empty<bytes::Bytes>>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<()>) -> Self::Future {
        std::future::ready(Ok(http::Response::new(http_body_util::Empty::new())))
    }
}

/// `GET /x` with `x-api-key: key` through a clone of `svc`.
pub async fn get_key<S, B>(svc: &S, key: &str) -> http::Response<B>
where
    S: tower::Service<Request<()>, Response = http::Response<B>> + Clone,
    S::Error: std::fmt::Debug,
{
    let req = Request::get("/x")
        .header("x-api-key", key)
        .body(())
        .unwrap();
    svc.clone().oneshot(req).await.unwrap()
}

/// The example gateway's binary: tests run from target/<profile>/deps, and
/// `cargo test` builds the examples next to it.
pub fn gateway_bin() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join("gateway");
    assert!(
        bin.exists(),
        "cargo test builds the examples: {}",
        bin.display()
    );
    bin
}
