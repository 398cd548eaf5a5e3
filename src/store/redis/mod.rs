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
//! # Leases for busy counters
//!
//! A counter that this instance decides often (at least four requests in
//! the last whole lease lifetime: demand that lasts, not one burst) is
//! leased: the script call that admits a request also reserves, in the
//! same counter, as many units more as this instance used in the last
//! lifetime (at most [`RedisStoreConfig::lease_max_units`], and never more
//! than half the room the counter has left, so that the last units of a
//! budget go one at a time to whoever asks). The following requests of
//! this instance on that counter take their cost from the lease, with no
//! round trip; a request all of whose limits are leased is answered at
//! once. The hard guarantee stays: every unit admitted from a lease was
//! counted in Redis before, in the bucket it belongs to, for at least as
//! long as its own charge would count (the proof is in the code's
//! `leases` module).
//!
//! A lease ends after [`RedisStoreConfig::lease`] (250 ms by default), or
//! at the end of the sub-bucket it was charged in (a fixed window's end),
//! whichever comes first; what it did not use is given back with this
//! instance's next script call (the flusher's at the latest, within
//! 10 ms). A reload or a plan change ends every lease
//! ([`Store::forget_cached`]): other instances follow within a second
//! (when they read the change) and their leases of the old limits end
//! within one lifetime. [`RedisStore::shutdown`] gives back everything at
//! once; an instance killed outright strands what its leases held until
//! those units leave their window (at most, per counter, one lease:
//! `lease_max_units` units, or half of what was left).
//!
//! Only request costs are leased (post-charged costs are not known in
//! advance). A cascade is leased on the member its script call charged
//! (the first with room); that lease serves the group only while every
//! member before it still refuses, by the retry instants the same call
//! gave, so the first member with room keeps taking the charge. A request
//! whose limits live in several cluster slots is decided without leases.
//!
//! **What the headers say.** The remaining figures of a request answered
//! from a lease are the counter's as the lease saw it, minus what this
//! instance spent since: units other instances hold in their leases count
//! as used (they may spend them), and what they spent since is not seen
//! until this instance's next lease, so `Remaining` may be high by what
//! the others admitted in the last lifetime. A leased counter's reset
//! and `Retry-After` may be up to one lifetime later than without leases
//! (the leased units count from the call until the lease's end plus the
//! window). Turn leases off with `lease_ms: 0`.
//!
//! [`RedisStore::leases_taken`], [`RedisStore::lease_decisions`],
//! [`RedisStore::lease_units_returned`] and
//! [`RedisStore::lease_units_stranded`] count them, as do the metrics
//! `tierlimit_leases_taken_total`, `tierlimit_lease_units_taken_total`,
//! `tierlimit_lease_decisions_total`, `tierlimit_lease_units_returned_total`
//! and `tierlimit_lease_units_stranded_total`.
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
//! without a round trip, until then. Without leases this is exact: other
//! instances can only add cost, so nothing can have room before that
//! instant (with the server's clock, the local end is at most one round
//! trip late). With leases, a lease that ends gives back what it did not
//! use, which can make room sooner: a refusal is then remembered for at
//! most one lease lifetime (plus 10 ms), and asked of Redis again after
//! that (one call per lifetime for a caller that keeps trying). Such an
//! answer carries the figures of the refusal it repeats (its remaining
//! figures may be a little stale; its `Retry-After` counts down to the same
//! instant, which cost added since can only have pushed later). A reload
//! or a plan change forgets every cached refusal
//! ([`Store::forget_cached`]); [`RedisStore::refusals_served`] and the
//! metric `tierlimit_refusals_cached_total` count the answers given so.
//!
//! # Plan assignments
//!
//! Every layer built on this store (or a clone of it) shares its runtime
//! plan assignments ([`Controller::set_plan`](crate::Controller::set_plan))
//! through the hash `PREFIX:plans` ([`Store::shared_hash`]; the sharing is
//! the layer's own, the store only gives the hash): a change made on one
//! instance is written there at once
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
//! # Connecting, and what is said when it fails
//!
//! One task connects, in the background, with its own timeout
//! ([`RedisStoreConfig::connect_timeout`], 2 s by default): it opens the
//! connection (authenticating with the URL's user and password), sends
//! `PING` and loads the script, so that a wrong or missing password, a
//! missing permission, a refused connection, an unknown host or a TLS
//! problem is named at once ([`RedisProblem`]) rather than showing as
//! decisions timing out. [`RedisStore::connect`] waits for that attempt
//! and returns its error; otherwise the first decision starts it. A failed
//! attempt is tried again 100 ms later, then less often (up to once a
//! second), as long as the store lives. Decisions wait for the first
//! attempt at most their own timeout; once an attempt has failed they fail
//! at once, saying why, until one succeeds.
//!
//! Each outage is logged once, at WARN, with the address (never the
//! password) and the cause in plain words; a later cause is logged too
//! when it needs someone to act (a password, a permission, a certificate,
//! memory) and was not said yet; the end of the outage is logged once,
//! with how long it lasted. Every failure is counted in
//! `tierlimit_redis_errors_total{cause}` (feature `metrics`), and
//! `tierlimit_redis_ready` is 1 while Redis answers.
//! [`RedisStore::is_ready`] and [`RedisStore::problem`] tell the
//! application the same (a readiness probe).
//!
//! # Failures
//!
//! Once made, a single server's connection reconnects by itself (10 to
//! 100 ms apart). Every decision has a timeout
//! ([`RedisStoreConfig::timeout`], 50 ms by default). After three failures
//! in a row the store stops waiting on Redis for 200 ms and fails at once,
//! so an outage does not add the timeout to every request; the first
//! success closes the circuit again, so enforcement returns within a second
//! of Redis coming back (`tests/redis_gateway.rs` measures about 200 ms).
//! What a failed decision means for the request is the layer's
//! [`OnStoreError`](crate::OnStoreError). A Redis at `maxmemory` with
//! `noeviction` refuses the script's writes (`OOM`): that is a failure like
//! any other (`on_error` applies), said as
//! [`RedisProblem::OutOfMemory`].
//!
//! # Sentinel
//!
//! With [`RedisStoreConfig::sentinel`] the store asks the Sentinels which
//! server is the master, connects to it, and when the master stops
//! answering (three failures in a row) asks them again, so after a failover
//! it follows the replica they promote. In `tests/redis_sentinel.rs` (a
//! master, a replica, three sentinels, `down-after-milliseconds` 1 000),
//! limits were enforced again 2.8 s after the master was killed, with no
//! 5xx meanwhile in `open` mode.
//!
//! # Cluster nodes
//!
//! A cluster is reached node by node: the store reads which
//! master serves which slots, keeps one connection, circuit breaker and
//! health per node, and sends each script call to the master of its slot,
//! following `MOVED` (after a failover or a migration) and `ASK` (a key
//! being migrated). A dead master fails its own slots only, at once once
//! its connection is refused, and every other node's keys are decided as
//! before; any failure makes the store read the slots again (at most every
//! 250 ms), so a promoted replica is used as soon as the cluster names it.
//! In `tests/redis_failover.rs` (3 masters, 3 replicas,
//! `cluster-node-timeout` 2 s, 256 decisions in flight, `kill -9` of a
//! master) the other masters' keys were all decided throughout, no decision
//! waited even half the timeout, and the dead master's slots were decided
//! again about 0.2 s after the cluster was healthy (4.5 s after the kill);
//! in `tests/redis_cluster_moves.rs` a `CLUSTER FAILOVER` and a reshard of
//! 400 slots under load failed no decision, and through those and a
//! `kill -9` no key was admitted beyond its capacity. Run the cluster with
//! `cluster-require-full-coverage no`, or Redis itself refuses every key
//! (`CLUSTERDOWN`) while one master is down.
//!
//! Replication is asynchronous: a master killed outright can take with it
//! the last counts it had not yet sent to its replica (typically the last
//! milliseconds), which the promoted replica then does not have, so those
//! callers may be admitted that much again. A manual `CLUSTER FAILOVER`
//! and a Sentinel failover of a live master lose nothing.
//! [`RedisStore::reconnects`] counts connections made after the first
//! (to a node again, or to a newly promoted master).
//!
//! # Where the code is
//!
//! One file per concern: `connection` (connecting and checking, the
//! circuit breaker, Sentinel), `tls` (certificates), `problem` (causes, and
//! what the log says), `script` (the Lua script, its arguments and its
//! answer), `queue` (decisions sharing a call), `nodes` (a cluster's
//! nodes: slots, connections, health, redirections), `cluster` (slot
//! numbers, decisions across slots), `charges` (post-charges and lease
//! units waiting to be sent), `leases` (leases on busy counters, and why
//! they never admit too much), `refusals` (the refusal cache), `plans` (the hash plan
//! assignments are shared through) and `server` (what the server's
//! settings let it drop).

mod charges;
mod cluster;
mod connection;
mod leases;
mod nodes;
mod plans;
mod problem;
mod queue;
mod refusals;
mod script;
mod server;
mod tls;

use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use dashmap::DashMap;

pub use super::redis_config::{RedisSentinel, RedisStoreConfig, RedisTls, TimeSource};
use super::{
    Answer, Batch, Charge, CounterKey, KeySecret, PostCharge, SharedHash, Store, StoreError,
    StoreErrorKind,
};
use crate::clock::Timestamp;
use charges::QueuedCharge;
use connection::{Conn, Target};
use leases::{Leases, Plan};
pub use problem::RedisProblem;
use queue::Queue;
use refusals::{question, Refused};
use script::{fill_one, SCRIPT};

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
    connect_timeout: Duration,
    /// Whether the task that connects runs (see [`connection`]).
    connecting: AtomicBool,
    /// Woken when an attempt to connect ends.
    ready: tokio::sync::Notify,
    /// What is wrong now, and what the log said (see [`problem`]).
    watch: problem::Watch,
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
    /// Whether the server's settings were checked (once, see
    /// [`RedisStore::check_server`]).
    server_checked: AtomicBool,
    /// Refused batches by [`question`], until they can have room.
    refusals: DashMap<u64, Refused>,
    refusals_served: AtomicU64,
    /// The circuit of the single server (or master); a cluster's nodes
    /// have their own.
    breaker: Breaker,
    /// Whether a connection was ever made, and how many were made after
    /// the first (Sentinel: to the master named after a failover).
    connected_ever: AtomicBool,
    reconnects: AtomicU64,
    /// This instance's leases on busy counters.
    leases: Leases,
}

/// A store dropped gives back what its leases hold and sends its waiting
/// post-charges, in the background (when a tokio runtime is current).
impl Drop for Inner {
    fn drop(&mut self) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            // Nothing can send them: counted as stranded and dropped.
            self.end_leases();
            self.lost(&self.take_pending());
            return;
        };
        for call in self.release_all() {
            rt.spawn(call);
        }
    }
}

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

/// Failures in a row that open a circuit (the store's, or a cluster
/// node's), and how long it stays open.
const FAILURES_TO_OPEN: u32 = 3;
const OPEN_FOR: Duration = Duration::from_millis(200);

/// Units given back to the bucket they were charged in: a charge across
/// cluster slots refunded, or what a lease did not use.
#[derive(Clone, Copy, Debug)]
pub(super) struct GiveBack {
    pub(super) limit: super::LimitSpec,
    pub(super) index: u64,
    pub(super) units: u64,
}

/// A circuit breaker: after [`FAILURES_TO_OPEN`] failures in a row it is
/// open for [`OPEN_FOR`] (calls fail at once); a success closes it. One
/// for a single server (or the master Sentinels name), one per cluster
/// node. Read on every decision: atomics only.
#[derive(Debug)]
struct Breaker {
    failures: AtomicU32,
    /// Milliseconds since `epoch` until which it is open.
    open_until: AtomicU64,
    epoch: Instant,
}

impl Breaker {
    fn new() -> Breaker {
        Breaker {
            failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    fn millis(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn is_open(&self) -> bool {
        self.millis() < self.open_until.load(Ordering::Relaxed)
    }

    fn close(&self) {
        self.failures.store(0, Ordering::Relaxed);
        self.open_until.store(0, Ordering::Relaxed);
    }

    /// Books a failure; whether it opened the breaker (again).
    fn fail(&self) -> bool {
        if self.failures.fetch_add(1, Ordering::Relaxed) + 1 < FAILURES_TO_OPEN {
            return false;
        }
        let until = self.millis() + OPEN_FOR.as_millis() as u64;
        self.open_until.store(until, Ordering::Relaxed);
        true
    }
}

/// `call`, given at most `limit`: a Redis error or the timeout as a store
/// error (for the store's own commands beside the script: the plans hash,
/// the server check).
async fn within<T>(
    limit: Duration,
    call: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(limit, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(StoreError::new(StoreErrorKind::Unavailable, e)),
        Err(e) => Err(StoreError::new(StoreErrorKind::Timeout, e)),
    }
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
    /// The settings fail [`RedisStoreConfig::check`], a certificate file
    /// of `tls` cannot be read, or redis-rs refuses the URLs.
    pub fn new(config: RedisStoreConfig) -> Result<Self, StoreError> {
        config
            .check()
            .map_err(|e| StoreError::new(StoreErrorKind::Unavailable, e))?;
        let target = Target::new(&config)?;
        Ok(RedisStore {
            inner: Arc::new_cyclic(|me| Inner {
                me: me.clone(),
                target,
                connect_timeout: config.connect_timeout,
                connecting: AtomicBool::new(false),
                ready: tokio::sync::Notify::new(),
                watch: problem::Watch::new(config.address(), true),
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
                server_checked: AtomicBool::new(false),
                refusals: DashMap::new(),
                refusals_served: AtomicU64::new(0),
                breaker: Breaker::new(),
                connected_ever: AtomicBool::new(false),
                reconnects: AtomicU64::new(0),
                leases: Leases::new(
                    config.lease,
                    config.lease_max_units,
                    config.time == TimeSource::Caller,
                ),
            }),
        })
    }

    /// Connects now, so that a Redis that cannot be used shows at start:
    /// waits for an attempt (connect, authenticate, `PING`, load the
    /// script) of at most [`RedisStoreConfig::connect_timeout`]. On failure
    /// the store keeps trying in the background.
    ///
    /// # Errors
    ///
    /// Redis cannot be used now; the error says why in plain words
    /// (wrong or missing password, missing permission, connection refused,
    /// unknown host, TLS, timeout), as [`RedisStore::problem`] does.
    pub async fn connect(&self) -> Result<(), StoreError> {
        self.inner.connect_now().await.map(|_| ())
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
        let cluster = match &self.inner.target {
            Target::Cluster(nodes) => nodes.reconnects(),
            _ => 0,
        };
        self.inner.reconnects.load(Ordering::Relaxed) + cluster
    }

    /// Whether the store holds a connection (it may still be failing).
    pub fn is_connected(&self) -> bool {
        self.inner.live.load().is_some()
    }

    /// Whether the store is connected and its last call to Redis
    /// succeeded: for a readiness probe. The metric `tierlimit_redis_ready`
    /// (feature `metrics`) says the same.
    pub fn is_ready(&self) -> bool {
        let nodes = match &self.inner.target {
            Target::Cluster(nodes) => nodes.all_answering(),
            _ => true,
        };
        self.is_connected() && self.inner.watch.problem().is_none() && nodes
    }

    /// What is wrong with Redis now, if anything: the cause of the last
    /// failed connection attempt or call, until a call succeeds again.
    pub fn problem(&self) -> Option<RedisProblem> {
        let nodes = match &self.inner.target {
            Target::Cluster(nodes) => nodes.problem(),
            _ => None,
        };
        self.inner.watch.problem().or(nodes)
    }

    /// Where the store connects, as its logs say it (no password).
    pub fn address(&self) -> &str {
        self.inner.watch.address()
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

    /// Forgets every cached refusal and ends every lease, giving back
    /// what they hold (the layer calls this on reloads and plan changes).
    pub fn forget_cached(&self) {
        self.inner.forget_cached();
    }

    /// Ends every lease and sends what they held, and every waiting
    /// post-charge, to Redis now: call it when the service shuts down, so
    /// that no unit stays stranded until its window passes. Dropping the
    /// store does the same in the background when a tokio runtime is
    /// current.
    ///
    /// # Errors
    ///
    /// Redis could not be reached: what was not sent is counted in
    /// [`RedisStore::lease_units_stranded`] (leases) and
    /// [`RedisStore::charges_dropped`].
    pub async fn shutdown(&self) -> Result<(), StoreError> {
        let mut result = Ok(());
        for call in self.inner.release_all() {
            if let Err(e) = call.await {
                result = Err(e);
            }
        }
        result
    }

    /// Leases taken on busy counters (see
    /// [leases](self#leases-for-busy-counters)).
    pub fn leases_taken(&self) -> u64 {
        self.inner.leases.counts.taken.load(Ordering::Relaxed)
    }

    /// Units reserved by those leases.
    pub fn lease_units_taken(&self) -> u64 {
        self.inner.leases.counts.units_taken.load(Ordering::Relaxed)
    }

    /// Decisions answered from leases, without a round trip.
    pub fn lease_decisions(&self) -> u64 {
        self.inner.leases.counts.served.load(Ordering::Relaxed)
    }

    /// Unused lease units given back to Redis.
    pub fn lease_units_returned(&self) -> u64 {
        self.inner.leases.counts.returned.load(Ordering::Relaxed)
    }

    /// Unused lease units that could not be given back (the queue was
    /// full, the call timed out, no runtime at drop): counted as used
    /// until they leave their window.
    pub fn lease_units_stranded(&self) -> u64 {
        self.inner.leases.counts.stranded.load(Ordering::Relaxed)
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
    /// Decides `batch` on a cluster: one script call when its limits share
    /// a slot (with its leases), one per slot otherwise.
    async fn decide_in_cluster(
        self: &Arc<Self>,
        now: Timestamp,
        batch: &mut Batch,
        key: u64,
        plan: &Plan,
        slots: Vec<u16>,
        back: &mut Vec<GiveBack>,
    ) -> Result<(), StoreError> {
        let conn = self.connection().await?;
        self.start_flusher();
        if slots.iter().any(|s| *s != slots[0]) {
            // Decided across slots: without leases (the plan is empty).
            let decided = self
                .decide_across_slots(&conn, now, std::mem::take(batch), slots)
                .await?;
            *batch = decided;
            self.decided(batch, plan, (&[], now), now, key, back);
            return Ok(());
        }
        let slot = slots.first().copied();
        let charges = self.take_pending_in(slot);
        let asks = [plan.asks.as_slice()];
        let call = self.call(&conn, Some(now), &[&*batch], &asks, &charges, &[]);
        let v = self.finish_call(call.await, charges, slot)?;
        fill_one(batch, &v)?;
        self.decided(batch, plan, (&v[2..], script::ts(v[0])), now, key, back);
        Ok(())
    }

    /// After the script call that decided `batch` (`answer`: its values
    /// for the batch's limits and the call's stamp): its leases settled, a
    /// refusal served from a lease that arrived meanwhile, or remembered.
    fn decided(
        &self,
        batch: &mut Batch,
        plan: &Plan,
        answer: (&[i64], Timestamp),
        now: Timestamp,
        question: u64,
        back: &mut Vec<GiveBack>,
    ) {
        self.leases.settle(batch, plan, answer.0, answer.1, back);
        if !self.leases.rescue(now, batch, back) && !batch.admitted() {
            self.remember_refusal(question, batch);
        }
    }

    fn forget_cached(&self) {
        self.refusals.clear();
        self.end_leases();
    }

    /// Every lease ended, what they held queued to be given back.
    fn end_leases(&self) {
        let mut back = Vec::new();
        self.leases.sweep(true, &mut back);
        self.give_back(back);
    }

    /// Every lease ended, and one call per slot carrying what they held and
    /// every waiting post-charge (none without a connection: then they
    /// are counted as stranded or dropped).
    fn release_all(&self) -> Vec<impl Future<Output = Result<(), StoreError>> + Send + 'static> {
        self.end_leases();
        let all = self.take_pending();
        let Some(conn) = self.current() else {
            self.lost(&all);
            return Vec::new();
        };
        self.by_slot(all)
            .into_iter()
            .map(|charges| {
                let call = self.call(&conn, None, &[], &[], &charges, &[]);
                let me = self.me.clone();
                async move {
                    let res = call.await;
                    match me.upgrade() {
                        Some(inner) => {
                            let slot = charges
                                .first()
                                .and_then(|w| inner.slot_of(w.charge.receipt.key()));
                            inner.finish_call(res, charges, slot).map(|_| ())
                        }
                        // The store is gone (its drop sent this): nothing
                        // left to count in.
                        None => match res {
                            Ok(Ok(_)) => Ok(()),
                            Ok(Err(e)) => Err(StoreError::new(StoreErrorKind::Unavailable, e)),
                            Err(e) => Err(StoreError::new(StoreErrorKind::Timeout, e)),
                        },
                    }
                }
            })
            .collect()
    }

    /// Charges and lease units that could not be sent at all.
    fn lost(&self, charges: &[QueuedCharge]) {
        let (backs, costs): (Vec<&QueuedCharge>, Vec<&QueuedCharge>) =
            charges.iter().partition(|w| w.is_lease_unit());
        self.leases
            .stranded(backs.iter().map(|w| w.charge.cost).sum());
        self.dropped
            .fetch_add(costs.len() as u64, Ordering::Relaxed);
    }

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

    fn me(&self) -> Option<Arc<Inner>> {
        self.me.upgrade()
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
}

impl Store for RedisStore {
    type Decide = BoxFuture<Result<Batch, StoreError>>;
    type Charge = std::future::Ready<Result<(), StoreError>>;

    fn key_secret(&self) -> KeySecret {
        self.inner.secret
    }

    fn decide(&self, now: Timestamp, mut batch: Batch) -> Answer<Batch, Self::Decide> {
        let inner = Arc::clone(&self.inner);
        let slots: Vec<u16> = if inner.is_cluster() {
            batch.limits().map(|l| inner.slot_number(l.key)).collect()
        } else {
            Vec::new()
        };
        // Leases: a batch across cluster slots is decided without (its
        // slots are decided apart; see `cluster`).
        let mut back = Vec::new();
        let plan = if slots.iter().any(|s| *s != slots[0]) {
            Plan::default()
        } else {
            match inner.leases.serve(now, &mut batch, &mut back) {
                Some(plan) => plan,
                None => {
                    inner.give_back(back);
                    return Answer::Now(Ok(batch));
                }
            }
        };
        // Leases first: a refusal cached while this instance's lease had
        // no room says nothing of the lease it holds now.
        let key = question(&batch);
        if inner.cached_refusal(key, now, &mut batch) {
            inner.leases.abandon(&batch, &plan, &mut back);
            inner.give_back(back);
            return Answer::Now(Ok(batch));
        }
        let open = if slots.is_empty() {
            inner
                .circuit_open()
                .then_some("Redis failed repeatedly; retrying shortly")
        } else {
            // Cluster: one script per slot; each slot's node has a circuit.
            inner.slots_open(&slots).then_some(
                "the Redis Cluster node of these keys failed repeatedly; retrying shortly",
            )
        };
        if let Some(why) = open {
            inner.leases.abandon(&batch, &plan, &mut back);
            inner.give_back(back);
            return Answer::Now(Err(unavailable(why)));
        }
        inner.give_back(back);
        if !inner.is_cluster() {
            return Answer::Later(Box::pin(inner.queued(now, batch, key, plan)));
        }
        Answer::Later(Box::pin(async move {
            let mut back = Vec::new();
            let res = inner
                .decide_in_cluster(now, &mut batch, key, &plan, slots, &mut back)
                .await;
            if res.is_err() {
                inner.leases.abandon(&batch, &plan, &mut back);
            }
            inner.give_back(back);
            res.map(|()| batch)
        }))
    }

    /// One script call that charges nothing (no lease served or asked, no
    /// cached refusal): what Redis holds, units leased by any instance
    /// counted as used.
    fn peek(&self, now: Timestamp, batch: Batch) -> Answer<Batch, Self::Decide> {
        let inner = Arc::clone(&self.inner);
        let mut batch = crate::store::free_of_charge(batch);
        if !inner.is_cluster() {
            let key = question(&batch);
            return Answer::Later(Box::pin(inner.queued(now, batch, key, Plan::default())));
        }
        let slots: Vec<u16> = batch.limits().map(|l| inner.slot_number(l.key)).collect();
        Answer::Later(Box::pin(async move {
            let key = question(&batch);
            let mut back = Vec::new();
            let res = inner
                .decide_in_cluster(now, &mut batch, key, &Plan::default(), slots, &mut back)
                .await;
            inner.give_back(back);
            res.map(|()| batch)
        }))
    }

    /// `HDEL` of each limit's field, one command per key (in a cluster,
    /// each on its node); then this instance's cached refusals are
    /// forgotten. Other instances may answer from theirs for at most a
    /// lease lifetime (with leases off, until the refusal's retry instant).
    fn reset(&self, limits: Vec<crate::store::LimitSpec>) -> crate::store::HashFuture<()> {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            if inner.circuit_open() {
                return Err(unavailable("Redis failed repeatedly; retrying shortly"));
            }
            let mut conn = inner.connection().await?;
            for l in &limits {
                let mut hdel = redis::cmd("HDEL");
                hdel.arg(inner.redis_key(l.key)).arg(l.tag.to_string());
                within(inner.timeout, hdel.query_async::<()>(&mut conn)).await?;
            }
            inner.forget_cached();
            Ok(())
        })
    }

    fn forget_cached(&self) {
        self.inner.forget_cached();
    }

    fn shared_hash(&self) -> Option<Arc<dyn SharedHash>> {
        Some(Arc::new(plans::PlansHash {
            key: format!("{}:plans", self.inner.prefix),
            inner: Arc::clone(&self.inner),
        }))
    }

    fn charge_after(&self, now: Timestamp, charges: Vec<PostCharge>) -> Answer<(), Self::Charge> {
        let inner = &self.inner;
        let charges = charges
            .into_iter()
            .filter(|c| c.cost > 0 && (c.limit.charge == Charge::After || c.give_back));
        let queued = Instant::now();
        if let Ok(mut p) = inner.pending.lock() {
            for charge in charges {
                if p.len() < inner.max_pending {
                    p.push(QueuedCharge {
                        charge,
                        at: now,
                        queued,
                        // Units held for a request in flight go back to
                        // the bucket they were charged in.
                        back: charge.give_back.then(|| charge.receipt.data()),
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
