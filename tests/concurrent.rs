//! `"kind": "concurrent"` limits: at most `capacity` requests of a scope in
//! flight at once, units given back when the response ends however it ends
//! (body read to the end, dropped, inner error), on every store; on Redis
//! shared across instances, and units of an instance that died stop
//! counting after the limit's `window`.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use tierlimit::config::{Config, Limit, Tier};
use tierlimit::Policy;
use tokio::sync::Semaphore;
use tower::{service_fn, ServiceExt};

fn policy(capacity: u32) -> Policy {
    Config::new()
        .tier(
            "api",
            Tier::new()
                .limit(Limit::concurrent(
                    "in-flight",
                    capacity,
                    Duration::from_secs(30),
                ))
                .limit(Limit::sliding("per-minute", 1000, Duration::from_secs(60))),
        )
        .default_tier("api")
        .build()
        .unwrap()
}

/// An inner service whose requests wait at `gate` (one permit each), and
/// that counts how many are inside at once (`now`, `most`). A request with
/// body `true` fails instead.
#[derive(Clone)]
struct Slow {
    gate: Arc<Semaphore>,
    now: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
}

impl Default for Slow {
    fn default() -> Self {
        Slow {
            gate: Arc::new(Semaphore::new(0)),
            now: Arc::default(),
            most: Arc::default(),
        }
    }
}

type Inner = tower::util::BoxCloneSyncService<
    Request<bool>,
    Response<http_body_util::Full<bytes::Bytes>>,
    &'static str,
>;

impl Slow {
    fn service(&self) -> Inner {
        let me = self.clone();
        tower::util::BoxCloneSyncService::new(service_fn(move |req: Request<bool>| {
            let me = me.clone();
            async move {
                let n = me.now.fetch_add(1, Ordering::SeqCst) + 1;
                me.most.fetch_max(n, Ordering::SeqCst);
                let permit = me.gate.acquire().await.unwrap();
                permit.forget();
                me.now.fetch_sub(1, Ordering::SeqCst);
                if *req.body() {
                    return Err("the inner service failed");
                }
                Ok(Response::new(http_body_util::Full::new(
                    bytes::Bytes::from_static(b"done"),
                )))
            }
        }))
    }
}

fn get(key: &str, fail: bool) -> Request<bool> {
    Request::get("/x")
        .header("x-api-key", key)
        .body(fail)
        .unwrap()
}

async fn twenty_at_once_five_in_flight_the_rest_429() {
    let clock = clock();
    let slow = Slow::default();
    let svc = limited(policy(5), &clock, slow.service());
    let tasks: Vec<_> = (0..20)
        .map(|_| tokio::spawn(svc.clone().oneshot(get("k", false))))
        .collect();
    // The refused ones answer at once; the admitted ones wait at the gate.
    while slow.now.load(Ordering::SeqCst) < 5 {
        tokio::task::yield_now().await;
    }
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    assert_eq!(slow.most.load(Ordering::SeqCst), 5);
    slow.gate.add_permits(20);
    let mut ok = 0;
    for t in tasks {
        let resp = t.await.unwrap().unwrap();
        match resp.status() {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                assert_eq!(resp.headers()["retry-after"], "1");
                assert_eq!(resp.headers()["x-ratelimit-limit"], "5");
                assert_eq!(resp.headers()["x-ratelimit-remaining"], "0");
            }
            s => panic!("{s}"),
        }
        // Dropped here: its unit goes back.
    }
    assert_eq!(ok, 5);
    assert_eq!(
        slow.most.load(Ordering::SeqCst),
        5,
        "never more than 5 inside"
    );
    // Every unit came back: five more fit at once.
    let again: Vec<_> = (0..5)
        .map(|_| tokio::spawn(svc.clone().oneshot(get("k", false))))
        .collect();
    for t in again {
        assert_eq!(t.await.unwrap().unwrap().status(), StatusCode::OK);
    }
}

async fn units_come_back_on_body_end_drop_and_error() {
    let clock = clock();
    let slow = Slow::default();
    slow.gate.add_permits(1000);
    let svc = limited(policy(1), &clock, slow.service());
    // Held while the body is unread; back once it is read to the end.
    let held = svc.clone().oneshot(get("k", false)).await.unwrap();
    assert_eq!(held.status(), StatusCode::OK);
    // The headers of an admitted request do not show the in-flight limit.
    assert_eq!(held.headers()["x-ratelimit-limit"], "1000");
    let r = svc.clone().oneshot(get("k", false)).await.unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let body = held.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"done");
    // Back when dropped unread.
    let dropped = svc.clone().oneshot(get("k", false)).await.unwrap();
    assert_eq!(dropped.status(), StatusCode::OK);
    drop(dropped);
    // Back when the inner service fails.
    assert!(svc.clone().oneshot(get("k", true)).await.is_err());
    let last = svc.clone().oneshot(get("k", false)).await.unwrap();
    assert_eq!(last.status(), StatusCode::OK);
    // And when the request is cancelled while the inner service runs.
    drop(last);
    let stuck = Slow::default();
    let svc = limited(policy(1), &clock, stuck.service());
    let pending = tokio::spawn(svc.clone().oneshot(get("c", false)));
    while stuck.now.load(Ordering::SeqCst) < 1 {
        tokio::task::yield_now().await;
    }
    let r = svc.clone().oneshot(get("c", false)).await.unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    pending.abort();
    let _ = pending.await;
    stuck.gate.add_permits(10);
    let r = svc.clone().oneshot(get("c", false)).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

on_every_store!(
    twenty_at_once_five_in_flight_the_rest_429,
    units_come_back_on_body_end_drop_and_error,
);

#[tokio::test]
async fn the_usage_report_shows_requests_in_flight() {
    let layer = tierlimit::RateLimitLayer::new(policy(5));
    let slow = Slow::default();
    let svc = tower::Layer::layer(&layer, slow.service());
    let tasks: Vec<_> = (0..3)
        .map(|_| tokio::spawn(svc.clone().oneshot(get("k", false))))
        .collect();
    while slow.now.load(Ordering::SeqCst) < 3 {
        tokio::task::yield_now().await;
    }
    let (parts, ()) = Request::get("/")
        .header("x-api-key", "k")
        .body(())
        .unwrap()
        .into_parts();
    let usage = layer.controller().usage(&parts).await.unwrap();
    let l = &usage.limits[0];
    assert_eq!(
        (l.name.as_str(), l.used, l.remaining, l.unit),
        ("in-flight", 3, 2, "concurrent-requests")
    );
    slow.gate.add_permits(3);
    for t in tasks {
        drop(t.await.unwrap().unwrap());
    }
    let usage = layer.controller().usage(&parts).await.unwrap();
    assert_eq!(usage.limits[0].used, 0);
}

#[test]
fn bad_concurrent_limits_are_refused_at_load() {
    for (extra, field) in [
        (r#""cost": "latency""#, "cost"),
        (r#""block_for": "1m""#, "block_for"),
        (r#""tenant_aggregate": 2"#, "tenant_aggregate"),
    ] {
        let text = format!(
            r#"{{"tiers": {{"api": {{"limits": [{{"name": "f", "kind": "concurrent", "capacity": 5, "window": "1m", {extra}}}]}}}}, "default_tier": "api"}}"#
        );
        let err = Config::from_json(&text)
            .and_then(|c| c.build())
            .unwrap_err();
        assert!(err.to_string().contains(field), "{err}");
    }
}

#[cfg(feature = "redis")]
#[cfg_attr(no_redis_server, ignore = "redis-server is not installed")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_two_instances_share_five_and_a_dead_ones_units_expire() {
    use tierlimit::clock::ManualClock;
    use tierlimit::store::{RedisStore, RedisStoreConfig, TimeSource};
    let server = redis_server::RedisServer::start();
    let clock = ManualClock::new(Duration::from_secs(T0));
    let instance = |slow: &Slow| {
        let store = RedisStore::new(
            RedisStoreConfig::new(server.url())
                .time(TimeSource::Caller)
                .timeout(Duration::from_secs(2)),
        )
        .unwrap();
        let layer = tierlimit::RateLimitLayer::builder(policy(5))
            .store(store)
            .clock(clock.clone())
            .build();
        tower::Layer::layer(&layer, slow.service())
    };
    let (slow_a, slow_b) = (Slow::default(), Slow::default());
    let (a, b) = (instance(&slow_a), instance(&slow_b));
    // Three in flight on A, two on B: the five of the scope.
    let held_a: Vec<_> = (0..3)
        .map(|_| tokio::spawn(a.clone().oneshot(get("k", false))))
        .collect();
    while slow_a.now.load(Ordering::SeqCst) < 3 {
        tokio::task::yield_now().await;
    }
    let held_b: Vec<_> = (0..2)
        .map(|_| tokio::spawn(b.clone().oneshot(get("k", false))))
        .collect();
    while slow_b.now.load(Ordering::SeqCst) < 2 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        a.clone().oneshot(get("k", false)).await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        b.clone().oneshot(get("k", false)).await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // B's two end: their units come back, and A sees the room.
    slow_b.gate.add_permits(2);
    for t in held_b {
        drop(t.await.unwrap().unwrap());
    }
    // Given back through B's flusher (10 ms): A admits two more, then
    // refuses.
    let start = std::time::Instant::now();
    let mut more = Vec::new();
    while slow_a.now.load(Ordering::SeqCst) < 5 {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "B's units never came back"
        );
        let inside = slow_a.now.load(Ordering::SeqCst);
        let t = tokio::spawn(a.clone().oneshot(get("k", false)));
        loop {
            if slow_a.now.load(Ordering::SeqCst) > inside {
                more.push(t);
                break;
            }
            if t.is_finished() {
                let r = t.await.unwrap().unwrap();
                assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
                tokio::time::sleep(Duration::from_millis(10)).await;
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    assert_eq!(
        a.clone().oneshot(get("k", false)).await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    let held_a: Vec<_> = held_a.into_iter().chain(more).collect();
    // A "dies" holding its units: its requests never end (forgotten, so
    // nothing is given back), its store is gone.
    for t in held_a {
        std::mem::forget(t);
    }
    std::mem::forget(a);
    // B is refused while they count; after the limit's window (30 s, the
    // longest a unit is held) they stop counting.
    clock.advance(Duration::from_secs(29));
    assert_eq!(
        b.clone().oneshot(get("k", false)).await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    clock.advance(Duration::from_secs(2));
    let free: Vec<_> = (0..5)
        .map(|_| tokio::spawn(b.clone().oneshot(get("k", false))))
        .collect();
    while slow_b.now.load(Ordering::SeqCst) < 5 {
        tokio::task::yield_now().await;
    }
    slow_b.gate.add_permits(5);
    for t in free {
        assert_eq!(t.await.unwrap().unwrap().status(), StatusCode::OK);
    }
}

/// A panic in the inner service (the task running the request unwinds and
/// drops the response future) gives the unit back too.
#[tokio::test]
async fn a_panicking_inner_service_gives_its_unit_back() {
    let layer = tierlimit::RateLimitLayer::new(policy(1));
    let svc = tower::Layer::layer(
        &layer,
        service_fn(|req: Request<bool>| async move {
            tokio::task::yield_now().await;
            if *req.body() {
                panic!("the inner service panicked");
            }
            Ok::<_, &'static str>(Response::new(http_body_util::Empty::<bytes::Bytes>::new()))
        }),
    );
    let crashed = tokio::spawn(svc.clone().oneshot(get("k", true))).await;
    assert!(crashed.unwrap_err().is_panic());
    let r = svc.clone().oneshot(get("k", false)).await.unwrap();
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "the crashed request's unit came back"
    );
    // Capacity 1: while `r` is held the next is refused, then admitted.
    let refused = svc.clone().oneshot(get("k", false)).await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    drop(r);
    let after = svc.clone().oneshot(get("k", false)).await.unwrap();
    assert_eq!(after.status(), StatusCode::OK);
}
