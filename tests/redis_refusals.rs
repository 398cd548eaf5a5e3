//! The Redis store's local cache of refusals: a caller refused until T is
//! refused again without a round trip until T, with an honest Retry-After;
//! a plan change or a reload forgets the cache.

mod common;

use std::time::Duration;

use common::redis_server::RedisServer;
use common::{get_key, Ok200};
use http::StatusCode;
use tierlimit::clock::ManualClock;
use tierlimit::config::{Config, Limit, Tier};
use tierlimit::store::{RedisStore, RedisStoreConfig, TimeSource};
use tierlimit::{Policy, RateLimitLayer};
use tower::Layer;

fn policy() -> Policy {
    let minute = Duration::from_secs(60);
    Config::new()
        .tier(
            "standard",
            Tier::new().limit(Limit::sliding("m", 2, minute).precision(60)),
        )
        .tier(
            "premium",
            Tier::new().limit(Limit::sliding("m", 100, minute).precision(60)),
        )
        .plans("standard", [("nobody", "premium")])
        .build()
        .unwrap()
}

/// Commands Redis has run for evaluating scripts.
fn evals(server: &RedisServer) -> u64 {
    let info = server.command(&["INFO", "commandstats"]);
    info.lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| l.split("calls=").nth(1))
        .filter_map(|c| c.split(',').next()?.parse::<u64>().ok())
        .sum()
}

/// A store on `server` with leases of `lease` (zero: none), the caller's
/// clock, and a layer of `policy()` on it with a manual clock.
fn layered(
    server: &RedisServer,
    lease: Duration,
) -> (RedisStore, RateLimitLayer<RedisStore>, ManualClock) {
    let clock = ManualClock::new(Duration::from_secs(1_708_200_000));
    // A generous timeout, as in the other Redis tests: a decision that times
    // out under a loaded machine may still run, and the script calls are
    // counted.
    let store = RedisStore::new(
        RedisStoreConfig::new(server.url())
            .time(TimeSource::Caller)
            .timeout(Duration::from_secs(2))
            .lease(lease),
    )
    .unwrap();
    let layer = RateLimitLayer::builder(policy())
        .clock(clock.clone())
        .store(store.clone())
        .build();
    (store, layer, clock)
}

#[cfg_attr(no_redis_server, ignore = "redis-server is not installed")]
#[tokio::test]
async fn refusals_are_answered_locally_until_their_retry_instant() {
    let server = RedisServer::start();
    // Without leases: a refusal holds until its retry instant (with them,
    // at most a lease lifetime: see the test below).
    let (store, layer, clock) = layered(&server, Duration::ZERO);
    let svc = layer.layer(Ok200);
    let call = |key: &'static str| {
        let svc = svc.clone();
        async move {
            let resp = get_key(&svc, key).await;
            let retry = resp
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
            (resp.status(), retry)
        }
    };
    assert_eq!(call("k").await.0, StatusCode::OK);
    assert_eq!(call("k").await.0, StatusCode::OK);
    // Exactly one window after the first request.
    assert_eq!(call("k").await, (StatusCode::TOO_MANY_REQUESTS, Some(60)));
    let before = evals(&server);
    // Refused again, from the cache: no script call, Retry-After counting down.
    clock.advance(Duration::from_secs(10));
    assert_eq!(call("k").await, (StatusCode::TOO_MANY_REQUESTS, Some(50)));
    clock.advance(Duration::from_secs(49));
    assert_eq!(call("k").await, (StatusCode::TOO_MANY_REQUESTS, Some(1)));
    assert_eq!(evals(&server), before, "no round trip for a cached refusal");
    assert_eq!(store.refusals_served(), 2);
    // At the retry instant the request goes to Redis again, and is admitted.
    clock.advance(Duration::from_secs(1));
    assert_eq!(call("k").await.0, StatusCode::OK);
    assert_eq!(evals(&server), before + 1);

    // A plan change forgets the cache: the upgraded caller is admitted at once.
    assert_eq!(call("k").await.0, StatusCode::OK);
    assert_eq!(call("k").await.0, StatusCode::TOO_MANY_REQUESTS);
    layer.set_plan("k", "premium").unwrap();
    assert_eq!(call("k").await.0, StatusCode::OK);

    // A reload forgets it too: the next refusal is asked of Redis again.
    assert_eq!(call("j").await.0, StatusCode::OK);
    assert_eq!(call("j").await.0, StatusCode::OK);
    assert_eq!(call("j").await.0, StatusCode::TOO_MANY_REQUESTS);
    let served = store.refusals_served();
    layer.reload(policy());
    let evals_before = evals(&server);
    assert_eq!(call("j").await.0, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(store.refusals_served(), served);
    assert_eq!(evals(&server), evals_before + 1);
}

/// With leases (the default), a cached refusal is asked of Redis again
/// after one lease lifetime (plus the flusher's 10 ms): units another
/// instance's lease gives back may free room before the retry instant.
#[cfg_attr(no_redis_server, ignore = "redis-server is not installed")]
#[tokio::test]
async fn with_leases_a_refusal_is_cached_for_one_lease_lifetime() {
    let server = RedisServer::start();
    let (store, layer, clock) = layered(&server, Duration::from_millis(250));
    let svc = layer.layer(Ok200);
    let status = |key: &'static str| {
        let svc = svc.clone();
        async move { get_key(&svc, key).await.status() }
    };
    assert_eq!(status("k").await, StatusCode::OK);
    assert_eq!(status("k").await, StatusCode::OK);
    assert_eq!(status("k").await, StatusCode::TOO_MANY_REQUESTS);
    let before = evals(&server);
    clock.advance(Duration::from_millis(200));
    assert_eq!(status("k").await, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        evals(&server),
        before,
        "within the lifetime: from the cache"
    );
    clock.advance(Duration::from_millis(100));
    assert_eq!(status("k").await, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(evals(&server), before + 1, "past it: asked of Redis again");
    assert_eq!(store.refusals_served(), 1);
}

/// An idle store sends no script: the background flusher calls Redis only
/// when post-charges wait (it used to send an empty call every 10 ms).
#[cfg_attr(no_redis_server, ignore = "redis-server is not installed")]
#[tokio::test]
async fn an_idle_store_sends_no_script() {
    let server = RedisServer::start();
    let store = RedisStore::new(
        RedisStoreConfig::new(server.url())
            .time(TimeSource::Caller)
            .timeout(Duration::from_secs(2)),
    )
    .unwrap();
    let clock = ManualClock::new(Duration::from_secs(1_708_200_000));
    let svc = RateLimitLayer::builder(policy())
        .clock(clock)
        .store(store)
        .build()
        .layer(Ok200);
    assert_eq!(get_key(&svc, "k").await.status(), StatusCode::OK);
    let before = evals(&server);
    // Twenty flusher ticks, in real time.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(evals(&server), before);
}
