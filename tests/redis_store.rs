//! The Redis store against the memory store (which is checked against the
//! model in `src/store/model_tests.rs`): random requests of several limits,
//! cascades and post-charged costs get the same answers, figures and
//! refusals from both, on a real `redis-server`.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::redis_server::RedisServer;
use proptest::prelude::*;
use tierlimit::clock::Timestamp;
use tierlimit::store::{
    Answer, Batch, Charge, CounterKey, LimitSpec, MemoryStore, PostCharge, RedisStore,
    RedisStoreConfig, Store, TimeSource, Verdict, View, WindowSpec,
};

const MS: u64 = 1_000_000;

fn shape(tag: u16) -> (WindowSpec, u64) {
    match tag % 4 {
        0 => (WindowSpec::sliding(Duration::from_millis(1000), 10), 5),
        1 => (WindowSpec::sliding(Duration::from_millis(5000), 5), 12),
        2 => (WindowSpec::fixed(Duration::from_millis(2000), 0), 7),
        // On New York's wall clock, which goes back an hour at START + 20 s:
        // the window open then lasts until the clock catches up.
        _ => (
            WindowSpec::zoned(Duration::from_millis(2000), "America/New_York").unwrap(),
            6,
        ),
    }
}

/// 20 s before New York leaves daylight saving time (1 November 2026,
/// 06:00 UTC), in Unix ms.
const START_MS: u64 = 1_793_512_800_000 - 20_000;

/// A request: groups of (key, cost, post); a group of several limits is a
/// cascade.
#[derive(Clone, Debug)]
struct Req {
    gap_ms: u64,
    groups: Vec<Vec<(u128, u64, bool)>>,
}

fn reqs() -> impl Strategy<Value = Vec<Req>> {
    let limit = (1u128..3, 1u64..5, any::<bool>());
    let group = prop::collection::vec(limit, 1..4);
    let req = (0u64..700, prop::collection::vec(group, 1..3))
        .prop_map(|(gap_ms, groups)| Req { gap_ms, groups });
    prop::collection::vec(req, 1..60)
}

/// A server for one test (killed when the test ends).
fn server() -> RedisServer {
    RedisServer::start()
}

async fn decide<S: Store>(store: &S, now: Timestamp, batch: Batch) -> Batch {
    match store.decide(now, batch) {
        Answer::Now(r) => r.unwrap(),
        Answer::Later(f) => f.await.unwrap(),
    }
}

/// The limits of `req`: one tag per limit, shapes by tag.
fn limits_of(req: &Req) -> Vec<LimitSpec> {
    let mut limits = Vec::new();
    let mut tag = 1u16;
    for (g, group) in req.groups.iter().enumerate() {
        let cascade = (group.len() > 1).then_some(g as u16 + 1);
        for &(key, cost, post) in group {
            tag += 1;
            let (w, cap) = shape(tag);
            let charge = if post {
                Charge::After
            } else {
                Charge::Now(cost)
            };
            limits.push(
                LimitSpec::new(CounterKey::from_u128(key), w, cap, 1)
                    .with_tag(tag)
                    .with_charge(charge)
                    .in_cascade(cascade),
            );
        }
    }
    limits
}

/// Post-charges of an admitted batch's post-charged limits (cost by tag).
fn post_charges(batch: &Batch) -> Vec<PostCharge> {
    (0..batch.len())
        .filter_map(|i| {
            let l = *batch.limit(i);
            match batch.outcome(i)?.verdict {
                Verdict::Room(r) if l.charge == Charge::After => {
                    Some(PostCharge::new(l, r, 1 + u64::from(l.tag) % 4))
                }
                _ => None,
            }
        })
        .collect()
}

/// The memory store's answer `a` and Redis's `b` to `req` agree: same
/// admission, figures and verdicts (`cached`: Redis answered from its cache
/// of refusals, whose retry instant can only be earlier).
fn agree(a: &Batch, b: &Batch, req: &Req, cached: bool) -> Result<(), TestCaseError> {
    prop_assert_eq!(a.admitted(), b.admitted(), "{:?}", req);
    if cached {
        // Answered from the cache of refusals: the same refusal, with
        // the figures of when it was cached. Cost added since can only
        // have pushed the real retry instant later, never earlier.
        prop_assert!(!a.admitted());
        prop_assert!(
            a.retry_at() >= b.retry_at(),
            "{:?} < {:?}",
            a.retry_at(),
            b.retry_at()
        );
        return Ok(());
    }
    for i in 0..a.len() {
        let (x, y) = (a.outcome(i).unwrap(), b.outcome(i).unwrap());
        // `frees_at` is a hint (for the IETF `t`) that a store gives when
        // it knows it cheaply: equal when both give it.
        let plain = |v: View| View::new(v.capacity, v.used, v.reset_at);
        prop_assert_eq!(plain(x.view), plain(y.view), "limit {} of {:?}", i, req);
        if let (Some(f), Some(g)) = (x.view.frees_at, y.view.frees_at) {
            prop_assert_eq!(f, g, "frees_at of limit {} of {:?}", i, req);
        }
        let kind = |v: &Verdict| match v {
            Verdict::Room(_) => "room".to_string(),
            other => format!("{other:?}"),
        };
        prop_assert_eq!(
            kind(&x.verdict),
            kind(&y.verdict),
            "limit {} of {:?}",
            i,
            req
        );
    }
    Ok(())
}

fn run(reqs: &[Req], url: &str, prefix: &str) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let memory = MemoryStore::default();
        let config = RedisStoreConfig::new(url)
            .prefix(prefix)
            .time(TimeSource::Caller)
            // The script's own counting, figure for figure: without leases
            // (tests/redis_leases.rs checks those).
            .lease(Duration::ZERO)
            .timeout(Duration::from_secs(2));
        let redis = RedisStore::new(config).unwrap();
        let mut now = Timestamp::from_nanos(START_MS * MS);
        for req in reqs {
            now = now + Duration::from_millis(req.gap_ms);
            let limits = limits_of(req);
            let a = decide(&memory, now, Batch::from_limits(limits.clone())).await;
            let served = redis.refusals_served();
            let b = decide(&redis, now, Batch::from_limits(limits.clone())).await;
            prop_assert_eq!(b.decided_at(), Some(now));
            agree(&a, &b, req, redis.refusals_served() > served)?;
            if a.admitted() {
                // Post-charge both the same way.
                let _ = memory.charge_after(now, post_charges(&a));
                let _ = redis.charge_after(now, post_charges(&b));
            }
        }
        prop_assert_eq!(redis.charges_dropped(), 0);
        Ok(())
    })
}

#[cfg_attr(no_redis_server, ignore = "redis-server is not installed")]
#[test]
fn redis_decides_as_the_memory_store() {
    cases(48, &reqs(), "prop", |reqs, url, prefix| {
        run(&reqs, url, prefix)
    });
}

/// Runs `default_cases` cases of `strategy` (`PROPTEST_CASES` runs more or
/// fewer) on one server for every case, killed when the test ends (a static
/// would outlive the test process's end without being dropped); each case
/// gets its own key prefix.
fn cases<S: Strategy>(
    default_cases: u32,
    strategy: &S,
    prefix: &str,
    case: impl Fn(S::Value, &str, &str) -> Result<(), TestCaseError>,
) {
    let server = server();
    let config = ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default_cases),
        source_file: Some(file!()),
        ..ProptestConfig::default()
    };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let n = AtomicUsize::new(0);
    let result = runner.run(strategy, |value| {
        let prefix = format!("{prefix}{}", n.fetch_add(1, Ordering::Relaxed));
        case(value, &server.url(), &prefix)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Requests sent together: decided in as few script calls as the store
/// makes of them, in the order they were sent, at one instant.
fn together() -> impl Strategy<Value = Vec<(u64, Vec<Req>)>> {
    let limit = (1u128..3, 1u64..5, any::<bool>());
    let group = prop::collection::vec(limit, 1..4);
    let req = prop::collection::vec(group, 1..3).prop_map(|groups| Req { gap_ms: 0, groups });
    let round = (0u64..900, prop::collection::vec(req, 1..12));
    prop::collection::vec(round, 1..12)
}

/// Decisions of `batches` at `now`, sent in order before any is awaited
/// (each joins the store's queue when first polled).
async fn decide_together(
    store: &RedisStore,
    now: Timestamp,
    batches: Vec<Batch>,
) -> Vec<(Batch, bool)> {
    type Pending = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Batch, tierlimit::store::StoreError>> + Send>,
    >;
    let mut answers: Vec<Result<(Batch, bool), Pending>> = batches
        .into_iter()
        .map(|b| match store.decide(now, b) {
            Answer::Now(r) => Ok((r.unwrap(), true)),
            Answer::Later(f) => Err(f),
        })
        .collect();
    for a in &mut answers {
        if let Err(f) = a {
            let cx = &mut std::task::Context::from_waker(std::task::Waker::noop());
            assert!(
                f.as_mut().poll(cx).is_pending(),
                "nothing is sent before the first await"
            );
        }
    }
    let mut out = Vec::new();
    for a in answers {
        out.push(match a {
            Ok(done) => done,
            Err(f) => (f.await.unwrap(), false),
        });
    }
    out
}

fn run_together(rounds: &[(u64, Vec<Req>)], url: &str, prefix: &str) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let memory = MemoryStore::default();
        let config = RedisStoreConfig::new(url)
            .prefix(prefix)
            .time(TimeSource::Caller)
            // The script's own counting, figure for figure: without leases
            // (tests/redis_leases.rs checks those).
            .lease(Duration::ZERO)
            .timeout(Duration::from_secs(2));
        let redis = RedisStore::new(config).unwrap();
        let mut now = Timestamp::from_nanos(START_MS * MS);
        let (mut sent, calls_before) = (0u64, redis.script_calls());
        for (gap_ms, reqs) in rounds {
            now = now + Duration::from_millis(*gap_ms);
            let batches = reqs
                .iter()
                .map(|r| Batch::from_limits(limits_of(r)))
                .collect();
            let got = decide_together(&redis, now, batches).await;
            // Costs known after the responses come after every decision
            // of the round, in both stores.
            let mut after = Vec::new();
            for (req, (b, cached)) in reqs.iter().zip(&got) {
                let a = decide(&memory, now, Batch::from_limits(limits_of(req))).await;
                agree(&a, b, req, *cached)?;
                sent += u64::from(!*cached);
                if a.admitted() {
                    after.push((post_charges(&a), post_charges(b)));
                }
            }
            for (a, b) in after {
                let _ = memory.charge_after(now, a);
                let _ = redis.charge_after(now, b);
            }
        }
        // Requests sent together shared calls (post-charges may add some).
        let calls = redis.script_calls() - calls_before;
        let rounds = rounds.len() as u64;
        prop_assert!(
            calls <= 2 * rounds + rounds,
            "{} calls for {} decisions in {} rounds",
            calls,
            sent,
            rounds
        );
        prop_assert_eq!(redis.charges_dropped(), 0);
        Ok(())
    })
}

#[cfg_attr(no_redis_server, ignore = "redis-server is not installed")]
#[test]
fn requests_sent_together_are_decided_in_order_as_one_by_one() {
    // One script call decides a whole group, each request seeing the
    // charges of those before it: the memory store deciding them one after
    // the other gives the same answers.
    cases(32, &together(), "together", |rounds, url, prefix| {
        run_together(&rounds, url, prefix)
    });
}

#[cfg_attr(no_redis_server, ignore = "redis-server is not installed")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_decisions_share_calls_and_admit_exactly_the_capacity() {
    let server = server();
    let store = RedisStore::new(
        RedisStoreConfig::new(server.url())
            .prefix("crowd")
            .time(TimeSource::Caller)
            // The script's own counting, figure for figure: without leases
            // (tests/redis_leases.rs checks those).
            .lease(Duration::ZERO)
            .timeout(Duration::from_secs(5)),
    )
    .unwrap();
    store.connect().await.unwrap();
    let w = WindowSpec::sliding(Duration::from_secs(60), 30);
    let tight = LimitSpec::new(CounterKey::from_u128(1), w, 50, 1);
    let wide = LimitSpec::new(CounterKey::from_u128(2), w, 1000, 1).with_tag(2);
    let now = Timestamp::from_secs(1_708_200_000);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..400 {
        let store = store.clone();
        tasks.spawn(async move { decide(&store, now, Batch::from_limits([tight, wide])).await });
    }
    let mut used_when_admitted = Vec::new();
    let mut refused = 0;
    while let Some(b) = tasks.join_next().await {
        let b = b.unwrap();
        if b.admitted() {
            used_when_admitted.push(b.outcome(0).unwrap().view.used);
        } else {
            refused += 1;
            assert_eq!(b.outcome(0).unwrap().view.used, 50);
        }
    }
    // Exactly the capacity, each admitted request counted after those
    // before it (1, 2, ... 50: no two saw the same count).
    used_when_admitted.sort_unstable();
    assert_eq!(used_when_admitted, (1..=50).collect::<Vec<u64>>());
    assert_eq!(refused, 350);
    let probe = decide(&store, now, Batch::from_limits([wide])).await;
    assert_eq!(
        probe.outcome(0).unwrap().view.used,
        51,
        "the wide limit was charged by the 50 admitted only"
    );
    // 400 decisions (refusals after the first are mostly answered from the
    // cache) in far fewer calls than decisions.
    let sent = 400 - store.refusals_served();
    assert!(
        store.script_calls() < sent,
        "{} calls for {} decisions sent",
        store.script_calls(),
        sent
    );
}

#[cfg_attr(no_redis_server, ignore = "redis-server is not installed")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_queued_as_a_sender_leaves_are_still_sent() {
    // Bursts of one to three decisions, one after the other, so that
    // senders keep finding the queue empty and leaving while decisions
    // arrive: every decision is answered (none waits for its timeout).
    // The place is given back under the queue's lock, which closes the
    // window by construction; this cannot show that window (it is a few
    // instructions wide), only that bursts keep being served.
    let server = server();
    let store = RedisStore::new(
        RedisStoreConfig::new(server.url())
            .prefix("bursts")
            .time(TimeSource::Caller)
            // The script's own counting, figure for figure: without leases
            // (tests/redis_leases.rs checks those).
            .lease(Duration::ZERO)
            .timeout(Duration::from_secs(2)),
    )
    .unwrap();
    store.connect().await.unwrap();
    let w = WindowSpec::sliding(Duration::from_secs(60), 30);
    let now = Timestamp::from_secs(1_708_200_000);
    for round in 0..400u64 {
        let mut tasks = tokio::task::JoinSet::new();
        for k in 0..1 + round % 3 {
            let store = store.clone();
            let limit = LimitSpec::new(CounterKey::from_u128(u128::from(round * 3 + k)), w, 5, 1);
            tasks.spawn(async move {
                match store.decide(now, Batch::from_limits([limit])) {
                    Answer::Now(r) => r,
                    Answer::Later(f) => f.await,
                }
            });
        }
        while let Some(r) = tasks.join_next().await {
            let b = r
                .unwrap()
                .expect("every decision is answered, none times out");
            assert!(b.admitted());
        }
    }
}

#[cfg_attr(no_redis_server, ignore = "redis-server is not installed")]
#[tokio::test]
async fn cost_stops_counting_exactly_one_window_after_its_stamp() {
    // The script's shortcut for "nothing leaves" must agree with the
    // general steps at the very millisecond a bucket leaves: one window
    // after its latest stamp, not a millisecond later.
    let server = server();
    let store = RedisStore::new(
        RedisStoreConfig::new(server.url())
            .prefix("edge")
            .time(TimeSource::Caller)
            // The script's own counting, figure for figure: without leases
            // (tests/redis_leases.rs checks those).
            .lease(Duration::ZERO),
    )
    .unwrap();
    let w = WindowSpec::sliding(Duration::from_millis(1000), 10);
    let t0 = Timestamp::from_nanos(START_MS * MS);
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let one = LimitSpec::new(CounterKey::from_u128(1), w, 2, 1);
    let used = |b: &Batch| b.outcome(0).unwrap().view.used;
    // Two buckets hold cost: stamps t0 and t0 + 150 ms.
    assert!(decide(&store, at(0), Batch::from_limits([one]))
        .await
        .admitted());
    assert!(decide(&store, at(150), Batch::from_limits([one]))
        .await
        .admitted());
    let full = decide(&store, at(999), Batch::from_limits([one])).await;
    assert!(!full.admitted());
    assert_eq!(used(&full), 2);
    // At t0 + 1 s the first has left: room for one.
    let b = decide(&store, at(1000), Batch::from_limits([one])).await;
    assert!(b.admitted(), "{:?}", b.outcome(0));
    assert_eq!(used(&b), 2);
    // One bucket left (t0 + 1 s stamp among them): at t0 + 1.15 s the
    // second leaves too.
    let c = decide(&store, at(1150), Batch::from_limits([one])).await;
    assert!(c.admitted());
    assert_eq!(used(&c), 2, "t0 + 1 s and t0 + 1.15 s");
    let probe = LimitSpec::new(CounterKey::from_u128(1), w, 2, 0);
    let p = decide(&store, at(2000), Batch::from_limits([probe])).await;
    assert_eq!(used(&p), 1, "only t0 + 1.15 s still counts");
    let p = decide(&store, at(2150), Batch::from_limits([probe])).await;
    assert_eq!(used(&p), 0);
}

#[cfg_attr(no_redis_server, ignore = "redis-server is not installed")]
#[tokio::test]
async fn counters_expire_by_themselves_after_their_longest_window() {
    let server = server();
    let server = &server;
    let store = RedisStore::new(RedisStoreConfig::new(server.url()).prefix("ttl")).unwrap();
    let minute = WindowSpec::sliding(Duration::from_secs(60), 30);
    let day = WindowSpec::fixed(Duration::from_secs(86_400), 0);
    let key = CounterKey::from_u128(42);
    // A cascade of a minute and a day on one key: the day bucket is charged
    // once the minute is full, and must not expire with the minute.
    let batch = || {
        Batch::from_limits([
            LimitSpec::new(key, minute, 1, 1)
                .with_tag(1)
                .in_cascade(Some(1)),
            LimitSpec::new(key, day, 5, 1)
                .with_tag(2)
                .in_cascade(Some(1)),
        ])
    };
    let now = tierlimit::clock::SystemClock;
    use tierlimit::clock::Clock;
    assert!(decide(&store, now.now(), batch()).await.admitted());
    let pttl = |s: &RedisServer| -> i64 {
        let r = s.command(&["PTTL", &store.redis_key(key)]);
        r.trim().trim_start_matches(':').parse().unwrap()
    };
    let first = pttl(server);
    assert!(
        (60_000..=63_000).contains(&first),
        "minute counter: {first} ms"
    );
    assert!(decide(&store, now.now(), batch()).await.admitted());
    let second = pttl(server);
    assert!(
        second > 3_600_000,
        "the day counter keeps the key: {second} ms"
    );
    assert!(second <= 86_401_000, "{second} ms");
}

#[cfg_attr(no_redis_server, ignore = "redis-server is not installed")]
#[tokio::test]
async fn a_post_charge_never_shortens_the_life_of_a_longer_window() {
    let server = server();
    let store = RedisStore::new(RedisStoreConfig::new(server.url()).prefix("post-ttl")).unwrap();
    let key = CounterKey::from_u128(7);
    // One scope key: an hour charged now, a minute charged after the response.
    let hour = LimitSpec::new(
        key,
        WindowSpec::sliding(Duration::from_secs(3600), 60),
        100,
        1,
    )
    .with_tag(1);
    let minute = LimitSpec::new(
        key,
        WindowSpec::sliding(Duration::from_secs(60), 60),
        100,
        1,
    )
    .with_tag(2)
    .with_charge(Charge::After);
    use tierlimit::clock::{Clock, SystemClock};
    let batch = decide(
        &store,
        SystemClock.now(),
        Batch::from_limits([hour, minute]),
    )
    .await;
    assert!(batch.admitted());
    let Verdict::Room(receipt) = batch.outcome(1).unwrap().verdict else {
        panic!("the minute limit has room");
    };
    let redis_key = store.redis_key(key);
    let pttl = || -> i64 {
        let r = server.command(&["PTTL", &redis_key]);
        r.trim().trim_start_matches(':').parse().unwrap()
    };
    assert!(pttl() > 3_590_000, "the hour counter: {} ms", pttl());
    let _ = store.charge_after(SystemClock.now(), vec![PostCharge::new(minute, receipt, 3)]);
    // The flusher sends it within milliseconds; the minute's field appears.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while server.command(&["HEXISTS", &redis_key, "2"]).trim() != ":1" {
        assert!(
            std::time::Instant::now() < deadline,
            "the post-charge never arrived"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        pttl() > 3_590_000,
        "a minute's post-charge cut the hour counter's life to {} ms",
        pttl()
    );
    let again = decide(
        &store,
        SystemClock.now(),
        Batch::from_limits([hour, minute]),
    )
    .await;
    assert_eq!(again.outcome(0).unwrap().view.used, 2, "hour");
    assert_eq!(
        again.outcome(1).unwrap().view.used,
        3,
        "minute: the post-charge"
    );
}

#[cfg_attr(no_redis_server, ignore = "redis-server is not installed")]
#[tokio::test]
async fn on_a_cluster_a_refusal_in_one_slot_gives_back_the_others_charges() {
    use common::redis_server::RedisCluster;
    let cluster = RedisCluster::start();
    let store = RedisStore::new(
        RedisStoreConfig::cluster(cluster.urls())
            .time(TimeSource::Caller)
            // The script's own counting, figure for figure: without leases
            // (tests/redis_leases.rs checks those).
            .lease(Duration::ZERO)
            .timeout(Duration::from_secs(2)),
    )
    .unwrap();
    // Two counters in two different slots.
    let node = RedisServer::attach(cluster.ports[0]);
    let slot = |k: u128| {
        node.command(&[
            "CLUSTER",
            "KEYSLOT",
            &store.redis_key(CounterKey::from_u128(k)),
        ])
    };
    let a = 1u128;
    let b = (2u128..).find(|&k| slot(k) != slot(a)).unwrap();
    let w = WindowSpec::sliding(Duration::from_secs(60), 30);
    let roomy = LimitSpec::new(CounterKey::from_u128(a), w, 5, 1).with_tag(1);
    let tight = LimitSpec::new(CounterKey::from_u128(b), w, 1, 1).with_tag(1);
    let now = Timestamp::from_secs(1_708_200_000);
    let both = || Batch::from_limits([roomy, tight]);
    assert!(decide(&store, now, both()).await.admitted());
    // The tight counter refuses: the roomy one's charge in the other slot
    // is given back, and reported as given back.
    let refused = decide(&store, now, both()).await;
    assert!(!refused.admitted());
    assert_eq!(refused.outcome(0).unwrap().view.used, 1);
    let alone = decide(
        &store,
        now + Duration::from_secs(1),
        Batch::from_limits([roomy]),
    )
    .await;
    assert_eq!(
        alone.outcome(0).unwrap().view.used,
        2,
        "1 before + this one"
    );
}

#[cfg_attr(no_redis_server, ignore = "redis-server is not installed")]
#[tokio::test]
async fn a_flushed_script_cache_is_loaded_again() {
    let server = server();
    let store = RedisStore::new(
        RedisStoreConfig::new(server.url())
            .prefix("noscript")
            .time(TimeSource::Caller)
            // The script's own counting, figure for figure: without leases
            // (tests/redis_leases.rs checks those).
            .lease(Duration::ZERO),
    )
    .unwrap();
    let w = WindowSpec::sliding(Duration::from_secs(60), 30);
    let limit = LimitSpec::new(CounterKey::from_u128(7), w, 2, 1);
    let now = Timestamp::from_secs(1_708_200_000);
    assert!(decide(&store, now, Batch::from_limits([limit]))
        .await
        .admitted());
    // Redis restarted or failed over: its script cache is empty (NOSCRIPT).
    assert!(server.command(&["SCRIPT", "FLUSH"]).contains("OK"));
    let second = decide(&store, now, Batch::from_limits([limit])).await;
    assert!(second.admitted());
    assert_eq!(
        second.outcome(0).unwrap().view.used,
        2,
        "decided once, not twice"
    );
}
