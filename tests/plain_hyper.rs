//! The layer in a plain hyper server (no axum): the connection loop inserts
//! the peer address as `ClientAddr`, and the limiter keys by it.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tierlimit::config::{Config, ErrorFormat, Limit, ScopePart, Tier};
use tierlimit::identity::ClientAddr;
use tierlimit::RateLimitLayer;
use tower::{service_fn, Layer, ServiceBuilder};

#[tokio::test]
async fn limits_a_plain_hyper_server_by_peer_address() {
    let policy = Config::new()
        .tier(
            "ip",
            Tier::new()
                .limit(Limit::sliding("per-ip", 2, Duration::from_secs(60)).scope([ScopePart::Ip])),
        )
        .default_tier("ip")
        .errors(ErrorFormat::Qarion)
        .build()
        .unwrap();
    let layer = RateLimitLayer::new(policy);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        loop {
            let (stream, peer) = listener.accept().await.unwrap();
            let svc = ServiceBuilder::new()
                .map_request(move |mut req: Request<Incoming>| {
                    req.extensions_mut().insert(ClientAddr(peer));
                    req
                })
                .service(layer.layer(service_fn(|_req: Request<Incoming>| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"hello"))))
                })));
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc))
                    .await;
            });
        }
    });

    let mut results = Vec::new();
    for _ in 0..3 {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::get("/x")
            .header("host", "x")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let status = resp.status();
        let remaining = resp.headers().get("x-ratelimit-remaining").cloned();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        results.push((status, remaining, body));
    }
    server.abort();
    assert_eq!(results[0].0, StatusCode::OK);
    assert_eq!(results[0].1.as_ref().unwrap(), "1");
    assert_eq!(results[0].2, "hello");
    assert_eq!(results[1].0, StatusCode::OK);
    assert_eq!(results[2].0, StatusCode::TOO_MANY_REQUESTS);
    assert!(results[2]
        .2
        .starts_with(b"{\"detail\":\"Rate limit exceeded. Try again in "));
}
