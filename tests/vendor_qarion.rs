//! Seed 001 (Qarion) from `examples/policies/qarion.json`.

mod common;

use std::time::Duration;

use common::*;
use http::StatusCode;

async fn sixty_per_minute_then_the_documented_429() {
    let clock = clock();
    let (app, _) = demo(policy("qarion"), &clock);
    for i in 0..60u64 {
        let r = send(&app, call("GET", "/api/datasets", &[("x-api-key", "k-1")])).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.num("x-ratelimit-limit"), 60);
        assert_eq!(r.num("x-ratelimit-remaining"), 59 - i, "headers count down");
        assert!(r.num("x-ratelimit-reset") > T0);
    }
    clock.advance(Duration::from_secs(37));
    let r = send(&app, call("GET", "/api/datasets", &[("x-api-key", "k-1")])).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    let n = r.num("retry-after");
    // All 60 were admitted at T0: they leave exactly one minute later.
    assert_eq!(n, 60 - 37);
    assert_eq!(
        r.body,
        format!(r#"{{"detail":"Rate limit exceeded. Try again in {n} seconds."}}"#)
    );
    assert_eq!(r.num("x-ratelimit-remaining"), 0);
    // Another key is not affected.
    let r = send(&app, call("GET", "/api/datasets", &[("x-api-key", "k-2")])).await;
    assert_eq!(r.status, StatusCode::OK);
    // After Retry-After, the key is served again.
    clock.advance(Duration::from_secs(n));
    let r = send(&app, call("GET", "/api/datasets", &[("x-api-key", "k-1")])).await;
    assert_eq!(r.status, StatusCode::OK);
}

async fn the_hourly_limit_holds_across_minutes() {
    let clock = clock();
    let (app, _) = demo(policy("qarion"), &clock);
    let mut admitted = 0;
    for _minute in 0..17 {
        for _ in 0..60 {
            let r = send(&app, call("GET", "/x", &[("x-api-key", "busy")])).await;
            if r.status == StatusCode::OK {
                admitted += 1;
            } else {
                // Only the hourly limit can refuse here: the report says so.
                assert_eq!(r.num("x-ratelimit-limit"), 1000);
                assert!(r.body.contains("Try again in"));
            }
        }
        clock.advance(Duration::from_secs(62));
    }
    assert_eq!(admitted, 1000);
}

async fn exempt_endpoints_are_neither_counted_nor_given_headers() {
    let clock = clock();
    let (app, _) = demo(policy("qarion"), &clock);
    for (m, p) in [
        ("GET", "/health"),
        ("GET", "/metrics"),
        ("POST", "/auth/token"),
        ("POST", "/auth/refresh"),
    ] {
        for _ in 0..100 {
            let r = send(&app, call(m, p, &[("x-api-key", "k")])).await;
            assert_eq!(r.status, StatusCode::OK, "{m} {p}");
            assert!(r.header("x-ratelimit-limit").is_none(), "{m} {p}");
        }
    }
    let r = send(&app, call("GET", "/x", &[("x-api-key", "k")])).await;
    assert_eq!(r.num("x-ratelimit-remaining"), 59);
}

async fn an_admin_upgrades_a_key_to_premium_at_runtime() {
    let clock = clock();
    let (app, layer) = demo(policy("qarion"), &clock);
    for _ in 0..60 {
        send(&app, call("GET", "/x", &[("x-api-key", "ci-pipeline")])).await;
    }
    let r = send(&app, call("GET", "/x", &[("x-api-key", "ci-pipeline")])).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    layer.set_plan("ci-pipeline", "premium").unwrap();
    assert_eq!(layer.plan_of("ci-pipeline").as_deref(), Some("premium"));
    let r = send(&app, call("GET", "/x", &[("x-api-key", "ci-pipeline")])).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.num("x-ratelimit-limit"), 300);
    assert_eq!(r.num("x-ratelimit-remaining"), 299);
    layer.set_plan("ci-pipeline", "internal").unwrap();
    let r = send(&app, call("GET", "/x", &[("x-api-key", "ci-pipeline")])).await;
    assert_eq!(r.num("x-ratelimit-limit"), 1000);
}

async fn the_caller_is_the_api_key_else_the_user_else_the_ip() {
    let clock = clock();
    let (app, _) = demo(policy("qarion"), &clock);
    // Same IP, same user, different keys: separate budgets.
    let with_key = |k: &'static str| call("GET", "/x", &[("x-api-key", k), ("x-user-id", "u1")]);
    send(&app, with_key("a")).await;
    assert_eq!(
        send(&app, with_key("b")).await.num("x-ratelimit-remaining"),
        59
    );
    // No key: the user is the caller, whatever the IP.
    send(
        &app,
        call(
            "GET",
            "/x",
            &[("x-user-id", "u1"), ("x-test-peer", "10.0.0.1")],
        ),
    )
    .await;
    let r = send(
        &app,
        call(
            "GET",
            "/x",
            &[("x-user-id", "u1"), ("x-test-peer", "10.0.0.2")],
        ),
    )
    .await;
    assert_eq!(r.num("x-ratelimit-remaining"), 58);
    // Neither: the IP.
    send(&app, call("GET", "/x", &[("x-test-peer", "10.0.0.3")])).await;
    let r = send(&app, call("GET", "/x", &[("x-test-peer", "10.0.0.3")])).await;
    assert_eq!(r.num("x-ratelimit-remaining"), 58);
    let r = send(&app, call("GET", "/x", &[("x-test-peer", "10.0.0.4")])).await;
    assert_eq!(r.num("x-ratelimit-remaining"), 59);
    // A bearer token is an API key too.
    let r = send(&app, call("GET", "/x", &[("authorization", "Bearer a")])).await;
    assert_eq!(r.num("x-ratelimit-remaining"), 58);
}

on_every_store!(
    sixty_per_minute_then_the_documented_429,
    the_hourly_limit_holds_across_minutes,
    exempt_endpoints_are_neither_counted_nor_given_headers,
    an_admin_upgrades_a_key_to_premium_at_runtime,
    the_caller_is_the_api_key_else_the_user_else_the_ip,
);
