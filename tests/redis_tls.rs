//! TLS to Redis (feature `redis-tls`): a private CA, mutual TLS, settings
//! from a configuration file, and certificate problems said by name. The
//! vendor scenario suites also run over mutual TLS (`redis_tls::*` in each
//! `vendor_*` test).

mod common;

use std::time::Duration;

use common::redis_server::RedisServer;
use common::tls::TestCerts;
use common::{get_key, Ok200};
use tierlimit::store::redis::RedisProblem;
use tierlimit::store::{RedisStore, RedisStoreConfig, RedisTls};
use tierlimit::{RateLimitLayer, Setup};
use tower::Layer;

fn config(url: String, tls: RedisTls) -> RedisStoreConfig {
    RedisStoreConfig::new(url)
        .tls(tls)
        .timeout(Duration::from_secs(2))
}

fn tls_problem(store: &RedisStore) -> String {
    match store.problem() {
        Some(RedisProblem::Tls(words)) => words,
        other => panic!("not a TLS problem: {other:?}"),
    }
}

#[cfg_attr(no_redis_server, ignore = "redis-server is not installed")]
#[tokio::test]
async fn a_private_ca_alone_when_the_server_asks_no_client_certificate() {
    let certs = TestCerts::new();
    let server = RedisServer::start_tls(certs.dir(), false);
    let store =
        RedisStore::new(config(server.tls_url(), RedisTls::ca(certs.path("ca.pem")))).unwrap();
    store.connect().await.unwrap();
    assert!(store.is_ready());
}

#[cfg_attr(no_redis_server, ignore = "redis-server is not installed")]
#[tokio::test]
async fn an_untrusted_server_certificate_is_named() {
    let certs = TestCerts::new();
    let server = RedisServer::start_tls(certs.dir(), false);
    // The client trusts another CA.
    let store = RedisStore::new(config(
        server.tls_url(),
        RedisTls::ca(certs.path("other-ca.pem")),
    ))
    .unwrap();
    let e = store.connect().await.unwrap_err();
    let words = tls_problem(&store);
    assert!(
        words.contains("not from a CA this client trusts"),
        "{words}"
    );
    assert!(words.contains("UnknownIssuer"), "{words}");
    assert!(e.to_string().contains("UnknownIssuer") || format!("{e:?}").contains("UnknownIssuer"));
}

#[cfg_attr(no_redis_server, ignore = "redis-server is not installed")]
#[tokio::test]
async fn mutual_tls_needs_the_client_certificate() {
    let certs = TestCerts::new();
    let server = RedisServer::start_tls(certs.dir(), true);
    let without =
        RedisStore::new(config(server.tls_url(), RedisTls::ca(certs.path("ca.pem")))).unwrap();
    assert!(without.connect().await.is_err());
    assert!(
        matches!(without.problem(), Some(RedisProblem::Tls(_))),
        "{:?}",
        without.problem()
    );
    let with = RedisStore::new(config(
        server.tls_url(),
        RedisTls::ca(certs.path("ca.pem"))
            .client_cert(certs.path("client.pem"), certs.path("client.key")),
    ))
    .unwrap();
    with.connect().await.unwrap();
    assert!(with.is_ready());
}

#[cfg_attr(no_redis_server, ignore = "redis-server is not installed")]
#[tokio::test]
async fn a_configuration_file_sets_up_mutual_tls() {
    let certs = TestCerts::new();
    let server = RedisServer::start_tls(certs.dir(), true);
    let path = |n: &str| certs.path(n).display().to_string().replace('\\', "\\\\");
    let text = format!(
        r#"{{"tiers": {{"t": {{"limits": [{{"name": "m", "capacity": 3, "window": "1m"}}]}}}},
            "default_tier": "t",
            "store": {{"redis": {{"url": "{}", "timeout_ms": 2000, "on_error": "closed",
                "tls": {{"ca_file": "{}", "cert_file": "{}", "key_file": "{}"}}}}}}}}"#,
        server.tls_url(),
        path("ca.pem"),
        path("client.pem"),
        path("client.key"),
    );
    let setup = Setup::from_json(&text).unwrap();
    let svc = RateLimitLayer::new(setup).layer(Ok200);
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(get_key(&svc, "k").await.status().as_u16());
    }
    // Enforced through Redis (on_error closed would answer 503).
    assert_eq!(statuses, [200, 200, 200, 429]);
    let keys = server.command(&["DBSIZE"]);
    assert_eq!(keys.trim(), ":1", "{keys}");
}

#[test]
fn broken_tls_settings_are_refused_at_load() {
    let e = Setup::from_json(
        r#"{"store": {"redis": {"url": "redis://h:1", "tls": {"ca_file": "/x.pem"}}}}"#,
    )
    .unwrap_err();
    assert!(e.to_string().contains("rediss://"), "{e}");
    let e = Setup::from_json(
        r#"{"store": {"redis": {"url": "rediss://h:1", "tls": {"cert_file": "/c.pem"}}}}"#,
    )
    .unwrap_err();
    assert!(e.to_string().contains("key_file"), "{e}");
    let missing = RedisStoreConfig::new("rediss://h:1").tls(RedisTls::ca("/no/such/ca.pem"));
    let e = RedisStore::new(missing).unwrap_err();
    let text = format!(
        "{e}: {:?}",
        std::error::Error::source(&e).map(ToString::to_string)
    );
    assert!(
        text.contains("store.redis.tls.ca_file") && text.contains("/no/such/ca.pem"),
        "{text}"
    );
}

#[cfg_attr(no_redis_server, ignore = "redis-server is not installed")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_over_tls() {
    use common::redis_server::RedisCluster;
    let certs = TestCerts::new();
    let cluster = RedisCluster::start_tls(certs.dir(), 3, 0);
    let store = RedisStore::new(
        RedisStoreConfig::cluster(cluster.tls_urls())
            .tls(RedisTls::ca(certs.path("ca.pem")))
            .timeout(Duration::from_secs(2)),
    )
    .unwrap();
    store.connect().await.unwrap();
    let policy = tierlimit::config::Config::new()
        .tier(
            "t",
            tierlimit::config::Tier::new().limit(tierlimit::config::Limit::sliding(
                "m",
                3,
                Duration::from_secs(60),
            )),
        )
        .default_tier("t")
        .build()
        .unwrap();
    let svc = RateLimitLayer::builder(policy)
        .store(store.clone())
        .on_store_error(tierlimit::OnStoreError::CLOSED)
        .build()
        .layer(Ok200);
    // Keys on every master (30 keys spread over the slots).
    for k in 0..30 {
        let key = format!("key-{k}");
        let mut statuses = Vec::new();
        for _ in 0..4 {
            statuses.push(get_key(&svc, &key).await.status().as_u16());
        }
        assert_eq!(statuses, [200, 200, 200, 429], "{key}");
    }
    assert!(store.is_ready());
    // The counters are on the nodes (read over the plain ports).
    let keys: usize = cluster
        .ports
        .iter()
        .map(|p| {
            RedisServer::attach(*p)
                .command(&["DBSIZE"])
                .trim()
                .trim_start_matches(':')
                .parse::<usize>()
                .unwrap()
        })
        .sum();
    assert_eq!(keys, 30);
}
