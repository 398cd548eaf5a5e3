//! `delay_up_to` on a tier: a request that would be refused but has room
//! within that long waits (a timer in its response future) and is then
//! admitted, never before the window has room; at most `queue` of one
//! scope wait at once; a longer wait, a full queue or a tier without the
//! setting answer 429 as before.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use tierlimit::clock::{Clock, TokioClock};
use tierlimit::config::{Config, Limit, Tier};
use tierlimit::RateLimitLayer;
use tower::{service_fn, Layer, ServiceExt};

const T0: u64 = common::T0;

fn config(capacity: u32, window: Duration, delay: Duration) -> Config {
    Config::new()
        .tier(
            "api",
            Tier::new()
                .limit(Limit::sliding("per-second", capacity, window))
                .delay_up_to(delay),
        )
        .default_tier("api")
}

/// Sends `n` requests of `key` at once through `layer`; returns each one's
/// status and the instant (on `clock`) the inner service saw it, if it did.
async fn burst<St: tierlimit::store::Store>(
    layer: &RateLimitLayer<St>,
    clock: Arc<dyn Clock>,
    key: &str,
    n: usize,
) -> Vec<(StatusCode, Option<u64>)> {
    let seen: Arc<Mutex<Vec<(usize, u64)>>> = Arc::default();
    let svc = {
        let (seen, clock) = (Arc::clone(&seen), Arc::clone(&clock));
        layer.layer(service_fn(move |req: Request<usize>| {
            let (seen, clock) = (Arc::clone(&seen), Arc::clone(&clock));
            async move {
                seen.lock()
                    .unwrap()
                    .push((*req.body(), clock.now().as_nanos() / 1_000_000));
                Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Empty::<
                    bytes::Bytes,
                >::new()))
            }
        }))
    };
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let req = Request::get("/x").header("x-api-key", key).body(i).unwrap();
            let svc = svc.clone();
            tokio::spawn(async move { svc.oneshot(req).await.unwrap().status() })
        })
        .collect();
    let mut out = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        let status = t.await.unwrap();
        let at = seen
            .lock()
            .unwrap()
            .iter()
            .find(|(j, _)| *j == i)
            .map(|(_, at)| *at);
        out.push((status, at));
    }
    out
}

/// No window-length span holds more than `cap` admissions (ms instants).
fn never_over(mut admitted: Vec<u64>, cap: usize, window_ms: u64) {
    admitted.sort_unstable();
    for (i, &t) in admitted.iter().enumerate() {
        let within = admitted[i..]
            .iter()
            .take_while(|&&u| u < t + window_ms)
            .count();
        assert!(
            within <= cap,
            "{within} admitted within {window_ms} ms of {t}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn twenty_at_once_on_ten_a_second_all_pass_the_last_a_second_later() {
    let clock = TokioClock::new(Duration::from_secs(T0));
    let policy = config(10, Duration::from_secs(1), Duration::from_secs(2))
        .build()
        .unwrap();
    let layer = RateLimitLayer::builder(policy).clock(clock).build();
    let out = burst(&layer, Arc::new(clock), "k", 20).await;
    assert!(out.iter().all(|(s, _)| *s == StatusCode::OK), "{out:?}");
    let at: Vec<u64> = out.iter().map(|(_, at)| at.unwrap()).collect();
    let t0 = T0 * 1000;
    assert_eq!(at.iter().filter(|&&a| a == t0).count(), 10, "{at:?}");
    // The other ten waited for the first ten to leave the window: a second.
    let last = *at.iter().max().unwrap();
    assert!(
        (t0 + 1000..=t0 + 1010).contains(&last),
        "last at +{} ms",
        last - t0
    );
    never_over(at, 10, 1000);
    assert_eq!(layer.requests_delayed(), 10);
    assert_eq!(layer.requests_waiting(), 0);
}

#[tokio::test(start_paused = true)]
async fn at_most_queue_wait_and_the_rest_get_429() {
    let clock = TokioClock::new(Duration::from_secs(T0));
    let mut config = config(10, Duration::from_secs(1), Duration::from_secs(2));
    config.tiers.get_mut("api").unwrap().queue = Some(3);
    let layer = RateLimitLayer::builder(config.build().unwrap())
        .clock(clock)
        .build();
    let out = burst(&layer, Arc::new(clock), "k", 20).await;
    let ok = out.iter().filter(|(s, _)| *s == StatusCode::OK).count();
    let refused = out
        .iter()
        .filter(|(s, _)| *s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!((ok, refused), (13, 7), "{out:?}");
    assert_eq!(layer.requests_delayed(), 3);
    // Another caller has a queue of its own.
    let other = burst(&layer, Arc::new(clock), "k2", 12).await;
    assert!(other.iter().all(|(s, _)| *s == StatusCode::OK));
}

#[tokio::test(start_paused = true)]
async fn a_wait_longer_than_the_delay_is_refused_at_once() {
    let clock = TokioClock::new(Duration::from_secs(T0));
    let policy = config(1, Duration::from_secs(10), Duration::from_secs(2))
        .build()
        .unwrap();
    let layer = RateLimitLayer::builder(policy).clock(clock).build();
    let out = burst(&layer, Arc::new(clock), "k", 2).await;
    assert_eq!(out[0].0, StatusCode::OK);
    assert_eq!(out[1].0, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(clock.now(), TokioClock::new(Duration::from_secs(T0)).now());
    assert_eq!(layer.requests_delayed(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_waiting_request_dropped_gives_its_place_back_and_charges_nothing() {
    let clock = TokioClock::new(Duration::from_secs(T0));
    let mut config = config(1, Duration::from_secs(1), Duration::from_secs(2));
    config.tiers.get_mut("api").unwrap().queue = Some(1);
    let layer = RateLimitLayer::builder(config.build().unwrap())
        .clock(clock)
        .build();
    let svc = layer.layer(common::Ok200);
    let get = || {
        Request::get("/x")
            .header("x-api-key", "k")
            .body(())
            .unwrap()
    };
    assert_eq!(
        svc.clone().oneshot(get()).await.unwrap().status(),
        StatusCode::OK
    );
    // The second waits; while it does, the queue (1) is full.
    let waiting = tokio::spawn(svc.clone().oneshot(get()));
    tokio::task::yield_now().await;
    assert_eq!(layer.requests_waiting(), 1);
    let third = svc.clone().oneshot(get()).await.unwrap();
    assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
    // The client goes away: its place is free again and nothing was charged.
    waiting.abort();
    let _ = waiting.await;
    assert_eq!(layer.requests_waiting(), 0);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let r = svc.clone().oneshot(get()).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-ratelimit-remaining"], "0");
}

#[tokio::test(start_paused = true)]
async fn without_delay_up_to_a_tier_refuses_as_before() {
    let clock = TokioClock::new(Duration::from_secs(T0));
    let policy = Config::new()
        .tier(
            "api",
            Tier::new().limit(Limit::sliding("s", 10, Duration::from_secs(1))),
        )
        .default_tier("api")
        .build()
        .unwrap();
    let layer = RateLimitLayer::builder(policy).clock(clock).build();
    let out = burst(&layer, Arc::new(clock), "k", 20).await;
    let ok = out.iter().filter(|(s, _)| *s == StatusCode::OK).count();
    assert_eq!(ok, 10);
}

#[test]
fn bad_settings_are_refused_at_load() {
    let bad = [
        (r#"{"delay_up_to": "0s"}"#, "delay_up_to"),
        (r#"{"delay_up_to": "11m"}"#, "delay_up_to"),
        (r#"{"queue": 5}"#, "queue"),
        (r#"{"delay_up_to": "1s", "queue": 0}"#, "queue"),
    ];
    for (extra, field) in bad {
        let extra = &extra[1..extra.len() - 1];
        let text = format!(
            r#"{{"tiers": {{"api": {{"limits": [{{"name": "s", "capacity": 5, "window": "1s"}}], {extra}}}}}, "default_tier": "api"}}"#
        );
        let err = Config::from_json(&text)
            .and_then(|c| c.build())
            .expect_err(&text)
            .to_string();
        assert!(err.contains(&format!("tiers.api.{field}")), "{err}");
    }
}

#[cfg(feature = "redis")]
#[cfg_attr(no_redis_server, ignore = "redis-server is not installed")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_two_instances_share_the_window_and_both_wait() {
    use tierlimit::clock::SystemClock;
    use tierlimit::store::{RedisStore, RedisStoreConfig};
    let server = common::redis_server::RedisServer::start();
    let layer = || {
        let store =
            RedisStore::new(RedisStoreConfig::new(server.url()).timeout(Duration::from_secs(2)))
                .unwrap();
        let policy = config(10, Duration::from_millis(1000), Duration::from_secs(3))
            .build()
            .unwrap();
        RateLimitLayer::builder(policy).store(store).build()
    };
    let (a, b) = (layer(), layer());
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let (x, y) = tokio::join!(
        burst(&a, Arc::clone(&clock), "k", 10),
        burst(&b, Arc::clone(&clock), "k", 10)
    );
    let all: Vec<_> = x.into_iter().chain(y).collect();
    assert!(all.iter().all(|(s, _)| *s == StatusCode::OK), "{all:?}");
    // Redis decided by its own clock; the instants here are read after
    // each decision on this process's clock, a few ms later at most: the
    // span checked is shortened by 50 ms for that.
    never_over(all.iter().map(|(_, at)| at.unwrap()).collect(), 10, 950);
    assert_eq!(a.requests_delayed() + b.requests_delayed(), 10);
}
