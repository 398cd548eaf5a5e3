//! A gRPC service (tonic's standard health service) behind `tierlimit`:
//! a refused call gets `RESOURCE_EXHAUSTED` (gRPC status 8) with a
//! message naming the limit and when to retry, not an HTTP 429 body that
//! a gRPC client would try to read as a message.
//!
//! ```sh
//! cargo run --example grpc            # serves on 127.0.0.1:50051
//! # 5 calls a minute per API key (the `x-api-key` metadata); with grpcurl:
//! for i in $(seq 1 6); do
//!   grpcurl -plaintext -H 'x-api-key: k1' 127.0.0.1:50051 grpc.health.v1.Health/Check
//! done
//! # the 6th: ERROR: Code: ResourceExhausted
//! #   Message: rate limit `per-minute` of tier `grpc` exceeded (5 per minute); retry in 60 seconds
//! ```
//!
//! A store that fails in `closed` mode answers `UNAVAILABLE` (14), and a
//! caller refused for being anonymous `UNAUTHENTICATED` (16).

// Also compiled into tests/grpc.rs as a module, where main is unused.
#![allow(dead_code, missing_docs)]

use std::time::Duration;

use tierlimit::config::{Config, Limit, Tier};
use tierlimit::{Policy, RateLimitLayer};
use tokio::net::TcpListener;

/// Five calls a minute per caller (API key from the `x-api-key`
/// metadata, else the client address).
pub fn policy() -> Policy {
    Config::new()
        .tier(
            "grpc",
            Tier::new().limit(Limit::sliding("per-minute", 5, Duration::from_secs(60))),
        )
        .default_tier("grpc")
        .build()
        .expect("a valid policy")
}

/// Serves the health service, behind `layer`, on `listener` until the
/// task is dropped.
pub async fn serve<St>(listener: TcpListener, layer: RateLimitLayer<St>)
where
    St: tierlimit::store::Store,
{
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    tonic::transport::Server::builder()
        .layer(layer)
        .add_service(health)
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
        .await
        .expect("the gRPC server runs");
}

#[tokio::main]
async fn main() {
    let listener = TcpListener::bind("127.0.0.1:50051")
        .await
        .expect("127.0.0.1:50051 is free");
    println!("gRPC health service on 127.0.0.1:50051, 5 calls a minute per x-api-key");
    serve(listener, RateLimitLayer::new(policy())).await;
}
