//! What the logs say: the gateway's never carry raw API keys, and anonymous
//! requests are reported once (a binary of its own: the log capture
//! installs the process-wide subscriber, shared by the tests here).

#[path = "../examples/gateway.rs"]
mod gateway;

mod common;

use std::path::PathBuf;
use std::sync::OnceLock;

use axum::body::Body;
use common::logs::LogBuffer;
use common::send;
use http::{Request, StatusCode};

fn get(path: &str, key: &str) -> Request<Body> {
    Request::get(path)
        .header("x-api-key", key)
        .body(Body::empty())
        .unwrap()
}

const PREMIUM: &str = r#"{"rate_limit_tier": "premium"}"#;

/// Everything logged in this process, from the first call on.
fn captured() -> LogBuffer {
    static CAPTURED: OnceLock<LogBuffer> = OnceLock::new();
    CAPTURED
        .get_or_init(|| {
            let captured = LogBuffer::default();
            let sink = captured.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_max_level(tracing::Level::DEBUG)
                .with_ansi(false)
                .with_writer(move || sink.clone())
                .finish();
            tracing::subscriber::set_global_default(subscriber).unwrap();
            captured
        })
        .clone()
}

fn logs() -> String {
    captured().text()
}

#[tokio::test]
async fn logs_never_contain_raw_api_keys() {
    let _ = captured();
    let path = PathBuf::from(format!(
        "{}/examples/policies/qarion.json",
        env!("CARGO_MANIFEST_DIR")
    ));
    let (router, _) = gateway::build(&path, Some("adm".into()), None, false).unwrap();
    let key = "sk_live_SECRET_0123456789";
    for _ in 0..61 {
        send(&router, get("/x", key)).await;
    }
    let patch = Request::patch(format!("/admin/api-keys/{key}"))
        .header("authorization", "Bearer adm")
        .body(Body::from(PREMIUM))
        .unwrap();
    let r = send(&router, patch).await;
    assert_eq!(r.status, StatusCode::OK);
    let logs = logs();
    assert!(logs.contains("rate limit exceeded"), "{logs}");
    assert!(
        logs.contains("rate limit remaining"),
        "debug events carry remaining figures"
    );
    assert!(logs.contains("api key plan changed"));
    assert!(logs.contains("caller="));
    assert!(!logs.contains("SECRET"), "raw key in logs:\n{logs}");
}

#[tokio::test]
async fn anonymous_requests_are_reported_once_at_warn_with_the_fix() {
    use std::time::Duration;
    use tierlimit::config::{Config, Limit, Route, Tier};
    let _ = captured();
    let layer = tierlimit::RateLimitLayer::new(
        Config::new()
            .tier(
                "anon-test",
                Tier::new().limit(Limit::sliding("m", 2, Duration::from_secs(60))),
            )
            .default_tier("anon-test")
            .route(Route::exempt(["GET"], "/free"))
            .build()
            .unwrap(),
    );
    let app = axum::Router::new()
        .fallback(axum::routing::any(|| async { "ok" }))
        .layer(layer);
    let warns = || -> Vec<String> {
        logs()
            .lines()
            .filter(|l| l.contains("WARN") && l.contains("no client address"))
            .map(str::to_owned)
            .collect()
    };
    let bare = |path: &str| Request::get(path).body(Body::empty()).unwrap();
    send(&app, bare("/free")).await;
    assert!(warns().is_empty(), "exempt: nothing to say");
    for _ in 0..5 {
        send(&app, bare("/x")).await;
    }
    let warns = warns();
    assert_eq!(warns.len(), 1, "{warns:?}");
    assert!(warns[0].contains("share one budget"), "{warns:?}");
    assert!(
        warns[0].contains("into_make_service_with_connect_info"),
        "{warns:?}"
    );
    assert!(warns[0].contains("ClientAddr"), "{warns:?}");
}
