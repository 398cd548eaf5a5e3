//! The layer behind axum: headers, 429 bodies, Retry-After honesty, exempt
//! routes, tier isolation, plan changes, proxies, odd input, clones.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::routing::{any, get};
use axum::Router;
use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use tierlimit::config::{Config, ErrorFormat, Limit, Route, ScopePart, Tier};
use tierlimit::identity::{ClientAddr, TenantId, UserId};
use tierlimit::reject::Rejection;
use tierlimit::RateLimitLayer;
use tower::{service_fn, Layer, Service, ServiceExt};

fn minutes(n: u64) -> Duration {
    Duration::from_secs(60 * n)
}

fn qarion_like() -> Config {
    Config::new()
        .tier(
            "standard",
            Tier::new()
                .limit(Limit::sliding("per-minute", 3, minutes(1)))
                .limit(Limit::sliding("per-hour", 10, minutes(60))),
        )
        .tier(
            "premium",
            Tier::new().limit(Limit::sliding("per-minute", 5, minutes(1))),
        )
        .plans("standard", [("vip", "premium")])
        .route(Route::exempt(["GET"], "/health"))
        .errors(ErrorFormat::Qarion)
}

fn app(config: Config, clock: &tierlimit::clock::ManualClock) -> (Router, RateLimitLayer) {
    let layer = RateLimitLayer::builder(config.build().unwrap())
        .clock(clock.clone())
        .build();
    let router = Router::new()
        .route("/health", get(|| async { "up" }))
        .fallback(any(|| async { "ok" }))
        .layer(layer.clone());
    (router, layer)
}

#[tokio::test]
async fn headers_count_down_and_the_429_is_exact() {
    let clock = clock();
    let (app, _) = app(qarion_like(), &clock);
    for expected in [2, 1, 0] {
        let r = get_as(&app, "k1", "/items").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.num("x-ratelimit-limit"), 3);
        assert_eq!(r.num("x-ratelimit-remaining"), expected);
        // Sliding minute: the requests, all at T0, leave at T0 + 60.
        assert_eq!(r.num("x-ratelimit-reset"), T0 + 60);
        assert_eq!(r.body, "ok");
    }
    clock.advance(Duration::from_secs(5));
    let r = get_as(&app, "k1", "/items").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.num("retry-after"), 55);
    assert_eq!(
        r.body,
        r#"{"detail":"Rate limit exceeded. Try again in 55 seconds."}"#
    );
    assert_eq!(r.num("x-ratelimit-limit"), 3);
    assert_eq!(r.num("x-ratelimit-remaining"), 0);
    assert_eq!(r.num("x-ratelimit-reset"), T0 + 60);
}

#[tokio::test]
async fn retry_after_is_honest() {
    let clock = clock();
    let (app, _) = app(qarion_like(), &clock);
    for step in [0, 7, 13] {
        clock.advance(Duration::from_secs(step));
        assert_eq!(get_as(&app, "k", "/x").await.status, StatusCode::OK);
    }
    clock.advance(Duration::from_millis(1500));
    let r = get_as(&app, "k", "/x").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    let wait = r.num("retry-after");
    // One second short of Retry-After: still refused.
    clock.advance(Duration::from_secs(wait - 1));
    assert_eq!(
        get_as(&app, "k", "/x").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    clock.advance(Duration::from_secs(1));
    assert_eq!(get_as(&app, "k", "/x").await.status, StatusCode::OK);
}

#[tokio::test]
async fn exempt_routes_are_not_counted_and_get_no_headers() {
    let clock = clock();
    let (app, _) = app(qarion_like(), &clock);
    for _ in 0..10 {
        let r = get_as(&app, "k", "/health").await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.header("x-ratelimit-limit").is_none());
        assert!(r.header("x-ratelimit-remaining").is_none());
    }
    assert_eq!(
        get_as(&app, "k", "/x").await.num("x-ratelimit-remaining"),
        2
    );
    for _ in 0..3 {
        get_as(&app, "k", "/x").await;
    }
    assert_eq!(get_as(&app, "k", "/health").await.status, StatusCode::OK);
    // POST /health is not exempt (the rule names GET only).
    let r = send(
        &app,
        req("POST", "/health")
            .header("x-api-key", "k")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn a_blocked_tier_never_blocks_another() {
    let clock = clock();
    let config = Config::new()
        .tier(
            "tier1",
            Tier::new().limit(
                Limit::sliding("t1", 5, minutes(5)).scope([ScopePart::Tenant, ScopePart::User]),
            ),
        )
        .tier(
            "tier2",
            Tier::new().limit(
                Limit::sliding("t2", 2, minutes(5)).scope([ScopePart::Tenant, ScopePart::User]),
            ),
        )
        .route(Route::new(["GET", "HEAD"], "/**", "tier1"))
        .route(Route::new(
            ["POST", "PUT", "PATCH", "DELETE"],
            "/**",
            "tier2",
        ))
        .errors(ErrorFormat::Qlik);
    let layer = RateLimitLayer::builder(config.build().unwrap())
        .clock(clock.clone())
        .build();
    let app = Router::new()
        .fallback(any(|| async { "ok" }))
        .layer(layer)
        .layer(axum::middleware::from_fn(
            |mut req: Request<Body>, next: axum::middleware::Next| async move {
                req.extensions_mut().insert(TenantId("t".into()));
                req.extensions_mut().insert(UserId("u".into()));
                next.run(req).await
            },
        ));
    for _ in 0..2 {
        assert_eq!(
            send(&app, req("POST", "/a").body(Body::empty()).unwrap())
                .await
                .status,
            StatusCode::OK
        );
    }
    let r = send(&app, req("DELETE", "/a").body(Body::empty()).unwrap()).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(r.body.starts_with(r#"{"errors":[{"code":"HTTP-429","title":"API rate limit reached.","detail":"You need to wait "#));
    let r = send(&app, req("GET", "/a").body(Body::empty()).unwrap()).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.num("x-ratelimit-remaining"), 4);
}

#[tokio::test]
async fn a_plan_change_applies_at_once() {
    let clock = clock();
    let (app, layer) = app(qarion_like(), &clock);
    for _ in 0..3 {
        get_as(&app, "k9", "/x").await;
    }
    assert_eq!(
        get_as(&app, "k9", "/x").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    layer.set_plan("k9", "premium").unwrap();
    let r = get_as(&app, "k9", "/x").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.num("x-ratelimit-limit"), 5);
    assert!(layer.set_plan("k9", "gold").is_err());
    // The preassigned key starts on premium.
    assert_eq!(get_as(&app, "vip", "/x").await.num("x-ratelimit-limit"), 5);
}

fn from(addr: &str, xff: Option<&str>) -> Request<Body> {
    let mut b = req("GET", "/x");
    if let Some(x) = xff {
        b = b.header("x-forwarded-for", x);
    }
    let mut r = b.body(Body::empty()).unwrap();
    r.extensions_mut()
        .insert(ClientAddr(addr.parse::<SocketAddr>().unwrap()));
    r
}

#[tokio::test]
async fn forwarded_for_is_believed_only_from_trusted_proxies() {
    let clock = clock();
    let config = Config::new()
        .tier(
            "ip",
            Tier::new().limit(Limit::sliding("per-ip", 1, minutes(1)).scope([ScopePart::Ip])),
        )
        .default_tier("ip")
        .trusted_proxies(["10.0.0.0/8"]);
    let (app, _) = app(config, &clock);
    // Behind the trusted proxy, two clients have two budgets.
    assert_eq!(
        send(&app, from("10.0.0.1:1", Some("1.1.1.1"))).await.status,
        StatusCode::OK
    );
    assert_eq!(
        send(&app, from("10.0.0.1:1", Some("2.2.2.2"))).await.status,
        StatusCode::OK
    );
    assert_eq!(
        send(&app, from("10.0.0.2:1", Some("1.1.1.1"))).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    // An untrusted peer cannot mint budgets with forged headers.
    assert_eq!(
        send(&app, from("8.8.8.8:1", Some("3.3.3.3"))).await.status,
        StatusCode::OK
    );
    assert_eq!(
        send(&app, from("8.8.8.8:1", Some("4.4.4.4"))).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn odd_input_gets_sensible_answers() {
    let clock = clock();
    let (app, _) = app(qarion_like(), &clock);
    let bad = http::HeaderValue::from_bytes(b"\xff\xfe\xfd").unwrap();
    let r = send(
        &app,
        req("GET", "/x")
            .header("x-api-key", bad.clone())
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.num("x-ratelimit-remaining"), 2);
    // The non-UTF-8 key is a caller of its own (counted by its bytes).
    let r = send(
        &app,
        req("GET", "/x")
            .header("x-api-key", bad)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.num("x-ratelimit-remaining"), 1);
    // Huge and empty keys count as absent: the request is anonymous here.
    let huge = "k".repeat(64 * 1024);
    let r = send(
        &app,
        req("GET", "/x")
            .header("x-api-key", huge)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.num("x-ratelimit-remaining"), 2);
    let r = send(
        &app,
        req("GET", "/x")
            .header("x-api-key", "")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.num("x-ratelimit-remaining"), 1);
    let r = send(
        &app,
        req("GET", "/x")
            .header("authorization", "Bearer")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.num("x-ratelimit-remaining"), 0);
    // The exempt path with an odd query is still exempt; other spellings
    // of it are counted (a router may send them elsewhere; see
    // tests/path_spellings.rs).
    let r = get_as(&app, "odd", "/health?x=%zz").await;
    assert!(r.header("x-ratelimit-limit").is_none());
    for p in ["//health", "/health/", "/x/../health", "/%68ealth"] {
        let r = get_as(&app, "other", p).await;
        assert_eq!(r.num("x-ratelimit-limit"), 3, "{p} is counted");
    }
    let r = get_as(&app, "odd", "/%zz/..%2f/%ff").await;
    assert_eq!(r.num("x-ratelimit-limit"), 3);
}

#[tokio::test]
async fn a_hundred_clones_share_one_budget() {
    let clock = clock();
    let config = Config::new()
        .tier("t", Tier::new().limit(Limit::sliding("m", 50, minutes(1))))
        .default_tier("t");
    let layer = RateLimitLayer::builder(config.build().unwrap())
        .clock(clock.clone())
        .build();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let svc = layer.layer(service_fn(move |_req: Request<()>| {
        counted.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, Infallible>(Response::new(http_body_util::Empty::<Bytes>::new())) }
    }));
    let mut ok = 0;
    for _ in 0..100 {
        let mut clone = svc.clone();
        let resp = clone
            .ready()
            .await
            .unwrap()
            .call(Request::new(()))
            .await
            .unwrap();
        ok += usize::from(resp.status() == StatusCode::OK);
    }
    assert_eq!(ok, 50);
    // Rejected requests never reached the inner service.
    assert_eq!(calls.load(Ordering::SeqCst), 50);
}

#[tokio::test]
async fn inner_errors_pass_through_unchanged() {
    let config = Config::new()
        .tier("t", Tier::new().limit(Limit::sliding("m", 5, minutes(1))))
        .default_tier("t");
    let svc =
        RateLimitLayer::new(config.build().unwrap()).layer(service_fn(|_req: Request<()>| async {
            Err::<Response<http_body_util::Empty<Bytes>>, _>("inner broke")
        }));
    let err = svc.oneshot(Request::new(())).await.unwrap_err();
    assert_eq!(err, "inner broke");
}

#[tokio::test]
async fn route_layer_and_a_custom_rejection() {
    let clock = clock();
    let config = Config::new()
        .tier("t", Tier::new().limit(Limit::sliding("m", 1, minutes(1))))
        .default_tier("t");
    let layer = RateLimitLayer::builder(config.build().unwrap())
        .clock(clock.clone())
        .on_reject(|req: &http::request::Parts, r: &Rejection| {
            // The hook sees the request head as well as the rejection.
            let mut resp = Response::new(Bytes::from(format!(
                "slow down on {}: {} of {}",
                req.uri.path(),
                r.limit,
                r.capacity
            )));
            *resp.status_mut() = StatusCode::TOO_MANY_REQUESTS;
            resp
        })
        .build();
    let app = Router::new()
        .route("/limited", get(|| async { "ok" }))
        .route_layer(layer);
    assert_eq!(get_as(&app, "a", "/limited").await.status, StatusCode::OK);
    let r = get_as(&app, "a", "/limited").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.body, "slow down on /limited: m of 1");
    // The request at T0 stops counting exactly a minute later.
    assert_eq!(r.num("retry-after"), 60);
    assert_eq!(r.num("x-ratelimit-limit"), 1);
    // route_layer leaves unmatched paths alone (404, no headers).
    let r = get_as(&app, "a", "/other").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.header("x-ratelimit-limit").is_none());
}

#[tokio::test]
async fn problem_json_names_the_limit() {
    let clock = clock();
    let config = Config::new()
        .tier(
            "t",
            Tier::new().limit(Limit::fixed("daily", 1, Duration::from_secs(86_400))),
        )
        .default_tier("t");
    let (app, _) = app(config, &clock);
    clock.advance(Duration::from_secs(3600));
    get_as(&app, "a", "/x").await;
    let r = get_as(&app, "a", "/x").await;
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["status"], 429);
    assert_eq!(v["limit"], "daily");
    // The fixed day resets at the next UTC midnight.
    let midnight = (T0 / 86_400 + 1) * 86_400;
    assert_eq!(r.num("retry-after"), midnight - T0 - 3600);
    assert_eq!(v["retry_after"], midnight - T0 - 3600);
    assert_eq!(r.num("x-ratelimit-reset"), midnight);
}

#[tokio::test]
async fn global_limits_apply_to_every_caller() {
    let clock = clock();
    let config = Config::new()
        .tier("t", Tier::new().limit(Limit::sliding("m", 100, minutes(1))))
        .tier(
            "all",
            Tier::new().limit(Limit::sliding("everyone", 3, minutes(1)).scope([])),
        )
        .default_tier("t")
        .global("all");
    let (app, _) = app(config, &clock);
    for k in ["a", "b", "c"] {
        assert_eq!(get_as(&app, k, "/x").await.status, StatusCode::OK);
    }
    let r = get_as(&app, "d", "/x").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
}

#[cfg(feature = "axum")]
#[tokio::test]
async fn served_over_tcp_with_connect_info() {
    let config = Config::new()
        .tier(
            "ip",
            Tier::new().limit(Limit::sliding("per-ip", 2, minutes(1)).scope([ScopePart::Ip])),
        )
        .default_tier("ip");
    let layer = RateLimitLayer::new(config.build().unwrap());
    let app = Router::new().fallback(any(|| async { "ok" })).layer(layer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream
            .write_all(b"GET /x HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut buf = String::new();
        stream.read_to_string(&mut buf).await.unwrap();
        statuses.push(buf[9..12].to_string());
    }
    server.abort();
    assert_eq!(statuses, ["200", "200", "429"]);
}

#[tokio::test]
async fn a_cost_that_can_never_fit_is_a_clear_500_not_an_endless_429() {
    let clock = clock();
    // Cost 2 fits the capacity 3, but the sandbox modifier halves it to 1.
    let config = Config::new()
        .tier(
            "t",
            Tier::new().limit(Limit::sliding("heavy", 3, minutes(1)).cost(2)),
        )
        .default_tier("t")
        .modifier("x-app-env", "sandbox", 0.5);
    let (app, _) = app(config, &clock);
    let r = get_as(&app, "k", "/x").await;
    assert_eq!(r.status, StatusCode::OK);
    let r = send(
        &app,
        req("GET", "/x")
            .header("x-api-key", "k")
            .header("x-app-env", "sandbox")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(r.header("retry-after").is_none());
    assert!(
        r.body
            .contains("request cost 2 exceeds the capacity 1 of rate limit `heavy`"),
        "{}",
        r.body
    );
}
