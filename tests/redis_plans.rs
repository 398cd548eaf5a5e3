//! Runtime plan assignments shared through Redis: a plan changed on one
//! instance is in force on the others within a second, and an instance
//! started later begins with it.

mod common;

use std::time::{Duration, Instant};

use common::redis_server::RedisServer;
use common::{get_key, Ok200};
use tierlimit::config::{Config, Limit, Tier};
use tierlimit::store::{RedisStore, RedisStoreConfig};
use tierlimit::{Policy, RateLimitLayer};
use tower::Layer;

fn policy() -> Policy {
    let minute = Duration::from_secs(60);
    Config::new()
        .tier(
            "standard",
            Tier::new().limit(Limit::sliding("m", 60, minute)),
        )
        .tier(
            "premium",
            Tier::new().limit(Limit::sliding("m", 300, minute)),
        )
        .plans("standard", [("configured", "premium")])
        .build()
        .unwrap()
}

fn instance(url: &str) -> RateLimitLayer<RedisStore> {
    let config = RedisStoreConfig::new(url).timeout(Duration::from_secs(2));
    let store = RedisStore::new(config).unwrap();
    RateLimitLayer::builder(policy()).store(store).build()
}

/// The limit a request of `key` is counted against, as the headers say.
async fn limit_of(layer: &RateLimitLayer<RedisStore>, key: &str) -> u64 {
    let resp = get_key(&layer.layer(Ok200), key).await;
    resp.headers()
        .get("x-ratelimit-limit")
        .map_or(0, |v| v.to_str().unwrap().parse().unwrap())
}

/// How long until `key` is counted against `limit` on `layer` (at most 3 s).
async fn until_limit(layer: &RateLimitLayer<RedisStore>, key: &str, limit: u64) -> Duration {
    let start = Instant::now();
    while limit_of(layer, key).await != limit {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{key} never got {limit}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    start.elapsed()
}

#[cfg_attr(no_redis_server, ignore = "redis-server is not installed")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_changed_on_one_instance_is_in_force_on_the_others() {
    let server = RedisServer::start();
    let (a, b) = (instance(&server.url()), instance(&server.url()));
    assert_eq!(limit_of(&a, "k").await, 60);
    assert_eq!(limit_of(&b, "k").await, 60);

    a.set_plan("k", "premium").unwrap();
    assert_eq!(limit_of(&a, "k").await, 300, "at once where it was made");
    let took = until_limit(&b, "k", 300).await;
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert_eq!(b.plan_of("k").as_deref(), Some("premium"));

    // An instance started later begins with it: it survives restarts.
    let c = instance(&server.url());
    let took = until_limit(&c, "k", 300).await;
    assert!(took < Duration::from_secs(1), "took {took:?}");

    // Removing it on another instance is shared too.
    assert!(b.controller().clear_plan("k"));
    let took = until_limit(&a, "k", 60).await;
    assert!(took < Duration::from_secs(1), "took {took:?}");
    // The file's assignments are not runtime ones: they stay.
    assert_eq!(limit_of(&c, "configured").await, 300);
}

/// Two layers built on clones of one `RedisStore` (two routers of one
/// process, say) each take part in plan sharing: a change made on either
/// reaches the other and other instances, and another instance's change
/// reaches both. (The store used to keep only the first layer's table.)
#[cfg_attr(no_redis_server, ignore = "redis-server is not installed")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_layer_on_one_store_shares_plans() {
    let server = RedisServer::start();
    let config = RedisStoreConfig::new(server.url()).timeout(Duration::from_secs(2));
    let store = RedisStore::new(config).unwrap();
    let first = RateLimitLayer::builder(policy())
        .store(store.clone())
        .build();
    let second = RateLimitLayer::builder(policy()).store(store).build();
    let other = instance(&server.url());
    assert_eq!(limit_of(&second, "k").await, 60);

    // Made on the second layer: in force on the first and elsewhere.
    second.set_plan("k", "premium").unwrap();
    let took = until_limit(&first, "k", 300).await;
    assert!(took < Duration::from_secs(1), "took {took:?}");
    let took = until_limit(&other, "k", 300).await;
    assert!(took < Duration::from_secs(1), "took {took:?}");

    // Made elsewhere: in force on both layers of the store.
    other.set_plan("j", "premium").unwrap();
    for layer in [&first, &second] {
        let took = until_limit(layer, "j", 300).await;
        assert!(took < Duration::from_secs(1), "took {took:?}");
    }

    // A dropped layer leaves the others sharing.
    drop(first);
    assert!(other.controller().clear_plan("k"));
    let took = until_limit(&second, "k", 60).await;
    assert!(took < Duration::from_secs(1), "took {took:?}");
}

/// What Redis holds in the plans hash, as `HGETALL` prints it.
fn plans_hash(server: &RedisServer) -> String {
    server.command(&["HGETALL", "tierlimit:plans"])
}

#[cfg_attr(no_redis_server, ignore = "redis-server is not installed")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plans_lost_by_redis_are_written_back_by_the_instances() {
    let mut server = RedisServer::start();
    let (a, b) = (instance(&server.url()), instance(&server.url()));
    a.set_plan("k", "premium").unwrap();
    until_limit(&b, "k", 300).await;

    // FLUSHALL: before, every instance read the empty hash and forgot the
    // plan within 250 ms (premium → standard everywhere).
    assert!(server.command(&["FLUSHALL"]).starts_with("+OK"));
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(limit_of(&a, "k").await, 300);
    assert_eq!(limit_of(&b, "k").await, 300);
    assert!(
        plans_hash(&server).contains("k:k"),
        "{}",
        plans_hash(&server)
    );

    // A restart without persistence: the same.
    server.kill();
    server.restart();
    let start = Instant::now();
    while !plans_hash(&server).contains("k:k") {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "never written back"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(limit_of(&b, "k").await, 300);
    assert_eq!(b.plan_of("k").as_deref(), Some("premium"));

    // A deliberate removal is still a removal, everywhere.
    assert!(a.controller().clear_plan("k"));
    until_limit(&b, "k", 60).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(limit_of(&b, "k").await, 60);
    assert_eq!(limit_of(&a, "k").await, 60);
}

#[cfg_attr(no_redis_server, ignore = "redis-server is not installed")]
#[tokio::test]
async fn the_store_says_when_redis_can_drop_counters_or_plans() {
    let server = RedisServer::start();
    let store =
        RedisStore::new(RedisStoreConfig::new(server.url()).timeout(Duration::from_secs(2)))
            .unwrap();
    // The test server runs as many do by default: no persistence.
    let warnings = store.check_server().await.unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("appendonly"), "{warnings:?}");
    // A cache-style Redis: evicts any key when full.
    for (k, v) in [("maxmemory", "64mb"), ("maxmemory-policy", "allkeys-lru")] {
        assert!(server.command(&["CONFIG", "SET", k, v]).starts_with("+OK"));
    }
    let warnings = store.check_server().await.unwrap();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(
        warnings[0].contains("counters and runtime plan assignments")
            && warnings[0].contains("maxmemory-policy noeviction"),
        "{warnings:?}"
    );
    // As the README asks: noeviction and snapshots.
    for (k, v) in [("maxmemory-policy", "noeviction"), ("save", "3600 1")] {
        assert!(server.command(&["CONFIG", "SET", k, v]).starts_with("+OK"));
    }
    assert_eq!(store.check_server().await.unwrap(), Vec::<String>::new());
}
