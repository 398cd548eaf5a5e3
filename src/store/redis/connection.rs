//! Connecting to Redis (one server, the master Sentinels name, or a
//! cluster), checking the connection, and the circuit breaker of a single
//! server.
//!
//! One task connects, in the background, with its own timeout
//! ([`RedisStoreConfig::connect_timeout`]): it opens the connection
//! (authenticating), sends `PING` and loads the script, so that a wrong
//! password or a missing permission shows at once, by name, rather than as
//! timeouts of decisions. A failed attempt is said once (see
//! [`problem`](super::problem)) and tried again 100 ms later, then less
//! often, up to once a second. Decisions wait for the first attempt at most
//! their own timeout; once an attempt has failed they fail at once until
//! one succeeds.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::store::{StoreError, StoreErrorKind};

use super::nodes::{ClusterConn, Nodes};
use super::problem::RedisProblem;
use super::tls;
use super::{Inner, RedisStoreConfig};

/// The longest wait between two attempts to connect.
const RETRY_AT_MOST: Duration = Duration::from_secs(1);

/// A connection to a single server or to a cluster.
#[derive(Clone)]
pub(super) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConn),
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
pub(super) enum Target {
    Single(Box<redis::Client>),
    /// The master the Sentinels name: asked again at every connection.
    Sentinel(Box<tokio::sync::Mutex<redis::sentinel::SentinelClient>>),
    Cluster(Arc<Nodes>),
}

impl Target {
    /// The target `config` describes (checked already), with its
    /// certificates read.
    pub(super) fn new(config: &RedisStoreConfig) -> Result<Target, StoreError> {
        let bad = |e: redis::RedisError| {
            StoreError::new(
                StoreErrorKind::Unavailable,
                format!("store.redis: redis-rs refuses these settings: {e}"),
            )
        };
        let certs = tls::certificates(config)?;
        if let Some(s) = &config.sentinel {
            return sentinel_client(s, certs)
                .map(|c| Target::Sentinel(Box::new(tokio::sync::Mutex::new(c))))
                .map_err(bad);
        }
        if config.cluster.is_empty() {
            let client = match certs {
                #[cfg(feature = "redis-tls")]
                Some(certs) => redis::Client::build_with_tls(config.url.as_str(), certs),
                _ => redis::Client::open(config.url.as_str()),
            };
            return client.map(|c| Target::Single(Box::new(c))).map_err(bad);
        }
        Nodes::new(
            &config.cluster,
            certs,
            config.timeout,
            config.connect_timeout,
            super::script::SCRIPT,
        )
        .map(Target::Cluster)
        .map_err(bad)
    }
}

/// The Sentinels of `s`, asked for its master: their own credentials from
/// their URLs (the first URL that has some), the master's from `s`, TLS
/// for the master when certificates are given.
fn sentinel_client(
    s: &super::RedisSentinel,
    certs: tls::Certificates,
) -> redis::RedisResult<redis::sentinel::SentinelClient> {
    use redis::IntoConnectionInfo as _;
    let infos = s
        .urls
        .iter()
        .map(|u| u.as_str().into_connection_info())
        .collect::<redis::RedisResult<Vec<_>>>()?;
    let addrs = infos.iter().map(|i| i.addr().clone());
    let mut b = redis::sentinel::SentinelClientBuilder::new(
        addrs,
        &s.master,
        redis::sentinel::SentinelServerType::Master,
    )?;
    if let Some(i) = infos
        .iter()
        .find(|i| i.redis_settings().password().is_some())
    {
        let r = i.redis_settings();
        if let Some(user) = r.username() {
            b = b.set_client_to_sentinel_username(user);
        }
        if let Some(pw) = r.password() {
            b = b.set_client_to_sentinel_password(pw);
        }
    }
    if let Some(user) = &s.username {
        b = b.set_client_to_redis_username(user);
    }
    if let Some(pw) = &s.password {
        b = b.set_client_to_redis_password(pw);
    }
    b = b.set_client_to_redis_db(s.db);
    #[cfg(feature = "redis-tls")]
    if let Some(certs) = certs {
        b = b
            .set_client_to_redis_tls_mode(redis::TlsMode::Secure)
            .set_client_to_redis_certificates(certs.clone());
        if s.urls.iter().any(|u| u.starts_with("rediss://")) {
            b = b
                .set_client_to_sentinel_tls_mode(redis::TlsMode::Secure)
                .set_client_to_sentinel_certificates(certs);
        }
    }
    #[cfg(not(feature = "redis-tls"))]
    let _ = certs;
    b.build()
}

/// Reconnects fast (10 to 100 ms apart): the circuit breaker, not the
/// connection, decides when to stop trying for a while.
fn manager_config(connect_timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(connect_timeout))
        .set_response_timeout(Some(Duration::from_secs(2)))
        .set_min_delay(Duration::from_millis(10))
        .set_max_delay(Duration::from_millis(100))
        .set_number_of_retries(3)
}

impl Inner {
    /// The connection in use, if one was made.
    pub(super) fn current(&self) -> Option<Conn> {
        self.live.load_full().map(|c| (*c).clone())
    }

    pub(super) fn circuit_open(&self) -> bool {
        self.breaker.is_open()
    }

    pub(super) fn succeeded(&self) {
        self.breaker.close();
        self.watch.answering();
    }

    pub(super) fn failed(&self) {
        // The master the Sentinels named stopped answering: ask them again
        // (after a failover they name another).
        if self.breaker.fail() && matches!(self.target, Target::Sentinel(_)) {
            self.find_master_again();
        }
    }

    /// Drops the connection to the master the Sentinels named and asks
    /// them again (at most one connection attempt runs at a time).
    pub(super) fn find_master_again(&self) {
        if self.connecting.load(Ordering::Acquire) {
            return;
        }
        self.live.store(None);
        self.start_connecting();
    }

    /// The connection for a decision: the one in use, or the one being
    /// made, waited for at most the decision timeout. While Redis cannot
    /// be reached (an attempt failed) it fails at once, saying why.
    pub(super) async fn connection(&self) -> Result<Conn, StoreError> {
        if let Some(conn) = self.current() {
            return Ok(conn);
        }
        let ready = self.ready.notified();
        tokio::pin!(ready);
        ready.as_mut().enable();
        if let Some(conn) = self.current() {
            return Ok(conn);
        }
        self.start_connecting();
        if self.watch.problem().is_none() {
            let _ = tokio::time::timeout(self.timeout, ready).await;
        }
        self.current().ok_or_else(|| self.not_connected())
    }

    /// Connects now, waiting for the attempt under way or the next one (at
    /// most the connect timeout and a little).
    pub(super) async fn connect_now(&self) -> Result<Conn, StoreError> {
        if let Some(conn) = self.current() {
            return Ok(conn);
        }
        let ready = self.ready.notified();
        tokio::pin!(ready);
        ready.as_mut().enable();
        self.start_connecting();
        let wait = self.connect_timeout + RETRY_AT_MOST;
        let _ = tokio::time::timeout(wait, ready).await;
        self.current().ok_or_else(|| self.not_connected())
    }

    /// Why there is no connection, in plain words.
    fn not_connected(&self) -> StoreError {
        let why = match self.watch.problem() {
            Some(p) => format!("not connected to Redis {}: {p}", self.watch.address()),
            None => format!(
                "not connected to Redis {} yet (connecting, up to {:?})",
                self.watch.address(),
                self.connect_timeout
            ),
        };
        StoreError::new(StoreErrorKind::Unavailable, why)
    }

    /// Starts the task that connects (unless one runs): it tries until it
    /// succeeds or the store is dropped, 100 ms after a failure, then less
    /// often (up to once a second).
    pub(super) fn start_connecting(&self) {
        if self.connecting.swap(true, Ordering::AcqRel) {
            return;
        }
        let (Ok(rt), Some(me)) = (tokio::runtime::Handle::try_current(), self.me()) else {
            self.connecting.store(false, Ordering::Release);
            return;
        };
        let weak = Arc::downgrade(&me);
        drop(me);
        rt.spawn(async move {
            let mut pause = Duration::from_millis(100);
            loop {
                let Some(me) = weak.upgrade() else { return };
                let attempt = tokio::time::timeout(me.connect_timeout, me.open()).await;
                let problem = match attempt {
                    Ok(Ok(conn)) => {
                        me.live.store(Some(Arc::new(conn)));
                        if me.connected_ever.swap(true, Ordering::Relaxed) {
                            me.reconnects.fetch_add(1, Ordering::Relaxed);
                        }
                        me.connecting.store(false, Ordering::Release);
                        me.breaker.close();
                        me.watch.connected();
                        me.ready.notify_waiters();
                        me.check_server_once();
                        return;
                    }
                    Ok(Err(problem)) => problem,
                    Err(_) => RedisProblem::TimedOut(me.connect_timeout),
                };
                me.watch.trouble(problem, "connecting");
                // Decisions waiting for this attempt fail now, saying why.
                me.ready.notify_waiters();
                drop(me);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(RETRY_AT_MOST);
            }
        });
    }

    /// One attempt: connect (authenticating), `PING`, load the script.
    async fn open(&self) -> Result<Conn, RedisProblem> {
        let of = |e: redis::RedisError| RedisProblem::of(&e);
        let mut conn = match &self.target {
            Target::Single(client) => ConnectionManager::new_with_config(
                (**client).clone(),
                manager_config(self.connect_timeout),
            )
            .await
            .map(Conn::Single)
            .map_err(of)?,
            Target::Sentinel(sentinel) => {
                let client = sentinel.lock().await.async_get_client().await.map_err(of)?;
                #[cfg(feature = "tracing")]
                tracing::debug!(
                    target: "tierlimit",
                    master = %client.get_connection_info().addr(),
                    "the Sentinels name this master"
                );
                ConnectionManager::new_with_config(client, manager_config(self.connect_timeout))
                    .await
                    .map(Conn::Single)
                    .map_err(of)?
            }
            Target::Cluster(nodes) => {
                // Slots read, every master checked (PING, SCRIPT LOAD).
                nodes.open().await?;
                return Ok(Conn::Cluster(ClusterConn(Arc::clone(nodes))));
            }
        };
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map_err(of)?;
        let hash = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(super::script::SCRIPT)
            .query_async::<String>(&mut conn)
            .await
            .map_err(of)?;
        if hash != self.script.get_hash() {
            return Err(RedisProblem::Other(format!(
                "SCRIPT LOAD answered {hash}, not the script's SHA-1 {}",
                self.script.get_hash()
            )));
        }
        Ok(conn)
    }
}
