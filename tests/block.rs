//! `block_for` on a limit: the request that finds the limit exhausted
//! blocks its scope on the tier for that long, on every store and across
//! instances on Redis; an admin call or a plan change lifts it.

mod common;

use std::time::Duration;

use common::*;
use http::StatusCode;
use tierlimit::config::{Config, Limit, Tier};
use tierlimit::identity::Identity;

fn config() -> Config {
    Config::new()
        .tier(
            "standard",
            Tier::new().limit(
                Limit::sliding("per-minute", 60, Duration::from_secs(60))
                    .block_for(Duration::from_secs(600)),
            ),
        )
        .tier(
            "premium",
            Tier::new().limit(Limit::sliding("per-minute", 300, Duration::from_secs(60))),
        )
        .plans("standard", [("vip", "premium")])
}

async fn a_block_outlasts_the_window_and_ends_on_time() {
    let clock = clock();
    let (app, _) = demo(config(), &clock);
    for _ in 0..60 {
        assert_eq!(get_as(&app, "k", "/x").await.status, StatusCode::OK);
    }
    // The 61st finds the limit spent: refused, and a 10-minute block starts.
    let r = get_as(&app, "k", "/x").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.num("retry-after"), 600, "the block's length");
    // Nine minutes later the window has room, the block still holds.
    clock.advance(Duration::from_secs(540));
    let r = get_as(&app, "k", "/x").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    assert_eq!(r.num("retry-after"), 60);
    assert_eq!(r.num("x-ratelimit-remaining"), 0);
    assert_eq!(r.num("x-ratelimit-reset"), T0 + 600);
    // The 429 names the limit that was exceeded, and the wait the block sets.
    assert!(
        r.body.contains("`per-minute` of 60 per minute"),
        "{}",
        r.body
    );
    // The usage report shows it.
    let usage: serde_json::Value =
        serde_json::from_str(&get_as(&app, "k", "/rate-limit").await.body).unwrap();
    let block = usage["limits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "per-minute (block)")
        .unwrap()
        .clone();
    assert_eq!(
        (block["remaining"].as_u64(), block["reset"].as_u64()),
        (Some(0), Some(T0 + 600))
    );
    // Other callers are not blocked.
    assert_eq!(get_as(&app, "other", "/x").await.status, StatusCode::OK);
    clock.advance(Duration::from_secs(59));
    let r = get_as(&app, "k", "/x").await;
    assert_eq!(
        (r.status, r.num("retry-after")),
        (StatusCode::TOO_MANY_REQUESTS, 1)
    );
    // Ten minutes after it started, the block is over.
    clock.advance(Duration::from_secs(1));
    let r = get_as(&app, "k", "/x").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.num("x-ratelimit-remaining"), 59);
}

async fn an_admin_lift_or_a_plan_change_ends_a_block() {
    let clock = clock();
    let (app, control) = demo(config(), &clock);
    for key in ["k", "p"] {
        for _ in 0..61 {
            get_as(&app, key, "/x").await;
        }
    }
    clock.advance(Duration::from_secs(60));
    assert_eq!(
        get_as(&app, "k", "/x").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Lifted by an admin: the next request is admitted (the window has room).
    let id = Identity {
        api_key: Some(b"k"),
        ..Identity::default()
    };
    let lifted = control.lift_blocks(&id).await;
    if backend() == Backend::External {
        // A store of public items only, without `Store::reset`.
        assert!(lifted.is_err());
    } else {
        assert_eq!(lifted.unwrap(), 1);
        assert_eq!(get_as(&app, "k", "/x").await.status, StatusCode::OK);
    }
    // A plan change moves the caller to a tier the block is not on.
    assert_eq!(
        get_as(&app, "p", "/x").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    control.set_plan("p", "premium").unwrap();
    assert_eq!(get_as(&app, "p", "/x").await.status, StatusCode::OK);
}

on_every_store!(
    a_block_outlasts_the_window_and_ends_on_time,
    an_admin_lift_or_a_plan_change_ends_a_block,
);

#[test]
fn bad_block_settings_are_refused_at_load() {
    for (block, why) in [("\"0s\"", "block_for"), ("\"31d\"", "block_for")] {
        let text = format!(
            r#"{{"tiers": {{"api": {{"limits": [{{"name": "m", "capacity": 5, "window": "1m", "block_for": {block}}}]}}}}, "default_tier": "api"}}"#
        );
        let err = Config::from_json(&text)
            .and_then(|c| c.build())
            .unwrap_err();
        assert!(err.to_string().contains(why), "{err}");
    }
    let cascade = r#"{"tiers": {"api": {"groups": [{"combine": "cascade", "limits": [
        {"name": "m", "capacity": 5, "window": "1m", "block_for": "5m"}]}]}}, "default_tier": "api"}"#;
    let err = Config::from_json(cascade)
        .and_then(|c| c.build())
        .unwrap_err();
    assert!(err.to_string().contains("block_for"), "{err}");
}

#[cfg(feature = "metrics")]
#[tokio::test]
async fn blocks_started_are_counted() {
    let clock = clock();
    let layer = tierlimit::RateLimitLayer::builder(config().build().unwrap())
        .clock(clock.clone())
        .build();
    let svc = tower::Layer::layer(&layer, Ok200);
    for _ in 0..62 {
        get_key(&svc, "k").await;
    }
    // The 61st started it; the 62nd found it in force.
    assert_eq!(layer.blocks_started(), 1);
}

#[cfg(feature = "redis")]
#[cfg_attr(no_redis_server, ignore = "redis-server is not installed")]
#[tokio::test]
async fn on_redis_a_block_started_on_one_instance_holds_on_the_other() {
    use tierlimit::clock::ManualClock;
    use tierlimit::store::{RedisStore, RedisStoreConfig, TimeSource};
    use tierlimit::RateLimitLayer;
    let server = redis_server::RedisServer::start();
    let clock = ManualClock::new(Duration::from_secs(T0));
    let instance = || {
        let store = RedisStore::new(
            RedisStoreConfig::new(server.url())
                .time(TimeSource::Caller)
                .timeout(Duration::from_secs(2)),
        )
        .unwrap();
        let layer = RateLimitLayer::builder(config().build().unwrap())
            .store(store)
            .clock(clock.clone())
            .build();
        (tower::Layer::layer(&layer, Ok200), layer)
    };
    let ((a, a_layer), (b, b_layer)) = (instance(), instance());
    for _ in 0..60 {
        assert_eq!(get_key(&a, "k").await.status(), StatusCode::OK);
    }
    assert_eq!(
        get_key(&b, "k").await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // B's refusal started the block: its charge goes out with B's next
    // call or its flusher (every 10 ms).
    // A's usage report (which counts nothing) says when it is in Redis.
    let (parts, ()) = http::Request::get("/")
        .header("x-api-key", "k")
        .body(())
        .unwrap()
        .into_parts();
    let sent = std::time::Instant::now();
    loop {
        let usage = a_layer.controller().usage(&parts).await.unwrap();
        let block = usage
            .limits
            .iter()
            .find(|l| l.name.ends_with("(block)"))
            .unwrap();
        if block.remaining == 0 {
            break;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(5),
            "the block never reached Redis"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(b_layer.blocks_started(), 1);
    // Five minutes on, A refuses too.
    clock.advance(Duration::from_secs(300));
    let r = get_key(&a, "k").await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers()["retry-after"], "300");
    // Lifted through A: B admits once its cached refusal (a lease
    // lifetime at most, on the caller's clock here) is over.
    let id = Identity {
        api_key: Some(b"k"),
        ..Identity::default()
    };
    assert_eq!(a_layer.controller().lift_blocks(&id).await.unwrap(), 1);
    clock.advance(Duration::from_secs(1));
    assert_eq!(get_key(&b, "k").await.status(), StatusCode::OK);
    assert_eq!(get_key(&a, "k").await.status(), StatusCode::OK);
}
