//! Rate-limit response headers.
//!
//! # Which limit is reported
//!
//! A request is often checked against several limits, but the
//! `X-RateLimit-*` family has room for one. On an admitted request the
//! report is the limit with the **least remaining relative to its capacity**
//! (ties: the sooner reset), i.e. the one a client is closest to hitting. On a
//! rejected request it is the refusing limit that frees up **last** (the one
//! `Retry-After` waits for).
//!
//! # `X-RateLimit-Reset`
//!
//! Unix seconds (rounded up) at which the reported limit is back to its full
//! capacity: the end of the current window for a fixed window; for a sliding
//! window, the moment the newest counted sub-bucket leaves the window. A
//! limit with nothing counted reports the current second.

use http::header::HeaderName;
use http::{HeaderMap, HeaderValue};

use crate::config::HeaderStyle;
use crate::store::Batch;
use crate::window::{Refusal, View};

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// `X-RateLimit-Limit`
pub static X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
/// `X-RateLimit-Remaining`
pub static X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
/// `X-RateLimit-Reset`
pub static X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// The figures of the one limit a response reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Report {
    /// Index of the slot (in the decided batch) that is reported.
    pub slot: usize,
    /// The limit's capacity.
    pub limit: u64,
    /// What is left in the current window.
    pub remaining: u64,
    /// Unix seconds at which the limit is back to full capacity.
    pub reset: u64,
}

/// Rounds nanoseconds since the epoch up to whole seconds.
pub(crate) fn ceil_secs(nanos: u64) -> u64 {
    nanos.div_ceil(NANOS_PER_SEC)
}

fn report_of(slot: usize, v: &View) -> Report {
    Report {
        slot,
        limit: v.capacity,
        remaining: v.remaining(),
        reset: ceil_secs(v.reset_at),
    }
}

/// Picks the limit to report (see the [module docs](self)).
pub fn pick(batch: &Batch) -> Option<Report> {
    let mut best: Option<(usize, View, u64)> = None;
    for (i, s) in batch.slots.iter().enumerate() {
        let Some(v) = s.view else { continue };
        if !batch.admitted {
            let Some(Refusal::Full { retry_at }) = s.refusal else {
                continue;
            };
            if best.is_none_or(|(_, _, r)| retry_at > r) {
                best = Some((i, v, retry_at));
            }
            continue;
        }
        let better = match best {
            None => true,
            Some((_, b, _)) => {
                // v.remaining / v.capacity < b.remaining / b.capacity, exactly.
                let lhs = u128::from(v.remaining()) * u128::from(b.capacity);
                let rhs = u128::from(b.remaining()) * u128::from(v.capacity);
                lhs < rhs || (lhs == rhs && v.reset_at < b.reset_at)
            }
        };
        if better {
            best = Some((i, v, 0));
        }
    }
    best.map(|(i, v, _)| report_of(i, &v))
}

/// Writes the headers of `style` for `report` into `headers`.
pub fn apply(style: HeaderStyle, report: &Report, headers: &mut HeaderMap) {
    match style {
        HeaderStyle::XRateLimit => {
            headers.insert(X_RATELIMIT_LIMIT.clone(), HeaderValue::from(report.limit));
            headers.insert(
                X_RATELIMIT_REMAINING.clone(),
                HeaderValue::from(report.remaining),
            );
            headers.insert(X_RATELIMIT_RESET.clone(), HeaderValue::from(report.reset));
        }
        HeaderStyle::None => {}
    }
}
