//! A Redis Cluster changing under load: a manual `CLUSTER FAILOVER` (a
//! replica takes over from a live master), then slots migrating to another
//! master (`redis-cli --cluster reshard`), then that master killed
//! outright (`kill -9`; its replica takes over), while decisions flow.
//! Every key is admitted at most its capacity throughout, and every slot
//! is decided again within a stated time of each change.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::cluster_load::{cluster_store, slot, Key, Load, Record};
use common::redis_server::{RedisCluster, RedisServer};
use tierlimit::store::WindowSpec;

/// Capacity of the key at `index` (an hour's window, one instant: nothing
/// refills): from 40 to 390, so that keys run out at different moments,
/// some of them during each change.
fn capacity(index: usize) -> u64 {
    40 + (index as u64 % 8) * 50
}

/// Slots the reshard moves (the source master's lowest).
const MOVED: u16 = 400;

#[cfg_attr(no_redis_server, ignore = "redis-server is not installed")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_hold_through_a_manual_failover_a_reshard_and_a_kill_under_load() {
    let mut cluster = RedisCluster::start_with(3, 1, 2_000);
    let timeout = Duration::from_millis(500);
    let store = cluster_store(&cluster, timeout).await;
    // Keys in the slots the reshard moves, and keys elsewhere on the same
    // master (which the failover moves as a whole).
    let node = RedisServer::attach(cluster.ports[0]);
    let first_master = cluster.master_of(0);
    let mut keys: Vec<Key> = Vec::new();
    let mut moves: Vec<bool> = Vec::new();
    let (mut moving, mut staying) = (0, 0);
    for k in 1u128.. {
        let s = slot(&node, &store, k);
        if cluster.master_of(s) != first_master {
            continue;
        }
        if s < MOVED && moving < 48 {
            moving += 1;
        } else if s >= MOVED && staying < 48 {
            staying += 1;
        } else {
            continue;
        }
        keys.push((k, capacity(keys.len())));
        moves.push(s < MOVED);
        if moving == 48 && staying == 48 {
            break;
        }
    }
    // Paced, so that the keys last the whole test.
    let w = WindowSpec::sliding(Duration::from_secs(3600), 60);
    let delay = Duration::from_millis(20);
    let load = Load::start(&store, keys.clone(), w, 64, delay, delay);
    let start = load.start;
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

    // 3. The master now serving the moved slots is killed outright; its
    // replica takes over after the node timeout.
    let killed_at = start.elapsed();
    let killed = cluster.kill_master_of(0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cluster.healthy() {
        assert!(
            Instant::now() < deadline,
            "the cluster never recovered from losing {killed}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let healthy_at = start.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let records: Vec<Record> = load.stop().await;
    // Never more than the capacity admitted per key.
    let mut admitted: HashMap<usize, u64> = HashMap::new();
    for r in records.iter().filter(|r| r.admitted) {
        *admitted.entry(r.key).or_default() += 1;
    }
    for (i, n) in &admitted {
        assert!(
            *n <= keys[*i].1,
            "key {i}: {n} admitted, capacity {}",
            keys[*i].1
        );
    }
    // A key refused, whose decisions all got an answer, was admitted
    // exactly its capacity: nothing lost, nothing counted twice.
    let mut exact = 0;
    for (i, (_, capacity)) in keys.iter().enumerate() {
        let mine = || records.iter().filter(|r| r.key == i);
        let refused = mine().any(|r| r.decided && !r.admitted);
        let all_answered = mine().all(|r| r.decided);
        if refused && all_answered {
            assert_eq!(admitted.get(&i).copied(), Some(*capacity), "key {i}");
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
            .filter(|r| r.at >= from && r.at < to && !r.decided)
            .filter(|r| !moving_only || moves[r.key])
            .map(|r| r.at)
            .collect();
        match (failed.first(), failed.last()) {
            (Some(a), Some(b)) => (failed.len(), *b - *a),
            _ => (0, Duration::ZERO),
        }
    };
    let (n1, g1) = gap(failover_at, reshard_at, false);
    let (n2, g2) = gap(reshard_at, resharded_at + Duration::from_secs(2), true);
    let back = records
        .iter()
        .filter(|r| r.at >= killed_at && !r.decided && moves[r.key])
        .map(|r| r.at)
        .max()
        .unwrap_or(killed_at);
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
    println!(
        "kill: the moved slots decided again {:?} after the kill, {:?} after the cluster was \
         healthy",
        back.saturating_sub(killed_at),
        back.saturating_sub(healthy_at)
    );
    assert!(
        back <= healthy_at + Duration::from_secs(2),
        "the moved slots were not decided again within 2 s of the cluster being healthy"
    );
    assert!(g1 < Duration::from_secs(3), "failover gap {g1:?}");
    assert!(g2 < Duration::from_secs(3), "reshard gap {g2:?}");
    let last = start.elapsed().saturating_sub(Duration::from_secs(1));
    let late: Vec<&Record> = records.iter().filter(|r| r.at >= last).collect();
    assert!(
        !late.is_empty() && late.iter().all(|r| r.decided),
        "not every key decided at the end"
    );
}
