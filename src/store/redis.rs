//! Counters in Redis (feature `redis`), so that every instance of a service
//! shares one budget.
//!
//! # One round trip, all or nothing
//!
//! A decision is one `EVALSHA` of one Lua script (loaded again by itself
//! after a `NOSCRIPT`; concurrent decisions share one, see below): it
//! applies the post-charges waiting in this instance, then checks every
//! limit of the request and charges them all, or none, atomically. The
//! counting rules are the memory store's (the
//! [`WindowSpec`](super::WindowSpec) helpers): sliding windows in
//! sub-buckets with the hard guarantee, fixed windows on clock boundaries,
//! cascades, post-charged costs, all with the same figures. A counter is a
//! hash per (tier, scope key) with one field per limit, whose value packs
//! the limit's total and its buckets (index, cost) in time order: a
//! decision reads the total and the oldest and newest buckets, not every
//! bucket, so a caller whose minute holds 60 buckets costs the server about
//! what a new caller does (`cargo bench --bench redis_store`). Buckets that
//! left their window are dropped when the limit is next charged, and every
//! hash expires by itself (`PEXPIRE`, moved later, never earlier, whenever
//! a charge opens a new bucket) a second after its newest counter leaves
//! its window.
//!
//! The script counts on the millisecond clock of the memory store (see
//! [`WindowSpec`](super::WindowSpec)): the same buckets, the same stamps,
//! the same answers.
//!
//! # Whose clock
//!
//! By default ([`TimeSource::Server`]) the script reads the Redis server's
//! clock (`TIME`), so instances whose own clocks disagree by minutes still
//! agree on every window, and `Retry-After` is measured on that clock.
//! [`TimeSource::Caller`] uses the instant the layer passes instead (its
//! [`Clock`](crate::clock::Clock)): for tests with a manual clock.
//!
//! Fixed windows in a time zone (`time_zone`, feature `tz`) are the
//! exception: Lua has no time zone rules, so the deciding instance says
//! which window its own clock puts the request in and when that window
//! ends. With synchronised clocks that is the same window everywhere; an
//! instance whose clock is off by `d` moves a zoned window's boundary by
//! `d` for its own requests.
//!
//! # One round trip for many decisions
//!
//! On a single server, decisions that arrive while a script call is on the
//! wire wait for the next one and go together: one `EVALSHA` decides up
//! to 64 requests (512 limits), one after the other, each all or nothing
//! and each seeing the charges of those before it, exactly as separate
//! calls would, and its answer is handed to each. At most two such calls are
//! in flight at once, so a lone request goes at once and under load the
//! groups grow by themselves: the round trips, the commands Redis parses
//! and the script runs are shared, which is most of what a decision costs
//! on either side. A group is decided at the latest instant among its
//! requests (a request that waited is decided when it is sent, not
//! earlier). The timeout counts from the moment a decision joins the
//! queue; a decision given up before its call is sent is dropped unsent
//! (not charged). [`RedisStore::script_calls`] counts the calls. A
//! cluster decides each request in its own call (its keys' slots differ).
//!
//! # Post-charges
//!
//! Costs measured after responses (latency, tokens, error responses) are
//! queued in this instance (at most [`RedisStoreConfig::max_pending_charges`];
//! past that they are dropped and counted in
//! [`RedisStore::charges_dropped`]) and never sent on the request path of
//! their own request: the next decision of this instance carries them in the
//! same script call, applied before it decides, and a background task sends
//! what is left every 10 ms when no decision comes. A decision that fails
//! puts the charges it carried back in the queue, except when it timed out
//! (they may have been applied: they are counted in
//! [`RedisStore::charges_uncertain`] rather than sent twice).
//!
//! # Refusals answered locally
//!
//! A refused request remembers, in this instance, the instant its blocking
//! limits have room again (its `Retry-After`); the same request (same
//! counters, capacities and costs) is refused again from that memory,
//! without a round trip, until then. This is exact: other instances can
//! only add cost, so nothing can have room before that instant (with the
//! server's clock, the local end is at most one round trip late). Such an
//! answer carries the figures of the refusal it repeats (its remaining
//! figures may be a little stale; its `Retry-After` counts down to the same
//! instant, which cost added since can only have pushed later). A reload
//! or a plan change forgets every cached refusal
//! ([`Store::forget_cached`]); [`RedisStore::refusals_served`] and the
//! metric `tierlimit_refusals_cached_total` count the answers given so.
//!
//! # Plan assignments
//!
//! A layer built on this store shares its runtime plan assignments
//! ([`Controller::set_plan`](crate::Controller::set_plan)) through the hash
//! `PREFIX:plans`: a change made on one instance is written there at once
//! and read by every instance four times a second, so it is in force
//! everywhere within a second, and a new or restarted instance starts with
//! them. Every write also sets a marker field that no removal deletes: when
//! an instance finds the hash gone after having seen it (`FLUSHALL`, a
//! restart without persistence, eviction), it writes back the assignments
//! it knows and logs that at WARN, instead of forgetting them. Once
//! connected, the store also checks `maxmemory-policy` and persistence
//! ([`RedisStore::check_server`]).
//!
//! # Redis Cluster
//!
//! With [`RedisStoreConfig::cluster`] the store talks to a Redis Cluster.
//! Every key carries its scope key as a hash tag (`PREFIX:{…}`), so the
//! counters of one scope key share a slot. A request whose limits live in
//! several slots (a per-user limit and a tenant aggregate, say) is decided
//! by one script per slot, all sent at once; when one slot refuses, what the
//! other slots charged is given back (`HINCRBY` of the opposite), so nothing
//! is ever admitted beyond a limit: a give-back can only make a concurrent
//! request wait, never admit too much. The members of a cascade are decided
//! in one script, so they must share a slot (give them one scope); a
//! cascade across slots is refused as a protocol error. Every node uses its
//! own clock (`TIME`): keep the nodes' clocks synchronised.
//!
//! # Failures
//!
//! The store connects on its first decision, within the timeout (or at once
//! with [`RedisStore::connect`]); decisions arriving meanwhile wait for that
//! same attempt. An unreachable Redis at start is no error: decisions fail,
//! and the next one tries again. Once made, a single server's connection
//! reconnects by itself (10 to 100 ms apart); a cluster's, see below. Every
//! decision has a timeout ([`RedisStoreConfig::timeout`], 50 ms by
//! default). After three failures in a row the store stops waiting on Redis
//! for 200 ms and fails at once, so an outage does not add the timeout to
//! every request; the first success closes the circuit again, so
//! enforcement returns within a second of Redis coming back
//! (`tests/redis_gateway.rs` measures about 200 ms). What a failed
//! decision means for the request is the layer's
//! [`OnStoreError`](crate::OnStoreError).
//!
//! On a cluster, failures are counted per group of 128 slots (a node
//! serves contiguous slots, so a group is one node's) rather than for the
//! whole store: a dead master opens the circuit of its own slots only, and
//! the other nodes' keys are decided as before. The cluster client tries
//! each connection and answer within the timeout and retries twice, 10 to
//! 100 ms apart (redis-rs's defaults retry 16 times, up to minutes
//! apart). When a group's calls have failed for a second in a row, the
//! store connects to the cluster anew (at most once a second) and drops
//! the old connection with what it still held: redis-rs's cluster
//! connection, after a master crashed with hundreds of requests in flight,
//! kept failing that master's slots after its replica had taken over, and
//! never recovered; a new connection reads the topology afresh. In
//! `tests/redis_failover.rs` (6 nodes, 256 decisions in flight, `kill -9`
//! of a master) every slot is decided again within 4 s of the cluster
//! being healthy, and no decision waits past the timeout.
//! [`RedisStore::reconnects`] counts the new connections.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

pub use super::redis_config::{RedisStoreConfig, TimeSource};
use super::{
    Answer, Batch, Charge, CounterKey, KeySecret, LimitSpec, Outcome, PostCharge, Receipt, Refusal,
    SharedPlans, Store, StoreError, StoreErrorKind, Verdict, View,
};
use crate::clock::Timestamp;

const SCRIPT: &str = include_str!("redis.lua");
const FAILURES_TO_OPEN: u32 = 3;
const OPEN_FOR: Duration = Duration::from_millis(200);
const FLUSH_EVERY: Duration = Duration::from_millis(10);
const PLANS_EVERY: Duration = Duration::from_millis(250);
/// A field every write of the plans hash sets, and no removal deletes: a
/// hash seen with it and then found without it was emptied by Redis
/// (`FLUSHALL`, a restart without persistence, eviction), not by an
/// instance clearing its last assignment.
const PLANS_MARK: &str = "!tierlimit";

/// A connection to a single server or to a cluster.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Where to connect.
enum Target {
    Single(redis::Client),
    Cluster(Box<redis::cluster::ClusterClient>),
}

/// Counters in Redis; see the [module docs](self). Clones share one
/// connection.
///
/// ```no_run
/// use tierlimit::store::redis::{RedisStore, RedisStoreConfig};
/// use tierlimit::{Policy, RateLimitLayer};
///
/// # fn policy() -> Policy { tierlimit::Config::new().build().unwrap() }
/// let store = RedisStore::new(RedisStoreConfig::new("redis://127.0.0.1:6379")).unwrap();
/// let layer = RateLimitLayer::builder(policy()).store(store).build();
/// # let _ = layer;
/// ```
#[derive(Clone, Debug)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// This store, for the tasks it starts.
    me: Weak<Inner>,
    target: Target,
    /// Set by the first decision that needs a connection; concurrent
    /// decisions wait for that one attempt; a failed attempt is tried
    /// again by the next.
    conn: tokio::sync::OnceCell<()>,
    /// The connection in use (a cluster's is made anew when it stops
    /// making progress; the old one is dropped with what it held).
    live: arc_swap::ArcSwapOption<Conn>,
    script: redis::Script,
    prefix: String,
    /// The key of counter names (the same in every instance).
    secret: KeySecret,
    timeout: Duration,
    time: TimeSource,
    pending: Mutex<Vec<QueuedCharge>>,
    max_pending: usize,
    /// Decisions waiting for a script call (single server; see
    /// [coalescing](self#one-round-trip-for-many-decisions)).
    queue: Mutex<Queue>,
    calls: AtomicU64,
    dropped: AtomicU64,
    uncertain: AtomicU64,
    flusher: AtomicBool,
    /// The runtime plan assignments of every layer built on this store (or
    /// a clone of it), shared through Redis; a dropped layer's table is
    /// skipped.
    plans: Mutex<Vec<std::sync::Weak<crate::plans::PlanTable>>>,
    /// Plan changes made here, waiting to be written to Redis.
    plan_writes: Mutex<Vec<(String, Option<String>)>>,
    plan_sync: AtomicBool,
    /// Whether the plans hash was seen with its marker: its absence after
    /// that means Redis lost it (see [`PLANS_MARK`]).
    plans_seen: AtomicBool,
    /// Whether the server's settings were checked (once, see
    /// [`RedisStore::check_server`]).
    server_checked: AtomicBool,
    /// Refused batches by [`question`], until they can have room.
    refusals: DashMap<u64, Refused>,
    refusals_served: AtomicU64,
    failures: AtomicU32,
    /// Milliseconds since `epoch` until which the circuit is open.
    open_until: AtomicU64,
    epoch: Instant,
    /// Cluster: the health of each group of slots (a node's slots are
    /// contiguous, so a group is one node's), see
    /// [failures](self#failures).
    groups: Box<[Health]>,
    rebuilding: AtomicBool,
    /// Milliseconds since `epoch` of the last rebuild started.
    rebuilt_at: AtomicU64,
    rebuilds: AtomicU64,
}

/// Failures of a group of cluster slots.
#[derive(Debug, Default)]
struct Health {
    /// Failures in a row.
    failures: AtomicU32,
    /// Milliseconds since `epoch` until which its circuit is open.
    open_until: AtomicU64,
    /// Milliseconds since `epoch` (+1) of its first failure in a row; 0
    /// while it succeeds.
    failing_since: AtomicU64,
}

/// Slots in a cluster, and in one group of [`Health`].
const SLOTS: u16 = 16_384;
const GROUP_SLOTS: u16 = 128;
/// A group failing this long (every call in a row) gets the cluster
/// connection made anew, at most once per [`REBUILD_EVERY`].
const REBUILD_AFTER: Duration = Duration::from_millis(1_000);
const REBUILD_EVERY: Duration = Duration::from_millis(1_000);

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("time", &self.time)
            .field("connected", &self.live.load().is_some())
            .field("cluster", &matches!(self.target, Target::Cluster(_)))
            .finish_non_exhaustive()
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Most refusals cached at once.
const MAX_CACHED_REFUSALS: usize = 100_000;

/// A refused batch, remembered until it can have room.
#[derive(Clone, Debug)]
struct Refused {
    /// When the refusal may end: on this process's monotonic clock (server
    /// time), or on the caller's clock.
    until: Instant,
    until_caller: Timestamp,
    /// When Redis decided, on its clock, and when that answer came.
    decided_at: Timestamp,
    answered: Instant,
    outcomes: Vec<Outcome>,
}

/// A hash of what a batch asks: every limit's counter, tag, capacity and
/// units to check. Equal questions get equal answers from equal counters
/// (the key of the refusal cache).
fn question(batch: &Batch) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for l in batch.limits() {
        (l.key, l.tag, l.capacity, l.check_cost(), l.cascade).hash(&mut h);
    }
    h.finish()
}

/// A post-charge waiting to be sent, with when it was measured: on the
/// caller's clock, and on this process's monotonic clock (so that on the
/// server's clock it lands that long before the server's "now").
#[derive(Clone, Copy, Debug)]
struct QueuedCharge {
    charge: PostCharge,
    at: Timestamp,
    queued: Instant,
}

/// A decision waiting for its script call.
#[derive(Debug)]
struct Queued {
    now: Timestamp,
    batch: Batch,
    /// The batch's [`question`], to remember its refusal.
    question: u64,
    answer: tokio::sync::oneshot::Sender<Result<Batch, StoreError>>,
}

/// The decisions waiting, and how many tasks send them.
#[derive(Debug, Default)]
struct Queue {
    waiting: std::collections::VecDeque<Queued>,
    senders: usize,
}

/// Script calls in flight at once for queued decisions: while one is on
/// the wire the next group gathers.
const SENDERS: usize = 2;
/// Most decisions in one script call, and most limits.
const GROUP: usize = 64;
const GROUP_LIMITS: usize = 512;

/// A copy of `e` for each of several callers (a store error is not `Clone`:
/// its source is kept as text).
fn copy_error(e: &StoreError) -> StoreError {
    use std::error::Error as _;
    match e.source() {
        Some(s) => StoreError::new(e.kind(), s.to_string()),
        None => StoreError::from_kind(e.kind()),
    }
}

/// A sender's place: given back under the queue's lock when the sender
/// finds the queue empty (so a decision queued just then starts another),
/// or when its task ends otherwise (cancelled with its runtime).
struct Sender {
    inner: Arc<Inner>,
    /// Whether the place was given back already.
    left: bool,
}

impl Drop for Sender {
    fn drop(&mut self) {
        if self.left {
            return;
        }
        let mut q = self
            .inner
            .queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        q.senders = q.senders.saturating_sub(1);
    }
}

/// A limit's charge given back to the bucket it was charged in.
#[derive(Clone, Copy, Debug)]
struct GiveBack {
    limit: LimitSpec,
    index: u64,
}

fn unavailable(why: &'static str) -> StoreError {
    StoreError::new(StoreErrorKind::Unavailable, why)
}

impl RedisStore {
    /// A store for the Redis of `config`. It connects in the background,
    /// from the first decision on (inside a tokio runtime); until Redis
    /// answers, decisions fail with [`StoreErrorKind::Unavailable`].
    ///
    /// # Errors
    ///
    /// The URL is not a Redis URL.
    pub fn new(config: RedisStoreConfig) -> Result<Self, StoreError> {
        config
            .check()
            .map_err(|e| StoreError::new(StoreErrorKind::Unavailable, e))?;
        let bad = |e| StoreError::new(StoreErrorKind::Unavailable, e);
        let target = if config.cluster.is_empty() {
            Target::Single(redis::Client::open(config.url.as_str()).map_err(bad)?)
        } else {
            let nodes = config.cluster.iter().map(String::as_str);
            Target::Cluster(Box::new(
                cluster_client(nodes, config.timeout).map_err(bad)?,
            ))
        };
        Ok(RedisStore {
            inner: Arc::new_cyclic(|me| Inner {
                me: me.clone(),
                target,
                conn: tokio::sync::OnceCell::new(),
                live: arc_swap::ArcSwapOption::empty(),
                script: redis::Script::new(SCRIPT),
                prefix: config.prefix,
                secret: config.secret,
                timeout: config.timeout,
                time: config.time,
                pending: Mutex::new(Vec::new()),
                max_pending: config.max_pending_charges.max(1),
                queue: Mutex::new(Queue::default()),
                calls: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
                uncertain: AtomicU64::new(0),
                flusher: AtomicBool::new(false),
                plans: Mutex::new(Vec::new()),
                plan_writes: Mutex::new(Vec::new()),
                plan_sync: AtomicBool::new(false),
                plans_seen: AtomicBool::new(false),
                server_checked: AtomicBool::new(false),
                refusals: DashMap::new(),
                refusals_served: AtomicU64::new(0),
                failures: AtomicU32::new(0),
                open_until: AtomicU64::new(0),
                epoch: Instant::now(),
                groups: (0..SLOTS / GROUP_SLOTS)
                    .map(|_| Health::default())
                    .collect(),
                rebuilding: AtomicBool::new(false),
                rebuilt_at: AtomicU64::new(0),
                rebuilds: AtomicU64::new(0),
            }),
        })
    }

    /// Connects now (within the timeout), so that an unreachable Redis shows
    /// at start; on failure the store keeps trying in the background.
    ///
    /// # Errors
    ///
    /// Redis cannot be reached now.
    pub async fn connect(&self) -> Result<(), StoreError> {
        self.inner.first_connect().await.map(|_| ())
    }

    /// Reads the server's `maxmemory-policy`, `maxmemory`, `save` and
    /// `appendonly` and says, in plain words, what they let Redis drop:
    /// counters evicted under memory pressure (any policy but
    /// `noeviction` with a `maxmemory`), plan assignments evicted too
    /// (`allkeys-*`), everything at a restart (no RDB, no AOF). The store
    /// runs this once by itself after it first connects and logs each
    /// warning at WARN (feature `tracing`). An empty list: nothing to fear.
    ///
    /// # Errors
    ///
    /// Redis cannot be reached, or refuses `CONFIG GET` (an ACL user
    /// without `+config|get`, a managed Redis that renames `CONFIG`): then
    /// check those settings by hand (see the README).
    pub async fn check_server(&self) -> Result<Vec<String>, StoreError> {
        self.inner.check_server().await
    }

    /// Cluster connections made anew because some slots stopped making
    /// progress (see [failures](self#failures)).
    pub fn reconnects(&self) -> u64 {
        self.inner.rebuilds.load(Ordering::Relaxed)
    }

    /// Whether the store holds a connection (it may still be failing).
    pub fn is_connected(&self) -> bool {
        self.inner.live.load().is_some()
    }

    /// Post-charges dropped because too many were waiting.
    pub fn charges_dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    /// Post-charges carried by a decision that timed out: they may or may
    /// not have been applied, and are not sent again.
    pub fn charges_uncertain(&self) -> u64 {
        self.inner.uncertain.load(Ordering::Relaxed)
    }

    /// Decisions answered from the cache of refusals, without Redis.
    pub fn refusals_served(&self) -> u64 {
        self.inner.refusals_served.load(Ordering::Relaxed)
    }

    /// Forgets every cached refusal (the layer calls this on reloads and
    /// plan changes).
    pub fn forget_cached(&self) {
        self.inner.refusals.clear();
    }

    /// Script calls made (decisions, post-charges, give-backs): fewer than
    /// the decisions when concurrent decisions share calls.
    pub fn script_calls(&self) -> u64 {
        self.inner.calls.load(Ordering::Relaxed)
    }

    /// Post-charges waiting to be sent.
    pub fn charges_pending(&self) -> usize {
        self.inner.pending.lock().map_or(0, |p| p.len())
    }

    /// The Redis key of the counters `key`.
    pub fn redis_key(&self, key: CounterKey) -> String {
        self.inner.redis_key(key)
    }
}

impl Inner {
    fn redis_key(&self, key: CounterKey) -> String {
        let mut s = String::with_capacity(self.prefix.len() + 36);
        self.write_key(&mut s, key);
        s
    }

    /// Makes `s` the Redis key of counters `key`.
    fn write_key(&self, s: &mut String, key: CounterKey) {
        s.clear();
        // The braces are a cluster hash tag: one scope key, one slot.
        s.push_str(&self.prefix);
        let _ = write!(s, ":{{{:032x}}}", key.as_u128());
    }

    /// The connection in use, if one was made.
    fn current(&self) -> Option<Conn> {
        self.live.load_full().map(|c| (*c).clone())
    }

    /// The health of the group of cluster slots holding `slot`.
    fn group(&self, slot: u16) -> &Health {
        &self.groups[usize::from(slot / GROUP_SLOTS)]
    }

    /// Whether the circuit of any of these cluster slots is open.
    fn slots_open(&self, slots: &[u16]) -> bool {
        let now = self.millis();
        slots
            .iter()
            .any(|&s| now < self.group(s).open_until.load(Ordering::Relaxed))
    }

    /// Books a cluster call to `slot`: its group's circuit, and when the
    /// group has failed for [`REBUILD_AFTER`], a new connection.
    fn slot_result(&self, slot: u16, ok: bool) {
        let g = self.group(slot);
        if ok {
            g.failures.store(0, Ordering::Relaxed);
            g.open_until.store(0, Ordering::Relaxed);
            g.failing_since.store(0, Ordering::Relaxed);
            return;
        }
        let now = self.millis();
        let _ = g
            .failing_since
            .compare_exchange(0, now + 1, Ordering::Relaxed, Ordering::Relaxed);
        if g.failures.fetch_add(1, Ordering::Relaxed) + 1 >= FAILURES_TO_OPEN {
            g.open_until
                .store(now + OPEN_FOR.as_millis() as u64, Ordering::Relaxed);
        }
        let since = g.failing_since.load(Ordering::Relaxed);
        if since != 0 && now + 1 >= since + REBUILD_AFTER.as_millis() as u64 {
            self.rebuild();
        }
    }

    /// Makes a new cluster connection in the background (at most one at a
    /// time, one per [`REBUILD_EVERY`]) and uses it from then on; the old
    /// one is dropped with the requests it still held. redis-rs's cluster
    /// connection can stop routing a failed master's slots to its promoted
    /// replica when many requests were in flight at the crash; a new
    /// connection reads the topology afresh.
    fn rebuild(&self) {
        let Target::Cluster(client) = &self.target else {
            return;
        };
        let now = self.millis();
        let last = self.rebuilt_at.load(Ordering::Relaxed);
        if last != 0 && now < last + REBUILD_EVERY.as_millis() as u64 {
            return;
        }
        if self.rebuilding.swap(true, Ordering::AcqRel) {
            return;
        }
        self.rebuilt_at.store(now.max(1), Ordering::Relaxed);
        let (Ok(rt), Some(me)) = (tokio::runtime::Handle::try_current(), self.me()) else {
            self.rebuilding.store(false, Ordering::Release);
            return;
        };
        let client = client.clone();
        rt.spawn(async move {
            let made = tokio::time::timeout(
                me.timeout.max(Duration::from_millis(500)) * 4,
                client.get_async_connection(),
            )
            .await;
            match made {
                Ok(Ok(conn)) => {
                    me.live.store(Some(Arc::new(Conn::Cluster(conn))));
                    me.rebuilds.fetch_add(1, Ordering::Relaxed);
                    // Every group gets its chance on the new connection.
                    for g in me.groups.iter() {
                        g.open_until.store(0, Ordering::Relaxed);
                        g.failing_since.store(0, Ordering::Relaxed);
                    }
                    #[cfg(feature = "tracing")]
                    tracing::warn!(
                        target: "tierlimit",
                        "Redis Cluster: some slots failed for a second in a row; \
                         connected to the cluster anew"
                    );
                }
                Ok(Err(e)) => log_connect_error(&e),
                Err(_) => {
                    #[cfg(feature = "tracing")]
                    tracing::warn!(
                        target: "tierlimit",
                        "Redis Cluster: connecting anew timed out; trying again shortly"
                    );
                }
            }
            me.rebuilding.store(false, Ordering::Release);
        });
    }

    fn millis(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn circuit_open(&self) -> bool {
        self.millis() < self.open_until.load(Ordering::Relaxed)
    }

    fn succeeded(&self) {
        self.failures.store(0, Ordering::Relaxed);
        self.open_until.store(0, Ordering::Relaxed);
    }

    fn failed(&self) {
        if self.failures.fetch_add(1, Ordering::Relaxed) + 1 >= FAILURES_TO_OPEN {
            let until = self.millis() + OPEN_FOR.as_millis() as u64;
            self.open_until.store(until, Ordering::Relaxed);
        }
    }

    /// The connection, made now (within the timeout) when there is none;
    /// decisions arriving meanwhile wait for the same attempt.
    async fn first_connect(&self) -> Result<Conn, StoreError> {
        if let Some(conn) = self.current() {
            return Ok(conn);
        }
        let make = self.conn.get_or_try_init(|| async {
            let conn = match &self.target {
                Target::Single(client) => {
                    ConnectionManager::new_with_config(client.clone(), manager_config())
                        .await
                        .map(Conn::Single)
                }
                Target::Cluster(client) => client.get_async_connection().await.map(Conn::Cluster),
            }?;
            self.live.store(Some(Arc::new(conn)));
            Ok::<(), redis::RedisError>(())
        });
        match tokio::time::timeout(self.timeout, make).await {
            Ok(Ok(())) => {
                self.check_server_once();
                self.current()
                    .ok_or_else(|| unavailable("the connection was dropped"))
            }
            Ok(Err(e)) => {
                self.failed();
                log_connect_error(&e);
                Err(StoreError::new(StoreErrorKind::Unavailable, e))
            }
            Err(elapsed) => {
                self.failed();
                Err(StoreError::new(StoreErrorKind::Timeout, elapsed))
            }
        }
    }

    fn me(&self) -> Option<Arc<Inner>> {
        self.me.upgrade()
    }

    /// Checks the server's settings once, in the background, and logs what
    /// they let Redis drop (see [`RedisStore::check_server`]).
    fn check_server_once(&self) {
        if self.server_checked.swap(true, Ordering::AcqRel) {
            return;
        }
        let (Ok(rt), Some(me)) = (tokio::runtime::Handle::try_current(), self.me()) else {
            return;
        };
        rt.spawn(async move {
            match me.check_server().await {
                Ok(warnings) => {
                    for w in warnings {
                        #[cfg(feature = "tracing")]
                        tracing::warn!(target: "tierlimit", "{w}");
                        #[cfg(not(feature = "tracing"))]
                        let _ = w;
                    }
                }
                Err(e) => {
                    #[cfg(feature = "tracing")]
                    tracing::info!(
                        target: "tierlimit",
                        error = %crate::error::Chain(&e),
                        "could not read Redis's maxmemory-policy and persistence settings; \
                         make sure Redis runs with maxmemory-policy noeviction and keeps data \
                         on disk (see the README)"
                    );
                    #[cfg(not(feature = "tracing"))]
                    let _ = e;
                }
            }
        });
    }

    /// Runs `job` every `period` on the current runtime, for as long as
    /// the store lives; once per `started` flag (again later when no
    /// runtime was current).
    fn every<F, Fut>(self: &Arc<Self>, started: &AtomicBool, period: Duration, job: F)
    where
        F: Fn(Arc<Inner>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        if started.load(Ordering::Relaxed) || started.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            started.store(false, Ordering::Release);
            return;
        };
        let weak: Weak<Inner> = Arc::downgrade(self);
        rt.spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                job(inner).await;
            }
        });
    }

    /// Starts the task that sends waiting post-charges when no decision
    /// carries them.
    fn start_flusher(self: &Arc<Self>) {
        self.every(&self.flusher, FLUSH_EVERY, |inner| async move {
            if inner.circuit_open() {
                return;
            }
            let Some(conn) = inner.current() else {
                return;
            };
            // One call per slot (a cluster takes one slot per script).
            let all = inner.take_pending();
            for charges in inner.by_slot(all) {
                let slot = charges
                    .first()
                    .and_then(|w| inner.slot_of(w.charge.receipt.key()));
                let call = inner.call(&conn, None, &[], &charges, &[]);
                let _ = inner.finish_call(call.await, charges, slot);
            }
        });
    }

    /// The plan tables of the layers still alive.
    fn attached(&self) -> Vec<SharedPlans> {
        let mut tables = self
            .plans
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        tables.retain(|t| t.strong_count() > 0);
        tables
            .iter()
            .filter_map(|t| t.upgrade().map(SharedPlans))
            .collect()
    }

    fn plans_key(&self) -> String {
        format!("{}:plans", self.prefix)
    }

    /// Starts the task that shares plan assignments (once a layer gave
    /// them): it writes the changes made here, then reads every assignment,
    /// four times a second.
    fn start_plan_sync(self: &Arc<Self>) {
        if self.attached().is_empty() {
            return;
        }
        self.every(&self.plan_sync, PLANS_EVERY, |inner| async move {
            if let Err(e) = inner.sync_plans().await {
                #[cfg(feature = "tracing")]
                tracing::debug!(target: "tierlimit", error = %crate::error::Chain(&e), "plan assignments not shared");
                #[cfg(not(feature = "tracing"))]
                let _ = e;
            }
        });
    }

    async fn sync_plans(&self) -> Result<(), StoreError> {
        let tables = self.attached();
        if tables.is_empty() {
            return Ok(());
        }
        if self.circuit_open() {
            return Err(unavailable("Redis failed repeatedly; retrying shortly"));
        }
        let mut conn = self.first_connect().await?;
        let key = self.plans_key();
        let writes = self
            .plan_writes
            .lock()
            .map(|mut w| std::mem::take(&mut *w))
            .unwrap_or_default();
        if !writes.is_empty() {
            let mut pipe = redis::pipe();
            pipe.cmd("HSET").arg(&key).arg(PLANS_MARK).arg(1).ignore();
            for (k, plan) in &writes {
                match plan {
                    Some(p) => pipe.cmd("HSET").arg(&key).arg(k).arg(p).ignore(),
                    None => pipe.cmd("HDEL").arg(&key).arg(k).ignore(),
                };
            }
            let sent = tokio::time::timeout(self.timeout, pipe.query_async::<()>(&mut conn)).await;
            if !matches!(sent, Ok(Ok(()))) {
                if let Ok(mut w) = self.plan_writes.lock() {
                    let mut back = writes;
                    back.append(&mut w);
                    *w = back;
                }
                return Err(unavailable("plan assignments not written"));
            }
        }
        let mut hgetall = redis::cmd("HGETALL");
        hgetall.arg(&key);
        let read = hgetall.query_async::<HashMap<String, String>>(&mut conn);
        match tokio::time::timeout(self.timeout, read).await {
            Ok(Ok(mut all)) => {
                let marked = all.remove(PLANS_MARK).is_some();
                if marked {
                    self.plans_seen.store(true, Ordering::Relaxed);
                } else if self.plans_seen.load(Ordering::Relaxed) {
                    // Redis lost the hash: write back what this instance
                    // knows rather than forget it everywhere.
                    return self.reassert_plans(&tables, &mut conn, &key).await;
                }
                for table in &tables {
                    table.replace(all.clone());
                }
                Ok(())
            }
            Ok(Err(e)) => Err(StoreError::new(StoreErrorKind::Unavailable, e)),
            Err(e) => Err(StoreError::new(StoreErrorKind::Timeout, e)),
        }
    }

    /// Writes every assignment this instance knows back to the plans hash,
    /// which Redis lost, and says so.
    async fn reassert_plans(
        &self,
        tables: &[SharedPlans],
        conn: &mut Conn,
        key: &str,
    ) -> Result<(), StoreError> {
        // What the layers here know (one value per subject).
        let known: HashMap<String, String> = tables.iter().flat_map(SharedPlans::all).collect();
        let mut pipe = redis::pipe();
        pipe.cmd("HSET").arg(key).arg(PLANS_MARK).arg(1).ignore();
        for (k, plan) in &known {
            pipe.cmd("HSET").arg(key).arg(k).arg(plan).ignore();
        }
        let sent = tokio::time::timeout(self.timeout, pipe.query_async::<()>(conn)).await;
        #[cfg(feature = "tracing")]
        tracing::warn!(
            target: "tierlimit",
            key,
            written_back = known.len(),
            "the runtime plan assignments vanished from Redis (FLUSHALL, a restart without \
             persistence, or eviction); this instance wrote back the ones it knows. Rate-limit \
             counters were most likely lost too: every caller's budget started again"
        );
        match sent {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StoreError::new(StoreErrorKind::Unavailable, e)),
            Err(e) => Err(StoreError::new(StoreErrorKind::Timeout, e)),
        }
    }

    /// Reads the settings that decide whether Redis can drop counters or
    /// plan assignments; plain-words warnings for those that can.
    async fn check_server(&self) -> Result<Vec<String>, StoreError> {
        let conn = self.first_connect().await?;
        let get = |name: &'static str| {
            let mut cmd = redis::cmd("CONFIG");
            cmd.arg("GET").arg(name);
            let mut conn = conn.clone();
            async move {
                let read = cmd.query_async::<HashMap<String, String>>(&mut conn);
                match tokio::time::timeout(self.timeout * 4, read).await {
                    Ok(Ok(mut m)) => Ok(m.remove(name).unwrap_or_default()),
                    Ok(Err(e)) => Err(StoreError::new(StoreErrorKind::Unavailable, e)),
                    Err(e) => Err(StoreError::new(StoreErrorKind::Timeout, e)),
                }
            }
        };
        let policy = get("maxmemory-policy").await?;
        let maxmemory = get("maxmemory").await?;
        let save = get("save").await?;
        let aof = get("appendonly").await?;
        Ok(server_warnings(&policy, &maxmemory, &save, &aof))
    }

    fn take_pending(&self) -> Vec<QueuedCharge> {
        self.pending
            .lock()
            .map(|mut p| std::mem::take(&mut *p))
            .unwrap_or_default()
    }

    fn is_cluster(&self) -> bool {
        matches!(self.target, Target::Cluster(_))
    }

    /// The slot number of counters `key` on a cluster; `None` on a single
    /// server.
    fn slot_of(&self, key: CounterKey) -> Option<u16> {
        self.is_cluster().then(|| self.slot_number(key))
    }

    /// The number of the cluster slot of counters `key` (what redis-rs's
    /// `Slot::for_key` computes: CRC16 of the hash tag, mod 16 384).
    fn slot_number(&self, key: CounterKey) -> u16 {
        let tag = format!("{:032x}", key.as_u128());
        crc16::State::<crc16::XMODEM>::calculate(tag.as_bytes()) % SLOTS
    }

    /// The waiting charges of `slot` (all of them on a single server).
    fn take_pending_in(&self, slot: Option<u16>) -> Vec<QueuedCharge> {
        let (Some(slot), true) = (slot, self.is_cluster()) else {
            return self.take_pending();
        };
        let Ok(mut p) = self.pending.lock() else {
            return Vec::new();
        };
        let (mine, rest): (Vec<QueuedCharge>, Vec<QueuedCharge>) = std::mem::take(&mut *p)
            .into_iter()
            .partition(|w| self.slot_number(w.charge.receipt.key()) == slot);
        *p = rest;
        mine
    }

    /// Charges grouped by slot (one group on a single server, none when no
    /// charge waits).
    fn by_slot(&self, charges: Vec<QueuedCharge>) -> Vec<Vec<QueuedCharge>> {
        if charges.is_empty() {
            // Nothing waits: no call at all (the flusher ticks every 10 ms).
            return Vec::new();
        }
        if !self.is_cluster() {
            return vec![charges];
        }
        group_by(charges, |w| self.slot_number(w.charge.receipt.key()))
            .into_iter()
            .map(|(_, v)| v)
            .collect()
    }

    /// Decides a batch whose limits live in several slots of a cluster: one
    /// script per slot, sent at once; when some slot refuses, what the
    /// others charged is given back. A give-back can make a concurrent
    /// request wait, never admit too much.
    async fn decide_across_slots(
        self: &Arc<Self>,
        conn: &Conn,
        now: Timestamp,
        mut batch: Batch,
        slots: Vec<u16>,
    ) -> Result<Batch, StoreError> {
        let parts = group_by(0..slots.len(), |&i| slots[i]);
        // A cascade is decided in one script: its members must share a slot.
        for i in 1..batch.len() {
            let (a, b) = (batch.limit(i - 1).cascade, batch.limit(i).cascade);
            if a.is_some() && a == b && slots[i - 1] != slots[i] {
                return Err(StoreError::new(
                    StoreErrorKind::Protocol,
                    "a cascade's limits live in different cluster slots (give them one scope)",
                ));
            }
        }
        let mut calls = Vec::new();
        for (slot, idx) in &parts {
            let sub = Batch::from_limits(idx.iter().map(|&i| *batch.limit(i)));
            let charges = self.take_pending_in(Some(*slot));
            let call = self.call(conn, Some(now), &[&sub], &charges, &[]);
            calls.push((sub, charges, tokio::spawn(call)));
        }
        let mut decided = Vec::new();
        let mut failure = None;
        for (mut sub, charges, handle) in calls {
            let res = match handle.await {
                Ok(r) => self.finish_call(r, charges, self.slot_of(sub.limit(0).key)),
                Err(e) => Err(StoreError::new(StoreErrorKind::Protocol, e)),
            };
            match res.and_then(|v| fill_one(&mut sub, &v)) {
                Ok(()) => decided.push(sub),
                Err(e) => {
                    failure.get_or_insert(e);
                    decided.push(Batch::default());
                }
            }
        }
        let admitted = failure.is_none() && decided.iter().all(Batch::admitted);
        if !admitted {
            // Give back what admitted slots charged.
            for sub in decided.iter_mut().filter(|b| !b.is_empty() && b.admitted()) {
                self.refund(conn, now, sub).await;
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        let mut at = None;
        for ((_, idx), sub) in parts.iter().zip(&decided) {
            for (j, &i) in idx.iter().enumerate() {
                if let Some(o) = sub.outcome(j) {
                    batch.record(i, *o);
                }
            }
            at = at.max(sub.decided_at());
        }
        if let Some(t) = at {
            batch.set_decided_at(t);
        }
        Ok(batch)
    }

    /// Gives back the charges of an admitted sub-batch (one script call,
    /// to the buckets they were charged in), and shows its counters as they
    /// stand after.
    async fn refund(&self, conn: &Conn, now: Timestamp, sub: &mut Batch) {
        let mut back = Vec::new();
        for i in 0..sub.len() {
            let l = *sub.limit(i);
            let Some(mut o) = sub.outcome(i).copied() else {
                continue;
            };
            let Verdict::Room(r) = o.verdict else {
                continue;
            };
            if l.charge_cost() == 0 {
                continue;
            }
            back.push(GiveBack {
                limit: l,
                index: r.data(),
            });
            o.view.used = o.view.used.saturating_sub(l.charge_cost());
            sub.record(i, o);
        }
        let slot = back.first().and_then(|g| self.slot_of(g.limit.key));
        let call = self.call(conn, Some(now), &[], &[], &back);
        if self.finish_call(call.await, Vec::new(), slot).is_err() {
            #[cfg(feature = "tracing")]
            tracing::warn!(target: "tierlimit", "a refund across cluster slots failed");
        }
    }

    /// Puts charges back at the front of the queue (bounded).
    fn requeue(&self, charges: Vec<QueuedCharge>) {
        if let Ok(mut p) = self.pending.lock() {
            let room = self.max_pending.saturating_sub(p.len());
            let lost = charges.len().saturating_sub(room);
            self.dropped.fetch_add(lost as u64, Ordering::Relaxed);
            let mut back: Vec<QueuedCharge> = charges.into_iter().take(room).collect();
            back.append(&mut p);
            *p = back;
        }
    }

    /// One script call (`EVALSHA`, and `SCRIPT LOAD` then again after a
    /// `NOSCRIPT`): post-charges and give-backs, then the batches, one
    /// after the other, decided at `now`.
    fn call(
        &self,
        conn: &Conn,
        now: Option<Timestamp>,
        batches: &[&Batch],
        charges: &[QueuedCharge],
        give_back: &[GiveBack],
    ) -> impl Future<Output = CallResult> + Send + 'static {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let limits: usize = batches.iter().map(|b| b.len()).sum();
        let keys = limits + charges.len() + give_back.len();
        // Sized once: a key and six short numbers a limit, five a charge.
        let mut cmd = redis::Cmd::with_capacity(
            8 + batches.len() + 7 * keys + 6 * 4,
            128 + batches.len() * 4 + keys * (self.prefix.len() + 36 + 6 * 12),
        );
        cmd.arg("EVALSHA").arg(self.script.get_hash()).arg(keys);
        // Every key written through one buffer (no string a key).
        let mut key = String::with_capacity(self.prefix.len() + 36);
        let all = batches.iter().flat_map(|b| b.limits()).map(|l| l.key);
        let all = all
            .chain(charges.iter().map(|w| w.charge.receipt.key()))
            .chain(give_back.iter().map(|g| g.limit.key));
        for k in all {
            self.write_key(&mut key, k);
            cmd.arg(key.as_bytes());
        }
        // On the caller's clock, a call without a decision (the flusher)
        // takes the newest measurement it carries as "now".
        let now = now.or_else(|| charges.iter().map(|w| w.at).max());
        // Zoned fixed windows are placed by this clock (Lua has no zones).
        let caller_now = now.unwrap_or(Timestamp::EPOCH);
        match (self.time, now) {
            (TimeSource::Caller, Some(t)) => cmd
                .arg(t.as_nanos() / 1_000_000)
                .arg(t.as_nanos().div_ceil(1_000_000)),
            _ => cmd.arg("").arg(""),
        };
        // Each distinct window shape is sent once, and numbered: the script
        // reads a shape's six values once however many limits use it.
        let mut shapes = Shapes::default();
        let limit_shapes: Vec<usize> = batches
            .iter()
            .flat_map(|b| b.limits())
            .map(|l| shapes.number(&l.window, || l.window.index(caller_now)))
            .collect();
        let charge_shapes: Vec<usize> = charges
            .iter()
            .map(|w| {
                let l = &w.charge.limit;
                shapes.number(&l.window, || l.window.index(w.at))
            })
            .collect();
        let back_shapes: Vec<usize> = give_back
            .iter()
            .map(|g| shapes.number(&g.limit.window, || g.index))
            .collect();
        cmd.arg(batches.len())
            .arg(charges.len() + give_back.len())
            .arg(shapes.0.len());
        for b in batches {
            cmd.arg(b.len());
        }
        for shape in &shapes.0 {
            shape.args(&mut cmd);
        }
        for (l, shape) in batches.iter().flat_map(|b| b.limits()).zip(limit_shapes) {
            let group = l.cascade.map_or(0, u32::from);
            cmd.arg(l.tag)
                .arg(shape)
                .arg(l.capacity)
                .arg(l.check_cost())
                .arg(l.charge_cost())
                .arg(group);
        }
        for (w, shape) in charges.iter().zip(charge_shapes) {
            let c = &w.charge;
            let at: i64 = match self.time {
                TimeSource::Caller => {
                    i64::try_from(w.at.as_nanos().div_ceil(1000)).unwrap_or(i64::MAX)
                }
                _ => -i64::try_from(w.queued.elapsed().as_micros()).unwrap_or(i64::MAX),
            };
            cmd.arg(c.limit.tag).arg(shape).arg(c.cost).arg(at).arg("");
        }
        for (g, shape) in give_back.iter().zip(back_shapes) {
            cmd.arg(g.limit.tag)
                .arg(shape)
                .arg(-i64::try_from(g.limit.charge_cost()).unwrap_or(i64::MAX))
                .arg(0)
                .arg(g.index);
        }
        let mut conn = conn.clone();
        let timeout = self.timeout;
        async move {
            tokio::time::timeout(timeout, async move {
                let answer = match cmd.query_async::<Vec<u8>>(&mut conn).await {
                    Err(e) if is_noscript(&e) => {
                        redis::cmd("SCRIPT")
                            .arg("LOAD")
                            .arg(SCRIPT)
                            .query_async::<String>(&mut conn)
                            .await?;
                        cmd.query_async::<Vec<u8>>(&mut conn).await
                    }
                    other => other,
                };
                answer.map(|bytes| doubles(&bytes))
            })
            .await
        }
    }

    /// Books a call's result: circuit state (of the cluster slot's group
    /// when `slot` is given, else of the whole store), and what becomes of
    /// the charges it carried.
    fn finish_call(
        &self,
        res: CallResult,
        charges: Vec<QueuedCharge>,
        slot: Option<u16>,
    ) -> Result<Vec<i64>, StoreError> {
        let book = |ok: bool| match (slot, ok) {
            (Some(s), ok) => self.slot_result(s, ok),
            (None, true) => self.succeeded(),
            (None, false) => self.failed(),
        };
        match res {
            Ok(Ok(v)) => {
                book(true);
                Ok(v)
            }
            Ok(Err(e)) => {
                book(false);
                self.requeue(charges);
                Err(StoreError::new(StoreErrorKind::Unavailable, e))
            }
            Err(elapsed) => {
                book(false);
                self.uncertain
                    .fetch_add(charges.len() as u64, Ordering::Relaxed);
                Err(StoreError::new(StoreErrorKind::Timeout, elapsed))
            }
        }
    }
}

/// `items` grouped by `key`, groups in order of first appearance.
fn group_by<T, K: PartialEq>(
    items: impl IntoIterator<Item = T>,
    key: impl Fn(&T) -> K,
) -> Vec<(K, Vec<T>)> {
    let mut groups: Vec<(K, Vec<T>)> = Vec::new();
    for item in items {
        let k = key(&item);
        match groups.iter_mut().find(|(g, _)| *g == k) {
            Some((_, v)) => v.push(item),
            None => groups.push((k, vec![item])),
        }
    }
    groups
}

type CallResult = Result<Result<Vec<i64>, redis::RedisError>, tokio::time::error::Elapsed>;

fn is_noscript(e: &redis::RedisError) -> bool {
    e.code() == Some("NOSCRIPT")
}

/// A window's shape as the script reads it: bucket width, buckets still
/// counted before the current one, UTC offset, the window length (0 for a
/// fixed window); for a fixed window in a time zone, the window `index`
/// gives and its end (the script has no time zone rules); milliseconds.
/// A window shape as the script reads it: bucket, reach, offset, window
/// (0: fixed), and a zoned fixed window's index and end on the caller's
/// clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ShapeArgs {
    bucket: u64,
    reach: u64,
    offset: i64,
    window: u64,
    zoned: Option<(u64, u64)>,
}

impl ShapeArgs {
    fn args(&self, cmd: &mut redis::Cmd) {
        cmd.arg(self.bucket)
            .arg(self.reach)
            .arg(self.offset)
            .arg(self.window);
        match self.zoned {
            Some((i, end)) => cmd.arg(i).arg(end),
            None => cmd.arg("").arg(""),
        };
    }
}

/// The distinct shapes of one call, in order of first use.
#[derive(Debug, Default)]
struct Shapes(Vec<ShapeArgs>);

impl Shapes {
    /// The number (from 1) of `w`'s shape, `index` giving a zoned window's
    /// index.
    fn number(&mut self, w: &super::WindowSpec, index: impl FnOnce() -> u64) -> usize {
        let shape = ShapeArgs {
            bucket: w.bucket_ms(),
            reach: w.reach(),
            offset: w.offset_ms(),
            window: if w.is_sliding() { w.window_ms() } else { 0 },
            zoned: w.zone().map(|_| {
                let i = index();
                (i, w.end_ms(i))
            }),
        };
        match self.0.iter().position(|s| *s == shape) {
            Some(k) => k + 1,
            None => {
                self.0.push(shape);
                self.0.len()
            }
        }
    }
}

/// Reconnects fast (10 to 100 ms apart): the circuit breaker, not the
/// connection, decides when to stop trying for a while.
fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(2)))
        .set_min_delay(Duration::from_millis(10))
        .set_max_delay(Duration::from_millis(100))
        .set_number_of_retries(3)
}

/// A cluster client whose connection gives up as the store does: each
/// attempt and each answer within `timeout`, few retries close together
/// (redis-rs's defaults retry 16 times, waiting up to minutes between
/// tries: requests then pile up behind a dead master long after its
/// replica took over).
fn cluster_client<'a>(
    nodes: impl Iterator<Item = &'a str>,
    timeout: Duration,
) -> redis::RedisResult<redis::cluster::ClusterClient> {
    redis::cluster::ClusterClientBuilder::new(nodes.collect::<Vec<_>>())
        .connection_timeout(timeout)
        .response_timeout(timeout)
        .retries(2)
        .min_retry_wait(10)
        .max_retry_wait(100)
        .build()
}

/// Plain-words warnings for a server whose `maxmemory-policy`,
/// `maxmemory`, `save` and `appendonly` are these.
fn server_warnings(policy: &str, maxmemory: &str, save: &str, aof: &str) -> Vec<String> {
    let mut out = Vec::new();
    let limited = maxmemory.trim() != "0" && !maxmemory.trim().is_empty();
    if limited && policy != "noeviction" {
        let what = if policy.starts_with("allkeys") {
            "rate-limit counters and runtime plan assignments"
        } else {
            "rate-limit counters"
        };
        out.push(format!(
            "Redis may evict {what} when it reaches maxmemory ({maxmemory} bytes, \
             maxmemory-policy {policy}): an evicted counter starts again from zero and lets \
             its caller through again. Set maxmemory-policy noeviction (a full Redis then \
             refuses writes and the store fails as on_error says) or give Redis room"
        ));
    }
    if save.trim().is_empty() && aof != "yes" {
        out.push(
            "Redis keeps nothing on disk (save \"\" and appendonly no): a restart empties \
             it, every caller's budget starts again, and runtime plan assignments survive \
             only as long as an instance that knows them writes them back. Turn on \
             appendonly yes (or RDB snapshots) to keep plans across restarts"
                .to_owned(),
        );
    }
    out
}

fn log_connect_error(e: &redis::RedisError) {
    #[cfg(feature = "tracing")]
    tracing::warn!(target: "tierlimit", error = %crate::error::Chain(e), "cannot connect to Redis; retrying");
    #[cfg(not(feature = "tracing"))]
    let _ = e;
}

/// The script's answer: little-endian doubles, each a whole number below
/// 2^53 (an answer of another length reads as no values, which every
/// caller refuses as the wrong number).
fn doubles(bytes: &[u8]) -> Vec<i64> {
    if !bytes.len().is_multiple_of(8) {
        return Vec::new();
    }
    bytes
        .chunks_exact(8)
        .map(|c| {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            // Saturating; NaN reads as 0.
            f64::from_le_bytes(b) as i64
        })
        .collect()
}

/// An instant the script answered, in milliseconds since the epoch.
fn ts(ms: i64) -> Timestamp {
    Timestamp::from_nanos(u64::try_from(ms).unwrap_or(0).saturating_mul(1_000_000))
}

/// The script's answer for one batch.
fn fill_one(batch: &mut Batch, v: &[i64]) -> Result<(), StoreError> {
    expect_len(v, [&*batch])?;
    fill(batch, v, 1)
}

/// Whether the script's answer `v` has the length an answer for `batches`
/// has: the stamp, then per batch its admission and five values a limit.
fn expect_len<'a>(
    v: &[i64],
    batches: impl IntoIterator<Item = &'a Batch>,
) -> Result<(), StoreError> {
    let want = 1 + batches.into_iter().map(|b| 1 + 5 * b.len()).sum::<usize>();
    if v.len() == want {
        Ok(())
    } else {
        Err(bad_answer("the script answered the wrong number of values"))
    }
}

fn bad_answer(why: &'static str) -> StoreError {
    StoreError::new(StoreErrorKind::Protocol, why)
}

/// Fills `batch` from the script's answer `v` (its stamp first), whose
/// values for the batch start at `at` (its admission, then five per
/// limit); the caller has checked that they are there.
fn fill(batch: &mut Batch, v: &[i64], at: usize) -> Result<(), StoreError> {
    batch.set_decided_at(ts(v[0]));
    for i in 0..batch.len() {
        let l = *batch.limit(i);
        let r = &v[at + 1 + 5 * i..at + 6 + 5 * i];
        let view = View::new(l.capacity, u64::try_from(r[1]).unwrap_or(0), ts(r[2]));
        let verdict = match r[0] {
            0 => Verdict::Room(Receipt::new(l.key, u64::try_from(r[4]).unwrap_or(0))),
            1 => Verdict::Passed,
            2 => Verdict::Refused(Refusal::Full { retry_at: ts(r[3]) }),
            3 => Verdict::Refused(Refusal::NeverFits),
            _ => return Err(bad_answer("the script answered an unknown verdict")),
        };
        batch.record(i, Outcome::new(view, verdict));
    }
    if (v[at] == 1) != batch.admitted() {
        return Err(bad_answer(
            "the script's admission disagrees with its verdicts",
        ));
    }
    Ok(())
}

impl Inner {
    /// Decides `batch` in the next script call for queued decisions (one
    /// server): joins the queue, starts a sender when fewer than
    /// [`SENDERS`] run, and waits for the answer, within the timeout from
    /// now. A decision given up before its call leaves the queue unsent.
    async fn queued(
        self: Arc<Self>,
        now: Timestamp,
        batch: Batch,
        question: u64,
    ) -> Result<Batch, StoreError> {
        let (answer, rx) = tokio::sync::oneshot::channel();
        let start = {
            let mut q = self
                .queue
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            q.waiting.push_back(Queued {
                now,
                batch,
                question,
                answer,
            });
            let start = q.senders < SENDERS;
            q.senders += usize::from(start);
            start
        };
        if start {
            tokio::spawn(Arc::clone(&self).send_queued());
        }
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(StoreError::new(
                StoreErrorKind::Unavailable,
                "the task sending this decision to Redis ended without an answer",
            )),
            // Its call may be on the wire (that call's own timeout counts
            // towards the circuit breaker, once for all its decisions).
            Err(elapsed) => Err(StoreError::new(StoreErrorKind::Timeout, elapsed)),
        }
    }

    /// The next decisions waiting (at most [`GROUP`], [`GROUP_LIMITS`]
    /// limits), in arrival order, without those whose caller has gone;
    /// when none waits, the sender's place is given back under the same
    /// lock (a decision queued after that starts a sender of its own).
    fn next_group(&self, place: &mut Sender) -> Vec<Queued> {
        let mut q = self
            .queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut group = Vec::new();
        let mut limits = 0;
        while let Some(next) = q.waiting.front() {
            if !group.is_empty()
                && (group.len() == GROUP || limits + next.batch.len() > GROUP_LIMITS)
            {
                break;
            }
            let Some(next) = q.waiting.pop_front() else {
                break;
            };
            if next.answer.is_closed() {
                continue;
            }
            limits += next.batch.len();
            group.push(next);
        }
        if group.is_empty() {
            q.senders = q.senders.saturating_sub(1);
            place.left = true;
        }
        group
    }

    /// Sends queued decisions, a group per script call, until none waits.
    async fn send_queued(self: Arc<Self>) {
        let mut place = Sender {
            inner: Arc::clone(&self),
            left: false,
        };
        loop {
            let group = self.next_group(&mut place);
            if group.is_empty() {
                return;
            }
            let conn = match self.first_connect().await {
                Ok(conn) => conn,
                Err(e) => {
                    for q in group {
                        let _ = q.answer.send(Err(copy_error(&e)));
                    }
                    continue;
                }
            };
            self.start_flusher();
            self.start_plan_sync();
            // The group is decided at its latest instant (each request's
            // decision stamp is the call's).
            let now = group.iter().map(|q| q.now).max();
            let charges = self.take_pending_in(None);
            let batches: Vec<&Batch> = group.iter().map(|q| &q.batch).collect();
            let call = self.call(&conn, now, &batches, &charges, &[]);
            let answer = self.finish_call(call.await, charges, None).and_then(|v| {
                expect_len(&v, group.iter().map(|q| &q.batch))?;
                Ok(v)
            });
            let mut at = 1;
            for mut q in group {
                let here = at;
                at += 1 + 5 * q.batch.len();
                let res = match &answer {
                    Ok(v) => fill(&mut q.batch, v, here).map(|()| {
                        if !q.batch.admitted() {
                            self.remember_refusal(q.question, &q.batch);
                        }
                        q.batch
                    }),
                    Err(e) => Err(copy_error(e)),
                };
                let _ = q.answer.send(res);
            }
        }
    }

    /// The cached refusal of `batch`'s shape, filled in, if still in force.
    fn cached_refusal(&self, key: u64, caller_now: Timestamp, batch: &mut Batch) -> bool {
        let Some(r) = self.refusals.get(&key) else {
            return false;
        };
        let now = Instant::now();
        let over = match self.time {
            TimeSource::Caller => caller_now >= r.until_caller,
            _ => now >= r.until,
        };
        if over || r.outcomes.len() != batch.len() {
            drop(r);
            self.refusals.remove(&key);
            return false;
        }
        for (i, o) in r.outcomes.iter().enumerate() {
            batch.record(i, *o);
        }
        // "Now" on the clock Redis decided by: its decision plus the time since.
        batch.set_decided_at(match self.time {
            TimeSource::Caller => caller_now,
            _ => r.decided_at + now.saturating_duration_since(r.answered),
        });
        self.refusals_served.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!("tierlimit_refusals_cached_total").increment(1);
        true
    }

    /// Remembers a refused batch until it can have room: other instances
    /// can only add cost, so nothing can have room before that.
    fn remember_refusal(&self, key: u64, batch: &Batch) {
        let (Some(retry_at), Some(decided_at)) = (batch.retry_at(), batch.decided_at()) else {
            return;
        };
        if self.refusals.len() >= MAX_CACHED_REFUSALS {
            let now = Instant::now();
            self.refusals.retain(|_, r| r.until > now);
            if self.refusals.len() >= MAX_CACHED_REFUSALS {
                return;
            }
        }
        let answered = Instant::now();
        let outcomes = (0..batch.len())
            .filter_map(|i| batch.outcome(i).copied())
            .collect();
        self.refusals.insert(
            key,
            Refused {
                until: answered + retry_at.saturating_since(decided_at),
                until_caller: retry_at,
                decided_at,
                answered,
                outcomes,
            },
        );
    }
}

impl Store for RedisStore {
    type Decide = BoxFuture<Result<Batch, StoreError>>;
    type Charge = std::future::Ready<Result<(), StoreError>>;

    fn key_secret(&self) -> KeySecret {
        self.inner.secret
    }

    fn decide(&self, now: Timestamp, mut batch: Batch) -> Answer<Batch, Self::Decide> {
        let inner = Arc::clone(&self.inner);
        let key = question(&batch);
        if inner.cached_refusal(key, now, &mut batch) {
            return Answer::Now(Ok(batch));
        }
        if inner.circuit_open() {
            return Answer::Now(Err(unavailable(
                "Redis failed repeatedly; retrying shortly",
            )));
        }
        if !inner.is_cluster() {
            return Answer::Later(Box::pin(inner.queued(now, batch, key)));
        }
        // Cluster: one script per slot; each slot's node has a circuit.
        let slots: Vec<u16> = batch.limits().map(|l| inner.slot_number(l.key)).collect();
        if inner.slots_open(&slots) {
            return Answer::Now(Err(unavailable(
                "the Redis Cluster node of these keys failed repeatedly; retrying shortly",
            )));
        }
        Answer::Later(Box::pin(async move {
            let conn = inner.first_connect().await?;
            inner.start_flusher();
            inner.start_plan_sync();
            if slots.iter().any(|s| *s != slots[0]) {
                let batch = inner.decide_across_slots(&conn, now, batch, slots).await?;
                if !batch.admitted() {
                    inner.remember_refusal(key, &batch);
                }
                return Ok(batch);
            }
            let slot = slots.first().copied();
            let charges = inner.take_pending_in(slot);
            let call = inner.call(&conn, Some(now), &[&batch], &charges, &[]);
            let v = inner.finish_call(call.await, charges, slot)?;
            fill_one(&mut batch, &v)?;
            if !batch.admitted() {
                inner.remember_refusal(key, &batch);
            }
            Ok(batch)
        }))
    }

    fn forget_cached(&self) {
        self.inner.refusals.clear();
    }

    fn attach(&self, plans: SharedPlans) {
        let weak = Arc::downgrade(&self.inner);
        plans.on_change(move |key, plan| {
            if let Some(inner) = weak.upgrade() {
                if let Ok(mut w) = inner.plan_writes.lock() {
                    w.push((key.to_owned(), plan.map(str::to_owned)));
                }
            }
        });
        let first = {
            let mut tables = self
                .inner
                .plans
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            tables.push(Arc::downgrade(&plans.0));
            tables.len() == 1
        };
        if first {
            self.inner.start_plan_sync();
        }
    }

    fn charge_after(&self, now: Timestamp, charges: Vec<PostCharge>) -> Answer<(), Self::Charge> {
        let inner = &self.inner;
        let charges = charges
            .into_iter()
            .filter(|c| c.cost > 0 && c.limit.charge == Charge::After);
        let queued = Instant::now();
        if let Ok(mut p) = inner.pending.lock() {
            for charge in charges {
                if p.len() < inner.max_pending {
                    p.push(QueuedCharge {
                        charge,
                        at: now,
                        queued,
                    });
                } else {
                    inner.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        inner.start_flusher();
        Answer::Now(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::doubles;

    #[test]
    fn slot_numbers_are_redis_rs_slots() {
        let store = super::RedisStore::new(
            super::RedisStoreConfig::cluster(["redis://127.0.0.1:1"]).prefix("p"),
        )
        .unwrap();
        for k in [
            0u128,
            1,
            42,
            u128::MAX,
            0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835,
        ] {
            let key = super::CounterKey::from_u128(k);
            let ours = store.inner.slot_number(key);
            let theirs = redis::cluster_routing::Slot::for_key(store.redis_key(key));
            assert_eq!(format!("Slot({ours})"), format!("{theirs:?}"), "{k}");
        }
    }

    #[test]
    fn answers_read_as_whole_numbers_and_a_torn_one_as_none() {
        let values = [
            0.0f64,
            1.0,
            1_793_512_780_000.0,
            9_007_199_254_740_991.0,
            -3.0,
        ];
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(
            doubles(&bytes),
            vec![0, 1, 1_793_512_780_000, 9_007_199_254_740_991, -3]
        );
        assert!(doubles(&bytes[..bytes.len() - 1]).is_empty());
        assert_eq!(doubles(&f64::NAN.to_le_bytes()), vec![0]);
        assert_eq!(doubles(&f64::INFINITY.to_le_bytes()), vec![i64::MAX]);
    }
}
