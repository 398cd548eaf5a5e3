//! The two halves of a configuration file: the [`Policy`] (what is limited,
//! for whom, and how refusals look) and the [`Deployment`] (where the
//! counters live and what happens when that store fails). A [`Setup`] holds
//! both; [`RateLimitLayer::new`](crate::RateLimitLayer::new) takes one.
//!
//! The file keeps one shape — its `store` section is the deployment — so a
//! file and the gateway's flags work as they always did; in Rust the halves
//! are apart, so a reload swaps the policy and never the store, and a
//! policy can be built, cloned and tested without any store in mind.

use std::path::Path;

use serde::{de, Deserialize, Deserializer};

use crate::config::{Config, OnStoreError};
use crate::error::ConfigError;
use crate::policy::Policy;
use crate::store::{KeySecret, RedisSentinel, RedisStoreConfig, RedisTls};

/// Where a layer's counters live and what it does when that store cannot
/// decide: a configuration file's `store` section.
///
/// | JSON | field | default |
/// | --- | --- | --- |
/// | `store.max_keys` | [`max_keys`](Self::max_keys) | 1 048 576 |
/// | `store.redis` | [`redis`](Self::redis) (see [`RedisStoreConfig`]) | none: a memory store |
/// | `store.redis.on_error` | [`on_error`](Self::on_error) | `open` |
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Deployment {
    /// Most counters (tier × scope key) a memory store tracks: the store
    /// itself when there is no Redis, else the local store of
    /// [`OnStoreError::Fallback`].
    pub max_keys: usize,
    /// Keep the counters in this Redis (feature `redis`).
    pub redis: Option<RedisStoreConfig>,
    /// What to do when the store cannot decide.
    pub on_error: OnStoreError,
}

impl Default for Deployment {
    fn default() -> Self {
        Deployment {
            max_keys: 1 << 20,
            redis: None,
            on_error: OnStoreError::Open,
        }
    }
}

impl Deployment {
    /// Checks the settings; errors name the file's `store.…` fields.
    ///
    /// # Errors
    ///
    /// `max_keys` is zero, or [`RedisStoreConfig::check`] refuses the
    /// Redis settings (among them: no `redis` feature in this build).
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.max_keys == 0 {
            return Err(ConfigError::invalid(
                "store.max_keys",
                "must be greater than zero",
            ));
        }
        match &self.redis {
            Some(r) => r.check(),
            None => Ok(()),
        }
    }
}

/// A whole configuration, checked and compiled: the [`Policy`] and its
/// [`Deployment`].
///
/// ```
/// # fn main() -> Result<(), tierlimit::ConfigError> {
/// use tierlimit::{RateLimitLayer, Setup};
///
/// let setup = Setup::from_json(r#"{
///     "tiers": {"api": {"limits": [{"name": "per-minute", "capacity": 60, "window": "1m"}]}},
///     "default_tier": "api",
///     "store": {"max_keys": 100000}
/// }"#)?;
/// assert_eq!(setup.deployment.max_keys, 100_000);
/// let layer = RateLimitLayer::new(setup);
/// # let _ = layer;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Setup {
    /// What is limited.
    pub policy: Policy,
    /// Where the counters live.
    pub deployment: Deployment,
}

impl Setup {
    /// A policy with a deployment.
    pub fn new(policy: Policy, deployment: Deployment) -> Self {
        Setup { policy, deployment }
    }

    /// Reads, checks and compiles a JSON configuration.
    ///
    /// # Errors
    ///
    /// As [`Config::from_json`], then [`Config::setup`].
    pub fn from_json(text: &str) -> Result<Setup, ConfigError> {
        Config::from_json(text)?.setup()
    }

    /// Reads, checks and compiles a JSON configuration file.
    ///
    /// # Errors
    ///
    /// The file cannot be read, or [`Setup::from_json`] refuses it.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Setup, ConfigError> {
        Config::from_file(path)?.setup()
    }
}

/// A policy alone is deployed on a memory store with the defaults.
impl From<Policy> for Setup {
    fn from(policy: Policy) -> Self {
        Setup::new(policy, Deployment::default())
    }
}

/// The policy half (a reload takes it: the store is chosen once).
impl From<Setup> for Policy {
    fn from(setup: Setup) -> Self {
        setup.policy
    }
}

impl TryFrom<&Config> for Setup {
    type Error = ConfigError;

    fn try_from(c: &Config) -> Result<Setup, ConfigError> {
        c.setup()
    }
}

impl Config {
    /// Checks the whole configuration and compiles it: the policy and the
    /// deployment of its `store` section.
    ///
    /// # Errors
    ///
    /// As [`Config::policy`], then [`Deployment::check`].
    pub fn setup(&self) -> Result<Setup, ConfigError> {
        let policy = self.policy()?;
        self.store.check()?;
        Ok(Setup::new(policy, self.store.clone()))
    }
}

/// The `store` section as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreSection {
    #[serde(default = "default_max_keys")]
    max_keys: usize,
    #[serde(default)]
    redis: Option<RedisSection>,
}

fn default_max_keys() -> usize {
    Deployment::default().max_keys
}

/// `store.redis` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RedisSection {
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    cluster: Vec<String>,
    #[serde(default)]
    sentinel: Option<SentinelSection>,
    #[serde(default)]
    tls: Option<TlsSection>,
    #[serde(default)]
    on_error: OnStoreError,
    #[serde(default)]
    connect_timeout_ms: Option<u64>,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    max_pending_charges: Option<usize>,
    #[serde(default)]
    lease_ms: Option<u64>,
    #[serde(default)]
    lease_max_units: Option<u64>,
}

/// `store.redis.sentinel` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SentinelSection {
    urls: Vec<String>,
    master: String,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    db: i64,
}

/// `store.redis.tls` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsSection {
    #[serde(default)]
    ca_file: Option<std::path::PathBuf>,
    #[serde(default)]
    cert_file: Option<std::path::PathBuf>,
    #[serde(default)]
    key_file: Option<std::path::PathBuf>,
}

impl<'de> Deserialize<'de> for Deployment {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = StoreSection::deserialize(d)?;
        let mut deployment = Deployment {
            max_keys: s.max_keys,
            ..Deployment::default()
        };
        if let Some(r) = s.redis {
            let sentinel = r.sentinel.map(|s| {
                let mut sentinel = RedisSentinel::new(s.urls, s.master);
                sentinel.username = s.username;
                sentinel.password = s.password;
                sentinel.db = s.db;
                sentinel
            });
            let mut config = match (r.url, r.cluster.is_empty(), sentinel) {
                (Some(url), true, None) => RedisStoreConfig::new(url),
                (None, false, None) => RedisStoreConfig::cluster(r.cluster),
                (None, true, Some(s)) => RedisStoreConfig::sentinel(s),
                (None, true, None) => {
                    return Err(de::Error::custom(
                        "`redis.url` is required (`redis://host:port`), \
                         or `redis.cluster` with the nodes, or `redis.sentinel`",
                    ))
                }
                _ => {
                    return Err(de::Error::custom(
                        "`redis` takes one of `url` (one server), `cluster` or `sentinel`, \
                         not several",
                    ))
                }
            };
            config.tls = r.tls.map(|t| RedisTls {
                ca_file: t.ca_file,
                cert_file: t.cert_file,
                key_file: t.key_file,
            });
            if let Some(ms) = r.connect_timeout_ms {
                config.connect_timeout = std::time::Duration::from_millis(ms);
            }
            if let Some(ms) = r.timeout_ms {
                config.timeout = std::time::Duration::from_millis(ms);
            }
            if let Some(p) = r.prefix {
                config.prefix = p;
            }
            if let Some(s) = r.secret {
                config.secret = KeySecret::shared(&s);
            }
            if let Some(n) = r.max_pending_charges {
                config.max_pending_charges = n;
            }
            if let Some(ms) = r.lease_ms {
                config.lease = std::time::Duration::from_millis(ms);
            }
            if let Some(n) = r.lease_max_units {
                config.lease_max_units = n;
            }
            deployment.redis = Some(config);
            deployment.on_error = r.on_error;
        }
        Ok(deployment)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_section_is_the_deployment() {
        let c = Config::from_json(
            r#"{"store": {"max_keys": 10, "redis": {"url": "redis://h:1", "prefix": "p",
                "timeout_ms": 7, "on_error": "closed", "secret": "s"}}}"#,
        )
        .unwrap();
        let r = c.store.redis.as_ref().unwrap();
        assert_eq!(c.store.max_keys, 10);
        assert_eq!(c.store.on_error, OnStoreError::CLOSED);
        assert_eq!(r.url, "redis://h:1");
        assert_eq!(r.prefix, "p");
        assert_eq!(r.timeout, std::time::Duration::from_millis(7));
        assert_eq!(r.secret, KeySecret::shared("s"));
        let c = Config::from_json(r#"{"store": {}}"#).unwrap();
        assert_eq!(c.store, Deployment::default());
    }

    #[test]
    fn url_or_cluster() {
        let e = Config::from_json(r#"{"store": {"redis": {}}}"#).unwrap_err();
        assert!(
            e.to_string().starts_with("store: `redis.url` is required"),
            "{e}"
        );
        let e = Config::from_json(
            r#"{"store": {"redis": {"url": "redis://a", "cluster": ["redis://b"]}}}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("not several"), "{e}");
        let e = Config::from_json(r#"{"store": {"redis": {"url": "redis://a", "nope": 1}}}"#)
            .unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
    }

    #[test]
    fn a_policy_alone_refuses_a_store_section_a_setup_takes_it() {
        let text = r#"{"tiers": {"t": {"limits": [{"name": "m", "capacity": 1, "window": "1m"}]}},
            "default_tier": "t", "store": {"max_keys": 5}}"#;
        let e = Policy::from_json(text).unwrap_err();
        assert!(e.to_string().starts_with("store:"), "{e}");
        assert!(e.to_string().contains("Setup::from_file"), "{e}");
        let setup = Setup::from_json(text).unwrap();
        assert_eq!(setup.deployment.max_keys, 5);
        let e = Setup::from_json(&text.replace("\"max_keys\": 5", "\"max_keys\": 0")).unwrap_err();
        assert!(e.to_string().starts_with("store.max_keys:"), "{e}");
    }
}
