//! The 429 response: status, `Retry-After`, and a body in the configured
//! format, or whatever a custom hook builds.
//!
//! The figures in every body are the real ones of the blocking limit: `N` is
//! the `Retry-After` value (whole seconds, rounded up, at least 1).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use crate::config::ErrorFormat;

/// Everything known about a rejection, for building a response.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Rejection {
    /// Tier of the blocking limit.
    pub tier: String,
    /// Name of the blocking limit.
    pub limit: String,
    /// Its capacity.
    pub capacity: u64,
    /// What is left of it now (may be above zero for a costly request).
    pub remaining: u64,
    /// Its window.
    pub window: Duration,
    /// Whole seconds until the request would be admitted (at least 1).
    pub retry_after: u64,
    /// Unix seconds at which the blocking limit is back to full capacity.
    pub reset: u64,
}

/// Builds a custom 429 response from a [`Rejection`].
///
/// Implemented for every `Fn(&Rejection) -> Response<Bytes>`. The layer still
/// adds `Retry-After` and the rate-limit headers when the hook did not set
/// them.
pub trait OnReject: Send + Sync + 'static {
    /// Builds the response.
    fn response(&self, rejection: &Rejection) -> Response<Bytes>;
}

impl<F> OnReject for F
where
    F: Fn(&Rejection) -> Response<Bytes> + Send + Sync + 'static,
{
    fn response(&self, rejection: &Rejection) -> Response<Bytes> {
        self(rejection)
    }
}

/// A shared, type-erased [`OnReject`].
#[derive(Clone)]
pub(crate) struct Hook(pub(crate) Arc<dyn OnReject>);

impl fmt::Debug for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OnReject(..)")
    }
}

fn json_string(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

fn human_window(w: Duration) -> String {
    let s = w.as_secs();
    if w.subsec_nanos() != 0 || s == 0 {
        return format!("{} ms", w.as_millis());
    }
    match s {
        86_400 => "day".into(),
        3600 => "hour".into(),
        60 => "minute".into(),
        1 => "second".into(),
        s if s % 86_400 == 0 => format!("{} days", s / 86_400),
        s if s % 3600 == 0 => format!("{} hours", s / 3600),
        s if s % 60 == 0 => format!("{} minutes", s / 60),
        s => format!("{s} seconds"),
    }
}

/// The body and content type of a 429 in `format`.
pub fn body(format: ErrorFormat, r: &Rejection) -> (&'static str, String) {
    let n = r.retry_after;
    match format {
        ErrorFormat::Qarion => (
            "application/json",
            format!(r#"{{"detail":"Rate limit exceeded. Try again in {n} seconds."}}"#),
        ),
        ErrorFormat::Qlik => (
            "application/json",
            format!(
                r#"{{"errors":[{{"code":"HTTP-429","title":"API rate limit reached.","detail":"You need to wait {n} seconds until limit is lifted."}}]}}"#
            ),
        ),
        ErrorFormat::Problem => {
            let detail = format!(
                "Rate limit `{}` of {} per {} exceeded; retry in {n} seconds.",
                r.limit,
                r.capacity,
                human_window(r.window)
            );
            (
                "application/problem+json",
                format!(
                    r#"{{"type":"about:blank","title":"Too Many Requests","status":429,"detail":{},"limit":{},"tier":{},"capacity":{},"remaining":{},"retry_after":{n},"reset":{}}}"#,
                    json_string(&detail),
                    json_string(&r.limit),
                    json_string(&r.tier),
                    r.capacity,
                    r.remaining,
                    r.reset
                ),
            )
        }
    }
}

/// The full 429 response for `r`.
pub(crate) fn response(format: ErrorFormat, hook: Option<&Hook>, r: &Rejection) -> Response<Bytes> {
    let mut resp = match hook {
        Some(h) => h.0.response(r),
        None => {
            let (ctype, text) = body(format, r);
            let mut resp = Response::new(Bytes::from(text));
            *resp.status_mut() = StatusCode::TOO_MANY_REQUESTS;
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
            resp
        }
    };
    resp.headers_mut()
        .entry(header::RETRY_AFTER)
        .or_insert_with(|| HeaderValue::from(r.retry_after));
    resp
}

/// Response for a request whose cost can never fit a limit (a configuration
/// problem, e.g. a capacity modifier below the cost): 500, not an endless 429.
pub(crate) fn never_fits(limit: &str, cost: u64, capacity: u64) -> Response<Bytes> {
    let detail = format!(
        "request cost {cost} exceeds the capacity {capacity} of rate limit `{limit}`; it can never be admitted"
    );
    let text = format!(
        r#"{{"type":"about:blank","title":"Rate limit misconfigured","status":500,"detail":{}}}"#,
        json_string(&detail)
    );
    let mut resp = Response::new(Bytes::from(text));
    *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    resp
}

/// A bare 500 for states that cannot happen unless something panicked.
pub(crate) fn internal_error() -> Response<Bytes> {
    let mut resp = Response::new(Bytes::new());
    *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r() -> Rejection {
        Rejection {
            tier: "standard".into(),
            limit: "per-minute".into(),
            capacity: 60,
            remaining: 0,
            window: Duration::from_secs(60),
            retry_after: 23,
            reset: 1_708_200_000,
        }
    }

    #[test]
    fn literal_bodies() {
        assert_eq!(
            body(ErrorFormat::Qarion, &r()).1,
            r#"{"detail":"Rate limit exceeded. Try again in 23 seconds."}"#
        );
        assert_eq!(
            body(ErrorFormat::Qlik, &r()).1,
            r#"{"errors":[{"code":"HTTP-429","title":"API rate limit reached.","detail":"You need to wait 23 seconds until limit is lifted."}]}"#
        );
        let (ct, p) = body(ErrorFormat::Problem, &r());
        assert_eq!(ct, "application/problem+json");
        let v: serde_json::Value = serde_json::from_str(&p).unwrap();
        assert_eq!(v["status"], 429);
        assert_eq!(v["retry_after"], 23);
        assert_eq!(v["limit"], "per-minute");
        assert_eq!(
            v["detail"],
            "Rate limit `per-minute` of 60 per minute exceeded; retry in 23 seconds."
        );
    }
}
