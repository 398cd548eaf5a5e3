//! A Redis Cluster changing under load: a manual `CLUSTER FAILOVER` (a
//! replica takes over from a live master), then slots migrating to another
//! master (`redis-cli --cluster reshard`) while decisions flow. Every key
//! is admitted at most its capacity throughout, and every slot is decided
//! again within a stated time of each change.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::redis_server::{RedisCluster, RedisServer};
use tierlimit::clock::Timestamp;
use tierlimit::store::{
    Answer, Batch, CounterKey, LimitSpec, RedisStore, RedisStoreConfig, Store, TimeSource,
    WindowSpec,
};

/// Capacity of the key at `index` (an hour's window, one instant: nothing
/// refills): from 40 to 215, so that keys run out at different moments,
/// some of them during each change.
fn capacity(index: usize) -> u64 {
    40 + (index as u64 % 8) * 25
}
/// Slots the reshard moves (the source master's lowest).
const MOVED: u16 = 400;

/// One decision: when it ended, its key, decided or not, admitted or not.
type Record = (Duration, u128, bool, bool);

fn slot(node: &RedisServer, store: &RedisStore, k: u128) -> u16 {
    node.command(&[
        "CLUSTER",
        "KEYSLOT",
        &store.redis_key(CounterKey::from_u128(k)),
    ])
    .trim_start_matches(':')
    .trim()
    .parse()
    .unwrap()
}

#[cfg_attr(no_redis_server, ignore = "redis-server is not installed")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_hold_through_a_manual_failover_and_a_reshard_under_load() {
    let cluster = RedisCluster::start_with(3, 1, 2_000);
    let timeout = Duration::from_millis(500);
    let store = RedisStore::new(
        RedisStoreConfig::cluster(cluster.urls())
            .time(TimeSource::Caller)
            .timeout(timeout),
    )
    .unwrap();
    store.connect().await.unwrap();
    // Keys in the slots the reshard moves, and keys elsewhere on the same
    // master (which the failover moves as a whole).
    let node = RedisServer::attach(cluster.ports[0]);
    let first_master = cluster.master_of(0);
    let mut keys: Vec<(u128, bool)> = Vec::new();
    let (mut moving, mut staying) = (0, 0);
    for k in 1u128.. {
        let s = slot(&node, &store, k);
        if cluster.master_of(s) != first_master {
            continue;
        }
        if s < MOVED && moving < 48 {
            moving += 1;
            keys.push((k, true));
        } else if s >= MOVED && staying < 48 {
            staying += 1;
            keys.push((k, false));
        }
        if moving == 48 && staying == 48 {
            break;
        }
    }
    let w = WindowSpec::sliding(Duration::from_secs(3600), 60);
    let start = Instant::now();
    let records: Arc<Mutex<Vec<Record>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for t in 0..64 {
        let (store, records, stop, keys) =
            (store.clone(), records.clone(), stop.clone(), keys.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = t;
            while !stop.load(Ordering::Relaxed) {
                let index = i % keys.len();
                let (k, _) = keys[index];
                i += 7;
                let limit =
                    LimitSpec::new(CounterKey::from_u128(k), w, capacity(index), 1).with_tag(1);
                let now = Timestamp::from_secs(1_708_200_000);
                let r = match store.decide(now, Batch::from_limits([limit])) {
                    Answer::Now(r) => r,
                    Answer::Later(f) => f.await,
                };
                let (ok, admitted) = match &r {
                    Ok(b) => (true, b.admitted()),
                    Err(_) => (false, false),
                };
                records
                    .lock()
                    .unwrap()
                    .push((start.elapsed(), k, ok, admitted));
                // Paced, so that the keys last the whole test.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    // 1. A replica takes over from its live master.
    let replica = cluster.replica_of(first_master);
    let failover_at = start.elapsed();
    let reply = RedisServer::attach(replica).command(&["CLUSTER", "FAILOVER"]);
    assert!(reply.contains("OK"), "{reply}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while cluster.master_of(0) != replica {
        assert!(Instant::now() < deadline, "the failover never happened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let switched_at = start.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 2. The lowest slots move to another master, keys and all.
    let other = cluster.master_of(16_383);
    let reshard_at = start.elapsed();
    tokio::task::block_in_place(|| cluster.reshard(replica, other, MOVED));
    let resharded_at = start.elapsed();
    assert_eq!(cluster.master_of(0), other);
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }

    let records = records.lock().unwrap();
    // Never more than the capacity admitted per key.
    let mut admitted: HashMap<u128, u64> = HashMap::new();
    for r in records.iter().filter(|r| r.3) {
        *admitted.entry(r.1).or_default() += 1;
    }
    let cap = |k: u128| capacity(keys.iter().position(|(x, _)| *x == k).unwrap());
    for (k, n) in &admitted {
        assert!(*n <= cap(*k), "key {k}: {n} admitted, capacity {}", cap(*k));
    }
    // A key refused, whose decisions all got an answer, was admitted
    // exactly its capacity: nothing lost, nothing counted twice.
    let mut exact = 0;
    for (k, _) in &keys {
        let mine = || records.iter().filter(|r| r.1 == *k);
        let refused = mine().any(|r| r.2 && !r.3);
        let all_answered = mine().all(|r| r.2);
        if refused && all_answered {
            assert_eq!(admitted.get(k).copied(), Some(cap(*k)), "key {k}");
            exact += 1;
        }
    }
    let total: u64 = admitted.values().sum();
    assert!(total > 0);
    // Each change: how long keys of the moved slots failed, and every key
    // decided in the last second.
    let gap = |from: Duration, to: Duration, moving_only: bool| {
        let failed: Vec<Duration> = records
            .iter()
            .filter(|r| r.0 >= from && r.0 < to && !r.2)
            .filter(|r| !moving_only || keys.iter().any(|(k, m)| *k == r.1 && *m))
            .map(|r| r.0)
            .collect();
        match (failed.first(), failed.last()) {
            (Some(a), Some(b)) => (failed.len(), *b - *a),
            _ => (0, Duration::ZERO),
        }
    };
    let (n1, g1) = gap(failover_at, reshard_at, false);
    let (n2, g2) = gap(reshard_at, resharded_at + Duration::from_secs(2), true);
    println!(
        "failover: switched {:?} after the command; {n1} decisions failed, over {g1:?}",
        switched_at - failover_at
    );
    println!(
        "reshard of {MOVED} slots took {:?}; {n2} decisions of moving keys failed, over {g2:?}",
        resharded_at - reshard_at
    );
    println!(
        "{} decisions, {total} admitted; {exact} keys ran out with every decision answered, \
         each admitted exactly its capacity",
        records.len()
    );
    assert!(g1 < Duration::from_secs(3), "failover gap {g1:?}");
    assert!(g2 < Duration::from_secs(3), "reshard gap {g2:?}");
    let last = start.elapsed().saturating_sub(Duration::from_secs(1));
    let late: Vec<&Record> = records.iter().filter(|r| r.0 >= last).collect();
    assert!(
        !late.is_empty() && late.iter().all(|r| r.2),
        "not every key decided at the end"
    );
}
