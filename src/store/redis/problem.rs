//! What went wrong with Redis, in words a person can act on; said once per
//! outage (and once when it ends), counted by cause.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::Inner;

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
        if text.contains("certificate")
            || text.contains("TLS")
            || text.contains("tls")
            || text.contains("handshake")
        {
            return RedisProblem::Tls(text);
        }
        RedisProblem::Other(text)
    }
}

impl Inner {
    /// Books a failure: counted by cause, and logged when the cause differs
    /// from the one already said for this outage (so an outage is said
    /// once, however many calls fail).
    pub(super) fn trouble(&self, problem: RedisProblem, while_: &'static str) {
        #[cfg(feature = "metrics")]
        metrics::counter!("tierlimit_redis_errors_total", "cause" => problem.cause()).increment(1);
        let mut last = self
            .problem
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let new = last.as_ref().map(RedisProblem::cause) != Some(problem.cause());
        if last.is_none() {
            let _ = self.outage_since.compare_exchange(
                0,
                self.millis() + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            self.troubled.store(true, Ordering::Release);
            #[cfg(feature = "metrics")]
            metrics::gauge!("tierlimit_redis_ready").set(0.0);
        }
        if new {
            #[cfg(feature = "tracing")]
            tracing::warn!(
                target: "tierlimit",
                redis = %self.address,
                cause = problem.cause(),
                "Redis {} failed while {while_}: {problem}. Until it answers, decisions follow \
                 on_error; this is said again only if the cause changes",
                self.address,
            );
            #[cfg(not(feature = "tracing"))]
            let _ = while_;
        }
        *last = Some(problem);
    }

    /// Books a success: when Redis was failing, says that it answers again
    /// (once) and how long it failed.
    pub(super) fn answering(&self) {
        if !self.troubled.load(Ordering::Acquire) {
            return;
        }
        let mut last = self
            .problem
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(was) = last.take() else {
            return;
        };
        self.troubled.store(false, Ordering::Release);
        let since = self.outage_since.swap(0, Ordering::Relaxed);
        let lasted = Duration::from_millis(self.millis().saturating_sub(since.saturating_sub(1)));
        #[cfg(feature = "metrics")]
        metrics::gauge!("tierlimit_redis_ready").set(1.0);
        #[cfg(feature = "tracing")]
        tracing::warn!(
            target: "tierlimit",
            redis = %self.address,
            "Redis {} answers again, after failing for {lasted:?} (last cause: {was})",
            self.address,
        );
        #[cfg(not(feature = "tracing"))]
        let _ = (was, lasted);
    }

    /// The problem now, if any.
    pub(super) fn problem_now(&self) -> Option<RedisProblem> {
        if !self.troubled.load(Ordering::Acquire) {
            return None;
        }
        self.problem.lock().ok().and_then(|p| p.clone())
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
        assert_eq!(
            RedisProblem::of(&tls),
            RedisProblem::Tls("invalid peer certificate: UnknownIssuer".into())
        );
        assert_eq!(
            RedisProblem::of(&err(redis::ErrorKind::Io, "boom")).cause(),
            "other"
        );
    }
}
