//! A store that fails: the layer fails open (the default) or closed, as set;
//! post-charges of a store that must be awaited never block and are never
//! lost silently.

mod common;

use common::get_key;

use std::convert::Infallible;
use std::error::Error as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use tierlimit::clock::{ManualClock, Timestamp};
use tierlimit::config::{Config, Cost, Limit, Tier};
use tierlimit::store::{Answer, Batch, MemoryStore, PostCharge, Store, StoreError, StoreErrorKind};
use tierlimit::{OnStoreError, RateLimitLayer};
use tower::{service_fn, Layer, ServiceExt};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// How the test store misbehaves.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Fails at once.
    FailNow,
    /// Fails after an await (a remote store timing out).
    FailLater,
    /// Answers, but leaves every limit undecided.
    Undecided,
    /// Answers a batch of its own making (a limit the policy does not have).
    Foreign,
    /// Answers for only some of the limits it was asked about.
    Partial,
    /// Decides like the memory store; post-charges never complete.
    ChargesHang,
}

/// Every way a store can fail to decide.
const BROKEN: [Fault; 5] = [
    Fault::FailNow,
    Fault::FailLater,
    Fault::Undecided,
    Fault::Foreign,
    Fault::Partial,
];

#[derive(Clone, Debug)]
struct Faulty {
    fault: Fault,
    inner: MemoryStore,
}

fn unreachable_redis() -> StoreError {
    let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
    StoreError::new(StoreErrorKind::Unavailable, io)
}

impl Store for Faulty {
    type Decide = BoxFuture<Result<Batch, StoreError>>;
    type Charge = BoxFuture<Result<(), StoreError>>;

    fn decide(&self, now: Timestamp, batch: Batch) -> Answer<Batch, Self::Decide> {
        match self.fault {
            Fault::FailNow => Answer::Now(Err(unreachable_redis())),
            Fault::FailLater => Answer::Later(Box::pin(async {
                tokio::task::yield_now().await;
                Err(StoreError::from_kind(StoreErrorKind::Timeout))
            })),
            Fault::Undecided => Answer::Now(Ok(batch)),
            Fault::Partial => {
                let first = *batch.limit(0);
                Answer::Now(Ok(self.inner.decide_now(now, Batch::from_limits([first]))))
            }
            Fault::Foreign => {
                let odd = batch.limit(0).with_label(9_999);
                Answer::Now(Ok(self.inner.decide_now(now, Batch::from_limits([odd]))))
            }
            Fault::ChargesHang => Answer::Now(Ok(self.inner.decide_now(now, batch))),
        }
    }

    fn charge_after(&self, _: Timestamp, _: Vec<PostCharge>) -> Answer<(), Self::Charge> {
        Answer::Later(Box::pin(std::future::pending()))
    }
}

static CLOCK: std::sync::LazyLock<ManualClock> =
    std::sync::LazyLock::new(|| ManualClock::new(Duration::from_secs(1_700_000_000)));

/// An answer that takes 5 ms of the manual clock (so latency costs are > 0).
async fn slow_answer() -> Result<Response<Empty<Bytes>>, Infallible> {
    CLOCK.advance(Duration::from_millis(5));
    Ok(Response::new(Empty::<Bytes>::new()))
}

fn policy() -> tierlimit::Policy {
    Config::new()
        .tier(
            "t",
            Tier::new()
                .limit(Limit::sliding("m", 1, Duration::from_secs(60)))
                .limit(
                    Limit::sliding("latency", 1_000_000, Duration::from_secs(60))
                        .cost_kind(Cost::Latency),
                ),
        )
        .default_tier("t")
        .build()
        .unwrap()
}

/// Sends `n` requests through a layer on a faulty store; returns the
/// statuses, the responses' headers, and how often the inner service ran.
async fn run(
    fault: Fault,
    mode: Option<OnStoreError>,
    n: usize,
) -> (Vec<Response<Bytes>>, usize, RateLimitLayer<Faulty>) {
    let store = Faulty {
        fault,
        inner: MemoryStore::default(),
    };
    let mut builder = RateLimitLayer::builder(policy())
        .clock(CLOCK.clone())
        .store(store)
        .max_post_charges_in_flight(2);
    if let Some(m) = mode {
        builder = builder.on_store_error(m);
    }
    let layer = builder.build();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let svc = layer.layer(service_fn(move |_req: Request<()>| {
        c.fetch_add(1, Ordering::SeqCst);
        slow_answer()
    }));
    let mut out = Vec::new();
    for _ in 0..n {
        let resp = get_key(&svc, "k").await;
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        out.push(Response::from_parts(parts, bytes));
    }
    (out, calls.load(Ordering::SeqCst), layer)
}

#[tokio::test]
async fn a_failing_store_fails_open_by_default() {
    for fault in BROKEN {
        let (resps, calls, _) = run(fault, None, 5).await;
        // The limit is 1 per minute, but nothing can be counted: all pass,
        // without rate-limit headers that would be made up.
        assert_eq!(calls, 5, "{fault:?}");
        for r in &resps {
            assert_eq!(r.status(), StatusCode::OK, "{fault:?}");
            assert!(r.headers().get("x-ratelimit-limit").is_none());
        }
    }
}

#[tokio::test]
async fn a_failing_store_fails_closed_with_a_503_when_set() {
    for fault in BROKEN {
        let mode = OnStoreError::Closed {
            retry_after: Duration::from_secs(2),
        };
        let (resps, calls, _) = run(fault, Some(mode), 3).await;
        assert_eq!(calls, 0, "the inner service is not called ({fault:?})");
        for r in &resps {
            assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE, "{fault:?}");
            assert_eq!(r.headers()["retry-after"], "2");
            assert_eq!(r.headers()["content-type"], "application/problem+json");
            let v: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
            assert_eq!(v["status"], 503);
        }
    }
}

#[test]
fn store_errors_keep_their_source() {
    let e = unreachable_redis();
    assert_eq!(e.kind(), StoreErrorKind::Unavailable);
    // Its own part only; the cause is the source.
    assert_eq!(e.to_string(), "rate-limit store unavailable");
    let io = e
        .source()
        .unwrap()
        .downcast_ref::<std::io::Error>()
        .unwrap();
    assert_eq!(io.kind(), std::io::ErrorKind::ConnectionRefused);
}

#[tokio::test]
async fn post_charges_that_must_be_awaited_run_in_the_background_bounded_and_counted() {
    // Every admitted request leaves a latency post-charge whose future never
    // completes: two may be in flight, the rest are dropped and counted.
    let (resps, calls, layer) = run(Fault::ChargesHang, None, 1).await;
    assert_eq!(resps[0].status(), StatusCode::OK);
    assert_eq!(calls, 1);
    let store = layer.store().clone();
    let svc = layer.layer(service_fn(|_req: Request<()>| slow_answer()));
    // Other callers, each admitted once (1 per minute each).
    for i in 0..4 {
        let resp = svc
            .clone()
            .oneshot(
                Request::get("/x")
                    .header("x-api-key", format!("k{i}"))
                    .body(())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            StatusCode::OK,
            "the request path never waits"
        );
        drop(resp); // charges now
        tokio::task::yield_now().await;
    }
    assert_eq!(layer.post_charges_in_flight(), 2);
    assert_eq!(layer.post_charges_dropped(), 3);
    assert_eq!(layer.post_charge_failures(), 0);
    // The decisions themselves were made and counted.
    assert_eq!(store.inner.len(), 5);
}
