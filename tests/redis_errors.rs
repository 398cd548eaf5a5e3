//! Errors a person can act on: each way Redis cannot be used is named, in
//! plain words, with the address and never the password; said once per
//! outage and once when it ends; counted by cause; and visible to the
//! application (`is_ready`, `problem`).

mod common;

use std::sync::OnceLock;
use std::time::Duration;

use common::logs::LogBuffer;
use common::redis_server::RedisServer;
use common::{get_key, Ok200};
use tierlimit::config::{Config, Limit, Tier};
use tierlimit::store::redis::RedisProblem;
use tierlimit::store::{RedisStore, RedisStoreConfig};
use tierlimit::RateLimitLayer;
use tower::Layer;

thread_local! {
    static SINK: std::cell::RefCell<Option<LogBuffer>> = const { std::cell::RefCell::new(None) };
}

/// Writes to the lines of the test running on this thread.
struct ThisThread;

impl std::io::Write for ThisThread {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        SINK.with(|s| {
            if let Some(lines) = &mut *s.borrow_mut() {
                let _ = lines.write(buf);
            }
        });
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The lines logged on this thread from now on. One subscriber for the
/// whole process (scoped subscribers in parallel tests can miss events),
/// writing to the buffer of the thread's test.
fn capture() -> LogBuffer {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(|| ThisThread)
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
    });
    let lines = LogBuffer::default();
    SINK.with(|s| *s.borrow_mut() = Some(lines.clone()));
    lines
}

/// The process's metrics, as Prometheus text.
fn metrics() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: OnceLock<metrics_exporter_prometheus::PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .unwrap()
    })
}

fn errors_counted(cause: &str) -> u64 {
    let text = metrics().render();
    let line = format!("tierlimit_redis_errors_total{{cause=\"{cause}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&line))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

fn store_at(url: &str) -> RedisStore {
    let _ = metrics();
    RedisStore::new(
        RedisStoreConfig::new(url)
            .timeout(Duration::from_millis(200))
            .connect_timeout(Duration::from_secs(2)),
    )
    .unwrap()
}

/// Connecting fails with this problem, said in the error with the address
/// and without the password; counted under its cause.
async fn connect_fails(store: &RedisStore, want: fn(&RedisProblem) -> bool, words: &str) {
    let e = store.connect().await.unwrap_err();
    let text = format!(
        "{e}: {}",
        std::error::Error::source(&e)
            .map(ToString::to_string)
            .unwrap_or_default()
    );
    assert!(text.contains(words), "{text}");
    assert!(text.contains(store.address()), "{text}");
    assert!(
        !text.contains("s3cret") && !text.contains("wrong-pw"),
        "{text}"
    );
    let problem = store.problem().expect("a problem is reported");
    assert!(want(&problem), "{problem:?}");
    assert!(
        errors_counted(problem.cause()) >= 1,
        "{}",
        metrics().render()
    );
    assert!(!store.is_ready());
}

#[cfg_attr(no_redis_server, ignore = "redis-server is not installed")]
#[tokio::test]
async fn a_wrong_password_is_named_once_not_as_timeouts() {
    let lines = capture();
    let server = RedisServer::start();
    server.command(&["ACL", "SETUSER", "limiter", "on", ">s3cret", "+@all", "~*"]);
    let url = format!("redis://limiter:wrong-pw@127.0.0.1:{}", server.port);
    let store = store_at(&url);
    connect_fails(
        &store,
        |p| *p == RedisProblem::WrongPassword,
        "wrong user name or password",
    )
    .await;
    // Decisions fail at once saying why, and the store keeps trying (at
    // most once a second) without saying it again.
    let svc = layer_on(store.clone());
    for _ in 0..3 {
        assert_eq!(get_key(&svc, "k").await.status(), 200, "on_error open");
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    assert!(errors_counted("wrong_password") >= 2);
    let said = lines.count("failed while connecting: wrong user name or password");
    assert_eq!(said, 1, "{}", lines.text());
    assert!(lines.text().contains("127.0.0.1"), "{}", lines.text());
    assert!(
        !lines.text().contains("wrong-pw"),
        "the password was logged"
    );
}

#[cfg_attr(no_redis_server, ignore = "redis-server is not installed")]
#[tokio::test]
async fn a_missing_password_is_named() {
    let server = RedisServer::start();
    server.command(&["CONFIG", "SET", "requirepass", "s3cret"]);
    let store = store_at(&server.url());
    connect_fails(
        &store,
        |p| *p == RedisProblem::PasswordMissing,
        "requires a password",
    )
    .await;
}

#[cfg_attr(no_redis_server, ignore = "redis-server is not installed")]
#[tokio::test]
async fn a_missing_permission_names_the_command() {
    let server = RedisServer::start();
    // May connect and load the script, may not run it.
    server.command(&[
        "ACL",
        "SETUSER",
        "noeval",
        "on",
        ">s3cret",
        "~*",
        "-@all",
        "+ping",
        "+script|load",
    ]);
    let url = format!("redis://noeval:s3cret@127.0.0.1:{}", server.port);
    let store = store_at(&url);
    store.connect().await.unwrap();
    let svc = layer_on(store.clone());
    assert_eq!(get_key(&svc, "k").await.status(), 200, "on_error open");
    match store.problem() {
        Some(RedisProblem::NoPermission(what)) => assert!(what.contains("evalsha"), "{what}"),
        other => panic!("{other:?}"),
    }
    // Without `script|load`, connecting says so.
    server.command(&[
        "ACL", "SETUSER", "noload", "on", ">s3cret", "~*", "-@all", "+ping",
    ]);
    let url = format!("redis://noload:s3cret@127.0.0.1:{}", server.port);
    let store = store_at(&url);
    connect_fails(
        &store,
        |p| matches!(p, RedisProblem::NoPermission(w) if w.contains("script|load")),
        "script|load",
    )
    .await;
}

#[cfg_attr(no_redis_server, ignore = "redis-server is not installed")]
#[tokio::test]
async fn a_refused_connection_and_an_unknown_host_are_named() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let store = store_at(&format!("redis://127.0.0.1:{port}"));
    connect_fails(
        &store,
        |p| *p == RedisProblem::Refused,
        "connection refused",
    )
    .await;
    let store = store_for_host("redis://no-such-host.invalid:6379");
    connect_fails(
        &store,
        |p| matches!(p, RedisProblem::UnknownHost(_)),
        "unknown host",
    )
    .await;
}

fn store_for_host(url: &str) -> RedisStore {
    store_at(url)
}

#[cfg_attr(no_redis_server, ignore = "redis-server is not installed")]
#[tokio::test]
async fn an_outage_is_said_once_and_its_end_once() {
    let lines = capture();
    let mut server = RedisServer::start();
    let store = store_at(&server.url());
    store.connect().await.unwrap();
    assert!(store.is_ready());
    let svc = layer_on(store.clone());
    assert_eq!(get_key(&svc, "k").await.status(), 200);
    server.kill();
    for _ in 0..20 {
        let _ = get_key(&svc, "k").await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!store.is_ready());
    assert!(store.problem().is_some());
    server.restart();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !store.is_ready() {
        let _ = get_key(&svc, "k").await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(std::time::Instant::now() < deadline, "{}", lines.text());
    }
    let text = lines.text();
    assert_eq!(lines.count("failed while"), 1, "{text}");
    assert_eq!(lines.count("answers again"), 1, "{text}");
    assert_eq!(lines.count("connected to Redis"), 1, "{text}");
}

#[cfg_attr(no_redis_server, ignore = "redis-server is not installed")]
#[tokio::test]
async fn a_full_redis_that_refuses_writes_follows_on_error_and_says_so() {
    let lines = capture();
    let server = RedisServer::start_with(&["--maxmemory-policy", "noeviction"]);
    let store = store_at(&server.url());
    store.connect().await.unwrap();
    // Fill it past a small maxmemory: writes are refused with OOM.
    server.command(&["SETRANGE", "ballast", "4000000", "x"]);
    server.command(&["CONFIG", "SET", "maxmemory", "1mb"]);
    let closed = RateLimitLayer::builder(five_a_minute())
        .store(store.clone())
        .on_store_error(tierlimit::OnStoreError::CLOSED)
        .build()
        .layer(Ok200);
    assert_eq!(get_key(&closed, "k").await.status(), 503, "on_error closed");
    assert_eq!(store.problem(), Some(RedisProblem::OutOfMemory));
    assert!(lines.text().contains("out of memory"), "{}", lines.text());
    // Room again: enforced again.
    server.command(&["CONFIG", "SET", "maxmemory", "0"]);
    assert_eq!(get_key(&closed, "k").await.status(), 200);
    assert!(store.is_ready());
}

fn layer_on(
    store: RedisStore,
) -> impl tower::Service<
    http::Request<()>,
    Response = http::Response<impl Sized>,
    Error = impl std::fmt::Debug,
> + Clone {
    RateLimitLayer::builder(five_a_minute())
        .store(store)
        .build()
        .layer(Ok200)
}

fn five_a_minute() -> tierlimit::Policy {
    Config::new()
        .tier(
            "t",
            Tier::new().limit(Limit::sliding("m", 5, Duration::from_secs(60))),
        )
        .default_tier("t")
        .build()
        .unwrap()
}
