//! What one decision costs, next to `governor` in the same run.
//!
//! Ours decides a 2-limit plan (60/min + 1000/h, both sliding, keyed by the
//! caller's API key): hash the key, build the batch, check and charge both
//! windows. Governor checks one GCRA quota (60/min) with `check_key`.
//!
//! Groups: `hot_key` (one key, one thread), `many_keys` (1M distinct String
//! keys round robin), `contended_2_threads` (two threads, one key),
//! `distinct_2_threads` (two threads, own keys: 100 000 each, and one each). After the groups, the bench
//! measures bytes per tracked key at 1M keys for both (RSS delta in a child
//! process each, so neither sees the other's freed memory).
//!
//! `cargo bench --bench decide`

use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::Method;
use tierlimit::clock::{Clock, SystemClock};
use tierlimit::config::{Config, Limit, Tier};
use tierlimit::identity::Identity;
use tierlimit::store::{MemoryStore, MemoryStoreConfig};
use tierlimit::Policy;

const MANY: usize = 1_000_000;

struct Ours {
    policy: Policy,
    store: MemoryStore,
}

impl Ours {
    fn new() -> Self {
        let policy = Config::new()
            .tier(
                "standard",
                Tier::new()
                    .limit(Limit::sliding("per-minute", 60, Duration::from_secs(60)))
                    .limit(Limit::sliding("per-hour", 1000, Duration::from_secs(3600))),
            )
            .default_tier("standard")
            .build()
            .unwrap();
        let store = MemoryStore::new(MemoryStoreConfig::default().max_keys(4 * MANY));
        Ours { policy, store }
    }

    #[inline]
    fn decide(&self, key: &str) -> bool {
        let id = Identity {
            api_key: Some(key.as_bytes()),
            ..Identity::default()
        };
        let batch = self
            .policy
            .batch_for(
                tierlimit::store::KeySecret::per_process(),
                &Method::GET,
                "/items",
                &id,
            )
            .unwrap();
        let now = SystemClock.now();
        self.store.decide_now(now, batch).admitted()
    }
}

fn governor() -> DefaultKeyedRateLimiter<String> {
    RateLimiter::keyed(Quota::per_minute(NonZeroU32::new(60).unwrap()))
}

fn keys(n: usize, tag: &str) -> Vec<String> {
    (0..n).map(|i| format!("{tag}-key-{i:08}")).collect()
}

fn hot_key(c: &mut Criterion) {
    let mut g = c.benchmark_group("hot_key");
    g.throughput(Throughput::Elements(1));
    let ours = Ours::new();
    let gov = governor();
    let key = "hot-key-00000001".to_string();
    g.bench_function("tierlimit_2_limits", |b| {
        b.iter(|| black_box(ours.decide(black_box(&key))))
    });
    g.bench_function("governor_1_quota", |b| {
        b.iter(|| black_box(gov.check_key(black_box(&key)).is_ok()))
    });
    g.finish();
}

fn many_keys(c: &mut Criterion) {
    let mut g = c.benchmark_group("many_keys");
    g.throughput(Throughput::Elements(1));
    let ks = keys(MANY, "many");
    let ours = Ours::new();
    let gov = governor();
    let mut i = 0usize;
    g.bench_function("tierlimit_2_limits", |b| {
        b.iter(|| {
            i = (i + 1) % MANY;
            black_box(ours.decide(&ks[i]))
        })
    });
    let mut i = 0usize;
    g.bench_function("governor_1_quota", |b| {
        b.iter(|| {
            i = (i + 1) % MANY;
            black_box(gov.check_key(&ks[i]).is_ok())
        })
    });
    g.finish();
}

/// Runs `per_thread(thread, iters)` on two threads at once; the time is the
/// wall time of the pair divided by the total number of decisions (via
/// Throughput::Elements(2) per iteration).
fn two_threads<F>(iters: u64, f: Arc<F>) -> Duration
where
    F: Fn(usize, u64) + Send + Sync + 'static,
{
    let start = Instant::now();
    let handles: Vec<_> = (0..2)
        .map(|t| {
            let f = Arc::clone(&f);
            std::thread::spawn(move || f(t, iters))
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    start.elapsed()
}

fn contended(c: &mut Criterion) {
    let mut g = c.benchmark_group("contended_2_threads");
    g.throughput(Throughput::Elements(2));
    let ours = Arc::new(Ours::new());
    let gov = Arc::new(governor());
    g.bench_function(BenchmarkId::new("tierlimit_2_limits", "one_key"), |b| {
        b.iter_custom(|iters| {
            let ours = Arc::clone(&ours);
            two_threads(
                iters,
                Arc::new(move |_t: usize, n: u64| {
                    for _ in 0..n {
                        black_box(ours.decide("shared-key"));
                    }
                }),
            )
        })
    });
    g.bench_function(BenchmarkId::new("governor_1_quota", "one_key"), |b| {
        b.iter_custom(|iters| {
            let gov = Arc::clone(&gov);
            let key = "shared-key".to_string();
            two_threads(
                iters,
                Arc::new(move |_t: usize, n: u64| {
                    for _ in 0..n {
                        black_box(gov.check_key(&key).is_ok());
                    }
                }),
            )
        })
    });
    g.finish();
}

fn distinct(c: &mut Criterion) {
    let mut g = c.benchmark_group("distinct_2_threads");
    g.throughput(Throughput::Elements(2));
    let per = 100_000;
    let ks: Arc<Vec<Vec<String>>> = Arc::new(vec![keys(per, "t0"), keys(per, "t1")]);
    let ours = Arc::new(Ours::new());
    let gov = Arc::new(governor());
    g.bench_function(BenchmarkId::new("tierlimit_2_limits", "own_keys"), |b| {
        b.iter_custom(|iters| {
            let (ours, ks) = (Arc::clone(&ours), Arc::clone(&ks));
            two_threads(
                iters,
                Arc::new(move |t: usize, n: u64| {
                    for i in 0..n as usize {
                        black_box(ours.decide(&ks[t][i % per]));
                    }
                }),
            )
        })
    });
    // One key per thread: the same work as `contended_2_threads/one_key`
    // without the shared key (what a lease of one key per thread, the
    // memory store's escrow, could at best reach).
    let own: Arc<Vec<String>> = Arc::new(vec!["own-key-t0".into(), "own-key-t1".into()]);
    g.bench_function(
        BenchmarkId::new("tierlimit_2_limits", "one_key_each"),
        |b| {
            b.iter_custom(|iters| {
                let (ours, own) = (Arc::clone(&ours), Arc::clone(&own));
                two_threads(
                    iters,
                    Arc::new(move |t: usize, n: u64| {
                        for _ in 0..n {
                            black_box(ours.decide(&own[t]));
                        }
                    }),
                )
            })
        },
    );
    g.bench_function(BenchmarkId::new("governor_1_quota", "own_keys"), |b| {
        b.iter_custom(|iters| {
            let (gov, ks) = (Arc::clone(&gov), Arc::clone(&ks));
            two_threads(
                iters,
                Arc::new(move |t: usize, n: u64| {
                    for i in 0..n as usize {
                        black_box(gov.check_key(&ks[t][i % per]).is_ok());
                    }
                }),
            )
        })
    });
    g.finish();
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// In a child process: track MANY keys and print RSS delta per key.
fn measure_memory(which: &str) {
    let ks = keys(MANY, "mem");
    let before = rss_bytes();
    let per_key = match which {
        "tierlimit" => {
            let ours = Ours::new();
            for k in &ks {
                ours.decide(k);
            }
            assert_eq!(ours.store.len(), MANY, "one entry per (tier, key)");
            let delta = rss_bytes() - before;
            black_box(&ours);
            delta as f64 / MANY as f64
        }
        _ => {
            let gov = governor();
            for k in &ks {
                let _ = gov.check_key(k);
            }
            assert_eq!(gov.len(), MANY);
            let delta = rss_bytes() - before;
            black_box(&gov);
            delta as f64 / MANY as f64
        }
    };
    println!("{which}: {per_key:.1} bytes per tracked key ({MANY} String keys)");
}

/// All timed groups.
fn benches() {
    let mut c = Criterion::default().configure_from_args();
    hot_key(&mut c);
    many_keys(&mut c);
    contended(&mut c);
    distinct(&mut c);
}

fn main() {
    if let Ok(which) = std::env::var("TIERLIMIT_BENCH_MEMORY") {
        measure_memory(&which);
        return;
    }
    let only_memory = std::env::args().any(|a| a == "memory");
    if !only_memory {
        benches();
        Criterion::default().configure_from_args().final_summary();
    }
    println!("\nbytes per tracked key (RSS delta / keys, child process each):");
    let exe = std::env::current_exe().unwrap();
    for which in ["tierlimit", "governor"] {
        let out = std::process::Command::new(&exe)
            .env("TIERLIMIT_BENCH_MEMORY", which)
            .output()
            .unwrap();
        print!("  {}", String::from_utf8_lossy(&out.stdout));
    }
}
