//! Who counts as one caller: IPv6 clients by network prefix, and requests
//! that nothing identifies (shared budget or 401; the metric is checked in
//! `tests/gateway.rs`, the WARN in `tests/gateway_logs.rs`).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::routing::{any, get};
use axum::Router;
use common::*;
use http::{Request, StatusCode};
use tierlimit::config::{Config, Limit, Route, ScopePart, Tier};
use tierlimit::identity::ClientAddr;
use tierlimit::{Anonymous, ConfigErrorKind, RateLimitLayer};

fn app(config: Config) -> Router {
    let layer = RateLimitLayer::builder(config.build().unwrap())
        .clock(clock())
        .build();
    Router::new()
        .route("/health", get(|| async { "up" }))
        .fallback(any(|| async { "ok" }))
        .layer(layer)
}

/// One request a minute per client address.
fn per_ip() -> Config {
    Config::new()
        .tier(
            "ip",
            Tier::new()
                .limit(Limit::sliding("per-ip", 1, Duration::from_secs(60)).scope([ScopePart::Ip])),
        )
        .default_tier("ip")
        .route(Route::exempt(["GET"], "/health"))
}

fn from(addr: &str) -> Request<Body> {
    let mut r = req("GET", "/x").body(Body::empty()).unwrap();
    r.extensions_mut()
        .insert(ClientAddr(addr.parse::<SocketAddr>().unwrap()));
    r
}

async fn status(app: &Router, r: Request<Body>) -> StatusCode {
    send(app, r).await.status
}

#[tokio::test]
async fn two_addresses_of_one_ipv6_64_share_one_budget() {
    let app = app(per_ip());
    assert_eq!(
        status(&app, from("[2001:db8:1:2::1]:1")).await,
        StatusCode::OK
    );
    // Another address in the same /64: the same client.
    assert_eq!(
        status(&app, from("[2001:db8:1:2:ffff:ffff:ffff:ffff]:1")).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // The neighbouring /64 is another client.
    assert_eq!(
        status(&app, from("[2001:db8:1:3::1]:1")).await,
        StatusCode::OK
    );
    // IPv4, and IPv4 mapped into IPv6, stay one address each.
    assert_eq!(status(&app, from("192.0.2.1:1")).await, StatusCode::OK);
    assert_eq!(
        status(&app, from("[::ffff:192.0.2.1]:1")).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(status(&app, from("192.0.2.2:1")).await, StatusCode::OK);
}

#[tokio::test]
async fn the_ipv6_prefix_is_configurable() {
    let app = app(per_ip().ipv6_prefix(56));
    assert_eq!(
        status(&app, from("[2001:db8:1:200::1]:1")).await,
        StatusCode::OK
    );
    // Another /64 of the same /56.
    assert_eq!(
        status(&app, from("[2001:db8:1:2ff::1]:1")).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        status(&app, from("[2001:db8:1:300::1]:1")).await,
        StatusCode::OK
    );

    // /128: every address alone.
    let app = self::app(per_ip().ipv6_prefix(128));
    assert_eq!(status(&app, from("[2001:db8::1]:1")).await, StatusCode::OK);
    assert_eq!(status(&app, from("[2001:db8::2]:1")).await, StatusCode::OK);

    // From JSON, checked strictly.
    let json = |p: &str| {
        format!(
            r#"{{"identity": {{"ipv6_prefix": {p}}},
                "tiers": {{"t": {{"limits": [{{"name": "l", "capacity": 1, "window": "1m"}}]}}}},
                "default_tier": "t"}}"#
        )
    };
    assert!(tierlimit::Policy::from_json(&json("48")).is_ok());
    let e = tierlimit::Policy::from_json(&json("129")).unwrap_err();
    assert_eq!(e.kind(), ConfigErrorKind::Invalid, "{e}");
    assert_eq!(e.path(), "identity.ipv6_prefix", "{e}");
    let e = tierlimit::Policy::from_json(&json("-1")).unwrap_err();
    assert_eq!(e.kind(), ConfigErrorKind::Syntax, "{e}");
}

/// Two requests a minute per caller; requests carry no address.
fn per_caller() -> Config {
    Config::new()
        .tier(
            "standard",
            Tier::new().limit(Limit::sliding("per-minute", 2, Duration::from_secs(60))),
        )
        .default_tier("standard")
        .route(Route::exempt(["GET"], "/health"))
}

fn bare(path: &str) -> Request<Body> {
    req("GET", path).body(Body::empty()).unwrap()
}

#[tokio::test]
async fn by_default_anonymous_requests_share_one_budget() {
    let app = app(per_caller());
    assert_eq!(status(&app, bare("/x")).await, StatusCode::OK);
    assert_eq!(status(&app, bare("/y")).await, StatusCode::OK);
    assert_eq!(
        status(&app, bare("/x")).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // An identified caller has its own budget.
    assert_eq!(
        send(&app, call("GET", "/x", &[("x-api-key", "k")]))
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn anonymous_requests_can_be_refused_with_a_401_that_says_how_to_identify() {
    let app = app(per_caller().anonymous(Anonymous::Refuse));
    for _ in 0..3 {
        let r = send(&app, bare("/x")).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(body["status"], 401);
        let detail = body["detail"].as_str().unwrap();
        assert!(detail.contains("`x-api-key`"), "{detail}");
        // Never counted: no rate-limit headers.
        assert_eq!(r.header("x-ratelimit-limit"), None);
    }
    // Exempt routes stay open; identified callers are limited as usual.
    assert_eq!(status(&app, bare("/health")).await, StatusCode::OK);
    for want in [
        StatusCode::OK,
        StatusCode::OK,
        StatusCode::TOO_MANY_REQUESTS,
    ] {
        let r = send(&app, call("GET", "/x", &[("x-api-key", "k")])).await;
        assert_eq!(r.status, want);
    }
    // A client address identifies too.
    assert_eq!(status(&app, from("192.0.2.7:1")).await, StatusCode::OK);

    // Without bearer tokens the challenge names the header.
    let app = self::app(
        per_caller()
            .anonymous(Anonymous::Refuse)
            .bearer(false)
            .api_key_header(Some("x-key")),
    );
    let r = send(&app, bare("/x")).await;
    assert_eq!(
        r.header("www-authenticate"),
        Some("ApiKey header=\"x-key\"")
    );

    // From JSON.
    let policy = tierlimit::Policy::from_json(
        r#"{"identity": {"anonymous": "refuse"},
            "tiers": {"t": {"limits": [{"name": "l", "capacity": 1, "window": "1m"}]}},
            "default_tier": "t"}"#,
    );
    assert!(policy.is_ok());
    let e = tierlimit::Policy::from_json(r#"{"identity": {"anonymous": "ignore"}, "tiers": {}}"#)
        .unwrap_err();
    assert_eq!(e.kind(), ConfigErrorKind::Syntax, "{e}");
}
