//! The client logic as `reqwest-middleware` middleware (feature `reqwest`).

use std::sync::Arc;

use bytes::Bytes;
use http::{Extensions, Response};
use reqwest_middleware::{Middleware, Next};
use tokio::time::Instant;

use super::{GaveUp, GiveUpReason, Next as Then, RetryLayer, RetryPolicy, Shared, StatsSnapshot};
use crate::clock::Clock;

/// [`RetryLayer`]'s logic for `reqwest` through `reqwest-middleware`:
///
/// ```no_run
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// use tierlimit::client::{RetryMiddleware, RetryPolicy};
///
/// let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
///     .with(RetryMiddleware::new(RetryPolicy::default()))
///     .build();
/// let resp = client.get("http://127.0.0.1:8080/x").send().await?;
/// # let _ = resp; Ok(()) }
/// ```
///
/// A give-up is a `reqwest_middleware::Error::Middleware` holding a
/// [`GaveUp<Bytes>`](GaveUp) (downcast it), whose response is the last one
/// with its body read. A request whose body `reqwest` cannot clone (a
/// stream) is sent once.
#[derive(Clone, Debug)]
pub struct RetryMiddleware {
    shared: Arc<Shared>,
}

impl RetryMiddleware {
    /// Middleware with `policy`, reading timestamps on the system clock.
    pub fn new(policy: RetryPolicy) -> Self {
        Self::from_layer(&RetryLayer::new(policy))
    }

    /// Middleware whose wall clock is `clock` (see
    /// [`RetryLayer::with_clock`]).
    pub fn with_clock(policy: RetryPolicy, clock: impl Clock) -> Self {
        Self::from_layer(&RetryLayer::with_clock(policy, clock))
    }

    /// Middleware sharing `layer`'s pacing, budget and statistics.
    pub fn from_layer(layer: &RetryLayer) -> Self {
        RetryMiddleware {
            shared: layer.shared().clone(),
        }
    }

    /// What the client did so far.
    pub fn stats(&self) -> StatsSnapshot {
        self.shared.stats.snapshot()
    }
}

/// `host:port` of a URL, the pacing key's first part.
fn authority(url: &reqwest::Url) -> Option<String> {
    let host = url.host_str()?;
    Some(match url.port_or_known_default() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_owned(),
    })
}

/// The response with its body read (a 429's body is small; a body that
/// fails to arrive is left empty).
async fn buffered(resp: reqwest::Response) -> Response<Bytes> {
    let mut out = Response::new(Bytes::new());
    *out.status_mut() = resp.status();
    *out.version_mut() = resp.version();
    *out.headers_mut() = resp.headers().clone();
    *out.body_mut() = resp.bytes().await.unwrap_or_default();
    out
}

fn give_up(
    shared: &Shared,
    reason: GiveUpReason,
    attempts: u32,
    response: Option<Response<Bytes>>,
) -> reqwest_middleware::Error {
    shared.gave_up(reason);
    reqwest_middleware::Error::middleware(GaveUp {
        reason,
        attempts,
        response,
    })
}

#[async_trait::async_trait]
impl Middleware for RetryMiddleware {
    async fn handle(
        &self,
        req: reqwest::Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        let shared = &*self.shared;
        let started = Instant::now();
        let key = shared.key(authority(req.url()).as_deref(), req.headers());
        let method = req.method().clone();
        let mut req = Some(req);
        let mut attempt = 0u32;
        shared.begin();
        loop {
            let flight = match shared.pace(key) {
                Ok(flight) => flight,
                Err(hold) => {
                    if let Err(reason) = shared.hold(hold, started).await {
                        return Err(give_up(shared, reason, attempt, None));
                    }
                    continue;
                }
            };
            let Some(this) = req.take() else {
                unreachable!("a request is kept for every attempt that is sent");
            };
            let again = this.try_clone();
            let sent = shared.sending(key, attempt > 0);
            let resp = next.clone().run(this, extensions).await?;
            attempt += 1;
            let step = shared.after(
                key,
                &method,
                resp.status(),
                resp.headers(),
                attempt,
                (started, sent),
            );
            drop(flight);
            let reason = match step.with(again) {
                Then::Done => return Ok(resp),
                Then::Retry(wait, r) => {
                    req = Some(r);
                    shared.wait(wait, "retry").await;
                    continue;
                }
                Then::GiveUp(reason) => reason,
            };
            return Err(give_up(shared, reason, attempt, Some(buffered(resp).await)));
        }
    }
}
