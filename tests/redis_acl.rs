//! Least privilege: the store runs as an ACL user allowed only the
//! commands and keys the README lists, and Redis logs no denial.

mod common;

use std::time::Duration;

use common::redis_server::RedisServer;
use common::{get_key, Ok200};
use tierlimit::config::{Config, Limit, Tier};
use tierlimit::store::{RedisStore, RedisStoreConfig};
use tierlimit::RateLimitLayer;
use tower::Layer;

/// The README's ACL rule, without the user name and password (keep the
/// two in step). `+config|get` only serves the start-up check of eviction
/// and persistence settings (`RedisStore::check_server`).
const RULE: &str = "~tierlimit:* resetchannels -@all +ping +evalsha +script|load +time +hset +hdel +hgetall +pexpire +pttl +config|get";

#[cfg_attr(no_redis_server, ignore = "redis-server is not installed")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_runs_as_the_least_privileged_user_of_the_readme() {
    let server = RedisServer::start();
    let mut acl = vec!["ACL", "SETUSER", "limiter", "reset", "on", ">s3cret"];
    acl.extend(RULE.split(' '));
    assert_eq!(server.command(&acl).trim_end(), "+OK");
    let url = format!("redis://limiter:s3cret@127.0.0.1:{}", server.port);
    let store =
        RedisStore::new(RedisStoreConfig::new(url).timeout(Duration::from_secs(2))).unwrap();
    let minute = Duration::from_secs(60);
    let policy = Config::new()
        .tier(
            "standard",
            Tier::new().limit(Limit::sliding("m", 5, minute)),
        )
        .tier(
            "premium",
            Tier::new().limit(Limit::sliding("m", 50, minute)),
        )
        .plans("standard", [("configured", "premium")])
        .build()
        .unwrap();
    let layer = RateLimitLayer::builder(policy).store(store.clone()).build();
    let svc = layer.clone().layer(Ok200);
    // Decisions (the script: loaded after NOSCRIPT, then EVALSHA).
    server.command(&["SCRIPT", "FLUSH"]);
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(get_key(&svc, "k").await.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429]);
    // Plan sharing (HSET, HDEL, HGETALL on the plans hash).
    layer.set_plan("j", "premium").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while !server
        .command(&["HGETALL", "tierlimit:plans"])
        .contains("premium")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the plan never reached Redis"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(layer.controller().clear_plan("j"));
    tokio::time::sleep(Duration::from_millis(600)).await;
    // Nothing was denied along the way.
    assert!(store.script_calls() > 0);
    let log = server.command(&["ACL", "LOG"]);
    assert_eq!(log.trim_end(), "*0", "ACL LOG: {log}");
}

/// A cluster needs one more right: reading the slot map.
const CLUSTER_RULE: &str = "+cluster|slots";

#[cfg_attr(no_redis_server, ignore = "redis-server is not installed")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_the_readme_rule_and_cluster_slots_are_enough() {
    let cluster = common::redis_server::RedisCluster::start_with(3, 0, 15_000);
    for port in &cluster.ports {
        let mut acl = vec!["ACL", "SETUSER", "limiter", "reset", "on", ">s3cret"];
        acl.extend(RULE.split(' '));
        acl.push(CLUSTER_RULE);
        assert_eq!(RedisServer::attach(*port).command(&acl).trim_end(), "+OK");
    }
    let urls: Vec<String> = cluster
        .ports
        .iter()
        .map(|p| format!("redis://limiter:s3cret@127.0.0.1:{p}"))
        .collect();
    let store =
        RedisStore::new(RedisStoreConfig::cluster(urls).timeout(Duration::from_secs(2))).unwrap();
    store.connect().await.unwrap();
    let policy = Config::new()
        .tier(
            "standard",
            Tier::new().limit(Limit::sliding("m", 2, Duration::from_secs(60))),
        )
        .plans("standard", [("configured", "standard")])
        .build()
        .unwrap();
    let layer = RateLimitLayer::builder(policy).store(store.clone()).build();
    let svc = layer.clone().layer(Ok200);
    // Keys on every master.
    for k in 0..12 {
        let key = format!("k{k}");
        let mut statuses = Vec::new();
        for _ in 0..3 {
            statuses.push(get_key(&svc, &key).await.status().as_u16());
        }
        assert_eq!(statuses, [200, 200, 429], "{key}");
    }
    // Plan sharing writes and reads the plans hash on its node.
    layer.set_plan("j", "standard").unwrap();
    let node = RedisServer::attach(cluster.ports[0]);
    let slot: u16 = node
        .command(&["CLUSTER", "KEYSLOT", "tierlimit:plans"])
        .trim_start_matches(':')
        .trim()
        .parse()
        .unwrap();
    let owner = RedisServer::attach(cluster.master_of(slot));
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while !owner
        .command(&["HGETALL", "tierlimit:plans"])
        .contains("standard")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the plan never reached Redis"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    for port in &cluster.ports {
        let log = RedisServer::attach(*port).command(&["ACL", "LOG"]);
        assert_eq!(log.trim_end(), "*0", "ACL LOG of {port}: {log}");
    }
}
