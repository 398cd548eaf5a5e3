//! The other side of the wire (feature `client`): an HTTP client layer that
//! waits what rate-limited APIs ask, never wastes a request and never
//! hammers.
//!
//! [`RetryLayer`] wraps any `tower` HTTP client (`Service<http::Request<B>>`,
//! e.g. hyper-util's); with feature `reqwest`, [`RetryMiddleware`] does the
//! same for `reqwest-middleware`. Both share one [`RetryPolicy`] and one
//! state (pacing, retry budget, statistics) across every clone.
//!
//! # What it does with a response
//!
//! * **429** is retried for any method (the request was not processed);
//!   **503** for idempotent methods only, unless
//!   [`RetryPolicy::retry_503`] says otherwise. Everything else is returned
//!   as is.
//! * **How long to wait** comes from the response, in every dialect this
//!   crate and the big APIs send: `Retry-After` (seconds or an HTTP-date),
//!   `retry-after-ms`, else the reset of the limits reported spent
//!   (`X-RateLimit-*`, `RateLimit-*`, `Burst-RateLimit-*`,
//!   `x-ratelimit-*-requests` / `-tokens`, IETF `RateLimit` with `r`/`t`).
//!   Reset values are told apart safely: at or above 10^12 Unix
//!   milliseconds, at or above 10^9 Unix seconds, below that a delay in
//!   seconds; `1m30s` / `12ms` durations are read too. A header wait gets up
//!   to [`RetryPolicy::jitter`] of itself added (at most 1 s), so a fleet
//!   does not come back in the same millisecond.
//! * **When nothing says how long**, it backs off exponentially with full
//!   jitter: a random wait up to `base × 2^(attempt-1)` (1 s, 2 s, 4 s…,
//!   at most [`RetryPolicy::backoff`]'s maximum).
//! * **It gives up** with a typed [`GaveUp`] error carrying the last
//!   response when: the wait asked for is longer than
//!   [`RetryPolicy::max_wait`] (default 2 minutes; it fails at once rather
//!   than sleeping for an hour); retries are exhausted
//!   ([`RetryPolicy::max_retries`], default 5); the wait would pass the
//!   [`RetryPolicy::deadline`]; the shared retry budget is spent; or the
//!   request body cannot be sent again ([`ReplayBody`]).
//!
//! # Pacing
//!
//! Requests to the same host with the same credentials (`authorization`,
//! `x-api-key`; see [`RetryPolicy::key_headers`]) share one budget, in
//! every clone of the layer:
//!
//! * When a response says the budget is spent (a remaining figure of 0
//!   with a known reset, or a 429 with a wait), later requests wait until
//!   the reset **before** being sent, instead of earning a 429.
//! * **Requests in flight count against what is left**: when the last
//!   response said `n` remain until its reset, no more than `n` requests
//!   are on their way at once before that reset; the others wait until
//!   one of those is answered (and ask again with what it says) or until
//!   the reset. Concurrent workers then do not all try the last unit, and
//!   none sleeps through a window that still has room.
//! * **A 429 that says nothing** (no `Retry-After`, no reset) holds every
//!   request of the key, not only the one refused, and from then on sends
//!   are spaced at the rate the server was seen to admit: the requests
//!   sent in the second before the refusal and admitted, counting those
//!   answered after it (a server that queues requests, as nginx's
//!   `limit_req` without `nodelay`, answers them late). The spacing is
//!   made a quarter longer at each new refusal (at most once a second),
//!   and shorter at each admission from a second after that, to find the
//!   limit again: by 1 %, doubled every ten admissions in a row up to 4 %,
//!   and as many times more as the spacing is longer than 200 ms (up to
//!   ten times, 25 % at most), so that a long spacing is not probed for a
//!   minute.
//!   A client that is told nothing cannot find the limit without touching
//!   it: expect about one 429 every few seconds.
//! * **A refusal that says to retry at once** (`Retry-After: 0`, which
//!   Flask-Limiter's sliding-window counter sends) says nothing: the
//!   client takes the reset of the limits reported spent instead, or
//!   treats it as a bare 429. So is a refusal earned by a request sent at
//!   a reset the client waited for (once the early reading below is off):
//!   that server's resets do not say when it has room, and its requests
//!   are spaced as above as well.
//! * **Whole-second resets are "no later than".** A reset given as a
//!   whole Unix second (`X-RateLimit-Reset`, `Burst-RateLimit-Reset`...)
//!   is rounded up by up to a second. With a window of whole seconds the
//!   real instant is the newest request's instant plus the window, so it
//!   has the fraction of a second that request was sent at: the client
//!   takes the reset as the second before the announced one plus that
//!   fraction (and 10 ms), never more than a second early. A request
//!   that earns a 429 at such an instant (a fixed window ending on the
//!   second, a window that is not whole seconds) turns this off for its
//!   host and credentials: one 429, then resets are taken as they are.
//!   A request that must wait sleeps and then asks again, so that what
//!   responses said meanwhile counts.
//!
//! # Retry budget
//!
//! Retries are limited across all clones to a share of the requests
//! ([`RetryPolicy::budget`]: by default 20 % of requests plus 10 retries a
//! second), so a fleet of clients cannot turn an outage into a storm.
//!
//! # Bodies
//!
//! A retried request is sent again with a copy of its body, which only
//! bodies that are buffered can give: see [`ReplayBody`] (implemented for
//! `()`, `String`, `Vec<u8>`, `Bytes`, `http_body_util::Full` and `Empty`,
//! and axum's `Body` when it is empty). A request whose body cannot be
//! replayed is sent once; if it is refused, the refusal comes back as
//! [`GiveUpReason::NotReplayable`] with the response as it was.
//!
//! # Observability
//!
//! Every wait is a `tracing` event (feature `tracing`, target
//! `tierlimit::client`, DEBUG); with feature `metrics`:
//! `tierlimit_client_retries_total`, `tierlimit_client_waits_total`
//! (`cause`: `retry` or `pace`), the histogram
//! `tierlimit_client_wait_seconds` (`cause`) and
//! `tierlimit_client_gave_up_total` (`reason`). [`RetryLayer::stats`] has
//! the same figures.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tierlimit::client::{RetryLayer, RetryPolicy};
//!
//! let layer = RetryLayer::new(
//!     RetryPolicy::default()
//!         .max_retries(5)
//!         .max_wait(Duration::from_secs(120))
//!         .deadline(Duration::from_secs(300)),
//! );
//! // let client = tower::ServiceBuilder::new().layer(layer).service(hyper_client);
//! # let _ = layer;
//! ```

mod headers;
#[cfg(feature = "reqwest")]
mod reqwest;

use std::collections::hash_map::RandomState;
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hash, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use http::{HeaderMap, HeaderName, Method, Request, Response, StatusCode};
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use crate::clock::{Clock, SystemClock, Timestamp};

pub use headers::{Advice, MAX_FIGURE};
#[cfg(feature = "reqwest")]
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
pub use reqwest::RetryMiddleware;

/// Which 503 responses are retried.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Retry503 {
    /// Only for idempotent methods (GET, HEAD, OPTIONS, TRACE, PUT,
    /// DELETE): the server may have done part of the work.
    #[default]
    Idempotent,
    /// For every method.
    Always,
    /// Never.
    Never,
}

/// How retries share a budget: at most `ratio` of the requests, plus
/// `min_per_sec` retries a second (at most ten seconds' worth saved up).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryBudget {
    /// Retries earned by each request (0.2: one retry per five requests).
    pub ratio: f64,
    /// Retries always allowed per second, whatever the ratio.
    pub min_per_sec: f64,
}

impl RetryBudget {
    /// The most retries saved up: ten seconds' worth.
    fn most(&self) -> f64 {
        self.min_per_sec.max(1.0) * 10.0
    }
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            ratio: 0.2,
            min_per_sec: 10.0,
        }
    }
}

/// How the client retries and paces itself.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    max_retries: u32,
    max_wait: Duration,
    deadline: Option<Duration>,
    backoff_base: Duration,
    backoff_max: Duration,
    jitter: f64,
    retry_503: Retry503,
    budget: Option<RetryBudget>,
    pacing: bool,
    key_headers: Vec<HeaderName>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 5,
            max_wait: Duration::from_secs(120),
            deadline: None,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            jitter: 0.1,
            retry_503: Retry503::Idempotent,
            budget: Some(RetryBudget::default()),
            pacing: true,
            key_headers: vec![
                http::header::AUTHORIZATION,
                HeaderName::from_static("x-api-key"),
            ],
        }
    }
}

impl RetryPolicy {
    /// Retries after the first attempt (default 5, as the seeds' samples).
    pub fn max_retries(mut self, n: u32) -> Self {
        self.max_retries = n;
        self
    }

    /// The longest wait the client accepts (default 2 minutes); a response
    /// asking for longer fails at once with [`GiveUpReason::WaitTooLong`].
    pub fn max_wait(mut self, d: Duration) -> Self {
        self.max_wait = d;
        self
    }

    /// The longest a call may take, waits included (default: none).
    pub fn deadline(mut self, d: Duration) -> Self {
        self.deadline = Some(d);
        self
    }

    /// Exponential backoff when no header says how long: a random wait up
    /// to `base × 2^(attempt-1)`, at most `max` (default 1 s and 60 s).
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.backoff_base = base;
        self.backoff_max = max.max(base);
        self
    }

    /// The share of a header's wait added at random (0 ..= 1, default 0.1;
    /// never more than 1 s).
    pub fn jitter(mut self, fraction: f64) -> Self {
        self.jitter = if fraction.is_finite() {
            fraction.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self
    }

    /// Which 503 responses are retried (default: idempotent methods).
    pub fn retry_503(mut self, which: Retry503) -> Self {
        self.retry_503 = which;
        self
    }

    /// The retry budget shared by every clone (`None`: unlimited).
    pub fn budget(mut self, budget: Option<RetryBudget>) -> Self {
        self.budget = budget;
        self
    }

    /// Whether requests wait for a spent budget's reset before being sent
    /// (default on).
    pub fn pacing(mut self, on: bool) -> Self {
        self.pacing = on;
        self
    }

    /// Request headers that tell callers apart for pacing (default
    /// `authorization` and `x-api-key`; with none, one pace per host).
    pub fn key_headers(mut self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        self.key_headers = names.into_iter().collect();
        self
    }
}

/// Why the client gave up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum GiveUpReason {
    /// The response (or the pace of earlier ones) asked for a wait longer
    /// than [`RetryPolicy::max_wait`].
    WaitTooLong {
        /// The wait asked for.
        asked: Duration,
    },
    /// Every retry was used and the last answer still said "later".
    RetriesExhausted,
    /// Waiting would pass the call's deadline.
    Deadline {
        /// The wait asked for.
        asked: Duration,
    },
    /// The retry budget shared by every clone is spent.
    BudgetSpent,
    /// The request body cannot be sent twice (see [`ReplayBody`]).
    NotReplayable,
}

impl GiveUpReason {
    /// A short label (`wait_too_long`, `retries_exhausted`, `deadline`,
    /// `budget`, `not_replayable`), as in metrics.
    pub fn label(&self) -> &'static str {
        match self {
            GiveUpReason::WaitTooLong { .. } => "wait_too_long",
            GiveUpReason::RetriesExhausted => "retries_exhausted",
            GiveUpReason::Deadline { .. } => "deadline",
            GiveUpReason::BudgetSpent => "budget",
            GiveUpReason::NotReplayable => "not_replayable",
        }
    }
}

/// The client gave up: why, after how many attempts, and the last response
/// (none when it gave up before sending, pacing on an earlier one).
pub struct GaveUp<B> {
    /// Why.
    pub reason: GiveUpReason,
    /// Requests sent.
    pub attempts: u32,
    /// The last response, as it came.
    pub response: Option<Response<B>>,
}

impl<B> fmt::Debug for GaveUp<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GaveUp")
            .field("reason", &self.reason)
            .field("attempts", &self.attempts)
            .field("status", &self.response.as_ref().map(|r| r.status()))
            .finish()
    }
}

impl<B> fmt::Display for GaveUp<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "gave up after {} attempt(s): ", self.attempts)?;
        match self.reason {
            GiveUpReason::WaitTooLong { asked } => {
                write!(f, "the server asked to wait {asked:?}, longer than allowed")
            }
            GiveUpReason::RetriesExhausted => write!(f, "every retry was refused"),
            GiveUpReason::Deadline { asked } => {
                write!(f, "waiting {asked:?} would pass the deadline")
            }
            GiveUpReason::BudgetSpent => write!(f, "the retry budget is spent"),
            GiveUpReason::NotReplayable => {
                write!(f, "the request body cannot be sent again")
            }
        }?;
        if let Some(r) = &self.response {
            write!(f, " (last status {})", r.status())?;
        }
        Ok(())
    }
}

impl<B> std::error::Error for GaveUp<B> {}

/// The error of a [`RetryClient`]: the inner client's, or a give-up. Both
/// are transparent: `Display` and `source()` are those of the error inside.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum ClientError<E, B> {
    /// The inner client failed (connection, timeout...): not retried here.
    #[error(transparent)]
    Inner(E),
    /// Rate limited, and the client gave up.
    #[error(transparent)]
    GaveUp(GaveUp<B>),
}

impl<E: fmt::Debug, B> fmt::Debug for ClientError<E, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Inner(e) => f.debug_tuple("Inner").field(e).finish(),
            ClientError::GaveUp(g) => f.debug_tuple("GaveUp").field(g).finish(),
        }
    }
}

/// A request body that can be sent again: `replay` gives a copy when the
/// body is buffered, `None` when it is a stream that can be read once.
pub trait ReplayBody: Sized {
    /// A copy of the body to send again, if it can be had.
    fn replay(&self) -> Option<Self>;
}

macro_rules! replay_by_clone {
    ($($t:ty),*) => {$(
        impl ReplayBody for $t {
            fn replay(&self) -> Option<Self> {
                Some(self.clone())
            }
        }
    )*};
}

replay_by_clone!((), String, Vec<u8>, Bytes);

impl<D: bytes::Buf + Clone> ReplayBody for http_body_util::Full<D> {
    fn replay(&self) -> Option<Self> {
        Some(self.clone())
    }
}

impl<D> ReplayBody for http_body_util::Empty<D> {
    fn replay(&self) -> Option<Self> {
        Some(http_body_util::Empty::new())
    }
}

#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
impl ReplayBody for axum::body::Body {
    /// An empty body is replayed; any other is a stream read once.
    fn replay(&self) -> Option<Self> {
        use http_body::Body as _;
        (self.size_hint().exact() == Some(0)).then(axum::body::Body::empty)
    }
}

/// Counters of everything the client did (shared by every clone).
#[derive(Debug, Default)]
pub struct Stats {
    attempts: AtomicU64,
    retries: AtomicU64,
    refusals: AtomicU64,
    waits: AtomicU64,
    waited_ns: AtomicU64,
    gave_up: AtomicU64,
}

/// A copy of the [`Stats`] figures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StatsSnapshot {
    /// Requests sent (first attempts and retries).
    pub attempts: u64,
    /// Retries sent.
    pub retries: u64,
    /// 429 and retryable 503 responses seen.
    pub refusals: u64,
    /// Waits (before a retry, or pacing before a send).
    pub waits: u64,
    /// Total time waited.
    pub waited: Duration,
    /// Calls given up.
    pub gave_up: u64,
}

impl Stats {
    /// The figures now.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            attempts: self.attempts.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            refusals: self.refusals.load(Ordering::Relaxed),
            waits: self.waits.load(Ordering::Relaxed),
            waited: Duration::from_nanos(self.waited_ns.load(Ordering::Relaxed)),
            gave_up: self.gave_up.load(Ordering::Relaxed),
        }
    }
}

/// What to do after a response.
#[derive(Debug, PartialEq)]
pub(crate) enum Step {
    /// Hand the response to the caller.
    Done,
    /// Send again after this wait.
    Retry(Duration),
    /// Stop, for this reason.
    GiveUp(GiveUpReason),
}

/// What a call does next, once a response's [`Step`] meets what it has
/// to send again (`T`: a copy of the request or of its body).
pub(crate) enum Next<T> {
    /// Hand the response to the caller.
    Done,
    /// Wait, then send this copy.
    Retry(Duration, T),
    /// Give up for this reason.
    GiveUp(GiveUpReason),
}

impl Step {
    /// The next move, given the copy to send again if there is one.
    pub(crate) fn with<T>(self, again: Option<T>) -> Next<T> {
        match self {
            Step::Done => Next::Done,
            Step::Retry(wait) => match again {
                Some(copy) => Next::Retry(wait, copy),
                None => Next::GiveUp(GiveUpReason::NotReplayable),
            },
            Step::GiveUp(reason) => Next::GiveUp(reason),
        }
    }
}

/// Pacing entries kept before expired ones are swept.
const PACE_SWEEP_AT: usize = 4096;

/// Admissions remembered per key, to learn the rate a server takes.
const ADMITTED_KEPT: usize = 64;

/// What the client knows of one (host, credentials) budget.
#[derive(Debug)]
struct Pace {
    /// Requests wait until then: a reset reported spent, a `Retry-After`,
    /// or the hold after a bare 429.
    until: Instant,
    /// Since a 429 that said nothing: the least time between two sends
    /// (the rate the server was seen to take), and the next free slot.
    spacing: Option<Duration>,
    next_slot: Instant,
    /// Admissions in a row since the last slowing down: the more, the
    /// faster the spacing is shortened (see `Shared::learn`).
    streak: u32,
    /// When the last requests admitted were sent (at most
    /// [`ADMITTED_KEPT`], in the order their answers came).
    admitted: std::collections::VecDeque<Instant>,
    /// When the spacing was last made longer (once per second at most:
    /// the 429s of one burst are one sign, not several), and the spacing
    /// it was then made at least (a quarter more than before).
    slowed: Option<(Instant, Duration)>,
    /// Requests sent and not answered yet.
    in_flight: u64,
    /// Whether resets given as whole Unix seconds are read earlier (see
    /// `Shared::learn`); off for good once that earned a 429.
    early: bool,
    /// The last reset (or other wait) requests were let go at.
    released: Option<Instant>,
    /// The least remaining figure of the last response and until when it
    /// holds (its reset): no more than that many are sent before then.
    left: Option<(u64, Instant)>,
    /// Told when a request in flight is answered (or fails): the requests
    /// held back because the others in flight would use up what is left
    /// ask again then, not at the reset.
    freed: Arc<tokio::sync::Notify>,
}

impl Pace {
    fn new(now: Instant) -> Self {
        Pace {
            until: now,
            spacing: None,
            next_slot: now,
            streak: 0,
            admitted: std::collections::VecDeque::new(),
            slowed: None,
            in_flight: 0,
            early: true,
            released: None,
            left: None,
            freed: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// Whether a second has passed since the spacing was last made longer
    /// (or it never was).
    fn settled(&self, now: Instant) -> bool {
        self.slowed
            .is_none_or(|(t, _)| now.saturating_duration_since(t) >= Duration::from_secs(1))
    }

    /// Whether nothing is known any more that would hold a request.
    fn idle(&self, now: Instant) -> bool {
        self.until <= now
            && self.spacing.is_none()
            && self.in_flight == 0
            && self.left.is_none_or(|(_, reset)| reset <= now)
    }
}

/// The spacing of the rate a server was seen to admit in the second up to
/// `at`: one over the requests sent then and admitted (at least one).
fn admitted_rate(admitted: &std::collections::VecDeque<Instant>, at: Instant) -> Duration {
    let second_before = at.checked_sub(Duration::from_secs(1)).unwrap_or(at);
    let n = admitted
        .iter()
        .filter(|t| **t > second_before && **t <= at)
        .count()
        .max(1);
    Duration::from_secs(1) / u32::try_from(n).unwrap_or(u32::MAX)
}

/// How to read the resets of a response to a request sent at `sent_wall`
/// and answered `ago` later: as they are, or (`early`, for resets given as
/// whole Unix seconds) as the second before the announced one plus the
/// fraction of a second the request was sent at, and 10 ms (see
/// `Shared::learn`), never more than a second early.
fn reading(early: bool, sent_wall: Timestamp, ago: Duration) -> impl Fn(Duration) -> Duration {
    // The fraction of a second the request was sent at.
    let frac = Duration::from_nanos(sent_wall.as_nanos() % 1_000_000_000);
    move |reset: Duration| {
        // Sent on a whole second: the real instant is the announced one.
        if !early || reset.is_zero() || frac.is_zero() {
            return reset;
        }
        // The wall clock now is `sent_wall + ago`: the announced whole
        // second is `reset` after it; the real instant is the second
        // before that, plus `frac`.
        let now_frac = Duration::from_nanos((sent_wall + ago).as_nanos() % 1_000_000_000);
        let whole = Duration::from_secs((reset + now_frac).as_secs_f64().round() as u64);
        let earlier = (whole + frac + Duration::from_millis(10))
            .saturating_sub(Duration::from_secs(1))
            .saturating_sub(now_frac);
        reset.min(earlier.max(reset.saturating_sub(Duration::from_secs(1))))
    }
}

/// A request of a key counted in flight until dropped (answered, failed or
/// cancelled).
pub(crate) struct Flight<'a> {
    shared: &'a Shared,
    key: u64,
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        if let Some(mut p) = self.shared.pace.get_mut(&self.key) {
            p.in_flight = p.in_flight.saturating_sub(1);
            // The requests held for this one were registered under the
            // entry's lock (see `Shared::pace`): none misses this.
            p.freed.notify_waiters();
        }
    }
}

/// Why a request may not be sent yet (see [`Shared::pace`]).
pub(crate) struct Hold {
    /// Until when, at the latest, it waits.
    wait: Duration,
    /// Set when the requests in flight hold it: it asks again as soon as
    /// one of them is answered.
    freed: Option<Pin<Box<tokio::sync::futures::OwnedNotified>>>,
}

/// The state every clone shares.
pub(crate) struct Shared {
    policy: RetryPolicy,
    clock: Arc<dyn Clock>,
    /// What is known of each (host, credentials) budget.
    pace: DashMap<u64, Pace>,
    /// Retry budget: (tokens, last refill).
    budget: Mutex<(f64, Instant)>,
    stats: Stats,
    hasher: RandomState,
    rng: AtomicU64,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("policy", &self.policy)
            .field("paced_keys", &self.pace.len())
            .field("stats", &self.stats)
            .finish()
    }
}

fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

impl Shared {
    fn new(policy: RetryPolicy, clock: Arc<dyn Clock>) -> Self {
        let hasher = RandomState::new();
        let seed = hasher.hash_one(0x7469_6572_6c69_6d69u64) | 1;
        let burst = policy.budget.map_or(0.0, |b| b.min_per_sec);
        Shared {
            policy,
            clock,
            pace: DashMap::new(),
            budget: Mutex::new((burst, Instant::now())),
            stats: Stats::default(),
            hasher,
            rng: AtomicU64::new(seed),
        }
    }

    /// A uniform random number in [0, 1) (splitmix64 over a shared counter).
    fn random(&self) -> f64 {
        let mut z = self
            .rng
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    /// The pacing key of a request: its host and credentials.
    pub(crate) fn key(&self, authority: Option<&str>, headers: &HeaderMap) -> u64 {
        let mut h = self.hasher.build_hasher();
        authority.hash(&mut h);
        for name in &self.policy.key_headers {
            for v in headers.get_all(name) {
                v.as_bytes().hash(&mut h);
            }
            0xffu8.hash(&mut h);
        }
        h.finish()
    }

    /// A first attempt: counts it and earns retry budget.
    pub(crate) fn begin(&self) {
        if let Some(b) = self.policy.budget {
            if let Ok(mut s) = self.budget.lock() {
                s.0 = (s.0 + b.ratio).min(b.most());
            }
        }
    }

    /// Takes one retry from the budget, if there is one.
    fn withdraw(&self) -> bool {
        let Some(b) = self.policy.budget else {
            return true;
        };
        let Ok(mut s) = self.budget.lock() else {
            return true;
        };
        let now = Instant::now();
        let refill = now.saturating_duration_since(s.1).as_secs_f64() * b.min_per_sec;
        s.0 = (s.0 + refill).min(b.most());
        s.1 = now;
        if s.0 >= 1.0 {
            s.0 -= 1.0;
            true
        } else {
            false
        }
    }

    /// How long a request with this key must wait before being sent, and
    /// its place among the requests in flight (held until dropped). It
    /// waits while the budget is reported spent or held after a 429; while
    /// the requests already in flight would use up what the last response
    /// said is left (until that figure's reset); and, after a 429 that said
    /// nothing, for its slot at the rate the server was seen to take.
    ///
    /// A request that must wait is not counted anywhere: it sleeps (see
    /// [`Shared::hold`]), then asks again with what responses said
    /// meanwhile (`Err`); one that may go is counted in flight and takes
    /// its slot (`Ok`).
    pub(crate) fn pace(&self, key: u64) -> Result<Option<Flight<'_>>, Hold> {
        if !self.policy.pacing {
            return Ok(None);
        }
        let now = Instant::now();
        if self.pace.len() >= PACE_SWEEP_AT {
            self.pace.retain(|_, p| !p.idle(now));
        }
        let mut p = self.pace.entry(key).or_insert_with(|| Pace::new(now));
        let mut at = now.max(p.until);
        let mut freed = None;
        if let Some((left, reset)) = p.left {
            if reset <= at {
                p.left = None;
            } else if p.in_flight >= left {
                // What is left is taken by requests on their way: wait for
                // the reset, or for one of them to come back (registered
                // now, under the entry's lock, so no answer is missed).
                at = reset;
                let mut n = Box::pin(p.freed.clone().notified_owned());
                n.as_mut().enable();
                freed = Some(n);
            }
        }
        if p.spacing.is_some() {
            at = at.max(p.next_slot);
        }
        if at > now {
            return Err(Hold {
                wait: at - now,
                freed,
            });
        }
        if let Some(spacing) = p.spacing {
            p.next_slot = now + spacing;
        }
        p.in_flight += 1;
        drop(p);
        Ok(Some(Flight { shared: self, key }))
    }

    fn pace_until(&self, key: u64, wait: Duration) {
        if !self.policy.pacing {
            return;
        }
        let now = Instant::now();
        let Some(until) = now.checked_add(wait) else {
            return;
        };
        let mut p = self.pace.entry(key).or_insert_with(|| Pace::new(now));
        p.until = p.until.max(until);
    }

    /// What a response says of the key's budget: what is left until when,
    /// an admission (which slowly lifts the spacing a bare 429 set), or a
    /// 429 that said nothing (holds every request of the key, and spaces
    /// them at the rate admitted in the last second).
    ///
    /// Returns how to read the response's resets. A reset given as a whole
    /// Unix second is rounded up, by up to a second: taken as it is, each
    /// window would cost up to a second more than the limit needs. With a
    /// window of whole seconds (the usual case) the real instant is the
    /// newest request's instant plus the window, so it has the fraction
    /// of a second that request was sent at: the reset is read as the
    /// second before it plus that fraction (and 10 ms). A request that
    /// earns a 429 at such an instant turns this off for the key (a window
    /// that is not whole seconds, a fixed window ending on the second).
    fn learn(
        &self,
        key: u64,
        status: StatusCode,
        advice: &Advice,
        (sent_at, sent_wall): (Instant, Timestamp),
    ) -> impl Fn(Duration) -> Duration {
        let now = Instant::now();
        let ago = now.saturating_duration_since(sent_at);
        if !self.policy.pacing {
            // Nothing is kept for a key, and resets are taken as they are.
            return reading(false, sent_wall, ago);
        }
        let mut p = self.pace.entry(key).or_insert_with(|| Pace::new(now));
        // Refused when sent at a reset the key waited for: the reset was
        // read too early (which turns that reading off), or, when it was
        // not read early, the server's resets do not say when it has room
        // (e.g. a sliding-window counter announcing its fixed window's
        // end): then the refusal is taken as one that said nothing.
        let mut missed = false;
        if status == StatusCode::TOO_MANY_REQUESTS {
            let at_reset = p.released.is_some_and(|at| {
                sent_at + Duration::from_millis(1) >= at && sent_at <= at + Duration::from_secs(1)
            });
            if at_reset && p.early {
                p.early = false;
            } else {
                missed = at_reset;
            }
        }
        let read = reading(p.early && advice.whole_second, sent_wall, ago);
        if let Some((left, Some(reset))) = advice.least {
            if let Some(at) = now.checked_add(read(reset)) {
                // Responses of concurrent requests come back in any order:
                // while the figure known still holds, a larger one is an
                // older answer and is kept out.
                p.left = match p.left {
                    Some((known, until)) if until > now && known <= left => {
                        Some((known, until.max(at)))
                    }
                    _ => Some((left, at)),
                };
            }
        }
        if status != StatusCode::TOO_MANY_REQUESTS {
            if p.admitted.len() >= ADMITTED_KEPT {
                p.admitted.pop_front();
            }
            p.admitted.push_back(sent_at);
            if let Some(s) = p.spacing {
                // Probing for more: a little faster after each admission,
                // from a second after the last slowing down (before that,
                // admissions at a fast rate would undo it at once).
                let settled = p.settled(now);
                // 1 % at first, doubled every 10 admissions in a row (at
                // most 4 %): a spacing far too slow (set after a burst, or
                // by a server that had just been refused by others) comes
                // back within seconds, one near the limit is probed gently.
                // Spacings longer than 200 ms take steps as much longer (up
                // to ten times), so that probing goes by time, not by
                // admissions: at a second apart, 1 % an admission would
                // take a minute to find a limit five times faster.
                let mut faster = s;
                if settled {
                    p.streak = p.streak.saturating_add(1);
                    let step = 0.01 * f64::from(1u32 << (p.streak / 10).min(2));
                    let long = (s.as_secs_f64() / 0.2).clamp(1.0, 10.0);
                    faster = s.mul_f64(1.0 - (step * long).min(0.25));
                }
                // A request sent before the last slowing down and admitted
                // after it (a server that queues requests, as nginx's
                // `limit_req` without `nodelay`, answers them late): the
                // rate counted then was short of it.
                if let Some((at, least)) = p.slowed {
                    if sent_at <= at {
                        faster = faster.min(least.max(admitted_rate(&p.admitted, at)));
                    }
                }
                p.spacing = (faster >= Duration::from_millis(1)).then_some(faster);
            }
            return read;
        }
        if advice.wait().is_some() && !missed {
            return read;
        }
        let spacing = admitted_rate(&p.admitted, now);
        // Slower than before it was refused (once a second: the 429s of
        // one burst, and those earned while the server's window is still
        // full, are one sign, not several), and no faster than what was
        // admitted.
        let fresh = p.settled(now);
        let spacing = match p.spacing {
            Some(s) if fresh => {
                let slower = s.mul_f64(1.25);
                p.slowed = Some((now, slower));
                p.streak = 0;
                slower.max(spacing)
            }
            Some(s) => s.max(spacing),
            None => {
                p.slowed = Some((now, Duration::ZERO));
                spacing
            }
        };
        p.spacing = Some(spacing);
        p.until = p.until.max(now + spacing);
        p.next_slot = p.next_slot.max(now + spacing);
        read
    }

    /// Waits out a [`Hold`] of a call that started at `started`: until its
    /// instant, or until a request in flight is answered when that is what
    /// holds it. Gives up when the wait is longer than the cap or would
    /// pass the deadline; a hold by requests in flight is only checked
    /// against the deadline (they are answered long before any cap).
    pub(crate) async fn hold(&self, hold: Hold, started: Instant) -> Result<(), GiveUpReason> {
        let Some(freed) = hold.freed else {
            self.admissible(hold.wait, started)?;
            self.wait(hold.wait, "pace").await;
            return Ok(());
        };
        let mut wait = hold.wait;
        if let Some(deadline) = self.policy.deadline {
            let left = deadline.saturating_sub(started.elapsed());
            if left.is_zero() {
                return Err(GiveUpReason::Deadline { asked: wait });
            }
            wait = wait.min(left);
        }
        let begun = Instant::now();
        let mut freed = freed;
        let mut sleep = std::pin::pin!(tokio::time::sleep(wait));
        std::future::poll_fn(|cx| match freed.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(()),
            Poll::Pending => sleep.as_mut().poll(cx),
        })
        .await;
        self.waited(begun.elapsed(), "pace");
        Ok(())
    }

    /// Checks a wait against the cap and the deadline.
    pub(crate) fn admissible(&self, wait: Duration, started: Instant) -> Result<(), GiveUpReason> {
        if wait > self.policy.max_wait {
            return Err(GiveUpReason::WaitTooLong { asked: wait });
        }
        if let Some(deadline) = self.policy.deadline {
            if started.elapsed().saturating_add(wait) > deadline {
                return Err(GiveUpReason::Deadline { asked: wait });
            }
        }
        Ok(())
    }

    /// What to do after response number `attempt` (from 1) of a call that
    /// started at `started`.
    pub(crate) fn after(
        &self,
        key: u64,
        method: &Method,
        status: StatusCode,
        headers: &HeaderMap,
        attempt: u32,
        (started, sent): (Instant, (Instant, Timestamp)),
    ) -> Step {
        let advice = Advice::read(headers, self.clock.now().to_system_time());
        let read = self.learn(key, status, &advice, sent);
        // Pace later requests when a budget is reported spent.
        if let Some(reset) = advice.spent.iter().flatten().max() {
            let reset = read(*reset);
            if !reset.is_zero() {
                self.pace_until(key, reset);
            }
        }
        let retryable = status == StatusCode::TOO_MANY_REQUESTS
            || (status == StatusCode::SERVICE_UNAVAILABLE
                && match self.policy.retry_503 {
                    Retry503::Always => true,
                    Retry503::Idempotent => idempotent(method),
                    Retry503::Never => false,
                });
        if !retryable {
            return Step::Done;
        }
        self.stats.refusals.fetch_add(1, Ordering::Relaxed);
        let asked = advice.wait();
        if status == StatusCode::TOO_MANY_REQUESTS {
            if let Some(w) = asked {
                self.pace_until(key, w);
            }
        }
        if attempt > self.policy.max_retries {
            return Step::GiveUp(GiveUpReason::RetriesExhausted);
        }
        let wait = match asked {
            Some(w) => {
                if let Err(r) = self.admissible(w, started) {
                    return Step::GiveUp(r);
                }
                let extra = (w.as_secs_f64() * self.policy.jitter).min(1.0) * self.random();
                w + Duration::from_secs_f64(extra)
            }
            None => {
                let exp = 2f64.powi(attempt.saturating_sub(1).min(62) as i32);
                let top = (self.policy.backoff_base.as_secs_f64() * exp)
                    .min(self.policy.backoff_max.as_secs_f64());
                Duration::from_secs_f64(top * self.random())
            }
        };
        if let Err(r) = self.admissible(wait, started) {
            return Step::GiveUp(r);
        }
        if !self.withdraw() {
            return Step::GiveUp(GiveUpReason::BudgetSpent);
        }
        Step::Retry(wait)
    }

    /// Counts a give-up.
    pub(crate) fn gave_up(&self, reason: GiveUpReason) {
        self.stats.gave_up.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!("tierlimit_client_gave_up_total", "reason" => reason.label())
            .increment(1);
        #[cfg(feature = "tracing")]
        tracing::debug!(target: "tierlimit::client", reason = reason.label(), "gave up");
        let _ = reason;
    }

    /// A request of `key` goes out now: counts it, and returns when (the
    /// instant and the wall clock, for `after`). When that is at or just
    /// after a reset the key waited for, its 429 will say the reset was
    /// wrong (see `learn`).
    pub(crate) fn sending(&self, key: u64, retry: bool) -> (Instant, Timestamp) {
        self.stats.attempts.fetch_add(1, Ordering::Relaxed);
        if retry {
            self.stats.retries.fetch_add(1, Ordering::Relaxed);
            #[cfg(feature = "metrics")]
            metrics::counter!("tierlimit_client_retries_total").increment(1);
        }
        let at = Instant::now();
        if let Some(mut p) = self.pace.get_mut(&key) {
            let recent = p.until > at.checked_sub(Duration::from_secs(2)).unwrap_or(at);
            if recent && p.released.is_none_or(|u| u < p.until) {
                p.released = Some(p.until);
            }
        }
        (at, self.clock.now())
    }

    /// Waits `d` (a retry's wait, or pacing), counted.
    pub(crate) async fn wait(&self, d: Duration, cause: &'static str) {
        self.waited(d, cause);
        tokio::time::sleep(d).await;
    }

    /// Counts a wait of `d`.
    fn waited(&self, d: Duration, cause: &'static str) {
        self.stats.waits.fetch_add(1, Ordering::Relaxed);
        self.stats.waited_ns.fetch_add(
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        #[cfg(feature = "metrics")]
        {
            metrics::counter!("tierlimit_client_waits_total", "cause" => cause).increment(1);
            metrics::histogram!("tierlimit_client_wait_seconds", "cause" => cause)
                .record(d.as_secs_f64());
        }
        #[cfg(feature = "tracing")]
        tracing::debug!(target: "tierlimit::client", cause, wait_ms = d.as_millis() as u64, "waited");
        let _ = cause;
    }
}

/// The client layer: wraps an HTTP client service in a [`RetryClient`].
#[derive(Clone, Debug)]
pub struct RetryLayer {
    shared: Arc<Shared>,
}

impl RetryLayer {
    /// A layer with `policy`, reading Unix timestamps and HTTP-dates against
    /// the system clock.
    pub fn new(policy: RetryPolicy) -> Self {
        Self::with_clock(policy, SystemClock)
    }

    /// A layer whose wall clock (for HTTP-dates and Unix timestamps in
    /// headers) is `clock`; waits use tokio's clock, so tests can pause it.
    pub fn with_clock(policy: RetryPolicy, clock: impl Clock) -> Self {
        RetryLayer {
            shared: Arc::new(Shared::new(policy, Arc::new(clock))),
        }
    }

    /// What the client did so far, over every clone.
    pub fn stats(&self) -> StatsSnapshot {
        self.shared.stats.snapshot()
    }

    #[cfg_attr(not(feature = "reqwest"), allow(dead_code))] // the middleware's
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

impl Default for RetryLayer {
    fn default() -> Self {
        Self::new(RetryPolicy::default())
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = RetryClient<S>;

    fn layer(&self, inner: S) -> RetryClient<S> {
        RetryClient {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// An HTTP client that waits and retries as rate-limited APIs ask (see the
/// [module docs](self)).
#[derive(Clone, Debug)]
pub struct RetryClient<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> RetryClient<S> {
    /// What the client did so far, over every clone.
    pub fn stats(&self) -> StatsSnapshot {
        self.shared.stats.snapshot()
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, RB> Service<Request<B>> for RetryClient<S>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send,
    B: ReplayBody + Send + 'static,
    RB: Send + 'static,
{
    type Response = Response<RB>;
    type Error = ClientError<S::Error, RB>;
    type Future = BoxFuture<Result<Response<RB>, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(ClientError::Inner)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // The ready service takes this call; the clone serves the next one.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        Box::pin(run(shared, inner, req))
    }
}

async fn run<S, B, RB>(
    shared: Arc<Shared>,
    mut inner: S,
    req: Request<B>,
) -> Result<Response<RB>, ClientError<S::Error, RB>>
where
    S: Service<Request<B>, Response = Response<RB>>,
    B: ReplayBody,
{
    let started = Instant::now();
    let key = shared.key(req.uri().authority().map(|a| a.as_str()), req.headers());
    let (parts, body) = req.into_parts();
    let mut body = Some(body);
    let mut attempt = 0u32;
    let mut first = true;
    shared.begin();
    loop {
        let flight = match shared.pace(key) {
            Ok(flight) => flight,
            Err(hold) => {
                if let Err(reason) = shared.hold(hold, started).await {
                    shared.gave_up(reason);
                    return Err(ClientError::GaveUp(GaveUp {
                        reason,
                        attempts: attempt,
                        response: None,
                    }));
                }
                // Asked again: responses may have said more meanwhile.
                continue;
            }
        };
        let Some(this) = body.take() else {
            unreachable!("a body is kept for every attempt that is sent");
        };
        let again = this.replay();
        if !first {
            std::future::poll_fn(|cx| inner.poll_ready(cx))
                .await
                .map_err(ClientError::Inner)?;
        }
        let sent = shared.sending(key, !first);
        first = false;
        let resp = inner
            .call(Request::from_parts(parts.clone(), this))
            .await
            .map_err(ClientError::Inner)?;
        attempt += 1;
        let step = shared.after(
            key,
            &parts.method,
            resp.status(),
            resp.headers(),
            attempt,
            (started, sent),
        );
        drop(flight);
        let reason = match step.with(again) {
            Next::Done => return Ok(resp),
            Next::Retry(wait, b) => {
                body = Some(b);
                shared.wait(wait, "retry").await;
                continue;
            }
            Next::GiveUp(reason) => reason,
        };
        shared.gave_up(reason);
        return Err(ClientError::GaveUp(GaveUp {
            reason,
            attempts: attempt,
            response: Some(resp),
        }));
    }
}
