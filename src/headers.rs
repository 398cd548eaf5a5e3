//! Rate-limit response headers (documented publicly in the crate docs,
//! section "Response headers").

use std::cmp::Ordering;

use http::header::HeaderName;
use http::{HeaderMap, HeaderValue};

use crate::clock::Timestamp;
use crate::config::{Family, HeaderStyle};
use crate::store::{Batch, View};

static X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
static X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// The figures of the one limit a response reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Report {
    /// The limit's capacity.
    limit: u64,
    /// What is left in the current window.
    remaining: u64,
    /// Unix seconds at which the limit is back to full capacity.
    reset: u64,
}

fn report_of(v: &View) -> Report {
    Report {
        limit: v.capacity,
        remaining: v.remaining(),
        reset: v.reset_at.as_secs_ceil(),
    }
}

/// Compares `a.remaining / a.capacity` with `b.remaining / b.capacity`,
/// exactly (cross-multiplied, no floats).
fn remaining_share(a: &View, b: &View) -> Ordering {
    let lhs = u128::from(a.remaining()) * u128::from(b.capacity);
    let rhs = u128::from(b.remaining()) * u128::from(a.capacity);
    lhs.cmp(&rhs)
}

/// Picks the limit to report (see the [module docs](self)).
fn pick(batch: &Batch, admitted: bool, aside: impl Fn(usize) -> bool) -> Option<Report> {
    if !admitted {
        let i = batch.blocking()?;
        return batch.outcome(i).map(|o| report_of(&o.view));
    }
    let mut best: Option<(usize, View)> = None;
    for i in 0..batch.len() {
        let Some(v) = batch.outcome(i).map(|o| o.view) else {
            continue;
        };
        if !batch.reports(i) || aside(i) {
            continue;
        }
        let better = match best {
            None => true,
            Some((_, b)) => match remaining_share(&v, &b) {
                Ordering::Less => true,
                Ordering::Equal => v.reset_at < b.reset_at,
                Ordering::Greater => false,
            },
        };
        if better {
            best = Some((i, v));
        }
    }
    best.map(|(_, v)| report_of(&v))
}

/// A header value for a number, without allocating in the common cases:
/// small numbers are static values, and the last few large ones
/// (reset times repeat for a whole second, capacities for ever) from a
/// per-thread cache. Per thread, so that clones never share a reference
/// count across cores.
///
/// Kept because it pays: under callgrind (`bash benches/instructions.sh`,
/// `layer` mode) a hit costs about 70 instructions and writing the value
/// anew ([`shared_number`]) about 320.
fn number(v: u64) -> HeaderValue {
    use std::cell::RefCell;
    thread_local! {
        static RECENT: RefCell<[(u64, Option<HeaderValue>); 4]> = const { RefCell::new([(0, None), (0, None), (0, None), (0, None)]) };
    }
    if v < SMALL {
        return small(v);
    }
    RECENT.with(|r| {
        let mut r = r.borrow_mut();
        if let Some((_, Some(hv))) = r.iter().find(|(k, hv)| *k == v && hv.is_some()) {
            return hv.clone();
        }
        let hv = shared_number(v);
        r.rotate_right(1);
        r[0] = (v, Some(hv.clone()));
        hv
    })
}

/// Numbers below this are static header values.
const SMALL: u64 = 256;

/// Bytes of every number below [`SMALL`] written out one after another
/// ("0123456789101112…255").
const SMALL_LEN: usize = 10 + 90 * 2 + (SMALL as usize - 100) * 3;

const fn small_digits() -> [u8; SMALL_LEN] {
    let mut out = [0u8; SMALL_LEN];
    let (mut n, mut at) = (0usize, 0usize);
    while n < SMALL as usize {
        if n >= 100 {
            out[at] = b'0' + (n / 100) as u8;
            at += 1;
        }
        if n >= 10 {
            out[at] = b'0' + (n / 10 % 10) as u8;
            at += 1;
        }
        out[at] = b'0' + (n % 10) as u8;
        at += 1;
        n += 1;
    }
    out
}

const SMALL_DIGITS: [u8; SMALL_LEN] = small_digits();

static SMALL_STR: &str = match std::str::from_utf8(&SMALL_DIGITS) {
    Ok(s) => s,
    Err(_) => "",
};

/// A number below [`SMALL`] as a static header value: no allocation, and
/// its clones count no references.
fn small(v: u64) -> HeaderValue {
    let n = v.min(SMALL - 1) as usize;
    let (start, len) = match n {
        0..=9 => (n, 1),
        10..=99 => (10 + (n - 10) * 2, 2),
        _ => (190 + (n - 100) * 3, 3),
    };
    HeaderValue::from_static(SMALL_STR.get(start..start + len).unwrap_or("0"))
}

/// A header value for a number that rarely repeats (a large remaining
/// figure counting down): built directly, so that it does not push the
/// values that do repeat (capacities, reset times) out of the cache.
pub(crate) fn fresh_number(v: u64) -> HeaderValue {
    if v < SMALL {
        small(v)
    } else {
        shared_number(v)
    }
}

/// The decimal digits of `v` at the end of a buffer (a `u64` has at most
/// 20), and where they start.
pub(crate) fn decimal(mut v: u64) -> ([u8; 20], usize) {
    // Two digits a step, from a table of "00" ..= "99".
    const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
        2021222324252627282930313233343536373839\
        4041424344454647484950515253545556575859\
        6061626364656667686970717273747576777879\
        8081828384858687888990919293949596979899";
    let mut buf = [0u8; 20];
    let mut start = buf.len();
    while v >= 100 {
        let pair = (v % 100) as usize * 2;
        v /= 100;
        start -= 2;
        buf[start] = PAIRS[pair];
        buf[start + 1] = PAIRS[pair + 1];
    }
    if v >= 10 {
        let pair = v as usize * 2;
        start -= 2;
        buf[start] = PAIRS[pair];
        buf[start + 1] = PAIRS[pair + 1];
    } else {
        start -= 1;
        buf[start] = b'0' + v as u8;
    }
    (buf, start)
}

/// Bytes of the per-thread buffer that number values are cut from.
const CHUNK: usize = 4096;

/// A header value for `v`, cut from a per-thread buffer of [`CHUNK`]
/// bytes: one allocation for some hundreds of values instead of one each
/// (`HeaderValue::from` allocates a vector per value, and its first clone
/// a second, shared allocation). A value only counts a reference to its
/// buffer; a buffer is freed when its last value is.
fn shared_number(v: u64) -> HeaderValue {
    use std::cell::RefCell;
    thread_local! {
        static BUF: RefCell<bytes::BytesMut> = RefCell::new(bytes::BytesMut::new());
    }
    let (buf, start) = decimal(v);
    let digits = &buf[start..];
    let cut = BUF.try_with(|b| {
        let mut b = b.try_borrow_mut().ok()?;
        if b.capacity() - b.len() < digits.len() {
            *b = bytes::BytesMut::with_capacity(CHUNK);
        }
        b.extend_from_slice(digits);
        Some(b.split().freeze())
    });
    let bytes = match cut {
        Ok(Some(bytes)) => bytes,
        // Only while the thread's storage is torn down.
        _ => bytes::Bytes::copy_from_slice(digits),
    };
    // Digits are always a valid header value.
    HeaderValue::from_maybe_shared(bytes).unwrap_or(HeaderValue::from_static("0"))
}

/// Headers computed at decision time, written onto the response later.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) enum Rendered {
    /// No headers.
    #[default]
    Nothing,
    /// The `X-RateLimit-*` trio.
    XRateLimit(Report),
    /// Any other list of headers.
    List(Vec<(HeaderName, HeaderValue)>),
}

/// Writes `rendered` into `headers`.
pub(crate) fn apply(rendered: &Rendered, headers: &mut HeaderMap) {
    match rendered {
        Rendered::Nothing => {}
        Rendered::XRateLimit(report) => {
            headers.reserve(3);
            headers.insert(X_RATELIMIT_LIMIT.clone(), number(report.limit));
            headers.insert(
                X_RATELIMIT_REMAINING.clone(),
                fresh_number(report.remaining),
            );
            headers.insert(X_RATELIMIT_RESET.clone(), number(report.reset));
        }
        Rendered::List(list) => {
            headers.reserve(list.len());
            for (name, value) in list {
                headers.insert(name.clone(), value.clone());
            }
        }
    }
}

/// What a limit is called in headers, and what it counts.
pub(crate) struct LimitInfo<'a> {
    pub(crate) name: &'a str,
    /// The window in whole milliseconds.
    pub(crate) window_ms: u64,
    /// What the cost counts: `request`, `concurrent-requests`, `tokens`,
    /// `latency-ms`.
    pub(crate) unit: &'static str,
    pub(crate) family: Option<Family>,
}

/// Quota units of the draft's registry, as `qu` says them (`requests`, the
/// default, is left out).
fn registered_unit(unit: &str) -> Option<Option<&'static str>> {
    match unit {
        "request" => Some(None),
        "concurrent-requests" => Some(Some("concurrent-requests")),
        _ => None,
    }
}

/// A `RateLimit-Policy` item: name, `q`, then `qu` when a registered unit
/// other than requests, `w` when the window is whole seconds; a unit
/// outside the registry and a window of a fraction of a second go in
/// `tierlimit-` parameters, as the draft asks of service-specific ones.
fn policy_item(name: &str, capacity: u64, info: &LimitInfo<'_>) -> String {
    let mut p = format!("{name};q={capacity}");
    match registered_unit(info.unit) {
        Some(None) => {}
        Some(Some(qu)) => p.push_str(&format!(";qu=\"{qu}\"")),
        None => p.push_str(&format!(";tierlimit-unit=\"{}\"", info.unit)),
    }
    if info.window_ms.is_multiple_of(1000) {
        p.push_str(&format!(";w={}", info.window_ms / 1000));
    } else {
        p.push_str(&format!(";tierlimit-window-ms={}", info.window_ms));
    }
    p
}

/// A `RateLimit` item: name, `r`, and `t`, the seconds (rounded up) until
/// quota is next made available: when some counted cost next leaves the
/// window (for a refused limit, no later than when the request fits, so
/// `Retry-After` never points earlier); left out when nothing is counted.
fn limit_item(name: &str, o: &crate::store::Outcome, now: Timestamp) -> String {
    let v = &o.view;
    if v.used == 0 {
        return format!("{name};r={}", v.remaining());
    }
    let next = match (v.frees_at, o.refusal()) {
        (Some(f), Some(crate::store::Refusal::Full { retry_at })) => f.min(retry_at),
        (None, Some(crate::store::Refusal::Full { retry_at })) => retry_at.min(v.reset_at),
        _ => v.next_free(),
    };
    let t = next
        .saturating_since(now)
        .as_nanos()
        .div_ceil(1_000_000_000);
    format!("{name};r={};t={t}", v.remaining())
}

/// An sf-string: printable ASCII, with `"` and `\` escaped.
fn sf_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('?'),
        }
    }
    out.push('"');
    out
}

static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

fn family_names(f: Family) -> [&'static str; 3] {
    match f {
        Family::Daily => ["ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"],
        Family::Burst => [
            "burst-ratelimit-limit",
            "burst-ratelimit-remaining",
            "burst-ratelimit-reset",
        ],
        Family::ChatRequests => [
            "x-ratelimit-limit-requests",
            "x-ratelimit-remaining-requests",
            "x-ratelimit-reset-requests",
        ],
        Family::ChatTokens => [
            "x-ratelimit-limit-tokens",
            "x-ratelimit-remaining-tokens",
            "x-ratelimit-reset-tokens",
        ],
    }
}

/// Computes the headers of `style` for a decided batch; `info(i)` describes
/// the limit of slot `i`.
pub(crate) fn render<'a>(
    style: HeaderStyle,
    batch: &Batch,
    admitted: bool,
    now: Timestamp,
    aside: impl Fn(usize) -> bool,
    info: impl Fn(usize) -> LimitInfo<'a>,
) -> Rendered {
    match style {
        HeaderStyle::None => Rendered::Nothing,
        HeaderStyle::XRateLimit => {
            pick(batch, admitted, aside).map_or(Rendered::Nothing, Rendered::XRateLimit)
        }
        HeaderStyle::Ietf => {
            let mut policy = Vec::new();
            let mut current = Vec::new();
            for i in 0..batch.len() {
                let Some(o) = batch.outcome(i) else {
                    continue;
                };
                // A block counter or a limit on requests in flight: only
                // while it refuses.
                if o.view.remaining() > 0 && aside(i) {
                    continue;
                }
                let li = info(i);
                let name = sf_string(li.name);
                policy.push(policy_item(&name, o.view.capacity, &li));
                current.push(limit_item(&name, o, now));
            }
            let mut list = Vec::new();
            for (h, items) in [(&RATELIMIT_POLICY, policy), (&RATELIMIT, current)] {
                if let Ok(v) = HeaderValue::from_str(&items.join(", ")) {
                    if !items.is_empty() {
                        list.push((h.clone(), v));
                    }
                }
            }
            Rendered::List(list)
        }
        HeaderStyle::Qstash => {
            let mut best: Vec<(Family, View)> = Vec::new();
            for i in 0..batch.len() {
                let (Some(v), Some(f)) = (batch.outcome(i).map(|o| o.view), info(i).family) else {
                    continue;
                };
                if admitted && !batch.reports(i) {
                    continue;
                }
                match best.iter_mut().find(|(g, _)| *g == f) {
                    Some((_, b)) => {
                        if remaining_share(&v, b) == Ordering::Less {
                            *b = v;
                        }
                    }
                    None => best.push((f, v)),
                }
            }
            let mut list = Vec::new();
            for (f, v) in best {
                let [l, r, t] = family_names(f);
                list.push((HeaderName::from_static(l), HeaderValue::from(v.capacity)));
                list.push((HeaderName::from_static(r), HeaderValue::from(v.remaining())));
                list.push((
                    HeaderName::from_static(t),
                    HeaderValue::from(v.reset_at.as_secs_ceil()),
                ));
            }
            Rendered::List(list)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_numbers_are_the_plain_ones() {
        for v in [
            0,
            7,
            10,
            255,
            256,
            1_000,
            65_535,
            1_708_200_062,
            u64::MAX - 1,
            u64::MAX,
        ] {
            let hv = shared_number(v);
            assert_eq!(hv, HeaderValue::from(v), "{v}");
            assert_eq!(hv.clone().to_str().unwrap(), v.to_string());
            assert_eq!(fresh_number(v), HeaderValue::from(v), "{v}");
        }
    }

    #[test]
    fn decimal_digits_are_the_plain_ones() {
        let mut values: Vec<u64> = (0..20_000).collect();
        for p in 0..20 {
            let t = 10u64.pow(p);
            values.extend([t - 1, t, t + 1, t.saturating_mul(7).saturating_add(3)]);
        }
        values.extend([u64::MAX - 1, u64::MAX]);
        for v in values {
            let (buf, start) = decimal(v);
            assert_eq!(&buf[start..], v.to_string().as_bytes(), "{v}");
        }
    }

    #[test]
    fn small_numbers_are_static_and_plain() {
        for v in 0..SMALL {
            assert_eq!(small(v), HeaderValue::from(v), "{v}");
        }
    }

    #[test]
    fn numbers_render_the_same_from_every_cache() {
        for v in [
            0,
            1,
            59,
            1023,
            1024,
            1_708_200_062,
            1_708_200_062,
            1_708_200_063,
            u64::MAX,
        ] {
            assert_eq!(number(v), HeaderValue::from(v), "{v}");
        }
        for v in 5000..5010 {
            assert_eq!(number(v), HeaderValue::from(v));
            assert_eq!(number(v), HeaderValue::from(v));
        }
    }
}
