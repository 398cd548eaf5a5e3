//! A store that decides by its own clock (as a remote store reading its
//! server's time does) and says so: `Retry-After` and the "seconds from now"
//! figures are measured on that clock, whatever the local one says.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Empty;
use tierlimit::clock::{ManualClock, Timestamp};
use tierlimit::config::{Config, HeaderStyle, Limit, Tier};
use tierlimit::store::{Answer, Batch, MemoryStore, PostCharge, Store, StoreError};
use tierlimit::RateLimitLayer;
use tower::{service_fn, Layer, ServiceExt};

/// The memory store on a clock `skew` ahead of the one the layer reads.
#[derive(Clone, Debug)]
struct Skewed {
    inner: MemoryStore,
    skew: Duration,
}

impl Store for Skewed {
    type Decide = std::future::Ready<Result<Batch, StoreError>>;
    type Charge = std::future::Ready<Result<(), StoreError>>;

    fn decide(&self, now: Timestamp, batch: Batch) -> Answer<Batch, Self::Decide> {
        let server_now = now + self.skew;
        let mut batch = self.inner.decide_now(server_now, batch);
        batch.set_decided_at(server_now);
        Answer::Now(Ok(batch))
    }

    fn charge_after(&self, now: Timestamp, charges: Vec<PostCharge>) -> Answer<(), Self::Charge> {
        self.inner.charge_after(now + self.skew, charges)
    }
}

#[tokio::test]
async fn retry_after_is_measured_on_the_stores_clock() {
    let local = ManualClock::new(Duration::from_secs(1_708_200_000));
    let policy = Config::new()
        .tier(
            "t",
            Tier::new().limit(Limit::sliding("m", 2, Duration::from_secs(60))),
        )
        .default_tier("t")
        .headers(HeaderStyle::Ietf)
        .build()
        .unwrap();
    // The store's clock is 20 minutes ahead of this instance's.
    let store = Skewed {
        inner: MemoryStore::default(),
        skew: Duration::from_secs(1200),
    };
    let layer = RateLimitLayer::builder(policy)
        .clock(local.clone())
        .store(store)
        .build();
    let svc = layer.layer(service_fn(|_req: Request<()>| async {
        Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
    }));
    let send = || {
        let svc = svc.clone();
        async move {
            svc.oneshot(
                Request::get("/x")
                    .header("x-api-key", "k")
                    .body(())
                    .unwrap(),
            )
            .await
            .unwrap()
        }
    };
    let first = send().await;
    assert_eq!(first.status(), StatusCode::OK);
    // t= counts from the store's decision: the first request leaves the
    // window exactly one minute after it.
    assert_eq!(first.headers()["ratelimit"], "\"m\";r=1;t=60");
    assert_eq!(send().await.status(), StatusCode::OK);
    local.advance(Duration::from_secs(10));
    let refused = send().await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    // 60 s after the first decision, 10 s have passed: 50, never 1250 or 1.
    assert_eq!(refused.headers()["retry-after"], "50");
}
