//! A new user's first hour: a policy file with a `store.redis` section,
//! used through the constructor the README shows first, shares one budget
//! between two layers (two "instances") on one real `redis-server`.

mod common;

use common::redis_server::RedisServer;
use common::{get_key, Ok200};
use tierlimit::{Policy, RateLimitLayer};
use tower::Layer;

#[tokio::test]
async fn a_store_redis_section_is_honoured_by_rate_limit_layer_new() {
    let Some(server) = RedisServer::start() else {
        return;
    };
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
    // Two instances, each as the README's Quick start builds one.
    let a = RateLimitLayer::new(Policy::from_file(&path).unwrap()).layer(Ok200);
    let b = RateLimitLayer::new(Policy::from_file(&path).unwrap()).layer(Ok200);
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
    .and_then(|c| c.build())
    .unwrap_err()
    .to_string();
    assert!(e.contains("store.redis.url"), "{e}");
}
