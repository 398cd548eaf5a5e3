//! Connecting to Redis, and the circuit breaker of a single server.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::store::{StoreError, StoreErrorKind};

use super::{unavailable, Inner};

pub(super) const FAILURES_TO_OPEN: u32 = 3;

pub(super) const OPEN_FOR: Duration = Duration::from_millis(200);

/// A connection to a single server or to a cluster.
#[derive(Clone)]
pub(super) enum Conn {
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
pub(super) enum Target {
    Single(redis::Client),
    Cluster(Box<redis::cluster::ClusterClient>),
}

/// Reconnects fast (10 to 100 ms apart): the circuit breaker, not the
/// connection, decides when to stop trying for a while.
pub(super) fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(2)))
        .set_min_delay(Duration::from_millis(10))
        .set_max_delay(Duration::from_millis(100))
        .set_number_of_retries(3)
}

pub(super) fn log_connect_error(e: &redis::RedisError) {
    #[cfg(feature = "tracing")]
    tracing::warn!(target: "tierlimit", error = %crate::error::Chain(e), "cannot connect to Redis; retrying");
    #[cfg(not(feature = "tracing"))]
    let _ = e;
}

impl Inner {
    /// The connection in use, if one was made.
    pub(super) fn current(&self) -> Option<Conn> {
        self.live.load_full().map(|c| (*c).clone())
    }

    pub(super) fn millis(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub(super) fn circuit_open(&self) -> bool {
        self.millis() < self.open_until.load(Ordering::Relaxed)
    }

    pub(super) fn succeeded(&self) {
        self.failures.store(0, Ordering::Relaxed);
        self.open_until.store(0, Ordering::Relaxed);
    }

    pub(super) fn failed(&self) {
        if self.failures.fetch_add(1, Ordering::Relaxed) + 1 >= FAILURES_TO_OPEN {
            let until = self.millis() + OPEN_FOR.as_millis() as u64;
            self.open_until.store(until, Ordering::Relaxed);
        }
    }

    /// The connection, made now (within the timeout) when there is none;
    /// decisions arriving meanwhile wait for the same attempt.
    pub(super) async fn first_connect(&self) -> Result<Conn, StoreError> {
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
}
