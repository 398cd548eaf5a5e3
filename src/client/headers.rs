//! Reading what a response says about rate limits, in every dialect this
//! crate and the big APIs send.
//!
//! Nothing here panics or trusts a value: a header that does not parse is
//! ignored, negative and non-finite numbers are ignored, instants in the
//! past mean "now", and every figure is clamped to [`MAX_FIGURE`] before
//! the caller compares it with its own cap.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderMap;

/// Longest wait any header can ask for (about 31 years): past this a value
/// is absurd; the client's own cap is far below it anyway.
pub const MAX_FIGURE: Duration = Duration::from_secs(1_000_000_000);

/// Numbers at or above this are Unix **seconds**, below it delays in
/// seconds: 10^9 s is September 2001, and no API asks a client to wait 31
/// years.
const EPOCH_SECS_FROM: f64 = 1e9;
/// Numbers at or above this are Unix **milliseconds** (10^12 ms is
/// September 2001).
const EPOCH_MS_FROM: f64 = 1e12;

/// What one response says about the caller's budget.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Advice {
    /// How long to wait before retrying, from `Retry-After` (seconds or an
    /// HTTP-date) or `retry-after-ms`; the longest when several are sent.
    pub retry_after: Option<Duration>,
    /// Limits the response reports as spent (remaining 0), each with how
    /// long until it has room again when the response says.
    pub spent: Vec<Option<Duration>>,
    /// Whether the response reports at least one limit with room left.
    pub has_room: bool,
    /// The least remaining figure the response reports, with how long
    /// until that limit resets when it says.
    pub least: Option<(u64, Option<Duration>)>,
    /// Whether a reset was given as a whole Unix second: the real instant
    /// may be up to a second earlier.
    pub whole_second: bool,
}

impl Advice {
    /// Reads `headers`, with `now` the wall-clock instant the response came
    /// (for HTTP-dates and Unix timestamps).
    pub fn read(headers: &HeaderMap, now: SystemTime) -> Advice {
        let mut advice = Advice::default();
        for v in headers.get_all(http::header::RETRY_AFTER) {
            if let Some(d) = v.to_str().ok().and_then(|s| retry_after(s, now)) {
                advice.retry_after = Some(advice.retry_after.map_or(d, |a| a.max(d)));
            }
        }
        for v in headers.get_all("retry-after-ms") {
            if let Some(d) = v
                .to_str()
                .ok()
                .and_then(number)
                .map(|ms| secs_f64(ms / 1000.0))
            {
                advice.retry_after = Some(advice.retry_after.map_or(d, |a| a.max(d)));
            }
        }
        // Families of (remaining, reset) headers.
        for (remaining, reset) in [
            ("x-ratelimit-remaining", "x-ratelimit-reset"),
            ("ratelimit-remaining", "ratelimit-reset"),
            ("burst-ratelimit-remaining", "burst-ratelimit-reset"),
            (
                "x-ratelimit-remaining-requests",
                "x-ratelimit-reset-requests",
            ),
            ("x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"),
        ] {
            let left = headers
                .get(remaining)
                .and_then(|v| v.to_str().ok())
                .and_then(number);
            let Some(left) = left else { continue };
            let text = headers.get(reset).and_then(|v| v.to_str().ok());
            let reset = text.and_then(|s| reset_in(s, now));
            let unix_second =
                |v: f64| v.fract() == 0.0 && (EPOCH_SECS_FROM..EPOCH_MS_FROM).contains(&v);
            if reset.is_some() && text.and_then(number).is_some_and(unix_second) {
                advice.whole_second = true;
            }
            advice.note(left, reset);
        }
        // IETF draft: `RateLimit: "name";r=0;t=30, ...`, a structured-field
        // list (possibly split over several fields).
        for (r, t) in ietf_items(headers) {
            advice.note(r, t.map(secs_f64));
        }
        advice
    }

    fn note(&mut self, remaining: f64, reset: Option<Duration>) {
        let left = remaining.floor().min(u64::MAX as f64) as u64;
        if self.least.is_none_or(|(l, _)| left < l) {
            self.least = Some((left, reset));
        }
        if remaining < 1.0 {
            self.spent.push(reset);
        } else {
            self.has_room = true;
        }
    }

    /// How long until every spent limit the response names has room again,
    /// when it says for each of them (`None`: nothing is reported spent, or
    /// a spent limit's reset is unknown).
    pub fn all_spent_reset(&self) -> Option<Duration> {
        if self.spent.is_empty() {
            return None;
        }
        self.spent
            .iter()
            .copied()
            .try_fold(Duration::ZERO, |acc, r| Some(acc.max(r?)))
    }

    /// The wait the response asks for before trying again: `Retry-After`
    /// when sent, else when the spent limits reset. A `Retry-After` of 0
    /// says nothing (some servers send it with every refusal, e.g.
    /// Flask-Limiter's sliding-window counter: trying again at once is
    /// refused again): then the spent limits' reset, else `None`, as for
    /// a refusal that says nothing.
    pub fn wait(&self) -> Option<Duration> {
        self.retry_after
            .filter(|w| !w.is_zero())
            .or_else(|| self.all_spent_reset().filter(|w| !w.is_zero()))
    }
}

/// A finite, non-negative number (`"12"`, `"0.5"`).
fn number(s: &str) -> Option<f64> {
    let s = s.trim();
    if s.is_empty() || s.len() > 32 {
        return None;
    }
    let v: f64 = s.parse().ok()?;
    (v.is_finite() && v >= 0.0).then_some(v)
}

/// A wait of `secs` seconds, at most [`MAX_FIGURE`].
fn secs_f64(secs: f64) -> Duration {
    since_epoch(secs).min(MAX_FIGURE)
}

/// `secs` seconds, unclamped (an instant after the Unix epoch).
fn since_epoch(secs: f64) -> Duration {
    if secs.is_finite() && secs > 0.0 {
        Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX)
    } else {
        Duration::ZERO
    }
}

fn until(at: SystemTime, now: SystemTime) -> Duration {
    at.duration_since(now)
        .unwrap_or(Duration::ZERO)
        .min(MAX_FIGURE)
}

/// `Retry-After`: delay-seconds, or an HTTP-date.
fn retry_after(s: &str, now: SystemTime) -> Option<Duration> {
    if let Some(v) = number(s) {
        return Some(secs_f64(v));
    }
    httpdate::parse_http_date(s.trim())
        .ok()
        .map(|at| until(at, now))
}

/// A reset figure: a Unix timestamp in seconds or milliseconds, a delay in
/// seconds, or a duration such as `1m30s` / `12ms`.
fn reset_in(s: &str, now: SystemTime) -> Option<Duration> {
    if let Some(v) = number(s) {
        let at = if v >= EPOCH_MS_FROM {
            UNIX_EPOCH.checked_add(since_epoch(v / 1000.0))
        } else if v >= EPOCH_SECS_FROM {
            UNIX_EPOCH.checked_add(since_epoch(v))
        } else {
            return Some(secs_f64(v));
        };
        return at.map(|at| until(at, now));
    }
    go_duration(s)
}

/// A duration as Go prints it: `1h2m3.5s`, `6m0s`, `12ms`, `250us`,
/// `250µs`, `10ns`.
pub(crate) fn go_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.is_empty() || s.len() > 64 {
        return None;
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let value: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" | "μs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += value * scale;
    }
    total.is_finite().then(|| secs_f64(total))
}

/// The `(r, t)` of each item of the IETF `RateLimit` field: every
/// `ratelimit` field of the response joined into one structured-field list
/// and parsed as one (RFC 9651), so that names with commas, quotes or
/// semicolons never confuse it. A field that does not parse is ignored
/// whole, as the draft asks; an item without an integer `r` is skipped; a
/// `t` that is not a non-negative integer counts as unknown.
fn ietf_items(headers: &HeaderMap) -> Vec<(f64, Option<f64>)> {
    let mut joined = String::new();
    for v in headers.get_all("ratelimit") {
        let Ok(s) = v.to_str() else { return Vec::new() };
        if !joined.is_empty() {
            joined.push_str(", ");
        }
        joined.push_str(s);
    }
    if joined.is_empty() {
        return Vec::new();
    }
    let Ok(list) = sfv::Parser::new(joined.as_str()).parse::<sfv::List>() else {
        return Vec::new();
    };
    let int = |item: &sfv::Item, key: &str| {
        item.params
            .iter()
            .find(|(k, _)| k.as_str() == key)
            .and_then(|(_, v)| v.as_integer())
            .map(i64::from)
            .filter(|n| *n >= 0)
            .map(|n| n as f64)
    };
    list.iter()
        .filter_map(|entry| match entry {
            sfv::ListEntry::Item(item) => Some((int(item, "r")?, int(item, "t"))),
            sfv::ListEntry::InnerList(_) => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// 2024-02-17T20:00:00Z, the instant of the examples below.
    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_708_200_000)
    }

    fn read(pairs: &[(&str, &str)]) -> Advice {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                http::HeaderValue::from_bytes(v.as_bytes()).unwrap(),
            );
        }
        Advice::read(&h, now())
    }

    fn secs(s: f64) -> Option<Duration> {
        Some(Duration::from_secs_f64(s))
    }

    #[test]
    fn retry_after_in_every_form() {
        for (value, want) in [
            ("13", secs(13.0)),
            (" 2 ", secs(2.0)),
            ("0", secs(0.0)),
            ("1.5", secs(1.5)),
            ("Sat, 17 Feb 2024 20:00:30 GMT", secs(30.0)),
            // A date in the past: retry now.
            ("Sat, 17 Feb 2024 19:00:00 GMT", secs(0.0)),
            // Broken values are ignored.
            ("-5", None),
            ("soon", None),
            ("NaN", None),
            ("inf", None),
            ("", None),
            ("1e400", None),
            ("Sat, 17 Feb 2024 25:99:00 GMT", None),
        ] {
            assert_eq!(
                read(&[("retry-after", value)]).retry_after,
                want,
                "{value:?}"
            );
        }
        assert_eq!(read(&[("retry-after-ms", "250")]).retry_after, secs(0.25));
        assert_eq!(
            read(&[("retry-after-ms", "12.5")]).retry_after,
            secs(0.0125)
        );
        // Both: the longer one.
        assert_eq!(
            read(&[("retry-after", "1"), ("retry-after-ms", "2500")]).retry_after,
            secs(2.5)
        );
    }

    #[test]
    fn resets_as_timestamps_delays_and_durations() {
        for (value, want) in [
            // Unix seconds (seeds 001, 003).
            ("1708200060", secs(60.0)),
            // Unix milliseconds.
            ("1708200001500", secs(1.5)),
            // A delay in seconds (IETF drafts' RateLimit-Reset).
            ("42", secs(42.0)),
            // A timestamp in the past: now, never 1.7 billion seconds.
            ("1708199000", secs(0.0)),
            // Go durations (x-ratelimit-reset-requests of OpenAI-style APIs).
            ("1m30s", secs(90.0)),
            ("6m0s", secs(360.0)),
            ("12ms", secs(0.012)),
            ("1h2m3.5s", secs(3723.5)),
            ("250us", secs(0.00025)),
            ("0s", secs(0.0)),
            // Broken: ignored.
            ("1x", None),
            ("m", None),
            ("1..5s", None),
            ("-3s", None),
            ("tomorrow", None),
        ] {
            let a = read(&[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", value)]);
            assert_eq!(a.spent, vec![want], "{value:?}");
            // A reset that has passed asks for no wait: as if none was said.
            assert_eq!(a.wait(), want.filter(|w| !w.is_zero()), "{value:?}");
        }
    }

    #[test]
    fn every_family_is_read() {
        // QStash: daily and burst families, Unix seconds.
        let a = read(&[
            ("ratelimit-remaining", "450"),
            ("ratelimit-reset", "1708214400"),
            ("burst-ratelimit-remaining", "0"),
            ("burst-ratelimit-reset", "1708200001"),
        ]);
        assert!(a.has_room);
        assert_eq!(a.spent, vec![secs(1.0)]);
        assert_eq!(a.wait(), secs(1.0));
        // Requests and tokens families, as durations.
        let a = read(&[
            ("x-ratelimit-remaining-requests", "0"),
            ("x-ratelimit-reset-requests", "1m30s"),
            ("x-ratelimit-remaining-tokens", "0"),
            ("x-ratelimit-reset-tokens", "12ms"),
        ]);
        assert_eq!(a.wait(), secs(90.0));
        // IETF draft-11.
        let a = read(&[("ratelimit", r#""burst";r=0;t=30, "hourly";r=999;t=3600"#)]);
        assert!(a.has_room);
        assert_eq!(a.wait(), secs(30.0));
        // Retry-After wins over resets.
        let a = read(&[
            ("retry-after", "5"),
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "1708200060"),
        ]);
        assert_eq!(a.wait(), secs(5.0));
        // `Retry-After: 0` says nothing (Flask-Limiter's sliding-window
        // counter sends it with its refusals): the reset, else no wait.
        let a = read(&[
            ("retry-after", "0"),
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "1708200002"),
        ]);
        assert_eq!(a.wait(), secs(2.0));
        assert_eq!(read(&[("retry-after", "0")]).wait(), None);
        // A spent limit whose reset is unknown: no wait is known.
        let a = read(&[("x-ratelimit-remaining", "0")]);
        assert_eq!(a.spent, vec![None]);
        assert_eq!(a.wait(), None);
        // A malformed IETF field is ignored whole; items without an integer
        // `r` are skipped, and a `t` that is no count of seconds is unknown.
        let a = read(&[("ratelimit", r#""a";r=x;t=3, ;;, "b";t=2, "c";r=0;t=-1"#)]);
        assert!(a.spent.is_empty() && !a.has_room);
        let a = read(&[("ratelimit", r#""a";r=?1;t=3, "b";t=2, "c";r=0;t=-1"#)]);
        assert_eq!(a.spent, vec![None]);
        // Names with commas, quotes and semicolons, and a list split over
        // two fields.
        let a = read(&[
            ("ratelimit", r#""per, minute; \"x\"";r=0;t=7"#),
            ("ratelimit", r#""hour";r=5;t=100"#),
        ]);
        assert!(a.has_room);
        assert_eq!(a.wait(), secs(7.0));
        // Nothing at all.
        assert_eq!(read(&[]), Advice::default());
    }

    proptest! {
        /// Whatever the headers hold, reading them never panics and never
        /// asks for more than MAX_FIGURE.
        #[test]
        fn nothing_panics_and_no_wait_is_absurd(
            pairs in prop::collection::vec((
                prop::sample::select(vec![
                    "retry-after", "retry-after-ms", "x-ratelimit-remaining",
                    "x-ratelimit-reset", "ratelimit", "ratelimit-remaining",
                    "ratelimit-reset", "burst-ratelimit-remaining", "burst-ratelimit-reset",
                    "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests",
                    "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens",
                ]),
                prop_oneof![
                    "[0-9.]{0,25}",
                    "[0-9hmsuµn.]{0,12}",
                    "\"[a-z]{0,3}\";r=[0-9-]{0,4};t=[0-9e.+-]{0,8}(, .{0,10})?",
                    "[ -~]{0,40}",
                ],
            ), 0..6),
            now_secs in 0u64..4_000_000_000,
        ) {
            let mut h = HeaderMap::new();
            for (k, v) in &pairs {
                if let Ok(v) = http::HeaderValue::from_str(v) {
                    h.append(*k, v);
                }
            }
            let a = Advice::read(&h, UNIX_EPOCH + Duration::from_secs(now_secs));
            if let Some(w) = a.wait() {
                prop_assert!(w <= MAX_FIGURE);
            }
            for r in a.spent.iter().flatten() {
                prop_assert!(*r <= MAX_FIGURE);
            }
        }
    }
}
