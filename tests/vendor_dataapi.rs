//! Seed 002 (Data API) from `examples/policies/dataapi.json`: count and
//! latency cascades of fixed minute → hour → day buckets; sandbox halves.

mod common;

use std::time::Duration;

use axum::body::Body;
use common::*;
use http::{Method, Response, StatusCode};
use tierlimit::clock::Timestamp;
use tierlimit::config::HeaderStyle;
use tierlimit::identity::Identity;
use tierlimit::store::MemoryStore;
use tower::ServiceExt;

const MIN: u64 = 60;
const HOUR: u64 = 3600;
const DAY: u64 = 86_400;
const NS: u64 = 1_000_000_000;

fn app_key(k: &str) -> [(&str, &str); 1] {
    [("x-api-key", k)]
}

/// The RateLimit (ietf) item of one limit: (remaining, quota from policy).
fn ietf(r: &Reply, name: &str) -> (u64, u64) {
    let find = |header: &str, key: &str| -> u64 {
        let v = r.header(header).unwrap();
        let item = v
            .split(", ")
            .find(|i| i.starts_with(&format!("\"{name}\";")))
            .unwrap_or_else(|| panic!("{name} not in {v}"));
        item.split(';')
            .find_map(|p| p.strip_prefix(&format!("{key}=")))
            .unwrap()
            .parse()
            .unwrap()
    };
    (find("ratelimit", "r"), find("ratelimit-policy", "q"))
}

fn ietf_policy() -> tierlimit::Config {
    let mut c = policy("dataapi");
    c.headers = HeaderStyle::Ietf;
    c
}

async fn a_hundred_per_minute_then_the_hour_bucket_takes_over() {
    let clock = clock();
    let (app, _) = demo(policy("dataapi"), &clock);
    for i in 0..100u64 {
        let r = send(&app, call("GET", "/data/items", &app_key("app-1"))).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.num("x-ratelimit-limit"), 100);
        assert_eq!(r.num("x-ratelimit-remaining"), 99 - i);
    }
    // The minute bucket is empty: requests come out of the hour bucket.
    for i in 0..3u64 {
        let r = send(&app, call("GET", "/data/items", &app_key("app-1"))).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.num("x-ratelimit-limit"), 2600);
        assert_eq!(r.num("x-ratelimit-remaining"), 2599 - i);
        assert_eq!(r.num("x-ratelimit-reset"), T0 + HOUR);
    }
    // A minute later the minute bucket is refreshed and used first again.
    clock.advance(Duration::from_secs(MIN));
    let r = send(&app, call("GET", "/data/items", &app_key("app-1"))).await;
    assert_eq!(r.num("x-ratelimit-limit"), 100);
    assert_eq!(r.num("x-ratelimit-remaining"), 99);
}

fn decide(policy: &tierlimit::Policy, store: &MemoryStore, key: &[u8], at: u64) -> bool {
    let id = Identity {
        api_key: Some(key),
        ..Identity::default()
    };
    let batch = policy
        .batch_for(
            tierlimit::store::KeySecret::per_process(),
            &Method::GET,
            "/data",
            &id,
        )
        .unwrap();
    store
        .decide_now(Timestamp::from_nanos(at * NS), batch)
        .admitted()
}

#[test]
fn the_daily_maximum_of_the_faq() {
    // (100 × 60 × 24) + (2600 × 24) + 1150 requests in one day, at most.
    let policy = policy("dataapi").build().unwrap();
    let store = MemoryStore::default();
    let day = (T0 / DAY) * DAY;
    let mut admitted = 0u64;
    for minute in 0..(24 * 60) {
        while decide(&policy, &store, b"greedy", day + minute * MIN) {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 100 * 60 * 24 + 2600 * 24 + 1150);
    // The daily bucket refreshes at midnight (the shipped file says the
    // server's zone, pinned to UTC by `policy`; see tests/time_zones.rs).
    assert!(!decide(&policy, &store, b"greedy", day + DAY - 1));
    let mut next_day = 0;
    while decide(&policy, &store, b"greedy", day + DAY) {
        next_day += 1;
    }
    assert_eq!(next_day, 100 + 2600 + 1150);
}

#[test]
fn twenty_six_hundred_at_13_59_and_again_at_14_01() {
    let policy = policy("dataapi").build().unwrap();
    let store = MemoryStore::default();
    let at_13_59 = (T0 / DAY) * DAY + 13 * HOUR + 59 * MIN;
    let mut first = 0;
    while decide(&policy, &store, b"faq", at_13_59) {
        first += 1;
    }
    // Minute + hour, and the day bucket as the last resort.
    assert_eq!(first, 100 + 2600 + 1150);
    let mut second = 0;
    while decide(&policy, &store, b"faq", at_13_59 + 2 * MIN) {
        second += 1;
    }
    // "Yes, but only within that hour, increased by the minute bucket."
    assert_eq!(second, 2600 + 100);
}

async fn hold(app: &axum::Router, n: usize, key: &str) -> Vec<Response<Body>> {
    let mut held = Vec::new();
    for _ in 0..n {
        let resp = app
            .clone()
            .oneshot(call("GET", "/slow", &app_key(key)))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        held.push(resp);
    }
    held
}

async fn latency_is_charged_after_slow_responses() {
    let clock = clock();
    let (app, _) = demo(ietf_policy(), &clock);
    let k = "slow-app";
    // One response taking 31 s (body held open, then dropped).
    let a = hold(&app, 1, k).await;
    clock.advance(Duration::from_secs(31));
    drop(a);
    let r = send(&app, call("GET", "/x", &app_key(k))).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        ietf(&r, "latency-minute"),
        (0, 30_000),
        "31 s charged to the minute"
    );
    assert_eq!(ietf(&r, "latency-hour"), (390_000, 390_000));
    // 20 responses of 20 s each, now drawn from the hour: 400 s ≥ 390 s.
    let b = hold(&app, 20, k).await;
    clock.advance(Duration::from_secs(20));
    drop(b);
    let r = send(&app, call("GET", "/x", &app_key(k))).await;
    assert_eq!(r.status, StatusCode::OK, "the day bucket still has room");
    assert_eq!(ietf(&r, "latency-hour").0, 0);
    // 35 responses of 5 s: 175 s ≥ 172.5 s of the day bucket.
    let c = hold(&app, 35, k).await;
    clock.advance(Duration::from_secs(5));
    drop(c);
    let r = send(&app, call("GET", "/x", &app_key(k))).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    // All three latency buckets are empty; the minute refreshes first, at :01.
    assert_eq!(r.num("retry-after"), 4);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["status"], 429);
    assert_eq!(v["limit"], "latency-minute");
    clock.advance(Duration::from_secs(4));
    assert_eq!(
        send(&app, call("GET", "/x", &app_key(k))).await.status,
        StatusCode::OK
    );
}

async fn a_slow_request_is_charged_by_its_duration() {
    let clock = clock();
    let (app, _) = demo(ietf_policy(), &clock);
    // 25 requests of 600 ms sum to 15 s (the FAQ's example).
    for _ in 0..25 {
        let r = send(&app, call("GET", "/x?sleep_ms=600", &app_key("faq-app"))).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let r = send(&app, call("GET", "/x", &app_key("faq-app"))).await;
    assert_eq!(ietf(&r, "latency-minute"), (15_000, 30_000));
    assert_eq!(ietf(&r, "requests-minute"), (74, 100));
}

async fn sandbox_apps_get_half_of_every_limit_in_their_own_buckets() {
    let clock = clock();
    let (app, _) = demo(ietf_policy(), &clock);
    let sandbox = [("x-api-key", "app-2"), ("x-app-env", "sandbox")];
    for _ in 0..50 {
        let r = send(&app, call("GET", "/x", &sandbox)).await;
        assert_eq!(ietf(&r, "requests-minute").1, 50);
        assert_eq!(ietf(&r, "latency-minute").1, 15_000);
        assert_eq!(ietf(&r, "latency-day").1, 86_250);
    }
    let r = send(&app, call("GET", "/x", &sandbox)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(ietf(&r, "requests-minute"), (0, 50));
    assert_eq!(ietf(&r, "requests-hour"), (1299, 1300));
    assert_eq!(ietf(&r, "requests-day").1, 575);
    // 25 requests of 600 ms reach the sandbox's 15 s minute latency.
    let mut last = None;
    for _ in 0..25 {
        last = Some(send(&app, call("GET", "/x?sleep_ms=600", &sandbox)).await);
    }
    let r = send(&app, call("GET", "/x", &sandbox)).await;
    assert_eq!(ietf(&r, "latency-minute"), (0, 15_000));
    assert_eq!(last.unwrap().status, StatusCode::OK);
    // The production app (same key, no sandbox header) has its own buckets.
    let r = send(&app, call("GET", "/x", &app_key("app-2"))).await;
    assert_eq!(ietf(&r, "requests-minute"), (99, 100));
}

on_every_store!(
    a_hundred_per_minute_then_the_hour_bucket_takes_over,
    latency_is_charged_after_slow_responses,
    a_slow_request_is_charged_by_its_duration,
    sandbox_apps_get_half_of_every_limit_in_their_own_buckets,
);
