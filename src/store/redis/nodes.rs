//! A Redis Cluster reached node by node: the store reads which master
//! serves which slots (`CLUSTER SLOTS`), keeps one connection per node, and
//! sends each command to the master of its key's slot.
//!
//! Each node has its own connection, circuit breaker and health (said once
//! per outage, with the node's address): a dead master fails its own
//! slots, at once when its connection is refused, and every other node's
//! keys are decided as before. Any failure of a node, and a `MOVED`
//! answer, makes the store read the slots again (at most every 250 ms), so
//! a replica promoted in its place (after a crash or a `CLUSTER FAILOVER`)
//! is used as soon as the cluster names it. During a slot migration
//! (`ASK`), a command for a key already moved is sent to the node it moved
//! to, after `ASKING`, as Redis asks. Each key lives on one node at any
//! instant, so nothing is counted twice or admitted beyond a limit.
//!
//! redis-rs's cluster connection is not used: while a master was down it
//! held up every node's requests behind its slot refreshes (in
//! `tests/redis_failover.rs`, before: a third to a half of the healthy
//! masters' decisions failed during the outage).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{Cmd, ConnectionAddr, ConnectionInfo, RedisError, RedisFuture, RedisResult, Value};

use super::problem::{RedisProblem, Watch};
use super::tls;
use super::Breaker;

/// Slots in a cluster.
pub(super) const SLOTS: u16 = 16_384;

/// Reads of the slots at most this often.
const REFRESH_EVERY: Duration = Duration::from_millis(250);

/// The nodes of a cluster, and which master serves which slots.
pub(super) struct Nodes {
    me: std::sync::Weak<Nodes>,
    /// The nodes given in the settings (with their credentials and TLS).
    seeds: Vec<ConnectionInfo>,
    certs: tls::Certificates,
    /// How long one command (or connecting to a node while deciding) may
    /// take.
    timeout: Duration,
    /// How long connecting may take when nothing waits for it.
    connect_timeout: Duration,
    map: arc_swap::ArcSwap<SlotMap>,
    /// Every node seen, by `host:port`.
    nodes: Mutex<HashMap<String, Arc<Node>>>,
    refreshing: AtomicBool,
    refreshed: Mutex<Option<Instant>>,
    /// Connections made to nodes, and how many the first connection made.
    made: AtomicU64,
    first: AtomicU64,
    script: &'static str,
}

/// Which master serves which slots: `(first, last, node)`, sorted.
#[derive(Default)]
struct SlotMap {
    ranges: Vec<(u16, u16, Arc<Node>)>,
}

/// One node: its connection (made again after it broke), its breaker and
/// its health.
pub(super) struct Node {
    addr: String,
    client: redis::Client,
    conn: arc_swap::ArcSwapOption<MultiplexedConnection>,
    connecting: tokio::sync::Mutex<()>,
    breaker: Breaker,
    watch: Watch,
}

impl std::fmt::Debug for Nodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let map = self.map.load();
        f.debug_struct("Nodes")
            .field("masters", &map.masters().len())
            .finish_non_exhaustive()
    }
}

impl SlotMap {
    fn node(&self, slot: u16) -> Option<&Arc<Node>> {
        let i = self.ranges.partition_point(|(_, last, _)| *last < slot);
        self.ranges
            .get(i)
            .filter(|(first, _, _)| *first <= slot)
            .map(|(_, _, n)| n)
    }

    /// The masters, each once.
    fn masters(&self) -> Vec<Arc<Node>> {
        let mut out: Vec<Arc<Node>> = Vec::new();
        for (_, _, n) in &self.ranges {
            if !out.iter().any(|m| Arc::ptr_eq(m, n)) {
                out.push(Arc::clone(n));
            }
        }
        out
    }
}

fn io_error(kind: std::io::ErrorKind, why: String) -> RedisError {
    RedisError::from(std::io::Error::new(kind, why))
}

impl Nodes {
    pub(super) fn new(
        urls: &[String],
        certs: tls::Certificates,
        timeout: Duration,
        connect_timeout: Duration,
        script: &'static str,
    ) -> RedisResult<Arc<Nodes>> {
        use redis::IntoConnectionInfo as _;
        let seeds = urls
            .iter()
            .map(|u| u.as_str().into_connection_info())
            .collect::<RedisResult<Vec<_>>>()?;
        let nodes = Arc::new_cyclic(|me| Nodes {
            me: me.clone(),
            seeds,
            certs,
            timeout,
            connect_timeout,
            map: arc_swap::ArcSwap::from_pointee(SlotMap::default()),
            nodes: Mutex::new(HashMap::new()),
            refreshing: AtomicBool::new(false),
            refreshed: Mutex::new(None),
            made: AtomicU64::new(0),
            first: AtomicU64::new(0),
            script,
        });
        // Every seed must make a client (a bad URL shows now).
        for seed in &nodes.seeds {
            let (host, port) = host_port(seed.addr());
            nodes.node(&host, port)?;
        }
        Ok(nodes)
    }

    /// The node at `host:port`, made on first use.
    fn node(&self, host: &str, port: u16) -> RedisResult<Arc<Node>> {
        let addr = format!("{host}:{port}");
        let mut nodes = self
            .nodes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = nodes.get(&addr) {
            return Ok(Arc::clone(n));
        }
        // The first seed's credentials and TLS, at this address.
        let seed = self.seeds.first().cloned().ok_or_else(|| {
            RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "no cluster node given",
            ))
        })?;
        let tls = matches!(seed.addr(), ConnectionAddr::TcpTls { .. });
        let at = if tls {
            ConnectionAddr::TcpTls {
                host: host.to_owned(),
                port,
                insecure: false,
                tls_params: None,
            }
        } else {
            ConnectionAddr::Tcp(host.to_owned(), port)
        };
        let info = seed.set_addr(at);
        let client = match &self.certs {
            #[cfg(feature = "redis-tls")]
            Some(certs) => redis::Client::build_with_tls(info, certs.clone())?,
            _ => redis::Client::open(info)?,
        };
        let node = Arc::new(Node {
            watch: Watch::new(format!("cluster node {addr}"), false),
            addr: addr.clone(),
            client,
            conn: arc_swap::ArcSwapOption::empty(),
            connecting: tokio::sync::Mutex::new(()),
            breaker: Breaker::new(),
        });
        nodes.insert(addr, Arc::clone(&node));
        Ok(node)
    }

    /// Connects: reads the slots, then on every master `PING` and loads
    /// the script. Errors say the node.
    pub(super) async fn open(&self) -> Result<(), RedisProblem> {
        self.refresh_now().await?;
        let masters = self.map.load().masters();
        for m in &masters {
            let fail = |e: RedisError| match RedisProblem::of(&e) {
                RedisProblem::Other(w) => RedisProblem::Other(format!("{}: {w}", m.addr)),
                p => p,
            };
            m.send(self, &redis::cmd("PING"), self.connect_timeout)
                .await
                .map_err(fail)?;
            let mut load = redis::cmd("SCRIPT");
            load.arg("LOAD").arg(self.script);
            m.send(self, &load, self.connect_timeout)
                .await
                .map_err(fail)?;
        }
        self.first
            .store(self.made.load(Ordering::Relaxed), Ordering::Relaxed);
        Ok(())
    }

    /// Connections made to nodes after the first connection to the
    /// cluster (to a node again, or to a newly promoted master).
    pub(super) fn reconnects(&self) -> u64 {
        let first = self.first.load(Ordering::Relaxed);
        if first == 0 {
            return 0;
        }
        self.made.load(Ordering::Relaxed).saturating_sub(first)
    }

    /// Whether the master of any of `slots` has its breaker open.
    pub(super) fn failing(&self, slots: &[u16]) -> bool {
        let map = self.map.load();
        let failing = slots
            .iter()
            .any(|&s| map.node(s).is_some_and(|n| n.is_open()));
        if failing {
            // Its slots may have moved to a promoted replica meanwhile.
            self.refresh();
        }
        failing
    }

    /// The problem of the first master that has one.
    pub(super) fn problem(&self) -> Option<RedisProblem> {
        self.map
            .load()
            .masters()
            .iter()
            .find_map(|m| m.watch.problem())
    }

    /// Reads the slots again, in the background, unless that was done in
    /// the last [`REFRESH_EVERY`] or is under way.
    pub(super) fn refresh(&self) {
        if let Ok(last) = self.refreshed.lock() {
            if last.is_some_and(|t| t.elapsed() < REFRESH_EVERY) {
                return;
            }
        }
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.refreshing.store(false, Ordering::Release);
            return;
        };
        let Some(me) = self.me.upgrade() else {
            self.refreshing.store(false, Ordering::Release);
            return;
        };
        rt.spawn(async move {
            let _ = me.refresh_now().await;
            me.refreshing.store(false, Ordering::Release);
        });
    }

    /// Reads the slots now: from the masters known to answer, else from
    /// every node known, else from the seeds.
    async fn refresh_now(&self) -> Result<(), RedisProblem> {
        if let Ok(mut last) = self.refreshed.lock() {
            *last = Some(Instant::now());
        }
        let mut ask: Vec<Arc<Node>> = self.map.load().masters();
        ask.retain(|n| !n.is_open());
        let known: Vec<Arc<Node>> = self
            .nodes
            .lock()
            .map(|n| n.values().cloned().collect())
            .unwrap_or_default();
        for n in known {
            if !ask.iter().any(|a| Arc::ptr_eq(a, &n)) {
                ask.push(n);
            }
        }
        let mut problem = RedisProblem::Other("no cluster node to ask for the slots".into());
        let mut slots = redis::cmd("CLUSTER");
        slots.arg("SLOTS");
        for n in ask {
            let answer = n.send(self, &slots, self.connect_timeout).await;
            match answer.and_then(|v| self.read_slots(&n, v)) {
                Ok(map) => {
                    let old = self.map.swap(Arc::new(map));
                    self.say_moves(&old, &self.map.load());
                    return Ok(());
                }
                Err(e) => problem = RedisProblem::of(&e),
            }
        }
        Err(problem)
    }

    /// Says, once per change, which slots another master serves now (a
    /// failover, a migration): the end of an outage of those slots.
    fn say_moves(&self, old: &SlotMap, new: &SlotMap) {
        if old.ranges.is_empty() {
            return;
        }
        for (first, last, node) in &new.ranges {
            let before = old.node(*first);
            if before.is_some_and(|b| Arc::ptr_eq(b, node)) {
                continue;
            }
            #[cfg(feature = "tracing")]
            tracing::warn!(
                target: "tierlimit",
                slots = %format!("{first}-{last}"),
                now = %node.addr,
                was = %before.map_or("none", |b| b.addr.as_str()),
                "Redis Cluster: slots {first}-{last} are served by {} now (was {}): a failover \
                 or a migration; decided there from now on",
                node.addr,
                before.map_or("none", |b| b.addr.as_str()),
            );
            #[cfg(not(feature = "tracing"))]
            let _ = (first, last, before);
        }
    }

    /// A slot map from a `CLUSTER SLOTS` answer of `from`.
    fn read_slots(&self, from: &Node, v: Value) -> RedisResult<SlotMap> {
        let bad = || RedisError::from((redis::ErrorKind::Parse, "an unreadable CLUSTER SLOTS"));
        let Value::Array(items) = v else {
            return Err(bad());
        };
        let mut ranges = Vec::new();
        for item in items {
            let Value::Array(parts) = item else {
                return Err(bad());
            };
            let (Some(Value::Int(first)), Some(Value::Int(last)), Some(Value::Array(master))) =
                (parts.first(), parts.get(1), parts.get(2))
            else {
                return Err(bad());
            };
            let host = match master.first() {
                Some(Value::BulkString(h)) if !h.is_empty() && h != b"?" => {
                    String::from_utf8_lossy(h).into_owned()
                }
                // No announced host name: the one that answered.
                _ => from.addr.rsplit_once(':').map_or("", |(h, _)| h).to_owned(),
            };
            let Some(Value::Int(port)) = master.get(1) else {
                return Err(bad());
            };
            let (Ok(first), Ok(last), Ok(port)) = (
                u16::try_from(*first),
                u16::try_from(*last),
                u16::try_from(*port),
            ) else {
                return Err(bad());
            };
            ranges.push((first, last, self.node(&host, port)?));
        }
        ranges.sort_by_key(|r| r.0);
        if ranges.is_empty() {
            return Err(RedisError::from((
                redis::ErrorKind::Client,
                "the cluster serves no slots",
            )));
        }
        Ok(SlotMap { ranges })
    }

    /// Sends `cmd` to the master of its key's slot (any master for a
    /// command without a key), following `MOVED` and `ASK`, loading the
    /// script on the node that lacks it.
    async fn route(&self, cmd: &Cmd) -> RedisResult<Value> {
        let slot = key_of(cmd).map(slot_of_key);
        let mut node = {
            let map = self.map.load();
            match slot {
                Some(s) => map.node(s).cloned(),
                None => map.masters().into_iter().find(|n| !n.is_open()),
            }
        };
        let mut asking = false;
        for _ in 0..4 {
            let Some(n) = node.take() else {
                self.refresh();
                return Err(io_error(
                    std::io::ErrorKind::NotConnected,
                    format!("no cluster node serves slot {}", slot.unwrap_or(0)),
                ));
            };
            let answer = if asking {
                n.send_asking(self, cmd).await
            } else {
                n.send(self, cmd, self.timeout).await
            };
            let e = match answer {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            match e.kind() {
                redis::ErrorKind::Server(redis::ServerErrorKind::Moved) => {
                    self.refresh();
                    node = self.redirect(&e);
                    asking = false;
                }
                redis::ErrorKind::Server(redis::ServerErrorKind::Ask) => {
                    node = self.redirect(&e);
                    asking = true;
                }
                redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                    let mut load = redis::cmd("SCRIPT");
                    load.arg("LOAD").arg(self.script);
                    n.send(self, &load, self.timeout).await?;
                    node = Some(n);
                }
                _ => {
                    if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
                        self.refresh();
                    }
                    return Err(e);
                }
            }
        }
        Err(RedisError::from((
            redis::ErrorKind::Client,
            "redirected too many times",
        )))
    }

    /// The node a `MOVED` or `ASK` names.
    fn redirect(&self, e: &RedisError) -> Option<Arc<Node>> {
        // (`host:port`, slot)
        let (addr, _slot) = e.redirect_node()?;
        let (host, port) = addr.rsplit_once(':')?;
        self.node(host, port.parse().ok()?).ok()
    }

    /// Whether every master the cluster names answered its last command.
    pub(super) fn all_answering(&self) -> bool {
        let masters = self.map.load().masters();
        !masters.is_empty() && masters.iter().all(|m| m.watch.problem().is_none())
    }
}

impl Node {
    fn is_open(&self) -> bool {
        self.breaker.is_open()
    }

    /// The connection, made now when there is none (one attempt at a
    /// time; a refused connection fails at once).
    async fn connection(
        &self,
        nodes: &Nodes,
        wait: Duration,
    ) -> RedisResult<MultiplexedConnection> {
        if let Some(c) = self.conn.load_full() {
            return Ok((*c).clone());
        }
        let Ok(_one) = tokio::time::timeout(wait, self.connecting.lock()).await else {
            return Err(io_error(
                std::io::ErrorKind::TimedOut,
                format!("connecting to {} took longer than {wait:?}", self.addr),
            ));
        };
        if let Some(c) = self.conn.load_full() {
            return Ok((*c).clone());
        }
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(wait))
            .set_response_timeout(None);
        let made = tokio::time::timeout(
            wait,
            self.client
                .get_multiplexed_async_connection_with_config(&config),
        )
        .await
        .map_err(|_| {
            io_error(
                std::io::ErrorKind::TimedOut,
                format!("connecting to {} took longer than {wait:?}", self.addr),
            )
        })??;
        self.conn.store(Some(Arc::new(made.clone())));
        nodes.made.fetch_add(1, Ordering::Relaxed);
        Ok(made)
    }

    /// Sends `cmd` to this node within `wait`, booking the result: a
    /// connection that fails is dropped (made again next time), and the
    /// node's breaker opens after three failures in a row.
    async fn send(&self, nodes: &Nodes, cmd: &Cmd, wait: Duration) -> RedisResult<Value> {
        // An error answer arrives as a value: made an error here, so that
        // `MOVED`, `ASK` and `NOSCRIPT` are followed.
        let res = self.exchange(nodes, wait, |mut c| async move {
            c.req_packed_command(cmd)
                .await
                .and_then(Value::extract_error)
        });
        res.await
    }

    /// Sends `ASKING` then `cmd` (a key being migrated here).
    async fn send_asking(&self, nodes: &Nodes, cmd: &Cmd) -> RedisResult<Value> {
        let mut pipe = redis::pipe();
        pipe.cmd("ASKING").add_command(cmd.clone());
        let res = self.exchange(nodes, nodes.timeout, |mut c| async move {
            let mut answers = c.req_packed_commands(&pipe, 1, 1).await?;
            answers.pop().map_or_else(
                || {
                    Err(RedisError::from((
                        redis::ErrorKind::Parse,
                        "no answer after ASKING",
                    )))
                },
                Value::extract_error,
            )
        });
        res.await
    }

    async fn exchange<F, Fut>(&self, nodes: &Nodes, wait: Duration, f: F) -> RedisResult<Value>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = RedisResult<Value>>,
    {
        let sent = Instant::now();
        if self.is_open() {
            // Not booked (the breaker would never close): the slots may
            // have moved to a promoted replica meanwhile.
            nodes.refresh();
            return Err(io_error(
                std::io::ErrorKind::NotConnected,
                format!(
                    "cluster node {} failed repeatedly; retrying shortly",
                    self.addr
                ),
            ));
        }
        let res = match self.connection(nodes, wait).await {
            Ok(c) => tokio::time::timeout(wait, f(c)).await.unwrap_or_else(|_| {
                Err(io_error(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer from {} within {wait:?}", self.addr),
                ))
            }),
            Err(e) => Err(e),
        };
        match &res {
            // An answer (even an error: MOVED, NOSCRIPT, NOPERM): the node
            // is up.
            Err(e)
                if matches!(
                    e.kind(),
                    redis::ErrorKind::Server(_) | redis::ErrorKind::Extension
                ) =>
            {
                self.reachable();
                let problem = RedisProblem::of(e);
                if matches!(
                    problem,
                    RedisProblem::NoPermission(_) | RedisProblem::OutOfMemory
                ) {
                    // Up, but of no use until someone acts.
                    self.watch.trouble(problem, "running the script");
                } else {
                    self.watch.answered(Some(sent));
                }
            }
            // Anything else (I/O, a dropped connection, a timeout, a
            // connection that could not be made): the node failed.
            Err(e) => {
                self.conn.store(None);
                self.failed(RedisProblem::of(e));
                nodes.refresh();
            }
            Ok(_) => {
                self.reachable();
                self.watch.answered(Some(sent));
            }
        }
        res
    }

    /// The node answered: its breaker closes.
    fn reachable(&self) {
        self.breaker.close();
    }

    fn failed(&self, problem: RedisProblem) {
        self.watch.trouble(problem, "deciding");
        self.breaker.fail();
    }
}

/// `host` and `port` of an address.
fn host_port(addr: &ConnectionAddr) -> (String, u16) {
    match addr {
        ConnectionAddr::Tcp(h, p)
        | ConnectionAddr::TcpTls {
            host: h, port: p, ..
        } => (h.clone(), *p),
        _ => (String::new(), 0),
    }
}

/// The key a command is routed by: the first key of a script call, the
/// first argument of a key command, none for server commands.
fn key_of(cmd: &Cmd) -> Option<&[u8]> {
    let mut args = cmd.args_iter().map(|a| match a {
        redis::Arg::Simple(b) => b,
        _ => &[][..],
    });
    let name = args.next()?;
    if name.eq_ignore_ascii_case(b"EVALSHA") || name.eq_ignore_ascii_case(b"EVAL") {
        let _sha = args.next()?;
        let keys: usize = std::str::from_utf8(args.next()?).ok()?.parse().ok()?;
        return if keys == 0 { None } else { args.next() };
    }
    for server in [
        &b"PING"[..],
        b"SCRIPT",
        b"CONFIG",
        b"CLUSTER",
        b"TIME",
        b"INFO",
    ] {
        if name.eq_ignore_ascii_case(server) {
            return None;
        }
    }
    args.next()
}

/// The cluster slot of `key` (CRC16 of its hash tag, mod 16 384).
pub(super) fn slot_of_key(key: &[u8]) -> u16 {
    let tag = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.iter()
                .position(|&b| b == b'}')
                .filter(|&close| close > 0)
                .map(|close| &rest[..close])
        })
        .unwrap_or(key);
    crc16::State::<crc16::XMODEM>::calculate(tag) % SLOTS
}

/// A connection to the cluster: each command goes to its slot's master.
#[derive(Clone)]
pub(super) struct ClusterConn(pub(super) Arc<Nodes>);

impl ConnectionLike for ClusterConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move { self.0.route(cmd).await })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        // Pipelines here (plan sharing) touch one key: sent as commands in
        // turn, each routed.
        Box::pin(async move {
            let mut out = Vec::new();
            for (i, cmd) in pipeline.cmd_iter().enumerate() {
                let v = self.0.route(cmd).await?;
                if i >= offset && out.len() < count {
                    out.push(v);
                }
            }
            Ok(out)
        })
    }

    fn get_db(&self) -> i64 {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_redis_rs_slots() {
        for key in [
            "a",
            "tierlimit:{0123abcd}",
            "x{}y",
            "{user1000}.following",
            "{",
        ] {
            let ours = slot_of_key(key.as_bytes());
            let theirs = redis::cluster_routing::Slot::for_key(key);
            assert_eq!(format!("Slot({ours})"), format!("{theirs:?}"), "{key}");
        }
    }

    #[test]
    fn commands_are_routed_by_their_first_key() {
        let mut eval = redis::cmd("EVALSHA");
        eval.arg("abc").arg(2).arg("k1").arg("k2").arg("x");
        assert_eq!(key_of(&eval), Some(&b"k1"[..]));
        let mut none = redis::cmd("EVALSHA");
        none.arg("abc").arg(0).arg("x");
        assert_eq!(key_of(&none), None);
        let mut hset = redis::cmd("HSET");
        hset.arg("p:plans").arg("f").arg("v");
        assert_eq!(key_of(&hset), Some(&b"p:plans"[..]));
        let mut config = redis::cmd("CONFIG");
        config.arg("GET").arg("save");
        assert_eq!(key_of(&config), None);
    }
}
