//! Decisions flowing against a Redis store while a test changes the
//! cluster under it: tasks deciding one-limit batches in turn over a set
//! of keys, each decision recorded (when, which key, decided or not,
//! admitted or not, how long it took).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tierlimit::clock::Timestamp;
use tierlimit::store::{
    Answer, Batch, CounterKey, LimitSpec, RedisStore, RedisStoreConfig, Store, TimeSource,
    WindowSpec,
};

use super::redis_server::{RedisCluster, RedisServer};

/// One decision.
#[derive(Clone, Copy, Debug)]
pub struct Record {
    /// When it ended, since the load started.
    pub at: Duration,
    /// The index of its key.
    pub key: usize,
    pub decided: bool,
    pub admitted: bool,
    pub took: Duration,
}

/// A key to decide: its number and its capacity.
pub type Key = (u128, u64);

pub struct Load {
    pub start: Instant,
    records: Arc<Mutex<Vec<Record>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// `tasks` tasks deciding in turn over `keys` (in a window `w`, all at
    /// one instant of the caller's clock), each pausing `pause` after a
    /// decision and `after_error` after a failed one.
    pub fn start(
        store: &RedisStore,
        keys: Vec<Key>,
        w: WindowSpec,
        tasks: usize,
        pause: Duration,
        after_error: Duration,
    ) -> Load {
        let start = Instant::now();
        let records: Arc<Mutex<Vec<Record>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let keys = Arc::new(keys);
        let tasks = (0..tasks)
            .map(|t| {
                let (store, records, stop, keys) =
                    (store.clone(), records.clone(), stop.clone(), keys.clone());
                tokio::spawn(async move {
                    let mut i = t;
                    while !stop.load(Ordering::Relaxed) {
                        let key = i % keys.len();
                        i += 7;
                        let (k, capacity) = keys[key];
                        let limit =
                            LimitSpec::new(CounterKey::from_u128(k), w, capacity, 1).with_tag(1);
                        let now = Timestamp::from_secs(1_708_200_000);
                        let began = Instant::now();
                        let r = match store.decide(now, Batch::from_limits([limit])) {
                            Answer::Now(r) => r,
                            Answer::Later(f) => f.await,
                        };
                        let record = Record {
                            at: start.elapsed(),
                            key,
                            decided: r.is_ok(),
                            admitted: r.as_ref().is_ok_and(Batch::admitted),
                            took: began.elapsed(),
                        };
                        records.lock().unwrap().push(record);
                        let wait = if record.decided { pause } else { after_error };
                        if !wait.is_zero() {
                            tokio::time::sleep(wait).await;
                        }
                    }
                })
            })
            .collect();
        Load {
            start,
            records,
            stop,
            tasks,
        }
    }

    /// Since the load started.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Stops the tasks; every decision made.
    pub async fn stop(self) -> Vec<Record> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        std::mem::take(&mut *self.records.lock().unwrap())
    }
}

/// The cluster slot of counters `k` of `store`, as the node says.
pub fn slot(node: &RedisServer, store: &RedisStore, k: u128) -> u16 {
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

/// A store on `cluster`, on the caller's clock, connected.
pub async fn cluster_store(cluster: &RedisCluster, timeout: Duration) -> RedisStore {
    let store = RedisStore::new(
        RedisStoreConfig::cluster(cluster.urls())
            .time(TimeSource::Caller)
            .timeout(timeout),
    )
    .unwrap();
    store.connect().await.unwrap();
    store
}
