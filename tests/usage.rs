//! The usage report (`GET /rate-limit`, `Controller::usage`): where a
//! caller stands on every limit of its tiers and plan, identified as the
//! layer identifies it, counting nothing, on every store.

mod common;

use std::time::Duration;

use common::*;
use http::StatusCode;
use tierlimit::config::{Anonymous, Config, Limit, Tier};
use tierlimit::store::{MemoryStore, Store};
use tierlimit::usage::UsageError;
use tierlimit::RateLimitLayer;
use tower::ServiceExt;

fn plan() -> Config {
    Config::new()
        .tier(
            "standard",
            Tier::new()
                .limit(Limit::sliding("per-minute", 60, Duration::from_secs(60)))
                .limit(Limit::sliding("per-hour", 1000, Duration::from_secs(3600))),
        )
        .default_tier("standard")
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// The limit named `name` in a report.
fn limit<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["limits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {report}"))
}

async fn seven_requests_are_reported_and_reading_counts_nothing() {
    let clock = clock();
    let (app, control) = demo(plan(), &clock);
    for _ in 0..7 {
        assert_eq!(get_as(&app, "k1", "/x").await.status, StatusCode::OK);
    }
    for _ in 0..3 {
        let r = get_as(&app, "k1", "/rate-limit").await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert_eq!(r.header("cache-control"), Some("no-store"));
        assert_eq!(r.header("content-type"), Some("application/json"));
        // Not limited, so no rate-limit headers of its own.
        assert_eq!(r.header("x-ratelimit-remaining"), None);
        let report = json(&r.body);
        let minute = limit(&report, "per-minute");
        assert_eq!(minute["tier"], "standard");
        assert_eq!(minute["capacity"], 60);
        assert_eq!(minute["used"], 7);
        assert_eq!(minute["remaining"], 53);
        assert_eq!(minute["reset"], T0 + 60);
        assert_eq!(minute["window"], 60);
        assert_eq!(minute["unit"], "request");
        let hour = limit(&report, "per-hour");
        assert_eq!(hour["used"], 7);
        assert_eq!(hour["remaining"], 993);
        assert_eq!(hour["reset"], T0 + 3600);
        assert_eq!(hour["window"], 3600);
        assert_eq!(report["limits"].as_array().unwrap().len(), 2);
    }
    // The same figures from Rust.
    let (parts, ()) = http::Request::get("/anything")
        .header("x-api-key", "k1")
        .body(())
        .unwrap()
        .into_parts();
    let usage = control.usage(&parts).await.unwrap();
    let minute = &usage.limits[0];
    assert_eq!(
        (minute.name.as_str(), minute.used, minute.remaining),
        ("per-minute", 7, 53)
    );
    assert_eq!(usage.limits[1].remaining, 993);
    // Reading spent nothing: the next request is the 8th.
    let r = get_as(&app, "k1", "/x").await;
    assert_eq!(r.num("x-ratelimit-remaining"), 52);
    // Another caller has used nothing, and its window ends now.
    let other = json(&get_as(&app, "k2", "/rate-limit").await.body);
    assert_eq!(limit(&other, "per-minute")["used"], 0);
    assert_eq!(limit(&other, "per-minute")["reset"], T0);
    // A minute later the per-minute budget is whole again, the hour not.
    clock.advance(Duration::from_secs(60));
    let later = json(&get_as(&app, "k1", "/rate-limit").await.body);
    assert_eq!(limit(&later, "per-minute")["remaining"], 60);
    assert_eq!(limit(&later, "per-hour")["remaining"], 992);
}

async fn a_spent_limit_reports_zero_remaining_and_its_reset() {
    let clock = clock();
    let config = Config::new()
        .tier(
            "tight",
            Tier::new().limit(Limit::fixed("per-10s", 3, Duration::from_secs(10))),
        )
        .default_tier("tight");
    let (app, _) = demo(config, &clock);
    clock.advance(Duration::from_secs(2));
    for expect in [200, 200, 200, 429] {
        assert_eq!(get_as(&app, "k", "/x").await.status.as_u16(), expect);
    }
    let report = json(&get_as(&app, "k", "/rate-limit").await.body);
    let l = limit(&report, "per-10s");
    assert_eq!(
        (l["used"].as_u64(), l["remaining"].as_u64()),
        (Some(3), Some(0))
    );
    // A fixed window resets at its end.
    assert_eq!(l["reset"], T0 + 10);
}

async fn the_plan_tier_and_every_route_tier_are_reported() {
    let clock = clock();
    let config = Config::from_json(
        r#"{
          "tiers": {
            "standard": {"limits": [{"name": "m", "capacity": 60, "window": "1m"}]},
            "premium": {"limits": [{"name": "m", "capacity": 600, "window": "1m"}]},
            "search": {"limits": [{"name": "search", "capacity": 10, "window": "1m"}]},
            "everyone": {"limits": [{"name": "all", "capacity": 100000, "window": "1m", "scope": []}]}
          },
          "routes": [{"path": "/search/**", "tier": "search"}],
          "global": "everyone",
          "plans": {"default": "standard", "assignments": {"vip": "premium"}}
        }"#,
    )
    .unwrap();
    let (app, control) = demo(config, &clock);
    assert_eq!(
        get_as(&app, "vip", "/search/x").await.status,
        StatusCode::OK
    );
    let report = json(&get_as(&app, "vip", "/rate-limit").await.body);
    let tiers: Vec<(&str, &str, u64)> = report["limits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["tier"].as_str().unwrap(),
                l["name"].as_str().unwrap(),
                l["used"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        tiers,
        [
            ("premium", "m", 1),
            ("search", "search", 1),
            ("everyone", "all", 1)
        ]
    );
    // A plan changed at runtime is what the report shows next.
    control.set_plan("vip", "standard").unwrap();
    let report = json(&get_as(&app, "vip", "/rate-limit").await.body);
    assert_eq!(report["limits"][0]["tier"], "standard");
    assert_eq!(report["limits"][0]["capacity"], 60);
}

async fn an_anonymous_caller_refused_by_the_policy_gets_401() {
    let clock = clock();
    let config = plan().anonymous(Anonymous::Refuse);
    let (app, control) = demo(config, &clock);
    // The demo gives every request a client address: ask with the identity
    // the layer reads when there is none.
    let r = get_as(&app, "k", "/rate-limit").await;
    assert_eq!(r.status, StatusCode::OK);
    let (parts, ()) = http::Request::get("/rate-limit")
        .body(())
        .unwrap()
        .into_parts();
    assert!(matches!(
        control.usage(&parts).await,
        Err(UsageError::Anonymous)
    ));
}

on_every_store!(
    seven_requests_are_reported_and_reading_counts_nothing,
    a_spent_limit_reports_zero_remaining_and_its_reset,
    the_plan_tier_and_every_route_tier_are_reported,
    an_anonymous_caller_refused_by_the_policy_gets_401,
);

#[tokio::test]
async fn reading_a_callers_usage_makes_no_counter() {
    let store = MemoryStore::default();
    let layer = RateLimitLayer::builder(plan().build().unwrap())
        .store(store.clone())
        .build();
    for key in ["a", "b", "c"] {
        let req = http::Request::get("/rate-limit")
            .header("x-api-key", key)
            .body(())
            .unwrap();
        let resp = layer.usage_service().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }
    assert_eq!(store.len(), 0, "no counter made for a read");
    // And the store's own peek: an outcome for every limit, nothing kept.
    let (parts, ()) = http::Request::get("/")
        .header("x-api-key", "d")
        .body(())
        .unwrap()
        .into_parts();
    let usage = layer.controller().usage(&parts).await.unwrap();
    assert_eq!(usage.limits.len(), 2);
    assert!(store.is_empty());
    let _ = store.key_secret();
}

#[tokio::test]
async fn other_methods_are_405_and_a_gone_layer_is_an_error() {
    let layer = RateLimitLayer::new(plan().build().unwrap());
    let req = http::Request::post("/rate-limit").body(()).unwrap();
    let resp = layer.usage_service().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(resp.headers()["allow"], "GET, HEAD");
    let control = layer.controller();
    drop(layer);
    let (parts, ()) = http::Request::get("/").body(()).unwrap().into_parts();
    assert!(matches!(
        control.usage(&parts).await,
        Err(UsageError::NoLayer)
    ));
}
