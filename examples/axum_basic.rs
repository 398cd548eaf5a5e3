//! A small axum API behind `tierlimit`.
//!
//! Run it:
//!
//! ```sh
//! cargo run --release --example axum_basic
//! ```
//!
//! Then try, from another terminal:
//!
//! ```sh
//! # Standard plan: 5 requests per sliding minute; watch the headers count down.
//! for i in $(seq 1 6); do curl -si -H 'x-api-key: demo' localhost:3000/items | grep -iE '^HTTP|ratelimit|retry'; done
//! # The 6th answer is a 429 with Retry-After and {"detail":"Rate limit exceeded. Try again in N seconds."}
//!
//! # Key `gold` is on the premium plan (20 per minute).
//! curl -si -H 'x-api-key: gold' localhost:3000/items | grep -i ratelimit
//!
//! # Writes have their own tier, so exhausting reads never blocks writes (and back).
//! curl -si -X POST -H 'x-api-key: demo' localhost:3000/items | grep -i ratelimit
//!
//! # /health is exempt: no counting, no headers.
//! curl -si localhost:3000/health
//!
//! # Without a key, the client IP is the caller.
//! curl -si localhost:3000/items | grep -i ratelimit
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use tierlimit::config::{Config, ErrorFormat, Limit, Route, Tier};
use tierlimit::identity::ClientAddr;
use tierlimit::RateLimitLayer;

/// Copies axum's peer address into the extension tierlimit reads (the crate's
/// `axum` feature does this by itself).
async fn peer_addr(req: Request, next: Next) -> Response {
    let mut req = req;
    if let Some(ConnectInfo(addr)) = req.extensions().get::<ConnectInfo<SocketAddr>>().copied() {
        req.extensions_mut().insert(ClientAddr(addr));
    }
    next.run(req).await
}

#[tokio::main]
async fn main() {
    let minute = Duration::from_secs(60);
    let policy = Config::new()
        .tier(
            "standard",
            Tier::new().limit(Limit::sliding("per-minute", 5, minute)),
        )
        .tier(
            "premium",
            Tier::new().limit(Limit::sliding("per-minute", 20, minute)),
        )
        .tier(
            "writes",
            Tier::new().limit(Limit::sliding("writes-per-minute", 3, minute)),
        )
        .plans("standard", [("gold", "premium")])
        .route(Route::exempt(["GET"], "/health"))
        .route(Route::new(
            ["POST", "PUT", "PATCH", "DELETE"],
            "/**",
            "writes",
        ))
        .errors(ErrorFormat::Qarion)
        .build()
        .expect("the example policy is valid");

    let app = Router::new()
        .route("/health", get(|| async { "ok" }))
        .route(
            "/items",
            get(|| async { Json(serde_json::json!({"items": [1, 2, 3]})) })
                .post(|| async { Json(serde_json::json!({"created": true})) }),
        )
        .layer(RateLimitLayer::new(policy))
        .layer(middleware::from_fn(peer_addr));

    let addr: SocketAddr = std::env::var("LISTEN")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 3000)));
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot listen on {addr}: {e}");
            std::process::exit(1);
        }
    };
    println!("listening on http://{addr} (try: curl -si -H 'x-api-key: demo' {addr}/items)");
    let server = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async {
        let _ = tokio::signal::ctrl_c().await;
    });
    if let Err(e) = server.await {
        eprintln!("server error: {e}");
        std::process::exit(1);
    }
}
