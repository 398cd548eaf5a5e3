//! A new user's first hour: a policy file with a `store.redis` section,
//! used through the constructor the README shows first, shares one budget
//! between two layers (two "instances") on one real `redis-server`.

mod common;

use common::redis_server::RedisServer;
use common::{get_key, Ok200};
use tierlimit::identity::Identity;
use tierlimit::store::{KeySecret, RedisStore, RedisStoreConfig};
use tierlimit::{Policy, RateLimitLayer, Setup};
use tower::Layer;

#[cfg_attr(no_redis_server, ignore = "redis-server is not installed")]
#[tokio::test]
async fn a_store_redis_section_is_honoured_by_rate_limit_layer_new() {
    let server = RedisServer::start();
    let dir = std::env::temp_dir().join(format!("tierlimit-first-hour-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("policy.json");
    std::fs::write(
        &path,
        format!(
            r#"{{
              "tiers": {{ "api": {{ "limits": [
                {{ "name": "per-minute", "capacity": 10, "window": "1m" }} ] }} }},
              "default_tier": "api",
              "store": {{ "redis": {{ "url": "{}", "timeout_ms": 2000 }} }}
            }}"#,
            server.url()
        ),
    )
    .unwrap();
    // A policy alone cannot carry the store section: it says so.
    let e = Policy::from_file(&path).unwrap_err().to_string();
    assert!(
        e.starts_with("store:") && e.contains("Setup::from_file"),
        "{e}"
    );
    // Two instances, each as the README's Quick start builds one.
    let a = RateLimitLayer::new(Setup::from_file(&path).unwrap()).layer(Ok200);
    let b = RateLimitLayer::new(Setup::from_file(&path).unwrap()).layer(Ok200);
    let mut admitted = 0;
    for i in 0..20 {
        let svc = if i % 2 == 0 { &a } else { &b };
        if get_key(svc, "k").await.status() == http::StatusCode::OK {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 10, "one budget of 10 across both instances");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_redis_url_redis_rs_refuses_is_a_configuration_error() {
    let e = tierlimit::Config::from_json(
        r#"{ "tiers": { "api": { "limits": [
               { "name": "m", "capacity": 10, "window": "1m" } ] } },
             "default_tier": "api",
             "store": { "redis": { "url": "redis://[::1" } } }"#,
    )
    .and_then(|c| c.setup())
    .unwrap_err()
    .to_string();
    assert!(e.contains("store.redis.url"), "{e}");
}

/// A store several processes share names counters with its own secret,
/// not the process's: another process, given the same secret, computes the
/// same Redis keys (here, computed apart from the layer) and so shares
/// the budget, whether the store came from a file or from `.store(..)`.
#[cfg_attr(no_redis_server, ignore = "redis-server is not installed")]
#[tokio::test]
async fn counters_in_redis_are_named_the_same_in_every_process() {
    let server = RedisServer::start();
    let policy = tierlimit::Config::from_json(
        r#"{ "tiers": { "api": { "limits": [
               { "name": "m", "capacity": 10, "window": "1m", "scope": ["api_key"] } ] } },
             "default_tier": "api" }"#,
    )
    .unwrap()
    .build()
    .unwrap();
    let store = RedisStore::new(
        RedisStoreConfig::new(server.url())
            .secret("shared by the fleet")
            .timeout(std::time::Duration::from_secs(2)),
    )
    .unwrap();
    let svc = RateLimitLayer::builder(policy.clone())
        .store(store.clone())
        .build()
        .layer(Ok200);
    assert_eq!(get_key(&svc, "k").await.status(), http::StatusCode::OK);
    let id = Identity {
        api_key: Some(b"k"),
        ..Identity::default()
    };
    let key_with = |secret: KeySecret| {
        let batch = policy
            .batch_for(secret, &http::Method::GET, "/", &id)
            .unwrap();
        store.redis_key(batch.limit(0).key)
    };
    let shared = key_with(KeySecret::shared("shared by the fleet"));
    assert_eq!(
        server.command(&["EXISTS", &shared]).trim_end(),
        ":1",
        "{shared}"
    );
    let local = key_with(KeySecret::per_process());
    assert_ne!(local, shared);
    assert_eq!(
        server.command(&["EXISTS", &local]).trim_end(),
        ":0",
        "{local}"
    );
}
