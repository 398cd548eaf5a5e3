//! What went wrong with Redis, in words a person can act on; said once per
//! outage (and once when it ends), counted by cause.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What is wrong with the store's Redis: the cause of a failed connection
/// or script call, as [`RedisStore::problem`](super::RedisStore::problem)
/// reports it and the log says it (once per outage, with the address,
/// never a password).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RedisProblem {
    /// The server refused the user name or password (`AUTH` failed).
    #[error("wrong user name or password: the server refused AUTH")]
    WrongPassword,
    /// The server asks for a password and none was given (`NOAUTH`).
    #[error(
        "the server requires a password and none was given: put it in the URL \
         (`redis://:PASSWORD@host:port` or `redis://USER:PASSWORD@host:port`)"
    )]
    PasswordMissing,
    /// The ACL user may not run a command the store needs, or touch its
    /// keys (`NOPERM`); the text is the server's, naming the command.
    #[error("the user lacks a permission the store needs ({0}); see the README's ACL rule")]
    NoPermission(String),
    /// Nothing listens at the address.
    #[error("connection refused: is Redis running and listening there?")]
    Refused,
    /// The host name does not resolve.
    #[error("unknown host: {0}")]
    UnknownHost(String),
    /// TLS failed: the text names the problem (an untrusted or expired
    /// certificate, a name mismatch, a missing client certificate, …).
    #[error("TLS failed: {0}")]
    Tls(String),
    /// No answer within this time.
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
    /// Redis is at `maxmemory` with `noeviction` and refuses writes
    /// (`OOM`): decisions follow `on_error` until it has room.
    #[error(
        "Redis is out of memory (maxmemory reached, writes refused with OOM); \
         decisions follow on_error until it has room"
    )]
    OutOfMemory,
    /// Anything else, in redis-rs's words.
    #[error("{0}")]
    Other(String),
}

impl RedisProblem {
    /// A short name of the cause: the `cause` label of the metric
    /// `tierlimit_redis_errors_total`.
    pub fn cause(&self) -> &'static str {
        match self {
            RedisProblem::WrongPassword => "wrong_password",
            RedisProblem::PasswordMissing => "password_missing",
            RedisProblem::NoPermission(_) => "no_permission",
            RedisProblem::Refused => "refused",
            RedisProblem::UnknownHost(_) => "unknown_host",
            RedisProblem::Tls(_) => "tls",
            RedisProblem::TimedOut(_) => "timeout",
            RedisProblem::OutOfMemory => "out_of_memory",
            RedisProblem::Other(_) => "other",
        }
    }

    /// The cause of `e`.
    pub(super) fn of(e: &redis::RedisError) -> RedisProblem {
        let text = e.to_string();
        match (e.kind(), e.code()) {
            (redis::ErrorKind::AuthenticationFailed, _) | (_, Some("WRONGPASS")) => {
                return RedisProblem::WrongPassword
            }
            (_, Some("NOAUTH")) => return RedisProblem::PasswordMissing,
            (_, Some("NOPERM")) => {
                return RedisProblem::NoPermission(e.detail().unwrap_or(&text).to_owned())
            }
            (_, Some("OOM")) => return RedisProblem::OutOfMemory,
            (redis::ErrorKind::MasterNameNotFoundBySentinel, _) => {
                return RedisProblem::Other(
                    "the Sentinels name no master by that name that answers as one \
                     (a failover under way, or a wrong `sentinel.master`)"
                        .into(),
                )
            }
            (redis::ErrorKind::EmptySentinelList, _) => {
                return RedisProblem::Other("no Sentinel of `sentinel.urls` answered".into())
            }
            _ => {}
        }
        if e.is_connection_refusal() {
            return RedisProblem::Refused;
        }
        if e.is_timeout() {
            return RedisProblem::TimedOut(Duration::ZERO);
        }
        // Errors raised inside the script, and the I/O errors redis-rs
        // wraps, say their cause in their text only.
        if text.contains("NOPERM") || text.contains("no permissions to") {
            return RedisProblem::NoPermission(
                text.split_once("NOPERM")
                    .map_or(text.as_str(), |(_, rest)| rest)
                    .trim_start_matches([':', ' '])
                    .to_owned(),
            );
        }
        if text.contains("OOM command not allowed") {
            return RedisProblem::OutOfMemory;
        }
        if text.contains("unauthenticated") {
            return RedisProblem::PasswordMissing;
        }
        if text.contains("failed to lookup address") || text.contains("Name or service not known") {
            return RedisProblem::UnknownHost(text);
        }
        let lower = text.to_ascii_lowercase();
        if ["certificate", "tls", "handshake", "alert"]
            .iter()
            .any(|w| lower.contains(w))
        {
            return RedisProblem::Tls(tls_words(&text));
        }
        RedisProblem::Other(text)
    }
}

/// The health of one Redis (a server, or a node of a cluster) as the log
/// tells it: what is wrong now, and what was said of it in this outage.
#[derive(Debug)]
pub(super) struct Watch {
    /// The address the log names (no password).
    address: String,
    /// Whether to move the `tierlimit_redis_ready` gauge (the store's own
    /// watch; a cluster node's does not).
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    gauge: bool,
    trouble: Mutex<Trouble>,
    /// Whether `trouble` holds a problem (read on every call, without the
    /// lock).
    troubled: AtomicBool,
    /// When the outage started (its `Instant`), while there is one.
    since: Mutex<Option<Instant>>,
    said_connected: AtomicBool,
}

/// What is wrong, and what the log said of it in this outage.
#[derive(Debug, Default)]
struct Trouble {
    now: Option<RedisProblem>,
    /// The causes said in this outage.
    said: Vec<&'static str>,
}

impl Watch {
    pub(super) fn new(address: String, gauge: bool) -> Watch {
        Watch {
            address,
            gauge,
            trouble: Mutex::new(Trouble::default()),
            troubled: AtomicBool::new(false),
            since: Mutex::new(None),
            said_connected: AtomicBool::new(false),
        }
    }

    pub(super) fn address(&self) -> &str {
        &self.address
    }

    /// Books a failure: counted by cause; the first of an outage is
    /// logged, and later ones only when their cause needs someone to act
    /// and was not said yet (an outage is said once, however many calls
    /// fail).
    pub(super) fn trouble(&self, problem: RedisProblem, while_: &'static str) {
        #[cfg(feature = "metrics")]
        metrics::counter!("tierlimit_redis_errors_total", "cause" => problem.cause()).increment(1);
        let mut t = self
            .trouble
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let first = t.now.is_none() && t.said.is_empty();
        if first {
            if let Ok(mut since) = self.since.lock() {
                since.get_or_insert_with(Instant::now);
            }
            self.troubled.store(true, Ordering::Release);
            #[cfg(feature = "metrics")]
            if self.gauge {
                metrics::gauge!("tierlimit_redis_ready").set(0.0);
            }
        }
        if first || (problem.needs_someone() && !t.said.contains(&problem.cause())) {
            t.said.push(problem.cause());
            #[cfg(feature = "tracing")]
            tracing::warn!(
                target: "tierlimit",
                redis = %self.address,
                cause = problem.cause(),
                "Redis {} failed while {while_}: {problem} (until it answers, decisions follow \
                 on_error)",
                self.address,
            );
            #[cfg(not(feature = "tracing"))]
            let _ = while_;
        }
        t.now = Some(problem);
    }

    /// Books a success: when Redis was failing, says that it answers again
    /// (once) and how long it failed.
    pub(super) fn answering(&self) {
        self.answered(None);
    }

    /// [`Watch::answering`] for a call sent at `sent`: an answer to a call
    /// sent before the outage began (one in flight when the server died)
    /// does not end it.
    pub(super) fn answered(&self, sent: Option<Instant>) {
        if !self.troubled.load(Ordering::Acquire) {
            return;
        }
        if let (Some(sent), Ok(since)) = (sent, self.since.lock()) {
            if since.is_some_and(|since| sent < since) {
                return;
            }
        }
        let mut t = self
            .trouble
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(was) = t.now.take() else {
            return;
        };
        t.said.clear();
        self.troubled.store(false, Ordering::Release);
        let lasted = self
            .since
            .lock()
            .ok()
            .and_then(|mut s| s.take())
            .map(|s| s.elapsed())
            .unwrap_or_default();
        #[cfg(feature = "metrics")]
        if self.gauge {
            metrics::gauge!("tierlimit_redis_ready").set(1.0);
        }
        #[cfg(feature = "tracing")]
        tracing::warn!(
            target: "tierlimit",
            redis = %self.address,
            "Redis {} answers again, after failing for {lasted:.1?} (last cause: {was})",
            self.address,
        );
        #[cfg(not(feature = "tracing"))]
        let _ = (was, lasted);
    }

    /// Says the first connection (once), or the end of an outage.
    pub(super) fn connected(&self) {
        if self.troubled.load(Ordering::Acquire) {
            self.answering();
            return;
        }
        if !self.said_connected.swap(true, Ordering::Relaxed) {
            #[cfg(feature = "metrics")]
            if self.gauge {
                metrics::gauge!("tierlimit_redis_ready").set(1.0);
            }
            #[cfg(feature = "tracing")]
            tracing::info!(target: "tierlimit", redis = %self.address, "connected to Redis {}", self.address);
        }
    }

    /// The problem now, if any.
    pub(super) fn problem(&self) -> Option<RedisProblem> {
        if !self.troubled.load(Ordering::Acquire) {
            return None;
        }
        self.trouble.lock().ok().and_then(|t| t.now.clone())
    }
}

/// rustls's words for a certificate problem, with what they mean first.
fn tls_words(text: &str) -> String {
    let meaning = [
        (
            "UnknownIssuer",
            "the server's certificate is not from a CA this client trusts \
             (set store.redis.tls.ca_file to the CA that signed it)",
        ),
        (
            "NotValidForName",
            "the server's certificate is not for the host name in the URL",
        ),
        ("Expired", "the server's certificate has expired"),
        ("NotValidYet", "the server's certificate is not valid yet"),
        ("Revoked", "the server's certificate was revoked"),
        (
            "CertificateRequired",
            "the server requires a client certificate \
             (set store.redis.tls.cert_file and key_file)",
        ),
        (
            "UnknownCA",
            "the server does not trust the client certificate's CA",
        ),
        (
            "BadCertificate",
            "the server refused the client certificate",
        ),
    ]
    .into_iter()
    .find(|(k, _)| text.contains(k));
    match meaning {
        Some((_, m)) => format!("{m} ({text})"),
        None => text.to_owned(),
    }
}

impl RedisProblem {
    /// Whether the cause lasts until someone acts (a password, a
    /// permission, a certificate, a host name, memory), rather than passing
    /// by itself (a refused connection, a timeout, a dropped connection):
    /// such a cause is said even when the outage was said already.
    fn needs_someone(&self) -> bool {
        matches!(
            self,
            RedisProblem::WrongPassword
                | RedisProblem::PasswordMissing
                | RedisProblem::NoPermission(_)
                | RedisProblem::UnknownHost(_)
                | RedisProblem::Tls(_)
                | RedisProblem::OutOfMemory
        )
    }
}

#[cfg(test)]
mod tests {
    use super::RedisProblem;

    fn err(kind: redis::ErrorKind, text: &'static str) -> redis::RedisError {
        redis::RedisError::from((kind, text))
    }

    #[test]
    fn causes_are_read_from_what_redis_rs_says() {
        assert_eq!(
            RedisProblem::of(&err(redis::ErrorKind::AuthenticationFailed, "x")),
            RedisProblem::WrongPassword
        );
        let refused =
            redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(RedisProblem::of(&refused), RedisProblem::Refused);
        let dns = redis::RedisError::from(std::io::Error::other(
            "failed to lookup address information: Name or service not known",
        ));
        assert_eq!(RedisProblem::of(&dns).cause(), "unknown_host");
        let tls = redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "invalid peer certificate: UnknownIssuer",
        ));
        match RedisProblem::of(&tls) {
            RedisProblem::Tls(w) => {
                assert!(w.contains("not from a CA this client trusts"), "{w}");
                assert!(w.contains("UnknownIssuer"), "{w}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            RedisProblem::of(&err(redis::ErrorKind::Io, "boom")).cause(),
            "other"
        );
    }
}
