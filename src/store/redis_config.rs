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
/// | `url` | [`url`](Self::url) | required, or `cluster` or `sentinel` |
/// | `cluster` | [`cluster`](Self::cluster) | `[]` |
/// | `sentinel` | [`sentinel`](Self::sentinel) ([`RedisSentinel`]) | none |
/// | `tls` | [`tls`](Self::tls) ([`RedisTls`]; feature `redis-tls`) | none |
/// | `prefix` | [`prefix`](Self::prefix) | `tierlimit` |
/// | `timeout_ms` | [`timeout`](Self::timeout) | 50 ms |
/// | `connect_timeout_ms` | [`connect_timeout`](Self::connect_timeout) | 2 000 ms |
/// | `secret` | [`secret`](Self::secret) ([`KeySecret::shared`]) | the empty text |
/// | `max_pending_charges` | [`max_pending_charges`](Self::max_pending_charges) | 100 000 |
/// | `lease_ms` | [`lease`](Self::lease) (0: no leases) | 250 ms |
/// | `lease_max_units` | [`lease_max_units`](Self::lease_max_units) | 10 000 |
///
/// (`store.redis.on_error` is the [`Deployment`](crate::Deployment)'s.)
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisStoreConfig {
    /// `redis://[user:password@]host:port[/db]` (`rediss://` for TLS), or
    /// the first node of a cluster (see [`RedisStoreConfig::cluster`]);
    /// empty with [`sentinel`](Self::sentinel).
    pub url: String,
    /// The nodes of a Redis Cluster; empty for a single server.
    pub cluster: Vec<String>,
    /// The master a set of Sentinels names, followed across failovers;
    /// `None` for a server given by `url` or a cluster.
    pub sentinel: Option<RedisSentinel>,
    /// Certificates for TLS: a private CA, and a client certificate for
    /// mutual TLS (feature `redis-tls`). `rediss://` URLs without it
    /// trust the system's CAs.
    pub tls: Option<RedisTls>,
    /// Prefix of every key the store writes (default `tierlimit`).
    pub prefix: String,
    /// How long one decision may wait for Redis (default 50 ms).
    pub timeout: Duration,
    /// How long one attempt to connect may take: open the connection,
    /// authenticate, `PING`, load the script (default 2 s). Decisions never
    /// wait longer than [`timeout`](Self::timeout) for it.
    pub connect_timeout: Duration,
    /// Where "now" comes from (default the server's clock).
    pub time: TimeSource,
    /// Most post-charges waiting to be sent (default 100 000).
    pub max_pending_charges: usize,
    /// The key of the hash naming counters: every instance sharing the
    /// counters must have the same one (default `KeySecret::shared("")`).
    pub secret: KeySecret,
    /// The longest a lease on a busy counter lives (default 250 ms; zero:
    /// no leases, every decision is a round trip). See
    /// "Leases for busy counters" in the Redis store's module docs.
    pub lease: Duration,
    /// Most units one lease holds (default 10 000).
    pub lease_max_units: u64,
}

impl RedisStoreConfig {
    /// Settings for the Redis at `url`, with the defaults.
    pub fn new(url: impl Into<String>) -> Self {
        RedisStoreConfig {
            url: url.into(),
            cluster: Vec::new(),
            sentinel: None,
            tls: None,
            prefix: "tierlimit".into(),
            timeout: Duration::from_millis(50),
            connect_timeout: Duration::from_secs(2),
            time: TimeSource::Server,
            max_pending_charges: 100_000,
            secret: KeySecret::shared(""),
            lease: Duration::from_millis(250),
            lease_max_units: 10_000,
        }
    }

    /// Sets the longest a lease lives (zero: no leases).
    pub fn lease(mut self, lifetime: Duration) -> Self {
        self.lease = lifetime;
        self
    }

    /// Sets the most units one lease holds.
    pub fn lease_max_units(mut self, units: u64) -> Self {
        self.lease_max_units = units;
        self
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

    /// Settings for the master that `sentinel` names, found through its
    /// Sentinels and followed across failovers, with the defaults.
    pub fn sentinel(sentinel: RedisSentinel) -> Self {
        let mut c = Self::new("");
        c.sentinel = Some(sentinel);
        c
    }

    /// Sets the certificates for TLS (feature `redis-tls`).
    pub fn tls(mut self, tls: RedisTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Sets how long one attempt to connect may take.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Where the store connects, for logs and errors: hosts and ports,
    /// never a password.
    pub fn address(&self) -> String {
        if let Some(s) = &self.sentinel {
            let hosts: Vec<String> = s.urls.iter().map(|u| host_of(u)).collect();
            return format!("master {:?} of Sentinels {}", s.master, hosts.join(", "));
        }
        if !self.cluster.is_empty() {
            let hosts: Vec<String> = self.cluster.iter().map(|u| host_of(u)).collect();
            return format!("cluster {}", hosts.join(", "));
        }
        host_of(&self.url)
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
        let given = [
            !self.url.is_empty() && self.cluster.is_empty(),
            !self.cluster.is_empty(),
            self.sentinel.is_some(),
        ];
        if given.iter().filter(|g| **g).count() != 1 {
            return Err(ConfigError::invalid(
                "store.redis",
                "give one of `url` (one server), `cluster` (its nodes) or `sentinel` \
                 (the Sentinels and the master's name)",
            ));
        }
        if let Some(s) = &self.sentinel {
            s.check()?;
        } else if self.cluster.is_empty() && !redis_url(&self.url) {
            return Err(err("url", "must start with `redis://` or `rediss://`"));
        }
        if let Some(i) = self.cluster.iter().position(|u| !redis_url(u)) {
            return Err(ConfigError::invalid(
                format!("store.redis.cluster[{i}]"),
                "must start with `redis://` or `rediss://`",
            ));
        }
        self.check_tls()?;
        if self.connect_timeout.is_zero() || self.connect_timeout > Duration::from_secs(600) {
            return Err(err("connect_timeout_ms", "must be between 1 and 600000"));
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
        if self.lease > Duration::from_secs(10) {
            return Err(err(
                "lease_ms",
                "must be at most 10000 (0: no leases); a lease strands what it holds \
                 for as long as it lives",
            ));
        }
        if self.lease_max_units == 0 {
            return Err(err(
                "lease_max_units",
                "must be greater than zero (turn leases off with lease_ms: 0)",
            ));
        }
        #[cfg(feature = "redis")]
        {
            let bad = |field: &str, e: redis::RedisError| {
                ConfigError::invalid(
                    format!("store.redis.{field}"),
                    format!("not a Redis URL redis-rs accepts: {e}"),
                )
            };
            if let Some(s) = &self.sentinel {
                for (i, u) in s.urls.iter().enumerate() {
                    redis::Client::open(u.as_str())
                        .map_err(|e| bad(&format!("sentinel.urls[{i}]"), e))?;
                }
            } else if self.cluster.is_empty() {
                redis::Client::open(self.url.as_str()).map_err(|e| bad("url", e))?;
            } else {
                for (i, u) in self.cluster.iter().enumerate() {
                    redis::Client::open(u.as_str())
                        .map_err(|e| bad(&format!("cluster[{i}]"), e))?;
                }
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

impl RedisStoreConfig {
    /// Whether TLS is asked for (a `rediss://` URL or a `tls` section), and
    /// whether this build can do it.
    fn check_tls(&self) -> Result<(), ConfigError> {
        let urls = std::iter::once(&self.url)
            .chain(&self.cluster)
            .chain(self.sentinel.iter().flat_map(|s| &s.urls));
        let wants_tls = self.tls.is_some() || urls.clone().any(|u| u.starts_with("rediss://"));
        if wants_tls && !cfg!(feature = "redis-tls") {
            return Err(ConfigError::invalid(
                if self.tls.is_some() {
                    "store.redis.tls"
                } else {
                    "store.redis.url"
                },
                "TLS to Redis (`rediss://`, `tls`) needs tierlimit's `redis-tls` feature, \
                 which this build lacks",
            ));
        }
        let Some(tls) = &self.tls else {
            return Ok(());
        };
        if self.sentinel.is_none() {
            if let Some(u) = urls.clone().find(|u| u.starts_with("redis://")) {
                return Err(ConfigError::invalid(
                    "store.redis.tls",
                    format!(
                        "is set, but {} is a plain `redis://` URL: write `rediss://` for TLS",
                        host_of(u)
                    ),
                ));
            }
        }
        if tls.cert_file.is_some() != tls.key_file.is_some() {
            return Err(ConfigError::invalid(
                "store.redis.tls",
                "`cert_file` and `key_file` go together (a client certificate and its key, \
                 for mutual TLS)",
            ));
        }
        Ok(())
    }
}

/// `host:port` of a Redis URL, without user name or password.
fn host_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.split(['/', '?']).next().unwrap_or(rest);
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    host.to_owned()
}

/// The master of a set of Redis Sentinels (`store.redis.sentinel`): the
/// store asks the Sentinels where it is, and asks again when it stops
/// answering as a master (after a failover).
///
/// ```json
/// "sentinel": {"urls": ["redis://10.0.0.5:26379", "redis://10.0.0.6:26379"],
///              "master": "mymaster", "password": "…"}
/// ```
///
/// `urls` are the Sentinels (with their own user name and password in the
/// URL when they need one; `rediss://` for TLS); `username`, `password` and
/// `db` are the master's. The master is reached with TLS when
/// [`RedisStoreConfig::tls`] is set.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisSentinel {
    /// The Sentinels, `redis://[user:password@]host:port`.
    pub urls: Vec<String>,
    /// The name of the master, as the Sentinels know it.
    pub master: String,
    /// The master's user name (ACL), if any.
    pub username: Option<String>,
    /// The master's password, if any.
    pub password: Option<String>,
    /// The database number on the master (default 0).
    pub db: i64,
}

impl RedisSentinel {
    /// The master `master` of the Sentinels at `urls`.
    pub fn new<I, S>(urls: I, master: impl Into<String>) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        RedisSentinel {
            urls: urls.into_iter().map(Into::into).collect(),
            master: master.into(),
            username: None,
            password: None,
            db: 0,
        }
    }

    /// Sets the master's user name and password.
    pub fn auth(mut self, username: Option<&str>, password: &str) -> Self {
        self.username = username.map(str::to_owned);
        self.password = Some(password.to_owned());
        self
    }

    fn check(&self) -> Result<(), ConfigError> {
        if self.urls.is_empty() {
            return Err(ConfigError::invalid(
                "store.redis.sentinel.urls",
                "name at least one Sentinel (`redis://host:26379`)",
            ));
        }
        for (i, u) in self.urls.iter().enumerate() {
            if !(u.starts_with("redis://") || u.starts_with("rediss://")) {
                return Err(ConfigError::invalid(
                    format!("store.redis.sentinel.urls[{i}]"),
                    "must start with `redis://` or `rediss://`",
                ));
            }
        }
        if self.master.trim().is_empty() {
            return Err(ConfigError::invalid(
                "store.redis.sentinel.master",
                "name the master as the Sentinels know it (`sentinel monitor NAME …`)",
            ));
        }
        Ok(())
    }
}

/// Certificates for TLS to Redis (`store.redis.tls`; feature `redis-tls`):
/// PEM files read when the store is made.
///
/// ```json
/// "tls": {"ca_file": "/etc/redis/ca.pem",
///         "cert_file": "/etc/redis/client.pem", "key_file": "/etc/redis/client.key"}
/// ```
///
/// Without `ca_file` the system's CAs are trusted; `cert_file` and
/// `key_file` (together) are a client certificate, for servers that ask for
/// one (`tls-auth-clients yes`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisTls {
    /// The CA (or CAs) that signed the server's certificate.
    pub ca_file: Option<std::path::PathBuf>,
    /// A client certificate (chain), for mutual TLS.
    pub cert_file: Option<std::path::PathBuf>,
    /// The client certificate's private key.
    pub key_file: Option<std::path::PathBuf>,
}

impl RedisTls {
    /// Trust the CA in `ca_file` (PEM).
    pub fn ca(ca_file: impl Into<std::path::PathBuf>) -> Self {
        RedisTls {
            ca_file: Some(ca_file.into()),
            ..RedisTls::default()
        }
    }

    /// Sets a client certificate and its key (PEM), for mutual TLS.
    pub fn client_cert(
        mut self,
        cert_file: impl Into<std::path::PathBuf>,
        key_file: impl Into<std::path::PathBuf>,
    ) -> Self {
        self.cert_file = Some(cert_file.into());
        self.key_file = Some(key_file.into());
        self
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
    #[cfg(not(feature = "redis-tls"))]
    fn tls_is_refused_at_load_without_the_feature() {
        for c in [
            RedisStoreConfig::new("rediss://h:1"),
            RedisStoreConfig::cluster(["redis://a:1", "rediss://b:1"]),
            RedisStoreConfig::new("redis://h:1").tls(RedisTls::ca("/ca.pem")),
        ] {
            let e = c.check().unwrap_err();
            assert!(e.to_string().contains("`redis-tls` feature"), "{e}");
        }
    }

    #[test]
    fn one_of_url_cluster_or_sentinel() {
        let s = RedisSentinel::new(["redis://s1:26379", "redis://s2:26379"], "mymaster");
        let c = RedisStoreConfig::sentinel(s.clone());
        assert_eq!(
            c.address(),
            "master \"mymaster\" of Sentinels s1:26379, s2:26379"
        );
        let mut both = c.clone();
        both.url = "redis://x:1".into();
        let e = both.check().unwrap_err();
        assert!(e.to_string().starts_with("store.redis: give one of"), "{e}");
        let e = RedisStoreConfig::sentinel(RedisSentinel::new(Vec::<String>::new(), "m"))
            .check()
            .unwrap_err();
        assert!(
            e.to_string().starts_with("store.redis.sentinel.urls:"),
            "{e}"
        );
        let e = RedisStoreConfig::sentinel(RedisSentinel::new(["redis://s:1"], " "))
            .check()
            .unwrap_err();
        assert!(
            e.to_string().starts_with("store.redis.sentinel.master:"),
            "{e}"
        );
        // Passwords never reach the address logs carry.
        let c = RedisStoreConfig::new("redis://user:pw@h:6379/2");
        assert_eq!(c.address(), "h:6379");
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
