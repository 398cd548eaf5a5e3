//! The gateway's logs never carry raw API keys (a binary of its own: the
//! log capture installs the process-wide subscriber).

#[path = "../examples/gateway.rs"]
mod gateway;

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use common::send;
use http::{Request, StatusCode};

fn get(path: &str, key: &str) -> Request<Body> {
    Request::get(path)
        .header("x-api-key", key)
        .body(Body::empty())
        .unwrap()
}

const PREMIUM: &str = r#"{"rate_limit_tier": "premium"}"#;

/// Collects log output.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn logs_never_contain_raw_api_keys() {
    let captured = Captured::default();
    let sink = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();
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
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("rate limit exceeded"), "{logs}");
    assert!(
        logs.contains("rate limit remaining"),
        "debug events carry remaining figures"
    );
    assert!(logs.contains("api key plan changed"));
    assert!(logs.contains("caller="));
    assert!(!logs.contains("SECRET"), "raw key in logs:\n{logs}");
}
