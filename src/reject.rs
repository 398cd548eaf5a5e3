//! The 429 response: status, `Retry-After`, and a body in the configured
//! format, or whatever a custom hook builds.
//!
//! The figures in every body are the real ones of the blocking limit: `N` is
//! the `Retry-After` value (whole seconds, rounded up, at least 1).

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::request::Parts;
use http::{header, HeaderName, HeaderValue, Response, StatusCode};
use serde::Serialize;

use crate::clock::Timestamp;
use crate::config::{ErrorFormat, Family};
use crate::identity::IdentityConfig;

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
    /// How long until the request would be admitted, in whole seconds
    /// (rounded up, at least one): what `Retry-After` says.
    pub retry_after: Duration,
    /// When the blocking limit is back to full capacity.
    pub reset: Timestamp,
    /// The blocking limit's header family, if it has one.
    pub family: Option<Family>,
    /// When the request was decided.
    pub at: Timestamp,
}

impl Rejection {
    /// `Retry-After` in whole seconds.
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after.as_secs()
    }
}

/// Builds a custom 429 response from the request head and the [`Rejection`].
///
/// Implemented for every `Fn(&Parts, &Rejection) -> Response<Bytes>`. The
/// layer still adds `Retry-After` and the rate-limit headers when the hook
/// did not set them.
///
/// ```
/// use bytes::Bytes;
/// use http::{request::Parts, Response, StatusCode};
/// use tierlimit::reject::Rejection;
///
/// let hook = |req: &Parts, r: &Rejection| {
///     let text = format!("{} {}: slow down for {} s", req.method, req.uri.path(), r.retry_after_secs());
///     let mut resp = Response::new(Bytes::from(text));
///     *resp.status_mut() = StatusCode::TOO_MANY_REQUESTS;
///     resp
/// };
/// # fn takes(_: impl tierlimit::reject::OnReject) {}
/// # takes(hook);
/// ```
pub trait OnReject: Send + Sync + 'static {
    /// Builds the response.
    fn response(&self, request: &Parts, rejection: &Rejection) -> Response<Bytes>;
}

impl<F> OnReject for F
where
    F: Fn(&Parts, &Rejection) -> Response<Bytes> + Send + Sync + 'static,
{
    fn response(&self, request: &Parts, rejection: &Rejection) -> Response<Bytes> {
        self(request, rejection)
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

#[inline]
fn human_window(w: Duration) -> Cow<'static, str> {
    let s = w.as_secs();
    if w.subsec_nanos() != 0 || s == 0 {
        return format!("{} ms", w.as_millis()).into();
    }
    match s {
        86_400 => "day".into(),
        3600 => "hour".into(),
        60 => "minute".into(),
        1 => "second".into(),
        s if s % 86_400 == 0 => format!("{} days", s / 86_400).into(),
        s if s % 3600 == 0 => format!("{} hours", s / 3600).into(),
        s if s % 60 == 0 => format!("{} minutes", s / 60).into(),
        s => format!("{s} seconds").into(),
    }
}

#[derive(Serialize)]
struct ProblemBody<'a> {
    r#type: &'static str,
    title: &'static str,
    status: u16,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    limit: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tier: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    capacity: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    remaining: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reset: Option<u64>,
}

impl ProblemBody<'_> {
    fn plain(title: &'static str, status: StatusCode, detail: String) -> Self {
        ProblemBody {
            r#type: "about:blank",
            title,
            status: status.as_u16(),
            detail,
            limit: None,
            tier: None,
            capacity: None,
            remaining: None,
            retry_after: None,
            reset: None,
        }
    }
}

fn json(value: &impl Serialize) -> Vec<u8> {
    // Serialising these plain structs cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

/// RFC 3339 UTC time, with milliseconds when asked.
fn rfc3339(t: Timestamp, millis: bool) -> String {
    let t = t.to_system_time();
    if millis {
        humantime::format_rfc3339_millis(t).to_string()
    } else {
        humantime::format_rfc3339_seconds(t).to_string()
    }
}

/// A compact JSON object written straight into a buffer. A 429's body is
/// small and of a fixed shape; building it through `serde_json` and
/// `format!` was most of a rejection's cost. Keys are constants; string
/// values go through [`push_str`] (escaped exactly as `serde_json` does).
struct Json {
    out: Vec<u8>,
    first: bool,
}

impl Json {
    fn new() -> Self {
        // The longest built-in body (problem) is about 300 bytes.
        let mut out = Vec::with_capacity(384);
        out.push(b'{');
        Json { out, first: true }
    }

    fn key(&mut self, k: &str) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        self.out.push(b'"');
        self.out.extend_from_slice(k.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    fn str(&mut self, k: &str, v: &str) -> &mut Self {
        self.key(k);
        push_str(&mut self.out, v);
        self
    }

    /// A string value made of parts, written in place (no intermediate
    /// string): the same bytes as [`push_str`] of the parts joined.
    fn text(&mut self, k: &str, parts: &[Part<'_>]) -> &mut Self {
        self.key(k);
        self.out.push(b'"');
        for p in parts {
            match p {
                Part::S(s) => push_escaped(&mut self.out, s),
                Part::N(n) => push_u64(&mut self.out, *n),
            }
        }
        self.out.push(b'"');
        self
    }

    fn num(&mut self, k: &str, v: u64) -> &mut Self {
        self.key(k);
        push_u64(&mut self.out, v);
        self
    }

    /// Opens a nested object (`[` first when `in_array`).
    fn open(&mut self, k: &str, in_array: bool) -> &mut Self {
        self.key(k);
        if in_array {
            self.out.push(b'[');
        }
        self.out.push(b'{');
        self.first = true;
        self
    }

    fn close(&mut self, in_array: bool) -> &mut Self {
        self.out.push(b'}');
        if in_array {
            self.out.push(b']');
        }
        self.first = false;
        self
    }

    fn finish(mut self) -> Vec<u8> {
        self.out.push(b'}');
        self.out
    }
}

/// Whether `s` needs no escaping in a JSON string: no control byte, `"`
/// or backslash. Eight bytes a step: a word is tested for a byte below 0x20
/// or equal to one of the two (exact: a flagged word is checked byte by
/// byte, so the bit tricks only have to find every such byte).
fn plain(s: &str) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let ok = |b: &u8| *b >= 0x20 && *b != b'"' && *b != b'\\';
    let zero_byte = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let bytes = s.as_bytes();
    let mut words = bytes.chunks_exact(8);
    for chunk in &mut words {
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        let w = u64::from_le_bytes(w);
        let below = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
        let odd = below
            | zero_byte(w ^ (ONES * u64::from(b'"')))
            | zero_byte(w ^ (ONES * u64::from(b'\\')));
        if odd != 0 && !chunk.iter().all(ok) {
            return false;
        }
    }
    words.remainder().iter().all(ok)
}

/// `s` as a JSON string.
fn push_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    push_escaped(out, s);
    out.push(b'"');
}

/// `s` escaped for the inside of a JSON string.
fn push_escaped(out: &mut Vec<u8>, s: &str) {
    if plain(s) {
        out.extend_from_slice(s.as_bytes());
    } else {
        // Rare (names from the configuration with quotes or controls):
        // serde_json's own escaping, without its quotes.
        let quoted = serde_json::to_string(s).unwrap_or_default();
        let inner = quoted.get(1..quoted.len().saturating_sub(1)).unwrap_or("");
        out.extend_from_slice(inner.as_bytes());
    }
}

/// The decimal digits of `v`.
fn push_u64(out: &mut Vec<u8>, v: u64) {
    let (buf, start) = crate::headers::decimal(v);
    out.extend_from_slice(&buf[start..]);
}

enum Part<'a> {
    S(&'a str),
    N(u64),
}

/// The body and content type of a 429 in `format`.
pub(crate) fn body(format: ErrorFormat, r: &Rejection) -> (&'static str, Vec<u8>) {
    use Part::{N, S};
    let n = r.retry_after_secs();
    let mut j = Json::new();
    match format {
        ErrorFormat::Qarion => {
            j.text(
                "detail",
                &[
                    S("Rate limit exceeded. Try again in "),
                    N(n),
                    S(" seconds."),
                ],
            );
        }
        ErrorFormat::Qlik => {
            j.open("errors", true)
                .str("code", "HTTP-429")
                .str("title", "API rate limit reached.")
                .text(
                    "detail",
                    &[
                        S("You need to wait "),
                        N(n),
                        S(" seconds until limit is lifted."),
                    ],
                )
                .close(true);
        }
        ErrorFormat::Gather => {
            j.open("error", false)
                .str("code", "RATE_LIMIT_EXCEEDED")
                .str("message", "Rate limit exceeded. Please try again later.")
                .open("details", false)
                .num("limit", r.capacity)
                .num("remaining", r.remaining)
                .str(
                    "resetAt",
                    &rfc3339(Timestamp::from_secs(r.reset.as_secs_ceil()), false),
                )
                .close(false)
                .close(false)
                .open("meta", false)
                .str("requestId", &uuid::Uuid::new_v4().to_string())
                .str("timestamp", &rfc3339(r.at, true))
                .close(false);
        }
        ErrorFormat::Qstash => {
            let described;
            let (which, what) = match r.family {
                Some(f) => (
                    f.label(),
                    match f {
                        Family::Daily => "daily rate limit exceeded",
                        Family::Burst => "burst rate limit exceeded",
                        Family::ChatRequests => "chat-based rate limit exceeded (requests)",
                        Family::ChatTokens => "chat-based rate limit exceeded (tokens)",
                    },
                ),
                None => {
                    described = format!("rate limit `{}` exceeded", r.limit);
                    (r.limit.as_str(), described.as_str())
                }
            };
            j.str("error", what)
                .str("limit", which)
                .num("max", r.capacity)
                .num("remaining", r.remaining)
                .num("reset", r.reset.as_secs_ceil())
                .num("retryAfter", n);
        }
        ErrorFormat::Problem => {
            let window = human_window(r.window);
            j.str("type", "about:blank")
                .str("title", "Too Many Requests")
                .num("status", 429)
                .text(
                    "detail",
                    &[
                        S("Rate limit `"),
                        S(&r.limit),
                        S("` of "),
                        N(r.capacity),
                        S(" per "),
                        S(&window),
                        S(" exceeded; retry in "),
                        N(n),
                        S(" seconds."),
                    ],
                )
                .str("limit", &r.limit)
                .str("tier", &r.tier)
                .num("capacity", r.capacity)
                .num("remaining", r.remaining)
                .num("retry_after", n)
                .num("reset", r.reset.as_secs_ceil());
            return ("application/problem+json", j.finish());
        }
    }
    ("application/json", j.finish())
}

/// The full 429 response for `r`.
pub(crate) fn response(
    format: ErrorFormat,
    hook: Option<&Hook>,
    request: &Parts,
    r: &Rejection,
) -> Response<Bytes> {
    let retry_after = || crate::headers::fresh_number(r.retry_after_secs());
    match hook {
        // The hook's response keeps a `Retry-After` it set.
        Some(h) => {
            let mut resp = h.0.response(request, r);
            resp.headers_mut()
                .entry(header::RETRY_AFTER)
                .or_insert_with(retry_after);
            resp
        }
        None => {
            let (ctype, bytes) = body(format, r);
            let mut resp = Response::new(Bytes::from(bytes));
            *resp.status_mut() = StatusCode::TOO_MANY_REQUESTS;
            let headers = resp.headers_mut();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
            headers.insert(header::RETRY_AFTER, retry_after());
            resp
        }
    }
}

/// An RFC 9457 problem response with no rate-limit fields.
pub(crate) fn problem(status: StatusCode, title: &'static str, detail: String) -> Response<Bytes> {
    let mut resp = Response::new(Bytes::from(json(&ProblemBody::plain(
        title, status, detail,
    ))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    resp
}

/// Response for a request whose cost can never fit a limit (a configuration
/// problem, e.g. a capacity modifier below the cost): 500, not an endless 429.
pub(crate) fn never_fits(limit: &str, cost: u64, capacity: u64) -> Response<Bytes> {
    let detail = format!(
        "request cost {cost} exceeds the capacity {capacity} of rate limit `{limit}`; it can never be admitted"
    );
    problem(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Rate limit misconfigured",
        detail,
    )
}

/// Response when the store failed and the layer fails closed: 503 (the
/// caller did nothing wrong, so never 429) with `Retry-After`.
pub(crate) fn store_unavailable(retry_after: Duration) -> Response<Bytes> {
    let secs = retry_after.as_secs().max(1);
    let detail = format!("rate limiting is unavailable; retry in {secs} seconds");
    let mut resp = problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "Service Unavailable",
        detail,
    );
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    resp
}

/// Response to a request that nothing identifies when the policy refuses
/// such requests (`identity.anonymous: refuse`): 401, saying how to
/// identify.
pub(crate) fn anonymous(identity: &IdentityConfig) -> Response<Bytes> {
    let (how, challenge) = match (&identity.api_key_header, identity.bearer) {
        (Some(h), true) => (
            format!("send an API key in the `{h}` header or as a bearer token"),
            "Bearer".to_owned(),
        ),
        (Some(h), false) => (
            format!("send an API key in the `{h}` header"),
            format!("ApiKey header=\"{h}\""),
        ),
        (None, true) => (
            "send an API key as a bearer token".to_owned(),
            "Bearer".to_owned(),
        ),
        (None, false) => ("sign in".to_owned(), "ApiKey".to_owned()),
    };
    let detail =
        format!("this API limits requests per caller and could not tell who you are: {how}");
    let mut resp = problem(StatusCode::UNAUTHORIZED, "Caller not identified", detail);
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    resp
}

/// Whether the request is a gRPC call: HTTP/2 (gRPC has no other) with
/// `content-type: application/grpc`, with or without a `+proto`/`+json`
/// suffix or parameters. The version is looked at first: an HTTP/1.1
/// refusal pays no header lookup.
pub(crate) fn is_grpc(request: &Parts) -> bool {
    request.version >= http::Version::HTTP_2
        && request
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| {
                let ct = ct.trim_start();
                ct.len() >= 16
                    && ct[..16].eq_ignore_ascii_case("application/grpc")
                    && matches!(ct.as_bytes().get(16), None | Some(b'+' | b';' | b' '))
            })
}

/// The gRPC status code (and a default message) for an HTTP answer of the
/// layer: 429 → `RESOURCE_EXHAUSTED` (8), 503 → `UNAVAILABLE` (14), 401 →
/// `UNAUTHENTICATED` (16), anything else → `INTERNAL` (13).
fn grpc_code(status: StatusCode) -> (u8, &'static str) {
    match status {
        StatusCode::TOO_MANY_REQUESTS => (8, "rate limit exceeded"),
        StatusCode::SERVICE_UNAVAILABLE => (14, "rate limiting is unavailable"),
        StatusCode::UNAUTHORIZED => (16, "the caller could not be identified"),
        _ => (13, "rate limiting failed"),
    }
}

/// Makes the layer's answer `resp` to a gRPC request a trailers-only gRPC
/// response: HTTP 200, `content-type: application/grpc`, `grpc-status`
/// (see [`grpc_code`]), `grpc-message` (`message`, percent-encoded as gRPC
/// asks, else the code's default), no body; the other headers
/// (`Retry-After`, the rate-limit headers) stay. An answer a hook already
/// made a gRPC one (status 200 with `grpc-status`) is left alone.
#[cold]
pub(crate) fn grpc(mut resp: Response<Bytes>, message: Option<&str>) -> Response<Bytes> {
    let status = HeaderName::from_static("grpc-status");
    if resp.headers().contains_key(&status) {
        return resp;
    }
    let (code, default) = grpc_code(resp.status());
    let text = message.unwrap_or(default);
    let encoded: String = percent_encoding::utf8_percent_encode(text, GRPC_MESSAGE).collect();
    *resp.status_mut() = StatusCode::OK;
    *resp.body_mut() = Bytes::new();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert(status, HeaderValue::from(u16::from(code)));
    if let Ok(v) = HeaderValue::from_str(&encoded) {
        h.insert(HeaderName::from_static("grpc-message"), v);
    }
    h.remove(header::CONTENT_LENGTH);
    resp
}

/// What gRPC percent-encodes in `grpc-message`: everything outside
/// printable ASCII, and `%` itself.
const GRPC_MESSAGE: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'%');

/// The `grpc-message` of a rejection: which limit, and when to retry.
#[cold]
pub(crate) fn grpc_message(r: &Rejection) -> String {
    format!(
        "rate limit `{}` of tier `{}` exceeded ({} per {}); retry in {} seconds",
        r.limit,
        r.tier,
        r.capacity,
        human_window(r.window),
        r.retry_after_secs()
    )
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
            retry_after: Duration::from_secs(23),
            reset: Timestamp::from_secs(1_708_200_000),
            family: None,
            at: Timestamp::from_nanos(1_708_199_977_250_000_000),
        }
    }

    fn text(format: ErrorFormat) -> String {
        String::from_utf8(body(format, &r()).1).unwrap()
    }

    #[test]
    fn plain_finds_every_byte_that_needs_escaping() {
        // Every byte value at every place of a 17-byte text (two words and
        // a remainder), against the byte-by-byte rule.
        for bad in 0u8..=127 {
            for at in 0..17 {
                let mut text = *b"abcdefgh ijklmnop";
                text[at] = bad;
                let s = std::str::from_utf8(&text).unwrap();
                let want = s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\');
                assert_eq!(plain(s), want, "{bad:#x} at {at}");
            }
        }
        assert!(plain("naméé and more ünïcode text"));
        assert!(!plain("naméé \u{1f} x"));
    }

    #[test]
    fn names_with_quotes_and_controls_stay_valid_json() {
        let odd = "we\"ird\\ naméé\u{1}\n`x`";
        let mut rej = r();
        rej.limit = odd.into();
        rej.tier = "t\"1".into();
        for format in [ErrorFormat::Problem, ErrorFormat::Qstash] {
            let bytes = body(format, &rej).1;
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(v["limit"], odd, "{format:?}");
            if format == ErrorFormat::Problem {
                // A name inside a longer text is escaped in place.
                let detail = v["detail"].as_str().unwrap();
                assert!(detail.starts_with(&format!("Rate limit `{odd}` of 60 per minute")));
            }
            // Escaped byte for byte as serde_json escapes it.
            let escaped = serde_json::to_string(odd).unwrap();
            let text = String::from_utf8(bytes).unwrap();
            assert!(text.contains(&format!("\"limit\":{escaped}")), "{text}");
        }
        let v: serde_json::Value =
            serde_json::from_slice(&body(ErrorFormat::Problem, &rej).1).unwrap();
        assert_eq!(v["tier"], "t\"1");
        assert!(v["detail"].as_str().unwrap().contains(odd));
    }

    #[test]
    fn times() {
        assert_eq!(rfc3339(Timestamp::EPOCH, false), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(Timestamp::from_secs(1_704_067_200), false),
            "2024-01-01T00:00:00Z"
        );
        assert_eq!(
            rfc3339(Timestamp::from_nanos(1_709_210_096_007_000_000), true),
            "2024-02-29T12:34:56.007Z"
        );
    }

    #[test]
    fn gather_and_qstash_bodies() {
        let g = text(ErrorFormat::Gather);
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
        let id = v["meta"]["requestId"].as_str().unwrap();
        assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 4);
        let mut q = r();
        q.family = Some(Family::Burst);
        let (_, b) = body(ErrorFormat::Qstash, &q);
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["limit"], "burst");
        assert_eq!(v["error"], "burst rate limit exceeded");
        assert_eq!(v["retryAfter"], 23);
    }

    #[test]
    fn literal_bodies() {
        assert_eq!(
            text(ErrorFormat::Qarion),
            r#"{"detail":"Rate limit exceeded. Try again in 23 seconds."}"#
        );
        assert_eq!(
            text(ErrorFormat::Qlik),
            r#"{"errors":[{"code":"HTTP-429","title":"API rate limit reached.","detail":"You need to wait 23 seconds until limit is lifted."}]}"#
        );
        let (ct, p) = body(ErrorFormat::Problem, &r());
        assert_eq!(ct, "application/problem+json");
        let v: serde_json::Value = serde_json::from_slice(&p).unwrap();
        assert_eq!(v["status"], 429);
        assert_eq!(v["type"], "about:blank");
        assert_eq!(v["retry_after"], 23);
        assert_eq!(v["limit"], "per-minute");
        assert_eq!(
            v["detail"],
            "Rate limit `per-minute` of 60 per minute exceeded; retry in 23 seconds."
        );
    }

    #[test]
    fn grpc_requests_are_told_apart() {
        let parts = |ct: &str| {
            let (p, ()) = http::Request::builder()
                .version(http::Version::HTTP_2)
                .header(header::CONTENT_TYPE, ct)
                .body(())
                .unwrap()
                .into_parts();
            p
        };
        for ct in [
            "application/grpc",
            "application/grpc+proto",
            "Application/GRPC+json",
            "application/grpc; charset=utf-8",
        ] {
            assert!(is_grpc(&parts(ct)), "{ct}");
        }
        for ct in [
            "application/json",
            "application/grpc-web",
            "application/grpcx",
            "text/plain",
        ] {
            assert!(!is_grpc(&parts(ct)), "{ct}");
        }
    }

    #[test]
    fn a_grpc_answer_is_trailers_only_with_the_status_and_headers() {
        let mut resp = response(
            ErrorFormat::Qarion,
            None,
            &http::Request::new(()).into_parts().0,
            &r(),
        );
        resp.headers_mut()
            .insert("x-ratelimit-remaining", HeaderValue::from(0));
        let g = grpc(resp, Some("retry in 5 seconds: 100% é"));
        assert_eq!(g.status(), StatusCode::OK);
        assert!(g.body().is_empty());
        let h = g.headers();
        assert_eq!(h["content-type"], "application/grpc");
        assert_eq!(h["grpc-status"], "8");
        assert_eq!(h["grpc-message"], "retry in 5 seconds: 100%25 %C3%A9");
        assert_eq!(h["x-ratelimit-remaining"], "0");
        assert!(h.contains_key(header::RETRY_AFTER));
        assert_eq!(
            grpc(store_unavailable(Duration::from_secs(1)), None).headers()["grpc-status"],
            "14"
        );
        assert_eq!(grpc(internal_error(), None).headers()["grpc-status"], "13");
        // A hook's own gRPC answer is left alone.
        let mut own = Response::new(Bytes::new());
        own.headers_mut()
            .insert("grpc-status", HeaderValue::from(9));
        assert_eq!(grpc(own, None).headers()["grpc-status"], "9");
    }

    #[test]
    fn closed_failure_is_a_503_with_retry_after() {
        let resp = store_unavailable(Duration::from_secs(1));
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "1");
        let v: serde_json::Value = serde_json::from_slice(resp.body()).unwrap();
        assert_eq!(v["status"], 503);
    }
}
