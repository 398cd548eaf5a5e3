//! Costs measured after the response are charged exactly once, whatever
//! happens to the body: read to the end, dropped half way, trailers, an
//! inner service error, or the response future dropped (client gone).

mod common;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use tierlimit::clock::ManualClock;
use tierlimit::config::{Config, Cost, HeaderStyle, Limit, Tier};
use tower::{service_fn, Service, ServiceExt};

/// A body of a few chunks and optional trailers.
#[derive(Debug)]
struct Chunks(Vec<Bytes>, Option<HeaderMap>);

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if !self.0.is_empty() {
            return Poll::Ready(Some(Ok(Frame::data(self.0.remove(0)))));
        }
        Poll::Ready(self.1.take().map(|t| Ok(Frame::trailers(t))))
    }
}

fn chunks() -> Chunks {
    Chunks(
        vec![Bytes::from("a"), Bytes::from("b"), Bytes::from("c")],
        None,
    )
}

fn config() -> Config {
    Config::new()
        .tier(
            "t",
            Tier::new()
                .limit(
                    Limit::sliding("latency", 100_000, Duration::from_secs(3600))
                        .cost_kind(Cost::Latency),
                )
                .limit(
                    Limit::sliding("errors", 100, Duration::from_secs(3600))
                        .cost_kind(Cost::ErrorResponses(500, 599)),
                ),
        )
        .default_tier("t")
        .headers(HeaderStyle::Ietf)
}

type Svc = tower::util::BoxCloneSyncService<
    Request<String>,
    Response<tierlimit::RateLimitBody<Chunks>>,
    &'static str,
>;

fn service(clock: &ManualClock) -> Svc {
    service_noting_hangs(clock).0
}

/// The service, and a flag the `/hang` route raises when it is reached.
fn service_noting_hangs(clock: &ManualClock) -> (Svc, Arc<AtomicBool>) {
    let inner_clock = clock.clone();
    let hung = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&hung);
    let inner = service_fn(move |req: Request<String>| {
        let clock = inner_clock.clone();
        if req.uri().path() == "/hang" {
            flag.store(true, Ordering::SeqCst);
        }
        async move {
            match req.uri().path() {
                "/fail" => {
                    clock.advance(Duration::from_secs(1));
                    Err("inner service failed")
                }
                "/503" => {
                    let mut r = Response::new(chunks());
                    *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                    Ok(r)
                }
                "/hang" => std::future::pending().await,
                "/trailers" => {
                    let mut t = HeaderMap::new();
                    t.insert("x-checksum", "1".parse().unwrap());
                    Ok(Response::new(Chunks(vec![Bytes::from("x")], Some(t))))
                }
                _ => Ok(Response::new(chunks())),
            }
        }
    });
    (limited(config().build().unwrap(), clock, inner), hung)
}

async fn call(
    svc: &Svc,
    path: &str,
) -> Result<Response<tierlimit::RateLimitBody<Chunks>>, &'static str> {
    svc.clone()
        .oneshot(Request::get(path).body(String::new()).unwrap())
        .await
}

/// (latency remaining, errors remaining) as the next response reports them.
async fn remaining(svc: &Svc) -> (u64, u64) {
    let resp = call(svc, "/probe").await.unwrap();
    let v = resp.headers()["ratelimit"].to_str().unwrap().to_owned();
    let r = |name: &str| -> u64 {
        v.split(", ")
            .find(|i| i.starts_with(&format!("\"{name}\"")))
            .and_then(|i| i.split(';').find_map(|p| p.strip_prefix("r=")))
            .unwrap()
            .parse()
            .unwrap()
    };
    let out = (r("latency"), r("errors"));
    drop(resp); // the probe's own latency is 0 ms: no charge
    out
}

async fn a_body_read_to_the_end_is_charged_once() {
    let clock = clock();
    let svc = service(&clock);
    let resp = call(&svc, "/ok").await.unwrap();
    clock.advance(Duration::from_millis(2_000));
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "abc");
    // Charged when the body ended; time passing afterwards changes nothing.
    clock.advance(Duration::from_millis(5_000));
    assert_eq!(remaining(&svc).await, (98_000, 100));
}

async fn a_body_dropped_half_way_is_charged_once() {
    let clock = clock();
    let svc = service(&clock);
    let mut body = call(&svc, "/ok").await.unwrap().into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "a");
    clock.advance(Duration::from_millis(3_000));
    drop(body);
    assert_eq!(remaining(&svc).await, (97_000, 100));
}

async fn trailers_then_end_are_charged_once() {
    let clock = clock();
    let svc = service(&clock);
    let resp = call(&svc, "/trailers").await.unwrap();
    clock.advance(Duration::from_millis(1_500));
    let collected = resp.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["x-checksum"], "1");
    assert_eq!(remaining(&svc).await, (98_500, 100));
}

async fn an_inner_error_is_charged_once_and_counts_as_a_500() {
    let clock = clock();
    let svc = service(&clock);
    assert_eq!(
        call(&svc, "/fail").await.unwrap_err(),
        "inner service failed"
    );
    assert_eq!(remaining(&svc).await, (99_000, 99));
}

async fn error_statuses_in_range_are_counted() {
    let clock = clock();
    let svc = service(&clock);
    for _ in 0..3 {
        let resp = call(&svc, "/503").await.unwrap();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        drop(resp);
    }
    drop(call(&svc, "/ok").await.unwrap());
    assert_eq!(remaining(&svc).await, (100_000, 97));
}

async fn a_dropped_response_future_is_charged_once() {
    let clock = clock();
    let (mut svc, hung) = service_noting_hangs(&clock);
    let req = Request::get("/hang").body(String::new()).unwrap();
    let mut fut = Box::pin(svc.ready().await.unwrap().call(req));
    // Poll until the inner service is waiting forever (a store that must be
    // awaited answers after a yield, or a round trip to Redis).
    for _ in 0..10_000 {
        std::future::poll_fn(|cx| {
            assert!(fut.as_mut().poll(cx).is_pending());
            Poll::Ready(())
        })
        .await;
        if hung.load(Ordering::SeqCst) {
            break;
        }
        tokio::time::sleep(Duration::from_micros(100)).await;
    }
    assert!(
        hung.load(Ordering::SeqCst),
        "the request reached the inner service"
    );
    clock.advance(Duration::from_millis(4_000));
    drop(fut); // the client went away
    assert_eq!(remaining(&svc).await, (96_000, 100));
}

async fn a_limit_with_post_costs_admits_while_used_is_below_capacity() {
    let clock = clock();
    let policy = Config::new()
        .tier(
            "t",
            Tier::new().limit(
                Limit::sliding("latency", 1_000, Duration::from_secs(60)).cost_kind(Cost::Latency),
            ),
        )
        .default_tier("t")
        .build()
        .unwrap();
    let c = clock.clone();
    let inner = service_fn(move |_req: Request<()>| {
        let c = c.clone();
        async move {
            c.advance(Duration::from_millis(900));
            Ok::<_, Infallible>(Response::new(http_body_util::Empty::<Bytes>::new()))
        }
    });
    let svc = limited(policy, &clock, inner);
    type Plain = tower::util::BoxCloneSyncService<
        Request<()>,
        Response<tierlimit::RateLimitBody<http_body_util::Empty<Bytes>>>,
        Infallible,
    >;
    let status = |svc: &Plain| {
        let svc = svc.clone();
        async move {
            let resp = svc.oneshot(Request::new(())).await.unwrap();
            let status = resp.status();
            // Reading the body to its end makes the latency charge.
            let _ = resp.into_body().collect().await;
            status
        }
    };
    assert_eq!(status(&svc).await, StatusCode::OK); // used 0 → 900
    assert_eq!(status(&svc).await, StatusCode::OK); // used 900 < 1000 → 1800
    assert_eq!(status(&svc).await, StatusCode::TOO_MANY_REQUESTS);
}

on_every_store!(
    a_body_read_to_the_end_is_charged_once,
    a_body_dropped_half_way_is_charged_once,
    trailers_then_end_are_charged_once,
    an_inner_error_is_charged_once_and_counts_as_a_500,
    error_statuses_in_range_are_counted,
    a_dropped_response_future_is_charged_once,
    a_limit_with_post_costs_admits_while_used_is_below_capacity,
);
