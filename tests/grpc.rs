//! gRPC clients get gRPC answers: a real tonic client calling a tonic
//! service behind the layer sees `RESOURCE_EXHAUSTED` once limited (before,
//! `Internal: invalid compression flag` — the JSON 429 body read as a gRPC
//! frame), and `UNAVAILABLE` when the store fails closed.

#[path = "../examples/grpc.rs"]
mod grpc;

use std::time::Duration;

use tierlimit::store::{Answer, Batch, Store, StoreError, StoreErrorKind};
use tierlimit::{OnStoreError, RateLimitLayer};
use tonic::Code;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// Serves the example on a free port; a client for it.
async fn started<St: Store>(layer: RateLimitLayer<St>) -> HealthClient<tonic::transport::Channel> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(grpc::serve(listener, layer));
    let url = format!("http://{addr}");
    for _ in 0..100 {
        let endpoint = tonic::transport::Channel::from_shared(url.clone()).unwrap();
        if let Ok(channel) = endpoint.connect().await {
            return HealthClient::new(channel);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the gRPC server did not start");
}

async fn check(
    client: &mut HealthClient<tonic::transport::Channel>,
    key: &str,
) -> Result<tonic::Response<tonic_health::pb::HealthCheckResponse>, tonic::Status> {
    let mut req = tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    });
    req.metadata_mut().insert("x-api-key", key.parse().unwrap());
    client.check(req).await
}

#[tokio::test]
async fn a_limited_grpc_call_is_resource_exhausted() {
    let mut client = started(RateLimitLayer::new(grpc::policy())).await;
    for i in 0..5 {
        let r = check(&mut client, "k1").await;
        assert!(r.is_ok(), "call {i}: {r:?}");
    }
    let status = check(&mut client, "k1").await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("`per-minute`") && status.message().contains("retry in"),
        "{}",
        status.message()
    );
    // The rate-limit headers come along as metadata.
    let md = status.metadata();
    assert_eq!(md.get("x-ratelimit-remaining").unwrap(), "0");
    assert!(md.get("retry-after").is_some());
    // Another key is served.
    assert!(check(&mut client, "k2").await.is_ok());
}

/// A store that always fails.
#[derive(Clone, Debug)]
struct Down;

impl Store for Down {
    type Decide = std::future::Ready<Result<Batch, StoreError>>;
    type Charge = std::future::Ready<Result<(), StoreError>>;

    fn decide(&self, _: tierlimit::clock::Timestamp, _: Batch) -> Answer<Batch, Self::Decide> {
        Answer::Now(Err(StoreError::from_kind(StoreErrorKind::Unavailable)))
    }

    fn charge_after(
        &self,
        _: tierlimit::clock::Timestamp,
        _: Vec<tierlimit::store::PostCharge>,
    ) -> Answer<(), Self::Charge> {
        Answer::Now(Ok(()))
    }
}

#[tokio::test]
async fn a_store_down_in_closed_mode_is_unavailable() {
    let layer = RateLimitLayer::builder(grpc::policy())
        .store(Down)
        .on_store_error(OnStoreError::CLOSED)
        .build();
    let mut client = started(layer).await;
    let status = check(&mut client, "k1").await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
}
