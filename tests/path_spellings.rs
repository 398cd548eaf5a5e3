//! Other spellings of an exempt or lightly limited path never reach the
//! app with less limiting than the canonical path, on an axum router with a
//! fallback handler (which receives every spelling axum does not route).

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::routing::{get, post};
use axum::Router;
use common::*;
use http::StatusCode;
use tierlimit::config::{Config, Limit, Route, Tier};
use tierlimit::RateLimitLayer;

/// The app of a stranger: real routes and a fallback that answers 200 for
/// anything else (a SPA, a proxy, a catch-all).
fn app(config: Config, clock: &tierlimit::clock::ManualClock) -> Router {
    let layer = RateLimitLayer::builder(config.build().unwrap())
        .clock(clock.clone())
        .build();
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/metrics", get(|| async { "metrics" }))
        .route("/auth/token", post(|| async { "token" }))
        .route("/api/items", get(|| async { "items" }))
        .route("/public/{*rest}", get(|| async { "public" }))
        .fallback(|| async { "fallback" })
        .layer(layer)
}

fn with_key(method: &str, path: &str) -> http::Request<Body> {
    call(method, path, &[("x-api-key", "spent")])
}

#[tokio::test]
async fn every_other_spelling_of_an_exempt_path_is_limited() {
    let clock = clock();
    let app = app(policy("qarion"), &clock);
    for _ in 0..60 {
        let r = send(&app, with_key("GET", "/api/items")).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    assert_eq!(
        send(&app, with_key("GET", "/api/items")).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    // The canonical spellings stay exempt: no count, no headers.
    for (m, p) in [
        ("GET", "/health"),
        ("GET", "/health?probe=1"),
        ("GET", "/metrics"),
        ("POST", "/auth/token"),
    ] {
        let r = send(&app, with_key(m, p)).await;
        assert_eq!(r.status, StatusCode::OK, "{m} {p}");
        assert!(r.header("x-ratelimit-limit").is_none(), "{m} {p}");
    }
    // Every spelling the attack used: the key's spent budget refuses it.
    for (m, p) in [
        ("GET", "//health"),
        ("GET", "/health/"),
        ("GET", "/health/."),
        ("GET", "/./health"),
        ("GET", "/%68ealth"),
        ("GET", "/x/../health"),
        ("GET", "//metrics"),
        ("GET", "/metrics/"),
        ("POST", "/auth/token/"),
        ("POST", "//auth//token"),
        ("POST", "/auth/%74oken"),
    ] {
        let r = send(&app, with_key(m, p)).await;
        assert_eq!(
            r.status,
            StatusCode::TOO_MANY_REQUESTS,
            "{m} {p}: {}",
            r.body
        );
        assert_eq!(r.num("x-ratelimit-remaining"), 0, "{m} {p}");
    }
    // Another key is counted for them like for any request.
    let r = send(&app, call("GET", "//health", &[("x-api-key", "fresh")])).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.body, "fallback",
        "axum routed the spelling to the fallback"
    );
    assert_eq!(r.num("x-ratelimit-remaining"), 59);
}

#[tokio::test]
async fn other_spellings_of_a_light_route_pay_the_strict_tier_too() {
    let clock = clock();
    let config = Config::new()
        .tier(
            "strict",
            Tier::new().limit(Limit::sliding("strict", 2, Duration::from_secs(60))),
        )
        .tier(
            "light",
            Tier::new().limit(Limit::sliding("light", 100, Duration::from_secs(60))),
        )
        .route(Route::new(["GET"], "/public/**", "light"))
        .default_tier("strict");
    let app = app(config, &clock);
    for _ in 0..2 {
        assert_eq!(
            send(&app, with_key("GET", "/api/items")).await.status,
            StatusCode::OK
        );
    }
    // The canonical light route is the light tier alone.
    let r = send(&app, with_key("GET", "/public/a")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.num("x-ratelimit-limit"), 100);
    // Spellings that normalise into the light route but that a router may
    // send elsewhere are held to the strict tier as well.
    for p in ["/public/../api/items", "/%70ublic/a", "/./public/a"] {
        let r = send(&app, with_key("GET", p)).await;
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{p}");
        assert_eq!(r.num("x-ratelimit-limit"), 2, "{p}");
    }
    // Spellings the light rule takes literally too stay light alone.
    for p in ["/public/a/", "/public//a"] {
        let r = send(&app, with_key("GET", p)).await;
        assert_eq!(r.status, StatusCode::OK, "{p}");
        assert_eq!(r.num("x-ratelimit-limit"), 100, "{p}");
    }
    // A fresh key's odd spelling is counted once in each tier.
    let r = send(&app, call("GET", "/%70ublic/a", &[("x-api-key", "k2")])).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = send(&app, call("GET", "/public/b", &[("x-api-key", "k2")])).await;
    assert_eq!(r.num("x-ratelimit-remaining"), 98);
    assert_eq!(r.body, "public");
    let r = send(&app, call("GET", "/api/items", &[("x-api-key", "k2")])).await;
    assert_eq!(r.num("x-ratelimit-remaining"), 0);
}
