//! The Redis store against Redis itself, in one run on one `redis-server`
//! of its own (free loopback port, killed at the end):
//!
//! 1. `redis-benchmark -c 32` running `EVALSHA` of a trivial script: the
//!    most script calls per second this server takes at that concurrency;
//! 2. `RedisStore` decisions per second with 32 decisions in flight (a
//!    two-limit sliding plan shaped like 60/min + 1000/h, capacities raised
//!    so nothing is refused, over 1000 callers), and the ratio to (1);
//! 3. bytes of Redis memory per tracked caller for that plan
//!    (`INFO memory` before and after 100 000 callers, each decided once,
//!    and `MEMORY USAGE` of one caller's hash).
//!
//! `cargo bench --bench redis_store` (skipped, with a message, when
//! `redis-server` or `redis-benchmark` is missing).

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tierlimit::clock::{Clock, SystemClock, Timestamp};
use tierlimit::config::{Config, Limit, Tier};
use tierlimit::identity::Identity;
use tierlimit::store::{Answer, RedisStore, RedisStoreConfig, Store, TimeSource};
use tierlimit::Policy;

const CONCURRENCY: usize = 32;
const DECISIONS: u64 = 200_000;
const CALLERS: usize = 100_000;

// The tests' redis-server harness (free port, killed when dropped).
#[allow(dead_code)]
#[path = "../tests/common/redis_server.rs"]
mod redis_server;

use redis_server::RedisServer;

fn command(port: u16, args: &[&str]) -> String {
    RedisServer::attach(port).command(args)
}

fn used_memory(port: u16) -> u64 {
    command(port, &["INFO", "memory"])
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Seconds of CPU the server has used (user + system).
fn server_cpu(port: u16) -> f64 {
    command(port, &["INFO", "cpu"])
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            matches!(k, "used_cpu_user" | "used_cpu_sys")
                .then(|| v.trim().parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// Seconds of CPU this process has used (user + system).
fn own_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which ends with ')'): utime is the 12th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / 100.0
}

/// The qarion standard plan's shape (per minute, per hour, both sliding),
/// with `scale` times its capacities: the throughput run raises them so
/// that every decision is a round trip (no refusal answered locally).
fn policy(scale: u32) -> Policy {
    Config::new()
        .tier(
            "standard",
            Tier::new()
                .limit(Limit::sliding(
                    "per-minute",
                    60 * scale,
                    Duration::from_secs(60),
                ))
                .limit(Limit::sliding(
                    "per-hour",
                    1000 * scale,
                    Duration::from_secs(3600),
                )),
        )
        .default_tier("standard")
        .build()
        .unwrap()
}

fn start() -> Option<RedisServer> {
    let found = Command::new("redis-benchmark")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        println!("skipped: redis-benchmark not found");
        return None;
    }
    Some(RedisServer::start())
}

fn redis_benchmark(port: u16) -> f64 {
    let sha = command(port, &["SCRIPT", "LOAD", "return 1"]);
    let sha = sha.lines().nth(1).unwrap_or("").trim().to_owned();
    let out = Command::new("redis-benchmark")
        .args(["-p", &port.to_string(), "-c", &CONCURRENCY.to_string()])
        .args(["-n", &DECISIONS.to_string(), "-q", "EVALSHA", &sha, "0"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    // "EVALSHA ...: 123456.79 requests per second, p50=..." (the last \r-update)
    text.rsplit('\r')
        .find_map(|l| {
            let (_, rest) = l.split_once(": ")?;
            rest.split_whitespace().next()?.parse::<f64>().ok()
        })
        .unwrap_or(0.0)
}

/// Decisions per second with `CONCURRENCY` in flight, over `callers`
/// callers, each decided at `now()`.
async fn decide_many(
    store: RedisStore,
    policy: Arc<Policy>,
    callers: usize,
    now: fn() -> Timestamp,
) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..CONCURRENCY {
        let (store, policy, done) = (store.clone(), Arc::clone(&policy), Arc::clone(&done));
        tasks.push(tokio::spawn(async move {
            let mut i = t;
            while done.fetch_add(1, Ordering::Relaxed) < DECISIONS {
                let key = format!("caller-{}", i % callers);
                i += CONCURRENCY;
                let batch = batch_of(&policy, &store, &key);
                match store.decide(now(), batch) {
                    Answer::Later(f) => {
                        f.await.expect("a decision");
                    }
                    Answer::Now(r) => {
                        r.expect("a decision");
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    DECISIONS as f64 / started.elapsed().as_secs_f64()
}

/// Callers in the steady-state run.
const HOT: usize = 100;
/// The instant the steady-state run decides at: a minute after its callers
/// started, each once a second (`fill`).
/// The batch of a `GET /x` by API key `key`, its counters named as `store`
/// names them.
fn batch_of(policy: &Policy, store: &RedisStore, key: &str) -> tierlimit::store::Batch {
    let id = Identity {
        api_key: Some(key.as_bytes()),
        ..Identity::default()
    };
    policy
        .batch_for(store.key_secret(), &http::Method::GET, "/x", &id)
        .unwrap()
}

fn a_minute_in() -> Timestamp {
    Timestamp::from_nanos(1_800_000_060_500_000_000)
}

/// Gives each of `HOT` callers one decision a second for a minute, ending
/// just before `a_minute_in()`: every per-minute counter holds 60 buckets.
async fn fill(store: &RedisStore, policy: &Policy) {
    let start = a_minute_in() - Duration::from_millis(60_500);
    for s in 0..60 {
        for c in 0..HOT {
            let key = format!("caller-{c}");
            let batch = batch_of(policy, store, &key);
            if let Answer::Later(f) = store.decide(start + Duration::from_secs(s), batch) {
                f.await.expect("a decision");
            }
        }
    }
}

async fn memory_per_caller(store: RedisStore, policy: Arc<Policy>, port: u16) -> (f64, String) {
    command(port, &["FLUSHALL"]);
    let before = used_memory(port);
    let mut sample = None;
    for chunk in 0..CALLERS / 1000 {
        let mut tasks = Vec::new();
        for j in 0..1000 {
            let (store, policy) = (store.clone(), Arc::clone(&policy));
            let key = format!("mem-caller-{:06}", chunk * 1000 + j);
            tasks.push(tokio::spawn(async move {
                let batch = batch_of(&policy, &store, &key);
                let counter = batch.limit(0).key;
                if let Answer::Later(f) = store.decide(SystemClock.now(), batch) {
                    f.await.expect("a decision");
                }
                counter
            }));
        }
        for t in tasks {
            let key = t.await.unwrap();
            sample.get_or_insert(key);
        }
    }
    let after = used_memory(port);
    let per = (after.saturating_sub(before)) as f64 / CALLERS as f64;
    let usage = sample
        .map(|k| command(port, &["MEMORY", "USAGE", &store.redis_key(k)]))
        .unwrap_or_default();
    (per, usage.trim().to_owned())
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let Some(server) = start() else { return };
    let port = server.port;
    let cpu0 = server_cpu(port);
    let baseline = redis_benchmark(port);
    let cpu1 = server_cpu(port);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let url = format!("redis://127.0.0.1:{port}");
    // The script's own cost: every decision a round trip (no leases; the
    // leased run is further down).
    let config = RedisStoreConfig::new(url)
        .timeout(Duration::from_secs(2))
        .lease(Duration::ZERO);
    let store = RedisStore::new(config.clone()).unwrap();
    let wide = Arc::new(policy(1_000_000));
    let own0 = own_cpu();
    let calls_before = store.script_calls();
    let ours = rt.block_on(decide_many(store.clone(), Arc::clone(&wide), 1000, || {
        SystemClock.now()
    }));
    let per_call = DECISIONS as f64 / (store.script_calls() - calls_before).max(1) as f64;
    let cpu2 = server_cpu(port);
    let own1 = own_cpu();
    let served = store.refusals_served();
    // Steady state: callers whose per-minute counters hold a full minute of
    // buckets (on the caller's clock, so that a minute passes at once).
    let steady = RedisStore::new(config.prefix("steady").time(TimeSource::Caller)).unwrap();
    rt.block_on(fill(&steady, &wide));
    let cpu3 = server_cpu(port);
    let full = rt.block_on(decide_many(steady, Arc::clone(&wide), HOT, a_minute_in));
    let cpu4 = server_cpu(port);
    // The same 1000 callers with leases (the default): each is busy
    // enough to be leased.
    let leased_store = RedisStore::new(
        RedisStoreConfig::new(format!("redis://127.0.0.1:{port}"))
            .timeout(Duration::from_secs(2))
            .prefix("leased"),
    )
    .unwrap();
    let calls0 = leased_store.script_calls();
    let leased = rt.block_on(decide_many(
        leased_store.clone(),
        Arc::clone(&wide),
        1000,
        || SystemClock.now(),
    ));
    let leased_calls = leased_store.script_calls() - calls0;
    println!(
        "client CPU per decision (this process, store and runtime): {:.2} us",
        (own1 - own0) / DECISIONS as f64 * 1e6
    );
    let (per_caller, usage) = rt.block_on(memory_per_caller(store, Arc::new(policy(1)), port));
    println!("redis-benchmark EVALSHA (trivial script), -c {CONCURRENCY}: {baseline:.0} calls/s");
    println!(
        "RedisStore decisions, {CONCURRENCY} in flight, 2 limits, 1000 fresh callers: {ours:.0} decisions/s"
    );
    println!(
        "ratio: {:.3} (goal >= 0.55); refusals answered locally: {served}; {per_call:.1} decisions per script call",
        ours / baseline.max(1.0)
    );
    println!(
        "with leases (the default), the same 1000 callers: {leased:.0} decisions/s (ratio {:.3}), {:.4} script calls per decision",
        leased / baseline.max(1.0),
        leased_calls as f64 / DECISIONS as f64
    );
    println!(
        "the same, {HOT} callers with a full minute of buckets: {full:.0} decisions/s (ratio {:.3})",
        full / baseline.max(1.0)
    );
    let per = |s: f64| s / DECISIONS as f64 * 1e6;
    println!(
        "server CPU per call: trivial script {:.2} us, decision {:.2} us, decision with a full minute {:.2} us",
        per(cpu1 - cpu0),
        per(cpu2 - cpu1),
        per(cpu4 - cpu3)
    );
    println!(
        "Redis memory per tracked caller (2-limit plan, {CALLERS} callers): {per_caller:.1} bytes (INFO used_memory delta); MEMORY USAGE of one caller: {usage} (goal <= 256)"
    );
}
