//! Several instances on one real `redis-server`: one budget, one clock, and
//! each failure mode doing what it says when Redis goes away and comes back.

#[path = "../examples/gateway.rs"]
mod gateway;

mod common;

use std::convert::Infallible;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use common::redis_server::RedisServer;
use common::{get_key, send, Ok200, Reply};
use http::{Request, Response, StatusCode};
use http_body_util::Empty;
use tierlimit::clock::ManualClock;
use tierlimit::config::{Config, Limit, Tier};
use tierlimit::store::{RedisStore, RedisStoreConfig};
use tierlimit::{OnStoreError, Policy, RateLimitLayer};
use tower::Layer;

fn qarion() -> PathBuf {
    PathBuf::from(format!(
        "{}/examples/policies/qarion.json",
        env!("CARGO_MANIFEST_DIR")
    ))
}

fn get(key: &str) -> Request<Body> {
    Request::get("/api/items")
        .header("x-api-key", key)
        .body(Body::empty())
        .unwrap()
}

/// A gateway process (the example binary) on `redis`.
struct Process {
    child: std::process::Child,
    port: u16,
}

impl Process {
    /// qarion.json with its counters in `redis` (a generous decision timeout:
    /// tests share the machine with other tests).
    fn policy_file(redis: &str) -> PathBuf {
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(qarion()).unwrap()).unwrap();
        Self::write_policy(cfg, redis, "qarion")
    }

    /// `cfg` with its counters in `redis`, written to a file of its own.
    fn write_policy(mut cfg: serde_json::Value, redis: &str, name: &str) -> PathBuf {
        cfg["store"] = serde_json::json!({"redis": {"url": redis, "timeout_ms": 2000}});
        let path = std::env::temp_dir().join(format!(
            "tierlimit-{name}-redis-{}-{}.json",
            std::process::id(),
            redis.rsplit(':').next().unwrap_or("0")
        ));
        std::fs::write(&path, cfg.to_string()).unwrap();
        path
    }

    fn start(redis: &str) -> Process {
        Self::launch(&Self::policy_file(redis))
    }

    fn launch(policy: &std::path::Path) -> Process {
        let bin = common::gateway_bin();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new(&bin)
            .args(["--config", policy.to_str().unwrap()])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--no-metrics"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
        let p = Process { child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the gateway did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        p
    }
}

impl Process {
    /// Stops the process with `signal` (`TERM`: it shuts down and gives
    /// back its leases; `KILL`: it dies holding them).
    fn stop(&mut self, signal: &str) {
        let _ = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 GET over its own connection: (status, headers in lower case).
async fn http_get(port: u16, key: &str) -> (u16, Vec<(String, String)>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let req = format!(
        "GET /api/items HTTP/1.1\r\nhost: localhost\r\nx-api-key: {key}\r\nconnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    let head = text.split("\r\n\r\n").next().unwrap_or("");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[cfg_attr(no_redis_server, ignore = "redis-server is not installed")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateway_processes_on_one_redis_admit_exactly_the_plan() {
    let server = RedisServer::start();
    let (a, b) = (Process::start(&server.url()), Process::start(&server.url()));
    // 200 concurrent requests of one key, spread over both processes.
    let mut tasks = Vec::new();
    for i in 0..200 {
        let port = if i % 2 == 0 { a.port } else { b.port };
        tasks.push(tokio::spawn(http_get(port, "shared")));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        let (status, headers) = t.await.unwrap();
        // Decided through Redis (not let through by a failure mode).
        assert!(header(&headers, "x-ratelimit-limit").is_some(), "{status}");
        statuses.push(status);
    }
    let mut ok = statuses.iter().filter(|&&s| s == 200).count();
    let refused = statuses.iter().filter(|&&s| s == 429).count();
    assert_eq!(ok + refused, 200);
    // Never more than the plan; a few units may still sit in a lease of
    // one process that had no request left to spend them on (each process
    // holds at most one lease per counter, of at most half the room left).
    assert!((45..=60).contains(&ok), "{ok} admitted of 60 per minute");
    // Leases live 250 ms; what they did not use comes back within 10 ms of
    // their end, and then the plan is spent exactly.
    tokio::time::sleep(Duration::from_millis(400)).await;
    for i in 0..40 {
        let port = if i % 2 == 0 { a.port } else { b.port };
        if http_get(port, "shared").await.0 == 200 {
            ok += 1;
        }
    }
    assert_eq!(ok, 60, "the standard plan: 60 per minute");
    // Both processes see the same counter.
    let (ra, rb) = (
        http_get(a.port, "shared").await,
        http_get(b.port, "shared").await,
    );
    for (status, h) in [&ra, &rb] {
        assert_eq!(*status, 429);
        assert_eq!(header(h, "x-ratelimit-remaining"), Some("0"));
        assert_eq!(header(h, "x-ratelimit-limit"), Some("60"));
    }
    assert_eq!(
        header(&ra.1, "x-ratelimit-reset"),
        header(&rb.1, "x-ratelimit-reset")
    );
    // Another key has its own budget, counted across both.
    let r = http_get(b.port, "other").await;
    assert_eq!(header(&r.1, "x-ratelimit-remaining"), Some("59"));
    let r = http_get(a.port, "other").await;
    assert_eq!(header(&r.1, "x-ratelimit-remaining"), Some("58"));
}

#[cfg_attr(no_redis_server, ignore = "redis-server is not installed")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_of_the_file_and_the_reload_keep_one_budget_in_process() {
    // Two instances in one process through the gateway's own builder: the
    // same budget, and a reload keeps the Redis counters.
    let server = RedisServer::start();
    let gw = || {
        gateway::build_with(
            &qarion(),
            None,
            None,
            false,
            Some(gateway::RedisFlag::Url(server.url())),
        )
        .unwrap()
    };
    let ((a, gw_a), (b, _)) = (gw(), gw());
    for _ in 0..30 {
        assert_eq!(send(&a, get("k")).await.status, StatusCode::OK);
        assert_eq!(send(&b, get("k")).await.status, StatusCode::OK);
    }
    gw_a.layer.reload(
        tierlimit::Config::from_file(qarion())
            .unwrap()
            .redis(tierlimit::store::RedisStoreConfig::new(server.url()))
            .setup()
            .unwrap(),
    );
    let r: Reply = send(&a, get("k")).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        send(&b, get("k")).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
}

fn three_per_minute() -> Policy {
    Config::new()
        .tier(
            "t",
            Tier::new().limit(Limit::sliding("m", 3, Duration::from_secs(60))),
        )
        .default_tier("t")
        .build()
        .unwrap()
}

type Svc = tower::util::BoxCloneSyncService<
    Request<()>,
    Response<tierlimit::RateLimitBody<Empty<Bytes>>>,
    Infallible,
>;

fn instance(url: &str, mode: OnStoreError, clock: Option<ManualClock>) -> Svc {
    let config = RedisStoreConfig::new(url).timeout(Duration::from_millis(200));
    let store = RedisStore::new(config).unwrap();
    let mut builder = RateLimitLayer::builder(three_per_minute())
        .store(store)
        .on_store_error(mode);
    if let Some(c) = clock {
        builder = builder.clock(c);
    }
    let layer = builder.build();
    tower::util::BoxCloneSyncService::new(layer.layer(Ok200))
}

async fn call(svc: &Svc, key: &str) -> (StatusCode, Option<String>) {
    let resp = get_key(svc, key).await;
    let remaining = resp
        .headers()
        .get("x-ratelimit-remaining")
        .map(|v| v.to_str().unwrap().to_owned());
    (resp.status(), remaining)
}

/// Calls until a response carries rate-limit headers again, for at most
/// `within`; returns how long it took.
async fn until_enforced(svc: &Svc, key: &str, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < within {
        if call(svc, key).await.1.is_some() {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

#[cfg_attr(no_redis_server, ignore = "redis-server is not installed")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_each_failure_mode_does_what_it_says() {
    let mut server = RedisServer::start();
    let url = server.url();
    let open = instance(&url, OnStoreError::Open, None);
    let closed = instance(&url, OnStoreError::CLOSED, None);
    let fallback = instance(&url, OnStoreError::Fallback, None);
    for svc in [&open, &closed, &fallback] {
        assert_eq!(call(svc, "k").await.0, StatusCode::OK);
    }
    // Enforced through Redis: the three instances share the key's 3.
    assert_eq!(call(&open, "k").await.0, StatusCode::TOO_MANY_REQUESTS);

    server.kill();
    // A refusal cached locally holds without Redis: nothing can have room
    // before its retry instant.
    assert_eq!(
        call(&open, "k").await,
        (StatusCode::TOO_MANY_REQUESTS, Some("0".into()))
    );
    // Open: served, unlimited, without made-up headers.
    for _ in 0..5 {
        assert_eq!(call(&open, "k-open").await, (StatusCode::OK, None));
    }
    // Closed: 503 with Retry-After, never 429.
    for _ in 0..3 {
        assert_eq!(
            call(&closed, "k-closed").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
    // Fallback: this instance counts alone, with the same policy.
    let statuses: Vec<StatusCode> = {
        let mut v = Vec::new();
        for _ in 0..5 {
            v.push(call(&fallback, "k2").await.0);
        }
        v
    };
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    // An outage does not add the timeout to every request: once the
    // circuit is open, decisions fail at once.
    let t = Instant::now();
    for _ in 0..20 {
        call(&open, "k3").await;
    }
    assert!(
        t.elapsed() < Duration::from_millis(20 * 200),
        "{:?}",
        t.elapsed()
    );

    server.restart();
    // Back within a second: limits are enforced through Redis again.
    for svc in [&open, &closed, &fallback] {
        let took = until_enforced(svc, "k4", Duration::from_secs(3)).await;
        let took = took.expect("enforced again after Redis came back");
        eprintln!("recovered in {took:?}");
        assert!(took < Duration::from_secs(1), "took {took:?}");
    }
}

#[cfg_attr(no_redis_server, ignore = "redis-server is not installed")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_whose_clocks_differ_by_minutes_agree_on_the_window() {
    let server = RedisServer::start();
    // Two instances whose own clocks are 17 minutes apart: the windows are
    // counted on the Redis server's clock.
    let now = std::time::SystemTime::now();
    let a = instance(
        &server.url(),
        OnStoreError::Open,
        Some(ManualClock::new(now)),
    );
    let skewed = now + Duration::from_secs(17 * 60);
    let b = instance(
        &server.url(),
        OnStoreError::Open,
        Some(ManualClock::new(skewed)),
    );
    assert_eq!(call(&a, "k").await, (StatusCode::OK, Some("2".into())));
    assert_eq!(call(&b, "k").await, (StatusCode::OK, Some("1".into())));
    assert_eq!(call(&a, "k").await, (StatusCode::OK, Some("0".into())));
    assert_eq!(call(&b, "k").await.0, StatusCode::TOO_MANY_REQUESTS);
    // Both say the same wait: about a minute, not 17 minutes more or less.
    let wait = |svc: Svc| async move {
        let resp = get_key(&svc, "k").await;
        resp.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    let (wa, wb) = (wait(a.clone()).await, wait(b.clone()).await);
    assert!((55..=62).contains(&wa), "{wa}");
    assert!(wa.abs_diff(wb) <= 1, "{wa} vs {wb}");
}

#[tokio::test]
async fn a_gateway_whose_redis_is_unreachable_at_start_serves_by_its_failure_mode() {
    // Nothing listens on this port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dead = gateway::RedisFlag::Url(format!("redis://127.0.0.1:{port}"));
    let (app, _) = gateway::build_with(&qarion(), None, None, false, Some(dead)).unwrap();
    // qarion.json has no store.redis section: the default failure mode,
    // open, applies: served, without rate-limit headers.
    for _ in 0..5 {
        let r = send(&app, get("k")).await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.header("x-ratelimit-limit").is_none());
    }
    // Exempt routes are untouched.
    let health = Request::get("/health").body(Body::empty()).unwrap();
    assert_eq!(send(&app, health).await.status, StatusCode::OK);
    // Readiness says why not.
    let ready = Request::get("/ready").body(Body::empty()).unwrap();
    let r = send(&app, ready).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.body.contains("connection refused"), "{}", r.body);
}

#[cfg_attr(no_redis_server, ignore = "redis-server is not installed")]
#[tokio::test]
async fn the_gateway_is_ready_once_redis_answers() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let flag = gateway::RedisFlag::Url(format!("redis://127.0.0.1:{port}"));
    let (app, _) = gateway::build_with(&qarion(), None, None, false, Some(flag)).unwrap();
    let ready = || Request::get("/ready").body(Body::empty()).unwrap();
    let _ = send(&app, get("k")).await;
    assert_eq!(
        send(&app, ready()).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let _server = RedisServer::start_on(port);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let _ = send(&app, get("k")).await;
        let r = send(&app, ready()).await;
        if r.status == StatusCode::OK {
            assert!(r.body.contains("\"ready\""), "{}", r.body);
            break;
        }
        assert!(Instant::now() < deadline, "never ready: {}", r.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Enforced through Redis now.
    assert!(send(&app, get("k"))
        .await
        .header("x-ratelimit-limit")
        .is_some());
}

#[cfg_attr(no_redis_server, ignore = "redis-server is not installed")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_under_load_gives_no_5xx_but_closed_503_and_recovers() {
    let mut server = RedisServer::start();
    let url = server.url();
    let modes = [
        OnStoreError::Open,
        OnStoreError::CLOSED,
        OnStoreError::Fallback,
    ];
    let svcs: Vec<Svc> = modes.iter().map(|m| instance(&url, *m, None)).collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut loaders = Vec::new();
    for (svc, mode) in svcs.iter().zip(modes) {
        for t in 0..4 {
            let (svc, stop) = (svc.clone(), stop.clone());
            loaders.push(tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut i = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let key = format!("load-{t}-{}", i % 7);
                    seen.push(call(&svc, &key).await.0);
                    i += 1;
                    tokio::task::yield_now().await;
                }
                (mode, seen)
            }));
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.kill();
    tokio::time::sleep(Duration::from_millis(400)).await;
    server.restart();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for l in loaders {
        let (mode, seen) = l.await.unwrap();
        assert!(!seen.is_empty());
        for s in seen {
            let allowed = s == StatusCode::OK
                || s == StatusCode::TOO_MANY_REQUESTS
                || (mode == OnStoreError::CLOSED && s == StatusCode::SERVICE_UNAVAILABLE);
            assert!(allowed, "{mode:?} answered {s}");
        }
    }
    // Enforced through Redis again.
    for svc in &svcs {
        assert!(call(svc, "after").await.1.is_some());
    }
}

/// 300 per 2 s, by API key, on `redis`.
fn short_window(redis: &str) -> PathBuf {
    let cfg = serde_json::json!({
        "tiers": {"standard": {"limits": [
            {"name": "burst", "capacity": 300, "window": "2s", "scope": ["caller"]}
        ]}},
        "plans": {"default": "standard", "assignments": {}},
        "headers": "x-ratelimit"
    });
    Process::write_policy(cfg, redis, "short")
}

/// Requests of `key` to `port` one after the other until the first 429;
/// how many were admitted.
async fn admitted_until_refused(port: u16, key: &str) -> u64 {
    let mut n = 0;
    while http_get(port, key).await.0 == 200 {
        n += 1;
    }
    n
}

/// What an instance holding leases leaves when it stops: a gateway that
/// is shut down (SIGTERM) gives back what its leases held, so the other
/// gets the exact rest of the budget at once; one killed outright
/// (SIGKILL) strands its last lease, which as far as Redis can tell may
/// have been spent: it counts until it leaves the window, never longer.
#[cfg_attr(no_redis_server, ignore = "redis-server is not installed")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_gateway_gives_back_its_leases_and_a_killed_one_strands_one() {
    let server = RedisServer::start();
    let policy = short_window(&server.url());
    for (signal, key) in [("TERM", "stopped"), ("KILL", "killed")] {
        let (mut a, b) = (Process::launch(&policy), Process::launch(&policy));
        // Steady traffic on a for about half a second (a counter is leased
        // after a lifetime of at least four requests): 40 requests.
        let mut spent = 0;
        for _ in 0..40 {
            if http_get(a.port, key).await.0 == 200 {
                spent += 1;
            }
            tokio::time::sleep(Duration::from_millis(12)).await;
        }
        assert_eq!(spent, 40);
        a.stop(signal);
        let got = admitted_until_refused(b.port, key).await;
        let stranded = 300 - spent - got;
        eprintln!("{signal}: a spent {spent}, b got {got}, {stranded} stranded");
        if signal == "TERM" {
            assert_eq!(stranded, 0, "a gave back everything it did not spend");
            continue;
        }
        // At most one lease: no more than half the room it was taken from.
        assert!(stranded <= 150, "{stranded} stranded");
        // They leave with the window (2 s after the lease's end).
        tokio::time::sleep(Duration::from_millis(2_600)).await;
        assert_eq!(admitted_until_refused(b.port, key).await, 300);
    }
}
