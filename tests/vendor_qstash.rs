//! Seed 004 (QStash) from `examples/policies/qstash.json`.

mod common;

use std::time::Duration;

use common::*;
use http::StatusCode;

fn key(k: &str) -> [(&str, &str); 1] {
    [("authorization", k)]
}

async fn the_daily_limit_counts_publish_endpoints_only() {
    let clock = clock();
    clock.advance(Duration::from_secs(3600)); // 21:00 UTC
    let (app, _) = demo(policy("qstash"), &clock);
    let k = key("Bearer qs-1");
    let paths = [
        "/v2/publish/https://example.com",
        "/v2/enqueue/q1/https://example.com",
        "/v2/batch",
    ];
    for i in 0..500u64 {
        if i % 50 == 0 {
            clock.advance(Duration::from_secs(2)); // stay under the burst limit
        }
        let r = send(&app, call("POST", paths[i as usize % 3], &k)).await;
        assert_eq!(r.status, StatusCode::OK, "publish {i}");
        assert_eq!(r.num("ratelimit-limit"), 500);
        assert_eq!(r.num("ratelimit-remaining"), 499 - i);
        assert_eq!(r.num("burst-ratelimit-limit"), 100);
        assert!(r.header("x-ratelimit-limit-requests").is_none());
    }
    clock.advance(Duration::from_secs(2));
    let r = send(&app, call("POST", "/v2/publish/x", &k)).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["limit"], "daily");
    assert_eq!(v["error"], "daily rate limit exceeded");
    // Resets at the next UTC midnight, given as a Unix time.
    let midnight = (T0 / 86_400 + 1) * 86_400;
    assert_eq!(r.num("ratelimit-reset"), midnight);
    assert_eq!(v["reset"], midnight);
    // Fetching events or messages is not publishing: only the burst applies.
    let r = send(&app, call("GET", "/v2/events", &k)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.header("ratelimit-limit").is_none());
    assert_eq!(r.num("burst-ratelimit-limit"), 100);
    // After midnight the day starts over.
    clock.set(Duration::from_secs(midnight));
    assert_eq!(
        send(&app, call("POST", "/v2/batch", &k)).await.status,
        StatusCode::OK
    );
}

async fn the_burst_limit_applies_to_every_route() {
    let clock = clock();
    let (app, _) = demo(policy("qstash"), &clock);
    let k = key("Bearer qs-2");
    for i in 0..100u64 {
        let path = if i % 2 == 0 {
            "/v2/messages/m1"
        } else {
            "/v2/publish/t"
        };
        let method = if i % 2 == 0 { "GET" } else { "POST" };
        let r = send(&app, call(method, path, &k)).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.num("burst-ratelimit-remaining"), 99 - i);
    }
    let r = send(&app, call("GET", "/v2/messages/m1", &k)).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["limit"], "burst");
    // The burst at T0 stops counting exactly one second later, not at the
    // end of its 100 ms sub-bucket plus a second.
    assert_eq!(r.num("retry-after"), 1);
    assert_eq!(r.num("burst-ratelimit-reset"), T0 + 1);
    clock.advance(Duration::from_millis(999));
    let r = send(&app, call("GET", "/v2/messages/m1", &k)).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "1 ms early");
    clock.advance(Duration::from_millis(1));
    // A whole new burst fits at once.
    for i in 0..100u64 {
        let r = send(&app, call("GET", "/v2/messages/m1", &k)).await;
        assert_eq!(r.status, StatusCode::OK, "second burst, request {i}");
    }
}

async fn chat_tokens_are_charged_from_the_response() {
    let clock = clock();
    let (app, _) = demo(policy("qstash"), &clock);
    let k = key("Bearer qs-3");
    let chat = |tokens: u64| {
        call(
            "POST",
            &format!("/llm/v1/chat/completions?tokens={tokens}"),
            &k,
        )
    };
    let r = send(&app, chat(60_000)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.num("x-ratelimit-limit-requests"), 1000);
    assert_eq!(r.num("x-ratelimit-remaining-requests"), 999);
    assert_eq!(r.num("x-ratelimit-limit-tokens"), 100_000);
    // Tokens are charged after the response: not yet counted here.
    assert_eq!(r.num("x-ratelimit-remaining-tokens"), 100_000);
    assert!(
        r.header("ratelimit-limit").is_none(),
        "no daily publish family on chat"
    );
    let r = send(&app, chat(50_000)).await;
    assert_eq!(r.status, StatusCode::OK, "used 60000 < 100000: admitted");
    assert_eq!(r.num("x-ratelimit-remaining-tokens"), 40_000);
    let r = send(&app, chat(1)).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["limit"], "chat-tokens");
    assert_eq!(r.num("x-ratelimit-remaining-tokens"), 0);
    // Requests were refunded: the refused call did not count.
    assert_eq!(r.num("x-ratelimit-remaining-requests"), 998);
}

async fn chat_requests_limit_names_its_family() {
    let clock = clock();
    let (app, _) = demo(policy("qstash"), &clock);
    let k = key("Bearer qs-4");
    for i in 0..1000u64 {
        if i % 90 == 0 {
            clock.advance(Duration::from_secs(2));
        }
        let r = send(&app, call("POST", "/llm/v1/chat/completions", &k)).await;
        assert_eq!(r.status, StatusCode::OK, "chat {i}");
    }
    clock.advance(Duration::from_secs(2));
    let r = send(&app, call("POST", "/llm/v1/chat/completions", &k)).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["limit"], "chat-requests");
}

on_every_store!(
    the_daily_limit_counts_publish_endpoints_only,
    the_burst_limit_applies_to_every_route,
    chat_tokens_are_charged_from_the_response,
    chat_requests_limit_names_its_family,
);
