//! [`RedisStoreConfig`]: the one description of a Redis the counters live
//! in, whether it comes from a configuration file's `store.redis` section
//! or from code. It exists in every build, so that a file naming Redis is
//! read (and refused with a clear message) without the `redis` feature.

use std::time::Duration;

use crate::error::ConfigError;
use crate::policy::KeySecret;

/// Where the store's "now" comes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TimeSource {
    /// The Redis server's clock (`TIME`): every instance agrees.
    #[default]
    Server,
    /// The instant the layer passes (its own clock): for tests.
    Caller,
}

/// Settings of a Redis store: `RedisStore::new` takes them (feature
/// `redis`), and a configuration file's `store.redis` section is read into
/// them.
///
/// | JSON (`store.redis.…`) | field | default |
/// | --- | --- | --- |
/// | `url` | [`url`](Self::url) | required, or `cluster` |
/// | `cluster` | [`cluster`](Self::cluster) | `[]` |
/// | `prefix` | [`prefix`](Self::prefix) | `tierlimit` |
/// | `timeout_ms` | [`timeout`](Self::timeout) | 50 ms |
/// | `secret` | [`secret`](Self::secret) ([`KeySecret::shared`]) | the empty text |
/// | `max_pending_charges` | [`max_pending_charges`](Self::max_pending_charges) | 100 000 |
///
/// (`store.redis.on_error` is the [`Deployment`](crate::Deployment)'s.)
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisStoreConfig {
    /// `redis://[user:password@]host:port[/db]`, or the first node of a
    /// cluster (see [`RedisStoreConfig::cluster`]).
    pub url: String,
    /// The nodes of a Redis Cluster; empty for a single server.
    pub cluster: Vec<String>,
    /// Prefix of every key the store writes (default `tierlimit`).
    pub prefix: String,
    /// How long one decision may wait for Redis (default 50 ms).
    pub timeout: Duration,
    /// Where "now" comes from (default the server's clock).
    pub time: TimeSource,
    /// Most post-charges waiting to be sent (default 100 000).
    pub max_pending_charges: usize,
    /// The key of the hash naming counters: every instance sharing the
    /// counters must have the same one (default `KeySecret::shared("")`).
    pub secret: KeySecret,
}

impl RedisStoreConfig {
    /// Settings for the Redis at `url`, with the defaults.
    pub fn new(url: impl Into<String>) -> Self {
        RedisStoreConfig {
            url: url.into(),
            cluster: Vec::new(),
            prefix: "tierlimit".into(),
            timeout: Duration::from_millis(50),
            time: TimeSource::Server,
            max_pending_charges: 100_000,
            secret: KeySecret::shared(""),
        }
    }

    /// Settings for a Redis Cluster reached through `nodes` (one is
    /// enough; the others are found), with the defaults.
    pub fn cluster<I, S>(nodes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let cluster: Vec<String> = nodes.into_iter().map(Into::into).collect();
        let mut c = Self::new(cluster.first().cloned().unwrap_or_default());
        c.cluster = cluster;
        c
    }

    /// Sets the key prefix.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets the per-decision timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets where "now" comes from.
    pub fn time(mut self, time: TimeSource) -> Self {
        self.time = time;
        self
    }

    /// Names counters with [`KeySecret::shared`]`(text)`: give every
    /// instance sharing these counters the same text.
    pub fn secret(mut self, text: &str) -> Self {
        self.secret = KeySecret::shared(text);
        self
    }

    /// Checks the settings as a `store.redis` section: errors name
    /// `store.redis.…` fields. With the `redis` feature the URLs are also
    /// opened with redis-rs (no connection is made).
    ///
    /// # Errors
    ///
    /// An empty or non-`redis://`/`rediss://` URL, a timeout outside
    /// 1 ms ..= 60 s, an empty prefix or one with `{` or `}`, a URL redis-rs
    /// refuses, or no `redis` feature in this build.
    pub fn check(&self) -> Result<(), ConfigError> {
        let err =
            |field: &str, msg: &str| ConfigError::invalid(format!("store.redis.{field}"), msg);
        let redis_url = |u: &str| u.starts_with("redis://") || u.starts_with("rediss://");
        if self.cluster.is_empty() && !redis_url(&self.url) {
            return Err(err("url", "must start with `redis://` or `rediss://`"));
        }
        if let Some(i) = self.cluster.iter().position(|u| !redis_url(u)) {
            return Err(ConfigError::invalid(
                format!("store.redis.cluster[{i}]"),
                "must start with `redis://` or `rediss://`",
            ));
        }
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(60) {
            return Err(err("timeout_ms", "must be between 1 and 60000"));
        }
        if self.prefix.is_empty() || self.prefix.contains(['{', '}']) {
            return Err(err("prefix", "must be non-empty text without `{` or `}`"));
        }
        if self.max_pending_charges == 0 {
            return Err(err("max_pending_charges", "must be greater than zero"));
        }
        #[cfg(feature = "redis")]
        {
            let bad = |field: &str, e: redis::RedisError| {
                ConfigError::invalid(
                    format!("store.redis.{field}"),
                    format!("not a Redis URL redis-rs accepts: {e}"),
                )
            };
            if self.cluster.is_empty() {
                redis::Client::open(self.url.as_str()).map_err(|e| bad("url", e))?;
            } else {
                redis::cluster::ClusterClient::new(self.cluster.iter().map(String::as_str))
                    .map_err(|e| bad("cluster", e))?;
            }
            Ok(())
        }
        #[cfg(not(feature = "redis"))]
        Err(ConfigError::invalid(
            "store.redis",
            "this build of tierlimit has no `redis` feature",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_name_the_field() {
        let e = RedisStoreConfig::new("http://x").check().unwrap_err();
        assert!(e.to_string().starts_with("store.redis.url:"), "{e}");
        let e = RedisStoreConfig::new("redis://x")
            .timeout(Duration::ZERO)
            .check()
            .unwrap_err();
        assert!(e.to_string().starts_with("store.redis.timeout_ms:"), "{e}");
        let e = RedisStoreConfig::cluster(["redis://a", "tcp://b"])
            .check()
            .unwrap_err();
        assert!(e.to_string().starts_with("store.redis.cluster[1]:"), "{e}");
        let e = RedisStoreConfig::new("redis://x")
            .prefix("a{b}")
            .check()
            .unwrap_err();
        assert!(e.to_string().starts_with("store.redis.prefix:"), "{e}");
    }

    #[test]
    fn secrets_are_shared_by_text() {
        let a = RedisStoreConfig::new("redis://x").secret("s");
        assert_eq!(a.secret, KeySecret::shared("s"));
        assert_eq!(
            RedisStoreConfig::new("redis://y").secret,
            KeySecret::shared("")
        );
    }
}
