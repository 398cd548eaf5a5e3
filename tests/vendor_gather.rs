//! Seed 003 (Gather) from `examples/policies/gather.json`.

mod common;

use std::time::Duration;

use common::*;
use http::StatusCode;

fn key(k: &str) -> [(&str, &str); 1] {
    [("x-api-key", k)]
}

async fn burst_window_then_the_exact_error_document() {
    let clock = clock();
    let (app, _) = demo(policy("gather"), &clock);
    for i in 0..100u64 {
        let r = send(&app, call("GET", "/qsi/gather/questions", &key("g1"))).await;
        assert_eq!(r.status, StatusCode::OK);
        // The minute window is the closer one to its limit.
        assert_eq!(r.num("x-ratelimit-limit"), 100);
        assert_eq!(r.num("x-ratelimit-remaining"), 99 - i);
    }
    clock.advance(Duration::from_millis(12_500));
    let r = send(&app, call("GET", "/qsi/gather/questions", &key("g1"))).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
    assert_eq!(keys, ["error", "meta"]);
    assert_eq!(v["error"]["code"], "RATE_LIMIT_EXCEEDED");
    assert_eq!(
        v["error"]["message"],
        "Rate limit exceeded. Please try again later."
    );
    assert_eq!(v["error"]["details"]["limit"], 100);
    assert_eq!(v["error"]["details"]["remaining"], 0);
    let reset = r.num("x-ratelimit-reset");
    // One minute after the burst, not a sub-bucket later.
    assert_eq!(reset, T0 + 60);
    assert_eq!(
        v["error"]["details"]["resetAt"], "2024-02-17T20:01:00Z",
        "resetAt is X-RateLimit-Reset in RFC 3339"
    );
    assert_eq!(v["meta"]["timestamp"], "2024-02-17T20:00:12.500Z");
    let id = v["meta"]["requestId"].as_str().unwrap();
    assert_eq!(id.len(), 36);
    assert_eq!(id.matches('-').count(), 4);
    // Each rejection gets its own request id.
    let r2 = send(&app, call("GET", "/qsi/gather/questions", &key("g1"))).await;
    let v2: serde_json::Value = serde_json::from_str(&r2.body).unwrap();
    assert_ne!(v2["meta"]["requestId"], v["meta"]["requestId"]);
}

async fn both_windows_must_hold() {
    let clock = clock();
    let (app, _) = demo(policy("gather"), &clock);
    let mut admitted = 0;
    let mut hourly_refusal = None;
    // 100 per minute for 11 minutes would be 1100: the hour stops it at 1000.
    for _minute in 0..11 {
        for _ in 0..100 {
            let r = send(&app, call("GET", "/x", &key("g2"))).await;
            if r.status == StatusCode::OK {
                admitted += 1;
            } else if hourly_refusal.is_none() {
                hourly_refusal = Some(r);
            }
        }
        clock.advance(Duration::from_secs(62));
    }
    assert_eq!(admitted, 1000);
    let r = hourly_refusal.unwrap();
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["error"]["details"]["limit"], 1000);
    assert_eq!(r.num("x-ratelimit-limit"), 1000);
    // The hour frees when its first bucket leaves: well over a minute away.
    assert!(r.num("retry-after") > 60);
}

async fn keys_are_independent() {
    let clock = clock();
    let (app, _) = demo(policy("gather"), &clock);
    for _ in 0..100 {
        send(&app, call("GET", "/x", &key("a"))).await;
    }
    assert_eq!(
        send(&app, call("GET", "/x", &key("a"))).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        send(&app, call("GET", "/x", &key("b"))).await.status,
        StatusCode::OK
    );
}

on_every_store!(
    burst_window_then_the_exact_error_document,
    both_windows_must_hold,
    keys_are_independent,
);
