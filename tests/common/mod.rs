#![allow(dead_code, missing_docs)]
//! Helpers shared by the integration tests.

use std::time::Duration;

use axum::body::Body;
use axum::Router;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use tierlimit::clock::ManualClock;
use tower::ServiceExt;

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

/// Loads a shipped policy file.
pub fn policy(name: &str) -> tierlimit::Config {
    let path = format!(
        "{}/examples/policies/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    tierlimit::Config::from_file(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The demo API behind the layer, as the example gateway serves it:
/// `sleep_ms=N` (here: the manual clock moves N ms while the handler runs),
/// `status=N`, `tokens=N` (sets `x-usage-tokens`); identity headers
/// `x-user-id` / `x-tenant-id` become extensions; `x-test-peer` sets the
/// peer address (default 127.0.0.1).
pub fn demo(config: tierlimit::Config, clock: &ManualClock) -> (Router, tierlimit::RateLimitLayer) {
    use axum::extract::Query;
    use axum::middleware::{self, Next};
    use axum::response::IntoResponse;
    use std::collections::HashMap;
    use tierlimit::identity::{ClientAddr, TenantId, UserId};

    let layer = tierlimit::RateLimitLayer::new(config.build().unwrap()).with_clock(clock.clone());
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
        .layer(middleware::from_fn(auth));
    (router, layer)
}

/// A request with headers given as pairs.
pub fn call(method: &str, path: &str, headers: &[(&str, &str)]) -> Request<Body> {
    let mut b = req(method, path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Body::empty()).unwrap()
}
