//! The example gateway end to end: admin flows, reload under load, metrics,
//! logs without raw keys, a bad configuration refused.

#[path = "../examples/gateway.rs"]
mod gateway;

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use axum::body::Body;
use axum::Router;
use common::{send, Reply};
use http::{Request, StatusCode};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tierlimit::PlanSubject;

fn policy_path(name: &str) -> PathBuf {
    PathBuf::from(format!(
        "{}/examples/policies/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    ))
}

fn app(path: &Path, token: Option<&str>) -> (Router, gateway::Gateway) {
    gateway::build(path, token.map(str::to_owned), Some(metrics()), false).unwrap()
}

fn metrics() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| PrometheusBuilder::new().install_recorder().unwrap())
        .clone()
}

fn get(path: &str, key: &str) -> Request<Body> {
    Request::get(path)
        .header("x-api-key", key)
        .body(Body::empty())
        .unwrap()
}

fn admin(method: &str, path: &str, token: Option<&str>, body: &str) -> Request<Body> {
    let mut b = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    b.body(Body::from(body.to_owned())).unwrap()
}

const PREMIUM: &str = r#"{"rate_limit_tier": "premium"}"#;

#[tokio::test]
async fn admin_routes_are_404_without_a_configured_token() {
    let (router, gw) = app(&policy_path("qarion"), None);
    let r = send(
        &router,
        admin("PATCH", "/admin/api-keys/k1", Some("x"), PREMIUM),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = send(&router, admin("POST", "/admin/reload", None, "")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(gw.layer.plan_of("k1").as_deref(), Some("standard"));
}

#[tokio::test]
async fn admin_changes_a_plan_only_with_the_right_token() {
    let (router, gw) = app(&policy_path("qarion"), Some("s3cret"));
    for token in [None, Some("wrong"), Some("s3cre"), Some("s3cret-and-more")] {
        let r = send(
            &router,
            admin("PATCH", "/admin/api-keys/k1", token, PREMIUM),
        )
        .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{token:?}");
        assert_eq!(gw.layer.plan_of("k1").as_deref(), Some("standard"));
    }
    let r = send(&router, admin("POST", "/admin/reload", Some("wrong"), "")).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    let r = send(
        &router,
        admin("PATCH", "/admin/api-keys/k1", Some("s3cret"), PREMIUM),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, r#"{"rate_limit_tier":"premium"}"#);
    let r = send(&router, get("/api/datasets", "k1")).await;
    assert_eq!(r.num("x-ratelimit-limit"), 300);

    let r = send(
        &router,
        admin(
            "PATCH",
            "/admin/api-keys/k1",
            Some("s3cret"),
            r#"{"rate_limit_tier": "gold"}"#,
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        r.body,
        r#"{"error":"`gold` is no plan; the plans are internal, premium, standard"}"#
    );
    let r = send(
        &router,
        admin("PATCH", "/admin/api-keys/k1", Some("s3cret"), "{not json"),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(gw.layer.plan_of("k1").as_deref(), Some("premium"));
    // Admin routes are not rate limited.
    for _ in 0..100 {
        let r = send(
            &router,
            admin("PATCH", "/admin/api-keys/k2", Some("s3cret"), PREMIUM),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.header("x-ratelimit-limit").is_none());
    }
}

#[tokio::test]
async fn the_demo_api_answers_sleep_status_and_tokens() {
    let (router, _) = app(&policy_path("qstash"), None);
    let r = send(
        &router,
        Request::post("/llm/v1/chat/completions?tokens=42&status=201")
            .header("x-api-key", "t")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.num("x-usage-tokens"), 42);
    assert_eq!(r.num("x-ratelimit-limit-tokens"), 100_000);
    let started = std::time::Instant::now();
    let r = send(&router, get("/anything/at/all?sleep_ms=30", "t")).await;
    assert!(started.elapsed().as_millis() >= 30);
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.contains(r#""path":"/anything/at/all""#));
    for p in ["/health", "/metrics"] {
        let r = send(&router, get(p, "t")).await;
        assert_eq!(r.status, StatusCode::OK, "{p}");
        assert!(r.header("burst-ratelimit-limit").is_none(), "{p} is exempt");
    }
}

fn temp_policy(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tierlimit-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("policy.json");
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_fails_no_request_and_keeps_counters() {
    let original = std::fs::read_to_string(policy_path("qarion")).unwrap();
    let path = temp_policy("reload", &original);
    let (router, _) = app(&path, Some("tok"));
    for _ in 0..10 {
        send(&router, get("/x", "kept")).await;
    }
    // Load from 4 tasks (distinct keys, never over the limit) while reloading.
    let mut load = Vec::new();
    for t in 0..4 {
        let router = router.clone();
        load.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            for i in 0..200 {
                let key = format!("load-{t}-{}", i % 50);
                statuses.push(send(&router, get("/x", &key)).await.status);
            }
            statuses
        }));
    }
    for _ in 0..25 {
        let r = send(&router, admin("POST", "/admin/reload", Some("tok"), "")).await;
        assert_eq!(r.status, StatusCode::OK);
        tokio::task::yield_now().await;
    }
    for task in load {
        let statuses = task.await.unwrap();
        assert_eq!(statuses.len(), 200);
        assert!(
            statuses.iter().all(|s| *s == StatusCode::OK),
            "{statuses:?}"
        );
    }
    // Counters survived 25 reloads.
    let r = send(&router, get("/x", "kept")).await;
    assert_eq!(r.num("x-ratelimit-remaining"), 49);

    // A changed limit starts over; an unchanged one keeps counting.
    let changed = original
        .replacen(
            r#""per-minute", "capacity": 60"#,
            r#""per-minute", "capacity": 70"#,
            1,
        )
        .replace(r#""headers": "x-ratelimit""#, r#""headers": "ietf""#);
    assert_ne!(changed, original);
    std::fs::write(&path, changed).unwrap();
    let r = send(&router, admin("POST", "/admin/reload", Some("tok"), "")).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = send(&router, get("/x", "kept")).await;
    // (The gateway runs on the wall clock: only the remaining figures are fixed.)
    let h = r.header("ratelimit").unwrap();
    assert!(h.starts_with(r#""per-minute";r=69;"#), "{h}");
    assert!(h.contains(r#""per-hour";r=988;"#), "{h}");

    // A broken file is refused and the running policy stays.
    std::fs::write(&path, "{\"tiers\": 5}").unwrap();
    let r = send(&router, admin("POST", "/admin/reload", Some("tok"), "")).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.body.contains("tiers"), "{}", r.body);
    let r = send(&router, get("/x", "kept")).await;
    assert!(r
        .header("ratelimit")
        .unwrap()
        .starts_with(r#""per-minute";r=68"#));
}

#[tokio::test]
async fn metrics_show_admitted_rejected_and_decision_times() {
    let (router, _) = app(&policy_path("gather"), None);
    for _ in 0..101 {
        send(&router, get("/q", "metrics-key")).await;
    }
    send(&router, get("/health", "metrics-key")).await;
    // No key, and no connect info in process: an anonymous request.
    let bare = Request::get("/q").body(Body::empty()).unwrap();
    send(&router, bare).await;
    metrics().run_upkeep();
    let r: Reply = send(&router, get("/metrics", "x")).await;
    assert_eq!(r.status, StatusCode::OK);
    let text = r.body;
    let value = |line_start: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(line_start))
            .unwrap_or_else(|| panic!("no `{line_start}` in\n{text}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(value(r#"tierlimit_admitted_total{tier="api",limit="burst"}"#) >= 100.0);
    assert!(value(r#"tierlimit_rejected_total{tier="api",limit="burst"}"#) >= 1.0);
    assert!(text.contains("tierlimit_decision_seconds"), "{text}");
    assert!(value(r#"tierlimit_anonymous_total{action="share"}"#) >= 1.0);
    assert!(!text.contains("metrics-key"));
}

#[test]
fn a_bad_configuration_is_refused_before_listening() {
    assert!(gateway::build(Path::new("/nonexistent/x.json"), None, None, false).is_err());
    let bad = temp_policy(
        "bad",
        r#"{"tiers": {"a": {"limits": [{"name": "m", "capacity": 1, "window": "0s"}]}}}"#,
    );
    let err = gateway::build(&bad, None, None, false).err().unwrap();
    assert_eq!(
        err.to_string(),
        "tiers.a.limits[0].window: must be greater than zero"
    );
    // The binary exits non-zero with the message, and never listens.
    let bin = common::gateway_bin();
    let out = std::process::Command::new(&bin)
        .args(["--config", bad.to_str().unwrap(), "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("tiers.a.limits[0].window: must be greater than zero"),
        "{stderr}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("listening"));
    let out = std::process::Command::new(&bin).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--config <FILE>"));
}

#[test]
fn arguments_are_parsed_strictly() {
    let args = |a: &[&str]| gateway::parse_args(a.iter().map(|s| s.to_string()));
    let o = args(&["--config", "p.json"]).unwrap();
    assert_eq!(o.listen.to_string(), "127.0.0.1:3000");
    assert!(!o.no_limit);
    let o = args(&[
        "--config",
        "p.json",
        "--listen",
        "127.0.0.1:9",
        "--no-limit",
    ])
    .unwrap();
    assert_eq!(o.listen.to_string(), "127.0.0.1:9");
    assert!(o.no_limit);
    assert!(args(&["--listen", "nope", "--config", "p"]).is_err());
    assert!(args(&["--frobnicate"]).is_err());
}

#[tokio::test]
async fn served_over_tcp_the_client_ip_is_the_caller() {
    let (router, _) = app(&policy_path("gather"), None);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await
        .unwrap();
    });
    let mut remaining = Vec::new();
    for _ in 0..2 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /q HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut buf = String::new();
        s.read_to_string(&mut buf).await.unwrap();
        let line = buf
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("x-ratelimit-remaining:"))
            .unwrap()
            .to_owned();
        remaining.push(line.split(':').nth(1).unwrap().trim().to_owned());
    }
    server.abort();
    assert_eq!(remaining, ["99", "98"]);
}

#[tokio::test]
async fn a_flood_of_fresh_keys_locks_no_customer_out() {
    // qarion.json (60 a minute, 1000 an hour) with a small key cap.
    let dir = std::env::temp_dir().join(format!("tierlimit-flood-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("qarion-small-cap.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(policy_path("qarion")).unwrap()).unwrap();
    cfg["store"] = serde_json::json!({"max_keys": 500});
    std::fs::write(&path, cfg.to_string()).unwrap();
    let (router, gw) = app(&path, None);

    // Before the flood a customer spends 59 of its 60.
    for _ in 0..59 {
        assert_eq!(
            send(&router, get("/x", "customer")).await.status,
            StatusCode::OK
        );
    }
    // The flood: 5 000 fresh random keys, ten times the cap.
    for i in 0..5_000u64 {
        let junk = format!("junk-{:016x}", i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        send(&router, get("/x", &junk)).await;
        if i == 2_500 {
            // During it, a new customer gets 200: it starts where the
            // entry it replaces stood (2 500 junk keys handed through 500
            // entries: about 5 each), the cost of the flood it shares.
            let r = send(&router, get("/x", "newcomer")).await;
            assert_eq!(r.status, StatusCode::OK);
            let left: u64 = r.header("x-ratelimit-remaining").unwrap().parse().unwrap();
            assert!((50..=58).contains(&left), "{left}");
        }
    }
    // After it: the old customer keeps its count.
    assert_eq!(
        send(&router, get("/x", "customer")).await.status,
        StatusCode::OK
    );
    let r = send(&router, get("/x", "customer")).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    // Never past the window.
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    // The newcomer is served: kept or evicted meanwhile, it stands where
    // the junk keys stand (about 10 each after 5 000) or above.
    let r = send(&router, get("/x", "newcomer")).await;
    assert_eq!(r.status, StatusCode::OK);
    let left: u64 = r.header("x-ratelimit-remaining").unwrap().parse().unwrap();
    assert!((40..=57).contains(&left), "{left}");
    let r = send(&router, get("/x", "another-newcomer")).await;
    assert_eq!(r.status, StatusCode::OK);
    // Memory stays bounded: at most the cap and its slack of entries (the
    // process's RSS is shared with the tests running beside this one, so
    // the store is asked; `benches/flood.sh` reads the gateway's RSS).
    let tierlimit::store::AnyStore::Memory(store) = gw.layer.store() else {
        panic!("the policy has no store.redis: a memory store");
    };
    assert!(
        store.len() <= 500 + 500 / 64 + 64,
        "{} entries",
        store.len()
    );
    std::fs::remove_dir_all(&dir).ok();
}

fn admin_from(peer: [u8; 4], path: &str, token: &str, body: &str) -> Request<Body> {
    let mut r = admin("PATCH", path, Some(token), body);
    let addr = std::net::SocketAddr::from((peer, 40_000));
    r.extensions_mut().insert(axum::extract::ConnectInfo(addr));
    r
}

fn as_user(user: &str, tenant: Option<&str>, key: Option<&str>) -> Request<Body> {
    let mut b = Request::get("/api/datasets").header("x-user-id", user);
    if let Some(t) = tenant {
        b = b.header("x-tenant-id", t);
    }
    if let Some(k) = key {
        b = b.header("x-api-key", k);
    }
    b.body(Body::empty()).unwrap()
}

#[tokio::test]
async fn plans_name_what_they_apply_to() {
    let (router, gw) = app(&policy_path("qarion"), Some("s3cret"));
    let internal = r#"{"rate_limit_tier": "internal"}"#;
    let r = send(
        &router,
        admin("PATCH", "/admin/api-keys/vipkey", Some("s3cret"), internal),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    // The API key has the plan...
    let r = send(&router, get("/api/datasets", "vipkey")).await;
    assert_eq!(r.num("x-ratelimit-limit"), 1000);
    // ...a user with the same id does not (before: it got "internal").
    let r = send(&router, as_user("vipkey", None, None)).await;
    assert_eq!(r.num("x-ratelimit-limit"), 60);
    assert_eq!(
        gw.layer
            .plan_of(PlanSubject::User("vipkey".into()))
            .as_deref(),
        Some("standard")
    );
    // Users and tenants have admin routes of their own.
    for path in ["/admin/users/alice", "/admin/tenants/acme"] {
        let r = send(&router, admin("PATCH", path, Some("s3cret"), PREMIUM)).await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
    }
    let r = send(&router, as_user("alice", None, None)).await;
    assert_eq!(r.num("x-ratelimit-limit"), 300);
    // A tenant's plan reaches its users and keys that have none...
    let r = send(&router, as_user("bob", Some("acme"), None)).await;
    assert_eq!(r.num("x-ratelimit-limit"), 300);
    let r = send(&router, as_user("bob", Some("acme"), Some("plainkey"))).await;
    assert_eq!(r.num("x-ratelimit-limit"), 300);
    // ...and an API key's own plan comes first.
    let r = send(&router, as_user("bob", Some("acme"), Some("vipkey"))).await;
    assert_eq!(r.num("x-ratelimit-limit"), 1000);
    // The tenant id is not an API key or a user.
    let r = send(&router, get("/api/datasets", "acme")).await;
    assert_eq!(r.num("x-ratelimit-limit"), 60);
}

#[test]
fn the_file_assigns_plans_by_subject_and_refuses_keys_that_never_match() {
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(policy_path("qarion")).unwrap()).unwrap();
    cfg["plans"]["users"] = serde_json::json!({"alice": "premium"});
    cfg["plans"]["tenants"] = serde_json::json!({"acme": "internal"});
    let policy = tierlimit::Config::from_json(&cfg.to_string())
        .unwrap()
        .build()
        .unwrap();
    assert_eq!(
        policy.configured_plan(PlanSubject::User("alice".into())),
        Some("premium")
    );
    assert_eq!(policy.configured_plan("alice"), Some("standard"));
    assert_eq!(
        policy.configured_plan(PlanSubject::Tenant("acme".into())),
        Some("internal")
    );
    for (field, key, says) in [
        ("assignments", " spaced".to_owned(), "white space"),
        ("users", "   ".to_owned(), "blank"),
        ("tenants", "t".repeat(300), "at most 256 bytes"),
    ] {
        let mut bad = cfg.clone();
        bad["plans"][field] = serde_json::json!({ key.clone(): "premium" });
        let e = tierlimit::Config::from_json(&bad.to_string())
            .and_then(|c| c.build())
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("plans.{field}")), "{e}");
        assert!(e.contains(says), "{e}");
        assert!(e.len() < 300, "the error quotes a bounded key: {e}");
    }
}

#[tokio::test]
async fn the_admin_api_refuses_guessing_and_echoes_nothing_unbounded() {
    let (router, gw) = app(&policy_path("qarion"), Some("s3cret"));
    let path = "/admin/api-keys/k1";
    // Ten wrong tokens from one address are answered 401...
    for _ in 0..gateway::ADMIN_FAILURES_PER_MINUTE {
        let r = send(&router, admin_from([10, 0, 0, 1], path, "guess", PREMIUM)).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    // ...then every call from it gets 429, the right token too: a guesser
    // learns nothing more this minute.
    for token in ["guess", "s3cret"] {
        let r = send(&router, admin_from([10, 0, 0, 1], path, token, PREMIUM)).await;
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{token}");
        let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=60).contains(&retry), "{retry}");
    }
    assert_eq!(gw.layer.plan_of("k1").as_deref(), Some("standard"));
    // Another address is not slowed, and right tokens cost nothing.
    for _ in 0..30 {
        let r = send(&router, admin_from([10, 0, 0, 2], path, "s3cret", PREMIUM)).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    // Error bodies never echo unbounded input.
    let huge = "x".repeat(60_000);
    let body = format!(r#"{{"rate_limit_tier": "{huge}"}}"#);
    let r = send(&router, admin_from([10, 0, 0, 2], path, "s3cret", &body)).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.body.len() < 300, "{} bytes", r.body.len());
    assert!(
        r.body.contains("`xxx") && r.body.contains("is no plan"),
        "{}",
        r.body
    );
    let body = format!(r#"{{"{huge}": 1}}"#);
    let r = send(&router, admin_from([10, 0, 0, 2], path, "s3cret", &body)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.body.len() < 300, "{} bytes", r.body.len());
    // Plan keys that can never match a request are refused with 422.
    let long = format!("/admin/api-keys/{}", "k".repeat(300));
    for p in [
        "/admin/api-keys/%20%20",
        "/admin/users/%20bob",
        long.as_str(),
    ] {
        let r = send(&router, admin_from([10, 0, 0, 2], p, "s3cret", PREMIUM)).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{p}");
        assert!(r.body.len() < 300, "{} bytes", r.body.len());
    }
    assert!(gw.layer.controller().runtime_plans().len() == 1);
}

#[tokio::test]
async fn a_grpc_call_is_refused_the_grpc_way() {
    let (router, _) = app(&policy_path("qarion"), None);
    let grpc = || {
        Request::post("/pkg.Service/Method")
            .version(http::Version::HTTP_2)
            .header("content-type", "application/grpc")
            .header("x-api-key", "grpc-caller")
            .body(Body::empty())
            .unwrap()
    };
    for _ in 0..60 {
        assert_eq!(send(&router, grpc()).await.status, StatusCode::OK);
    }
    let r = send(&router, grpc()).await;
    assert_eq!(r.status, StatusCode::OK, "gRPC answers are HTTP 200");
    assert_eq!(r.header("content-type"), Some("application/grpc"));
    assert_eq!(r.header("grpc-status"), Some("8"));
    assert!(r.header("grpc-message").unwrap().contains("retry"));
    assert_eq!(r.num("x-ratelimit-remaining"), 0);
    assert!(r.body.is_empty());
}

mod jwt {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};

    fn token(secret: &[u8], sub: &str, nonce: u32, plan: Option<&str>, exp: u64) -> String {
        let mut claims = serde_json::json!({"sub": sub, "exp": exp, "nonce": nonce});
        if let Some(p) = plan {
            claims["plan"] = p.into();
        }
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(secret).unwrap(),
        )
        .unwrap()
    }

    fn with(t: &str) -> Request<Body> {
        Request::get("/api/datasets")
            .header("authorization", format!("Bearer {t}"))
            .body(Body::empty())
            .unwrap()
    }

    const LATER: u64 = 4_000_000_000;

    #[tokio::test]
    async fn callers_are_their_token_sub_with_the_plan_it_names() {
        let (router, _) = gateway::build_full(
            &policy_path("qarion"),
            None,
            None,
            gateway::Limiter::Tierlimit,
            None,
            gateway::Auth {
                jwt_secret: Some("s3cret".into()),
                ..gateway::Auth::default()
            },
        )
        .unwrap();
        // 60 tokens of one subject, each different: one standard budget.
        for n in 0..60 {
            let r = send(&router, with(&token(b"s3cret", "alice", n, None, LATER))).await;
            assert_eq!(r.status, StatusCode::OK, "{n}");
        }
        let r = send(&router, with(&token(b"s3cret", "alice", 99, None, LATER))).await;
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
        // A `plan` claim of premium: the premium limits.
        let r = send(
            &router,
            with(&token(b"s3cret", "bob", 0, Some("premium"), LATER)),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.num("x-ratelimit-limit"), 300);
        // Signed with another secret, expired, or missing: 401, counted
        // against nobody.
        for bad in [
            Some(token(b"other", "carol", 0, None, LATER)),
            Some(token(b"s3cret", "carol", 0, None, 1_000)),
            None,
        ] {
            let req = match &bad {
                Some(t) => with(t),
                None => Request::get("/api/datasets").body(Body::empty()).unwrap(),
            };
            let r = send(&router, req).await;
            assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{bad:?}");
            assert_eq!(r.header("content-type"), Some("application/problem+json"));
            assert!(r.header("x-ratelimit-limit").is_none());
        }
        let r = send(&router, with(&token(b"s3cret", "carol", 1, None, LATER))).await;
        assert_eq!(
            r.num("x-ratelimit-remaining"),
            59,
            "the 401s cost carol nothing"
        );
    }

    #[test]
    fn the_secret_is_an_argument_or_the_environment() {
        let o = gateway::parse_args(
            ["--config", "p.json", "--jwt-secret", "abc"]
                .iter()
                .map(|s| s.to_string()),
        )
        .unwrap();
        assert_eq!(o.auth.jwt_secret.as_deref(), Some("abc"));
    }
}

/// `--api-key-query`: the key in the URL (what the load script varies
/// with oha) counts as the `x-api-key` header does, for tierlimit and for
/// tower_governor; the header wins when both are sent.
mod api_key_query {
    use super::*;

    fn router(limiter: gateway::Limiter) -> axum::Router {
        gateway::build_full(
            &policy_path("qarion"),
            None,
            None,
            limiter,
            None,
            gateway::Auth {
                api_key_query: Some("api_key".into()),
                ..gateway::Auth::default()
            },
        )
        .unwrap()
        .0
    }

    fn get(uri: &str) -> Request<Body> {
        Request::get(uri).body(Body::empty()).unwrap()
    }

    #[tokio::test]
    async fn a_query_key_is_the_callers_key() {
        let app = router(gateway::Limiter::Tierlimit);
        for n in 0..60 {
            let r = send(&app, get("/api/items?x=1&api_key=q1")).await;
            assert_eq!(r.status, StatusCode::OK, "{n}");
        }
        let r = send(&app, get("/api/items?api_key=q1")).await;
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
        // Another key in the URL has its own budget ...
        let r = send(&app, get("/api/items?api_key=q2")).await;
        assert_eq!(r.num("x-ratelimit-remaining"), 59);
        // ... and the header wins over the query.
        let req = Request::get("/api/items?api_key=q1")
            .header("x-api-key", "h1")
            .body(Body::empty())
            .unwrap();
        assert_eq!(send(&app, req).await.num("x-ratelimit-remaining"), 59);
        let o = gateway::parse_args(
            ["--config", "p.json", "--api-key-query", "api_key"]
                .iter()
                .map(|s| s.to_string()),
        )
        .unwrap();
        assert_eq!(o.auth.api_key_query.as_deref(), Some("api_key"));
    }

    #[tokio::test]
    async fn tower_governor_sees_it_too() {
        let app = router(gateway::Limiter::Governor(2));
        assert_eq!(
            send(&app, get("/api/items?api_key=g")).await.status,
            StatusCode::OK
        );
        assert_eq!(
            send(&app, get("/api/items?api_key=g")).await.status,
            StatusCode::OK
        );
        assert_eq!(
            send(&app, get("/api/items?api_key=g")).await.status,
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(
            send(&app, get("/api/items?api_key=h")).await.status,
            StatusCode::OK
        );
    }
}

#[tokio::test]
async fn rate_limit_reports_the_callers_usage_and_spends_nothing() {
    let (router, gw) = app(&policy_path("qarion"), Some("s3cret"));
    for _ in 0..7 {
        assert_eq!(
            send(&router, get("/api/x", "u1")).await.status,
            StatusCode::OK
        );
    }
    for _ in 0..5 {
        let r = send(&router, get("/rate-limit", "u1")).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert!(
            r.header("x-ratelimit-limit").is_none(),
            "not limited itself"
        );
        let report: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        let limits = report["limits"].as_array().unwrap();
        let figures: Vec<(&str, &str, u64, u64)> = limits
            .iter()
            .map(|l| {
                (
                    l["tier"].as_str().unwrap(),
                    l["name"].as_str().unwrap(),
                    l["used"].as_u64().unwrap(),
                    l["remaining"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            figures,
            [
                ("standard", "per-minute", 7, 53),
                ("standard", "per-hour", 7, 993)
            ]
        );
    }
    let r = send(&router, get("/api/x", "u1")).await;
    assert_eq!(
        r.num("x-ratelimit-remaining"),
        52,
        "the reads spent nothing"
    );
    // A plan changed through the admin API shows at once.
    let r = send(
        &router,
        admin("PATCH", "/admin/api-keys/u1", Some("s3cret"), PREMIUM),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = send(&router, get("/rate-limit", "u1")).await;
    assert!(r.body.contains(r#""tier":"premium""#), "{}", r.body);
    assert_eq!(gw.layer.plan_of("u1").as_deref(), Some("premium"));
}

#[tokio::test]
async fn admin_lifts_the_blocks_of_an_api_key() {
    // A one-second window, a ten-minute block.
    let policy = r#"{
      "tiers": {"api": {"limits": [
        {"name": "per-second", "capacity": 2, "window": "1s", "block_for": "10m"}]}},
      "default_tier": "api"
    }"#;
    let path = temp_policy("blocks", policy);
    let (router, _) = app(&path, Some("s3cret"));
    for expect in [200, 200, 429] {
        let r = send(&router, get("/x", "b1")).await;
        assert_eq!(r.status.as_u16(), expect);
    }
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let r = send(&router, get("/x", "b1")).await;
    assert_eq!(
        r.status,
        StatusCode::TOO_MANY_REQUESTS,
        "the window has room, the block holds"
    );
    assert!(r.num("retry-after") > 590, "{:?}", r.header("retry-after"));
    let r = send(
        &router,
        admin("DELETE", "/admin/blocks/b1", Some("wrong"), ""),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = send(
        &router,
        admin("DELETE", "/admin/blocks/b1", Some("s3cret"), ""),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body, r#"{"lifted":1}"#);
    let r = send(&router, get("/x", "b1")).await;
    assert_eq!(r.status, StatusCode::OK, "lifted");
}

/// `examples/policies/guarded.json`: requests in flight, a block, waiting
/// instead of refusing and the usage report, through the example gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guarded_policy_uses_all_four() {
    let (router, _) = app(&policy_path("guarded"), None);
    // Usage first: every limit of the plan and the route tiers.
    let r = send(&router, get("/rate-limit", "g1")).await;
    let report: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let names: Vec<&str> = report["limits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "in-flight",
            "per-minute",
            "per-hour",
            "per-minute (block)",
            "batch-per-second"
        ]
    );
    // Eleven slow requests at once: ten in flight, one refused for now.
    let slow: Vec<_> = (0..11)
        .map(|_| {
            let router = router.clone();
            tokio::spawn(async move { send(&router, get("/work?sleep_ms=400", "g1")).await })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in slow {
        let r = t.await.unwrap();
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(r.header("retry-after"), Some("1"));
            assert!(r.body.contains("in-flight"), "{}", r.body);
        }
        statuses.push(r.status.as_u16());
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [[200; 10].as_slice(), &[429]].concat());
    // Twelve batch requests at once on ten a second: all pass, two wait.
    let batch: Vec<_> = (0..12)
        .map(|_| {
            let router = router.clone();
            tokio::spawn(async move { send(&router, get("/batch/job", "g2")).await.status })
        })
        .collect();
    for t in batch {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    // Over the per-minute limit: a ten-minute block.
    for _ in 0..60 {
        send(&router, get("/x", "g3")).await;
    }
    let r = send(&router, get("/x", "g3")).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.num("retry-after"), 600);
}
