//! Leases on busy counters (`src/store/redis/leases.rs`), on a real
//! `redis-server`: several store instances share counters, serve most
//! decisions from leases, and never admit more than a capacity in any
//! window; what a lease did not use comes back.

mod common;

use std::time::Duration;

use common::redis_server::{RedisCluster, RedisServer};
use proptest::prelude::*;
use tierlimit::clock::Timestamp;
use tierlimit::store::{
    Answer, Batch, CounterKey, LimitSpec, RedisStore, RedisStoreConfig, Store, TimeSource, Verdict,
    WindowSpec,
};

const MS: u64 = 1_000_000;
/// A second boundary, in Unix ms.
const START_MS: u64 = 1_708_200_000_000;

async fn decide<S: Store>(store: &S, now: Timestamp, batch: Batch) -> Batch {
    match store.decide(now, batch) {
        Answer::Now(r) => r.unwrap(),
        Answer::Later(f) => f.await.unwrap(),
    }
}

fn at(ms: u64) -> Timestamp {
    Timestamp::from_nanos(ms * MS)
}

/// A store on the caller's clock, with leases of `life_ms` and at most
/// `units` units.
fn store(url: &str, prefix: &str, life_ms: u64, units: u64) -> RedisStore {
    RedisStore::new(
        RedisStoreConfig::new(url)
            .prefix(prefix)
            .time(TimeSource::Caller)
            .timeout(Duration::from_secs(5))
            .lease(Duration::from_millis(life_ms))
            .lease_max_units(units),
    )
    .unwrap()
}

fn sliding(ms: u64, cap: u64) -> LimitSpec {
    LimitSpec::new(
        CounterKey::from_u128(1),
        WindowSpec::sliding(Duration::from_millis(ms), 10),
        cap,
        1,
    )
}

// ---------------------------------------------------------------------
// The property: three instances, random arrivals on shared counters.
// ---------------------------------------------------------------------

const WINDOW_MS: u64 = 1000;
/// Sub-bucket of the sliding windows (a tenth of the window).
const BUCKET_MS: u64 = 100;
const CAP: u64 = 60;
const LIFE_MS: u64 = 100;
const MAX_UNITS: u64 = 5;
const INSTANCES: usize = 3;
/// The cascade's members: per window, then per two windows.
const CASCADE: [u64; 2] = [30, 50];
/// The documented bound on units stranded at any instant: one lease per
/// instance and counter, each of at most `lease_max_units`.
const STRANDED: u64 = INSTANCES as u64 * MAX_UNITS;

#[derive(Clone, Copy, Debug)]
enum Kind {
    Sliding,
    Fixed,
    /// A leased sliding limit beside a cascade (never leased) of two.
    Cascade,
}

/// The limits of one request of `kind`: the shared (leased) one first.
fn limits(kind: Kind) -> Vec<LimitSpec> {
    let hot = match kind {
        Kind::Fixed => LimitSpec::new(
            CounterKey::from_u128(1),
            WindowSpec::fixed(Duration::from_millis(WINDOW_MS), 0),
            CAP,
            1,
        ),
        _ => sliding(WINDOW_MS, CAP),
    };
    let mut all = vec![hot];
    if let Kind::Cascade = kind {
        let w = |ms| WindowSpec::sliding(Duration::from_millis(ms), 10);
        all.push(
            LimitSpec::new(CounterKey::from_u128(2), w(WINDOW_MS), CASCADE[0], 1)
                .with_tag(2)
                .in_cascade(Some(1)),
        );
        all.push(
            LimitSpec::new(CounterKey::from_u128(2), w(2 * WINDOW_MS), CASCADE[1], 1)
                .with_tag(3)
                .in_cascade(Some(1)),
        );
    }
    all
}

/// A burst: `n` requests at once on instance `who`, `gap_ms` after the
/// previous burst.
#[derive(Clone, Copy, Debug)]
struct Burst {
    who: usize,
    gap_ms: u64,
    n: usize,
}

fn bursts() -> impl Strategy<Value = Vec<Burst>> {
    let burst =
        (0..INSTANCES, 0u64..50, 1usize..8).prop_map(|(who, gap_ms, n)| Burst { who, gap_ms, n });
    prop::collection::vec(burst, 1..120)
}

/// What one request got: when, and which limits it charged (none when
/// refused; `hot_refused`: the shared limit was one of those refusing).
#[derive(Debug)]
struct Seen {
    ms: u64,
    charged: Vec<usize>,
    hot_refused: bool,
}

/// Whether a charge at `a` and a decision at `b` are in one window of
/// limit `i` (sliding: `a` within the window before `b`; fixed: the same
/// window), stretched by `slack` ms for a sliding one.
fn in_window(kind: Kind, i: usize, a: u64, b: u64, slack: u64) -> bool {
    let window = match i {
        2 => 2 * WINDOW_MS,
        _ => WINDOW_MS,
    };
    match (kind, i) {
        (Kind::Fixed, 0) => a / WINDOW_MS == b / WINDOW_MS,
        _ => a <= b && b - a < window + slack,
    }
}

fn check(kind: Kind, seen: &[Seen]) -> Result<(), TestCaseError> {
    let caps = [CAP, CASCADE[0], CASCADE[1]];
    // Never more than a capacity in any window: at each charge, the
    // charges in the window ending there.
    for s in seen {
        for &i in &s.charged {
            let n = seen
                .iter()
                .filter(|o| o.charged.contains(&i) && in_window(kind, i, o.ms, s.ms, 0))
                .count() as u64;
            prop_assert!(
                n <= caps[i],
                "limit {i}: {n} charges in the window ending at {} (capacity {})",
                s.ms,
                caps[i]
            );
        }
    }
    // A refusal by the shared limit is one of a full window, but for what
    // leases may strand: the charges in the window before it (stretched
    // by a bucket and a lease lifetime, as long as leased units may count,
    // and by the refusal cache's one lifetime) reach the capacity less
    // the documented bound.
    let slack = BUCKET_MS + 2 * (LIFE_MS + 10);
    for s in seen.iter().filter(|s| s.hot_refused) {
        let n = seen
            .iter()
            .filter(|o| o.charged.contains(&0) && in_window(kind, 0, o.ms, s.ms, slack))
            .count() as u64;
        prop_assert!(
            n + STRANDED >= CAP,
            "refused at {} with only {n} charges in the window before (capacity {CAP}, \
             at most {STRANDED} stranded)",
            s.ms
        );
    }
    Ok(())
}

/// Runs `bursts`; (units spent from leases, requests admitted).
fn run(kind: Kind, bursts: &[Burst], url: &str, prefix: &str) -> Result<(u64, u64), TestCaseError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let stores: Vec<RedisStore> = (0..INSTANCES)
            .map(|_| store(url, prefix, LIFE_MS, MAX_UNITS))
            .collect();
        let limits = limits(kind);
        let mut ms = START_MS + 17;
        let mut seen = Vec::new();
        for b in bursts {
            ms += b.gap_ms;
            let now = at(ms);
            let mut set = tokio::task::JoinSet::new();
            for _ in 0..b.n {
                let s = stores[b.who].clone();
                let batch = Batch::from_limits(limits.iter().copied());
                set.spawn(async move { decide(&s, now, batch).await });
            }
            while let Some(batch) = set.join_next().await {
                let batch = batch.unwrap();
                let admitted = batch.admitted();
                let room = |i: usize| matches!(batch.outcome(i).unwrap().verdict, Verdict::Room(_));
                let charged = if admitted {
                    (0..batch.len()).filter(|&i| room(i)).collect()
                } else {
                    Vec::new()
                };
                let hot_refused = batch.outcome(0).unwrap().refusal().is_some();
                seen.push(Seen {
                    ms,
                    charged,
                    hot_refused,
                });
            }
        }
        check(kind, &seen)?;
        // Let every lease end and be given back (the flusher's 10 ms).
        let end = at(ms + 10 * WINDOW_MS);
        for s in &stores {
            let _ = decide(s, end, Batch::from_limits([sliding(1, 1_000).with_tag(9)])).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Units reserved by leases and not given back: spent from them.
        let spent = stores
            .iter()
            .map(|s| s.lease_units_taken() - s.lease_units_returned())
            .sum();
        let admitted = seen.iter().filter(|s| !s.charged.is_empty()).count() as u64;
        Ok((spent, admitted))
    })
}

fn cases(kind: Kind, n: u32) {
    let server = RedisServer::start();
    let url = server.url();
    let case = std::sync::atomic::AtomicUsize::new(0);
    let leased = std::sync::atomic::AtomicU64::new(0);
    let admitted = std::sync::atomic::AtomicU64::new(0);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: n,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    runner
        .run(&bursts(), |b| {
            let k = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let (served, n) = run(kind, &b, &url, &format!("p{k}"))?;
            leased.fetch_add(served, std::sync::atomic::Ordering::Relaxed);
            admitted.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            Ok(())
        })
        .unwrap();
    // The property is about leases: a good part of what was admitted came
    // from them.
    let (leased, total) = (leased.into_inner(), admitted.into_inner());
    assert!(
        leased * 10 >= total,
        "{leased} units spent from leases of {total} admitted"
    );
}

#[cfg_attr(no_redis_server, ignore = "redis-server is not installed")]
#[test]
fn three_instances_never_exceed_a_sliding_window_and_reach_it() {
    cases(Kind::Sliding, 24);
}

#[cfg_attr(no_redis_server, ignore = "redis-server is not installed")]
#[test]
fn three_instances_never_exceed_a_fixed_window_and_reach_it() {
    cases(Kind::Fixed, 24);
}

#[cfg_attr(no_redis_server, ignore = "redis-server is not installed")]
#[test]
fn three_instances_with_a_cascade_beside_a_leased_limit() {
    cases(Kind::Cascade, 24);
}

// ---------------------------------------------------------------------
// Deterministic cases.
// ---------------------------------------------------------------------

/// Makes `limit` busy on `s` for a lease at `ms`: `n` requests one
/// lifetime earlier (a counter is leased after a lifetime with at least
/// four). Returns how many were admitted.
async fn warm(s: &RedisStore, limit: LimitSpec, ms: u64, life_ms: u64, n: u64) -> u64 {
    let mut admitted = 0;
    for _ in 0..n {
        let b = decide(s, at(ms - life_ms), Batch::from_limits([limit])).await;
        admitted += u64::from(b.admitted());
    }
    admitted
}

/// A busy counter on one instance: nearly every decision from a lease.
#[cfg_attr(no_redis_server, ignore = "redis-server is not installed")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_counter_is_decided_mostly_without_a_round_trip() {
    let server = RedisServer::start();
    let s = store(&server.url(), "busy", 250, 10_000);
    s.connect().await.unwrap();
    let limit = sliding(60_000, 1_000_000);
    let mut remaining = Vec::new();
    // 2 000 requests a second for 20 s, one at a time.
    for k in 0..40_000u64 {
        let b = decide(&s, at(START_MS + k / 2), Batch::from_limits([limit])).await;
        assert!(b.admitted());
        remaining.push(b.outcome(0).unwrap().view.remaining());
    }
    let calls = s.script_calls();
    // The first lifetime (500 requests) is what makes it busy.
    assert!(
        calls * 50 <= 40_000,
        "{calls} script calls for 40 000 decisions"
    );
    assert!(s.lease_decisions() >= 39_000, "{}", s.lease_decisions());
    // One instance alone: every decision's remaining figure is exact.
    let want: Vec<u64> = (1..=40_000).map(|k| 1_000_000 - k).collect();
    assert_eq!(remaining, want);
}

/// Units held by another instance's lease count as used in this one's
/// figures; what the holder spends is its own.
#[cfg_attr(no_redis_server, ignore = "redis-server is not installed")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_another_instance_holds_counts_as_used() {
    let server = RedisServer::start();
    let (a, b) = (
        store(&server.url(), "held", 250, 30),
        store(&server.url(), "held", 250, 30),
    );
    let limit = sliding(60_000, 100);
    let now = at(START_MS);
    assert_eq!(warm(&a, limit, START_MS, 250, 20).await, 20);
    for _ in 0..5 {
        assert!(decide(&a, now, Batch::from_limits([limit]))
            .await
            .admitted());
    }
    assert!(a.leases_taken() >= 1);
    let held = a.lease_units_taken();
    // b sees as used what a charged in Redis, all that a's lease took
    // (whether a spent it yet or not), and its own request.
    let in_redis = 25 - a.lease_decisions();
    let seen = decide(&b, now, Batch::from_limits([limit])).await;
    assert_eq!(seen.outcome(0).unwrap().view.used, in_redis + held + 1);
    // a spends its lease: its remaining falls one by one, from what it
    // saw (b's request is not seen until its next lease).
    let r1 = decide(&a, now, Batch::from_limits([limit])).await;
    let r2 = decide(&a, now, Batch::from_limits([limit])).await;
    let (v1, v2) = (r1.outcome(0).unwrap().view, r2.outcome(0).unwrap().view);
    assert_eq!(v1.remaining(), v2.remaining() + 1);
}

/// An instance that stops cleanly gives back what its leases hold at
/// once; one that dies strands at most one lease, until it leaves the
/// window.
#[cfg_attr(no_redis_server, ignore = "redis-server is not installed")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_gives_back_at_once_and_a_crash_strands_one_lease() {
    let server = RedisServer::start();
    let limit = sliding(10_000, 100);
    let now = at(START_MS);
    let other = store(&server.url(), "stop", 250, 40);
    // How many requests of `other` are admitted now.
    async fn fill(s: &RedisStore, limit: LimitSpec, now: Timestamp) -> u64 {
        let mut n = 0;
        while decide(s, now, Batch::from_limits([limit])).await.admitted() {
            n += 1;
        }
        n
    }

    // Clean stop: 15 spent, the lease given back by `shutdown`.
    let a = store(&server.url(), "stop", 250, 40);
    assert_eq!(warm(&a, limit, START_MS, 250, 5).await, 5);
    for _ in 0..10 {
        assert!(decide(&a, now, Batch::from_limits([limit]))
            .await
            .admitted());
    }
    let held = a.lease_units_taken() - (a.lease_decisions());
    assert!(held > 0, "a holds a lease");
    a.shutdown().await.unwrap();
    assert_eq!(a.lease_units_returned(), held);
    drop(a);
    assert_eq!(
        fill(&other, limit, now).await,
        85,
        "everything a did not spend"
    );

    // Dropped inside a runtime: given back in the background.
    let other = store(&server.url(), "dropped", 250, 40);
    let a = store(&server.url(), "dropped", 250, 40);
    assert_eq!(warm(&a, limit, START_MS, 250, 5).await, 5);
    for _ in 0..10 {
        assert!(decide(&a, now, Batch::from_limits([limit]))
            .await
            .admitted());
    }
    assert!(
        a.lease_units_taken() > a.lease_decisions(),
        "a holds a lease"
    );
    drop(a);
    // The give-back is one script call on its way: take what is there
    // until it lands (in real time, within a second), rather than assume
    // when it does.
    let mut got = 0;
    for _ in 0..100 {
        got += fill(&other, limit, now).await;
        if got >= 85 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        // Its refusal was cached (the clock stands still here).
        other.forget_cached();
    }
    assert_eq!(got, 85, "everything a did not spend");

    // A crash (the store never dropped, so nothing is given back): a's
    // last lease stays counted, and no more than that.
    let later = at(START_MS + 20_000);
    let other = store(&server.url(), "crash", 250, 40);
    let a = store(&server.url(), "crash", 250, 40);
    assert_eq!(warm(&a, limit, START_MS + 20_000, 250, 5).await, 5);
    for _ in 0..10 {
        assert!(decide(&a, later, Batch::from_limits([limit]))
            .await
            .admitted());
    }
    let stranded = a.lease_units_taken() - a.lease_decisions();
    assert!(stranded > 0 && stranded <= 40);
    std::mem::forget(a);
    assert_eq!(fill(&other, limit, later).await, 85 - stranded);
    // Within the lifetime other gets nothing more: the stranded units
    // may have been spent, as far as Redis can tell.
    let in_life = later + Duration::from_millis(200);
    assert_eq!(fill(&other, limit, in_life).await, 0);
    // They leave with the window (at the lease's end plus the window).
    let gone = later + Duration::from_millis(10_000 + 250 + 1_000);
    assert_eq!(fill(&other, limit, gone).await, 100);
}

/// A plan change ends every lease (given back), and a lease for one
/// capacity is never spent on another.
#[cfg_attr(no_redis_server, ignore = "redis-server is not installed")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_downgrade_ends_the_leases_of_the_old_limit() {
    let server = RedisServer::start();
    let a = store(&server.url(), "down", 250, 1000);
    let now = at(START_MS);
    let big = sliding(60_000, 1000);
    assert_eq!(warm(&a, big, START_MS, 250, 5).await, 5);
    for _ in 0..10 {
        assert!(decide(&a, now, Batch::from_limits([big])).await.admitted());
    }
    let held = a.lease_units_taken() - a.lease_decisions();
    assert!(held > 0);
    // The same counter, now 30 a minute: 15 spent, and nothing from the
    // old lease (the layer calls `forget_cached` on a plan change; the
    // lease would not fit the new limit anyway).
    a.forget_cached();
    let small = sliding(60_000, 30);
    let mut admitted = 0;
    for _ in 0..20 {
        let b = decide(&a, now, Batch::from_limits([small])).await;
        admitted += u64::from(b.admitted());
    }
    assert_eq!(admitted, 15);
    assert_eq!(a.lease_units_returned(), held);
}

/// The crux of the proof: units spent at the very end of a lease still
/// count a full window after their use (the lease is stamped with its
/// end), so another instance cannot take them again one window after the
/// lease began.
#[cfg_attr(no_redis_server, ignore = "redis-server is not installed")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn units_spent_late_in_a_lease_count_a_window_after_their_use() {
    let server = RedisServer::start();
    let (a, b) = (
        store(&server.url(), "late", 100, 20),
        store(&server.url(), "late", 100, 20),
    );
    // 60 a second, in buckets of 100 ms.
    let limit = sliding(1000, 60);
    let t0 = START_MS;
    // Busy in the lifetime before (those 10 leave the window before b asks).
    assert_eq!(warm(&a, limit, t0, 100, 10).await, 10);
    for _ in 0..10 {
        assert!(decide(&a, at(t0), Batch::from_limits([limit]))
            .await
            .admitted());
    }
    // The rest of a's lease, spent at the last millisecond it may be
    // (and nothing more: a charge in Redis then would stamp the bucket).
    let late = a.lease_units_taken() - a.lease_decisions();
    assert!(late > 0, "a holds part of its lease");
    for _ in 0..late {
        assert!(decide(&a, at(t0 + 99), Batch::from_limits([limit]))
            .await
            .admitted());
    }
    assert_eq!(
        a.lease_units_taken(),
        a.lease_decisions(),
        "all from the lease"
    );
    // 1 050 ms after the lease began, its late units are 951 ms old: still
    // in the window.
    let mut took = 0;
    while decide(&b, at(t0 + 1050), Batch::from_limits([limit]))
        .await
        .admitted()
    {
        took += 1;
    }
    assert!(
        took + late < 60,
        "{took} admitted while {late} spent at {} ms still count",
        t0 + 99
    );
}

/// A lease is never spent after its end (its lifetime, or its bucket's
/// last millisecond); what it held then goes back.
#[cfg_attr(no_redis_server, ignore = "redis-server is not installed")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_is_never_spent_after_its_end() {
    let server = RedisServer::start();
    let a = store(&server.url(), "end", 100, 20);
    let limit = sliding(1000, 1000);
    // Mid-bucket: the lease ends with its lifetime, 100 ms on.
    let t0 = START_MS + 150;
    assert_eq!(warm(&a, limit, t0, 100, 10).await, 10);
    for _ in 0..10 {
        assert!(decide(&a, at(t0), Batch::from_limits([limit]))
            .await
            .admitted());
    }
    let left = a.lease_units_taken() - a.lease_decisions();
    assert!(left > 0);
    // Ends in its bucket first (the bucket of t0 ends at t0 + 49).
    let served = a.lease_decisions();
    assert!(decide(&a, at(t0 + 50), Batch::from_limits([limit]))
        .await
        .admitted());
    assert_eq!(a.lease_decisions(), served, "decided in Redis");
    // What it held went back with that call.
    assert_eq!(a.lease_units_returned(), left);
}

/// On a Redis Cluster, a request whose limits share a slot is leased as
/// on one server; one whose limits span slots is decided without leases;
/// two instances never admit more than the capacity.
#[cfg_attr(no_redis_server, ignore = "redis-server is not installed")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_one_slot_is_leased_and_several_are_not() {
    let cluster = RedisCluster::start();
    let on_cluster = || {
        RedisStore::new(
            RedisStoreConfig::cluster(cluster.urls())
                .prefix("cl")
                .time(TimeSource::Caller)
                .timeout(Duration::from_secs(5))
                .lease(Duration::from_millis(250)),
        )
        .unwrap()
    };
    let (a, b) = (on_cluster(), on_cluster());
    let hot = sliding(60_000, 200);
    // The same counter from both, after a busy lifetime each: 400 tries.
    let t = START_MS + 1000;
    assert_eq!(warm(&a, hot, t, 250, 10).await, 10);
    assert_eq!(warm(&b, hot, t, 250, 10).await, 10);
    let mut admitted = 20;
    for k in 0..400 {
        let s = if k % 2 == 0 { &a } else { &b };
        admitted += u64::from(decide(s, at(t), Batch::from_limits([hot])).await.admitted());
    }
    assert_eq!(admitted, 200, "exactly the capacity across both");
    assert!(a.lease_decisions() + b.lease_decisions() > 0, "leased");

    // A limit in another slot beside it: decided across slots, no lease.
    let served = a.lease_decisions() + a.leases_taken();
    let other = LimitSpec::new(
        CounterKey::from_u128(77),
        WindowSpec::sliding(Duration::from_secs(60), 10),
        1000,
        1,
    )
    .with_tag(2);
    let spread = sliding(60_000, 1000).with_tag(3);
    assert_ne!(a.redis_key(other.key), a.redis_key(spread.key));
    let t2 = t + 10_000;
    warm(&a, spread, t2, 250, 10).await;
    for _ in 0..20 {
        let batch = Batch::from_limits([spread, other]);
        assert!(decide(&a, at(t2), batch).await.admitted());
    }
    assert_eq!(a.lease_decisions() + a.leases_taken(), served);
}

/// A cascade leases the member it charges; the lease of a later member
/// serves the group only while the members before it still refuse (as
/// the granting call found them), so the first member with room keeps
/// taking the charge.
#[cfg_attr(no_redis_server, ignore = "redis-server is not installed")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cascade_is_leased_on_the_member_it_charges() {
    let server = RedisServer::start();
    let a = store(&server.url(), "cascade", 1000, 50);
    let w = |ms| WindowSpec::sliding(Duration::from_millis(ms), 10);
    let short = LimitSpec::new(CounterKey::from_u128(5), w(300), 10, 1)
        .with_tag(1)
        .in_cascade(Some(1));
    let long = LimitSpec::new(CounterKey::from_u128(5), w(60_000), 1000, 1)
        .with_tag(2)
        .in_cascade(Some(1));
    let group = || Batch::from_limits([short, long]);
    let t = START_MS + 2000;
    // Busy in the lifetime before (those leave the short window by t).
    for _ in 0..10 {
        assert!(decide(&a, at(t - 1000), group()).await.admitted());
    }
    // At t: the short member first (10), then the long one.
    let mut from_lease_on_long = 0;
    for _ in 0..40 {
        let served = a.lease_decisions();
        let b = decide(&a, at(t), group()).await;
        assert!(b.admitted());
        let on_long = b.outcome(0).unwrap().refusal().is_some() && b.outcome(1).unwrap().has_room();
        if on_long && a.lease_decisions() > served {
            from_lease_on_long += 1;
        }
    }
    assert!(
        from_lease_on_long > 0,
        "the long member's lease served the group"
    );
    // Once the short member has room again, it takes the charge, though the
    // long member's lease (1 s) still has units.
    let later = decide(&a, at(t + 400), group()).await;
    assert!(later.admitted());
    assert!(later.outcome(0).unwrap().has_room(), "{later:?}");
}
