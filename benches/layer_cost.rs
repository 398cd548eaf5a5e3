//! Instructions the layer adds per request, measured under callgrind (a
//! figure that does not move with machine noise):
//!
//! ```sh
//! cargo bench --bench layer_cost --no-run
//! B=$(ls -t target/release/deps/layer_cost-* | grep -v '\.d$' | head -1)
//! for mode in bare layer; do
//!   valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.$mode $B $mode 20000
//! done
//! ```
//!
//! or simply `bash benches/instructions.sh`. Each run sends N requests
//! (`GET /api/items`, one API key) through a service answering 200 with a
//! small body, bare or behind the layer with qarion.json's shape (two
//! sliding limits, raised so that nothing is rejected; `x-ratelimit`
//! headers; a clock moving 1 ms per request), on a current-thread runtime,
//! after 1 000 requests of warm-up;
//! the difference of the two totals divided by N is what the layer adds.
//! `reject` runs the same with capacity 1, so every request after the first
//! is answered 429 by the layer. `decide` and `governor` run one decision
//! of `benches/decide.rs`'s `hot_key` group (no layer, no request), ours and
//! governor's, on the same step clock for ours.
//!
//! Without arguments (as `cargo bench` runs it) it does one short run of
//! each mode and prints wall time per request, for a quick look only.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tierlimit::clock::{Clock, Timestamp};
use tierlimit::config::{Config, Limit, Tier};
use tierlimit::RateLimitLayer;
use tower::{service_fn, Layer, Service, ServiceExt};

/// A clock that moves 1 ms each time it is read (one read per request):
/// the same instants in every run, so the instruction count does not depend
/// on how fast the run goes (under valgrind, real time would fill more
/// sub-buckets than a fast run does).
#[derive(Debug, Default)]
struct StepClock(std::sync::atomic::AtomicU64);

impl Clock for StepClock {
    fn now(&self) -> Timestamp {
        let n = self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Timestamp::from_nanos(1_700_000_000_000_000_000 + n * 1_000_000)
    }
}

/// A per-minute and a per-hour sliding limit on every request.
fn policy(per_minute: u32, per_hour: u32) -> tierlimit::Policy {
    Config::new()
        .tier(
            "standard",
            Tier::new()
                .limit(Limit::sliding(
                    "per-minute",
                    per_minute,
                    Duration::from_secs(60),
                ))
                .limit(Limit::sliding(
                    "per-hour",
                    per_hour,
                    Duration::from_secs(3600),
                )),
        )
        .default_tier("standard")
        .build()
        .expect("a valid policy")
}

fn request() -> Request<Full<Bytes>> {
    Request::get("/api/items")
        .header("host", "127.0.0.1")
        .header("x-api-key", "load-test-key")
        .body(Full::new(Bytes::new()))
        .expect("a valid request")
}

async fn drive<S, B>(mut svc: S, n: u64) -> u64
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>, Error = Infallible>,
{
    let mut ok = 0;
    for _ in 0..n {
        let resp = svc.ready().await.unwrap().call(request()).await.unwrap();
        ok += u64::from(resp.status() == 200);
        std::hint::black_box(resp);
    }
    ok
}

/// `n` decisions of `benches/decide.rs`'s `hot_key` group without the
/// layer: ours (a 60/min + 1000/h sliding plan: batch, hash, both windows)
/// or governor's `check_key` (one 60/min GCRA quota), on one key, the clock
/// moving 1 ms per decision; returns how many were admitted.
fn decisions(mode: &str, n: u64) -> u64 {
    use std::hint::black_box;
    let key = "hot-key-00000001".to_string();
    let mut ok = 0;
    if mode == "governor" {
        let gov: governor::DefaultKeyedRateLimiter<String> = governor::RateLimiter::keyed(
            governor::Quota::per_minute(std::num::NonZeroU32::new(60).expect("60 > 0")),
        );
        for _ in 0..1000 {
            ok += u64::from(gov.check_key(black_box(&key)).is_ok());
        }
        return measured(|| {
            for _ in 0..n {
                ok += u64::from(gov.check_key(black_box(&key)).is_ok());
            }
            ok
        });
    }
    let policy = policy(60, 1000);
    let store = tierlimit::store::MemoryStore::default();
    let clock = StepClock::default();
    // What a layer reads once when it is built (the store's key secret).
    let secret = tierlimit::store::KeySecret::per_process();
    let decide = || {
        let id = tierlimit::identity::Identity {
            api_key: Some(black_box(key.as_bytes())),
            ..tierlimit::identity::Identity::default()
        };
        policy
            .batch_for(secret, &http::Method::GET, "/items", &id)
            .is_some_and(|batch| store.decide_now(clock.now(), batch).admitted())
    };
    for _ in 0..1000 {
        ok += u64::from(decide());
    }
    measured(|| {
        for _ in 0..n {
            ok += u64::from(decide());
        }
        ok
    })
}

/// Runs `n` requests in `mode`; returns how many got 200.
fn run(mode: &str, n: u64) -> u64 {
    if mode == "decide" || mode == "governor" {
        return decisions(mode, n);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // A JSON answer with its content type, as every real handler gives
    // (axum's `Json`, the example gateway's demo route): the response's
    // header map exists before the layer adds to it.
    let inner = service_fn(|_req: Request<Full<Bytes>>| async {
        let mut resp = Response::new(Full::new(Bytes::from_static(
            b"{\"ok\":true,\"method\":\"GET\",\"path\":\"/api/items\"}",
        )));
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        Ok::<_, Infallible>(resp)
    });
    // Everything is built and warmed up (1 000 requests: first-use
    // allocations, the TSC clock's calibration) before `measured` runs.
    match mode {
        "bare" => {
            rt.block_on(drive(inner, 1000));
            measured(|| rt.block_on(drive(inner, n)))
        }
        "layer" | "reject" => {
            let capacity = if mode == "layer" { 4_000_000_000 } else { 1 };
            let svc = RateLimitLayer::builder(policy(capacity, capacity))
                .clock(StepClock::default())
                .build()
                .layer(inner);
            rt.block_on(drive(svc.clone(), 1000));
            measured(|| rt.block_on(drive(svc, n)))
        }
        other => panic!("mode `{other}`: bare, layer, reject, decide or governor"),
    }
}

/// The part of a run that `benches/instructions.sh` counts
/// (`valgrind --tool=callgrind --toggle-collect='layer_cost::measured*'`).
#[inline(never)]
fn measured<R>(f: impl FnOnce() -> R) -> R {
    std::hint::black_box(f())
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if let [mode, n] = args.as_slice() {
        let n: u64 = n.parse().expect("a request count");
        let ok = run(mode, n);
        eprintln!("{mode}: {n} requests, {ok} answered 200");
        return;
    }
    for mode in ["bare", "layer", "reject"] {
        let n = 200_000;
        let t = Instant::now();
        run(mode, n);
        println!(
            "{mode}: {:?} per request (wall time, a quick look)",
            t.elapsed() / n as u32
        );
    }
}
