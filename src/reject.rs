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

use crate::config::{ErrorFormat, Family};

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
    /// The blocking limit's header family, if it has one.
    pub family: Option<Family>,
    /// Unix milliseconds of the decision.
    pub at_ms: u64,
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
        ErrorFormat::Gather => (
            "application/json",
            format!(
                r#"{{"error":{{"code":"RATE_LIMIT_EXCEEDED","message":"Rate limit exceeded. Please try again later.","details":{{"limit":{},"remaining":{},"resetAt":"{}"}}}},"meta":{{"requestId":"{}","timestamp":"{}"}}}}"#,
                r.capacity,
                r.remaining,
                rfc3339(r.reset as i64, None),
                uuid_v4(),
                rfc3339((r.at_ms / 1000) as i64, Some((r.at_ms % 1000) as u32)),
            ),
        ),
        ErrorFormat::Qstash => {
            let which: &str = match r.family {
                Some(f) => f.label(),
                None => &r.limit,
            };
            let what = match r.family {
                Some(Family::Daily) => "daily rate limit exceeded".to_owned(),
                Some(Family::Burst) => "burst rate limit exceeded".to_owned(),
                Some(Family::ChatRequests) => {
                    "chat-based rate limit exceeded (requests)".to_owned()
                }
                Some(Family::ChatTokens) => "chat-based rate limit exceeded (tokens)".to_owned(),
                None => format!("rate limit `{}` exceeded", r.limit),
            };
            (
                "application/json",
                format!(
                    r#"{{"error":{},"limit":{},"max":{},"remaining":{},"reset":{},"retryAfter":{n}}}"#,
                    json_string(&what),
                    json_string(which),
                    r.capacity,
                    r.remaining,
                    r.reset
                ),
            )
        }
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

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian
/// (H. Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// RFC 3339 UTC time of Unix second `secs` (with milliseconds if given).
pub fn rfc3339(secs: i64, millis: Option<u32>) -> String {
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let t = secs.rem_euclid(86_400);
    let (h, mi, s) = (t / 3600, t % 3600 / 60, t % 60);
    match millis {
        Some(ms) => format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z"),
        None => format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z"),
    }
}

/// A random (version 4) UUID: 122 bits from a keyed SipHash of a process
/// counter and the time, with a per-process random key. Unique and
/// unpredictable enough for request ids; not for secrets.
pub fn uuid_v4() -> String {
    use siphasher::sip128::{Hasher128, SipHasher13};
    use std::hash::Hasher;
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let (k0, k1) = crate::policy::hash_secret();
    let mut h = SipHasher13::new_with_keys(k0, k1);
    h.write(b"request-id\0");
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    let mut b = h.finish128().as_bytes();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    format!(
        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]
    )
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
            family: None,
            at_ms: 1_708_199_977_250,
        }
    }

    #[test]
    fn times_and_ids() {
        assert_eq!(rfc3339(0, None), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_704_067_200, None), "2024-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_709_210_096, Some(7)), "2024-02-29T12:34:56.007Z");
        assert_eq!(rfc3339(4_102_444_799, None), "2099-12-31T23:59:59Z");
        let a = uuid_v4();
        let b = uuid_v4();
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"));
    }

    #[test]
    fn gather_and_qstash_bodies() {
        let (_, g) = body(ErrorFormat::Gather, &r());
        let v: serde_json::Value = serde_json::from_str(&g).unwrap();
        assert_eq!(v["error"]["code"], "RATE_LIMIT_EXCEEDED");
        assert_eq!(
            v["error"]["message"],
            "Rate limit exceeded. Please try again later."
        );
        assert_eq!(v["error"]["details"]["limit"], 60);
        assert_eq!(v["error"]["details"]["remaining"], 0);
        assert_eq!(v["error"]["details"]["resetAt"], "2024-02-17T20:00:00Z");
        assert_eq!(v["meta"]["timestamp"], "2024-02-17T19:59:37.250Z");
        assert_eq!(v["meta"]["requestId"].as_str().unwrap().len(), 36);
        let mut q = r();
        q.family = Some(Family::Burst);
        let (_, b) = body(ErrorFormat::Qstash, &q);
        let v: serde_json::Value = serde_json::from_str(&b).unwrap();
        assert_eq!(v["limit"], "burst");
        assert_eq!(v["error"], "burst rate limit exceeded");
        assert_eq!(v["retryAfter"], 23);
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
