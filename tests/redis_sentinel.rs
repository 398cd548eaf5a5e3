//! Redis made highly available with Sentinel: a master, its replica and
//! three sentinels. The layer, set up from a configuration file naming the
//! sentinels, enforces through the master they name; when the master is
//! killed, limits are enforced again on the promoted replica within 15 s,
//! nothing answers 5xx meanwhile (`on_error: open`), and a fresh key is
//! never admitted beyond its capacity.

mod common;

use std::time::{Duration, Instant};

use common::redis_server::{RedisSentinels, RedisServer};
use common::{get_key, Ok200};
use tierlimit::store::{RedisSentinel, RedisStore, RedisStoreConfig};
use tierlimit::{RateLimitLayer, Setup};
use tower::Layer;

const CAPACITY: usize = 5;

#[cfg_attr(no_redis_server, ignore = "redis-server is not installed")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_follows_the_master_the_sentinels_name_across_a_failover() {
    let mut master = RedisServer::start();
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &master.port.to_string()]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !replica
        .command(&["INFO", "replication"])
        .contains("master_link_status:up")
    {
        assert!(Instant::now() < deadline, "the replica never synced");
        std::thread::sleep(Duration::from_millis(50));
    }
    let sentinels = RedisSentinels::start(master.port, 3, 1_000);
    let urls: Vec<String> = sentinels
        .urls()
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect();
    let text = format!(
        r#"{{"tiers": {{"t": {{"limits": [{{"name": "m", "capacity": {CAPACITY}, "window": "1h"}}]}}}},
            "default_tier": "t",
            "store": {{"redis": {{"sentinel": {{"urls": [{}], "master": "mymaster"}},
                "timeout_ms": 200, "on_error": "open"}}}}}}"#,
        urls.join(", ")
    );
    let svc = RateLimitLayer::new(Setup::from_json(&text).unwrap()).layer(Ok200);
    // A master name the sentinels do not know is said so.
    let wrong = RedisStore::new(RedisStoreConfig::sentinel(RedisSentinel::new(
        sentinels.urls(),
        "nope",
    )))
    .unwrap();
    let e = wrong.connect().await.unwrap_err();
    let text = format!(
        "{e}: {:?}",
        std::error::Error::source(&e).map(ToString::to_string)
    );
    assert!(text.contains("no master by that name"), "{text}");

    // Enforced through the master.
    let burst = |key: String| {
        let svc = svc.clone();
        async move {
            let mut statuses = Vec::new();
            for _ in 0..=CAPACITY {
                statuses.push(get_key(&svc, &key).await.status().as_u16());
            }
            statuses
        }
    };
    let mut want = vec![200u16; CAPACITY];
    want.push(429);
    assert_eq!(burst("before".into()).await, want);
    assert!(master.command(&["DBSIZE"]).contains(":1"));

    // The master dies; fresh keys until a burst is enforced again.
    master.kill();
    let killed = Instant::now();
    let mut recovered = None;
    for i in 0.. {
        let statuses = burst(format!("during-{i}")).await;
        assert!(
            statuses.iter().all(|s| *s == 200 || *s == 429),
            "a 5xx in open mode: {statuses:?}"
        );
        let admitted = statuses.iter().filter(|s| **s == 200).count();
        if statuses == want {
            recovered = Some(killed.elapsed());
            break;
        }
        // Either enforced exactly, or not decided at all (open): a burst
        // counted in Redis never goes past its capacity.
        assert!(
            admitted == CAPACITY + 1 || admitted <= CAPACITY,
            "{statuses:?}"
        );
        assert!(
            killed.elapsed() < Duration::from_secs(15),
            "not enforced again within 15 s of the master's death"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let recovered = recovered.unwrap();
    // On the promoted replica, which the sentinels now name.
    assert_eq!(sentinels.master_port(), Some(replica.port));
    assert!(replica
        .command(&["INFO", "replication"])
        .contains("role:master"));
    // Fresh keys after the failover: exactly the capacity, every time.
    for i in 0..5 {
        assert_eq!(burst(format!("after-{i}")).await, want);
    }
    println!("enforced again {recovered:?} after the master was killed");
}
