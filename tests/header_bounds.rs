//! Every figure a sliding limit sends stays within its window: for random
//! windows, precisions, capacities and request timings, `Retry-After`,
//! `X-RateLimit-Reset` and the IETF `t` of each limit are never more than
//! the window from the request, and a caller that waits what `Retry-After`
//! says is admitted.

mod common;

use std::time::Duration;

use common::{get_key, Ok200};
use proptest::prelude::*;
use tierlimit::clock::ManualClock;
use tierlimit::config::{Config, HeaderStyle, Limit, Tier};
use tierlimit::RateLimitLayer;
use tower::Layer;

/// Unix epoch milliseconds the scenarios start at (not on a whole second).
const START_MS: u64 = 1_708_200_000_437;

#[derive(Clone, Debug)]
struct Case {
    /// (window in ms, precision, capacity) of each sliding limit.
    limits: Vec<(u64, u32, u32)>,
    /// Milliseconds before each request.
    gaps: Vec<u64>,
    /// Whether to wait out `Retry-After` after each refusal.
    obey: bool,
}

fn cases() -> impl Strategy<Value = Case> {
    let window = prop_oneof![100u64..=5_000, (1u64..=120).prop_map(|s| s * 1000)];
    let limit = (window, 1u32..=60, 1u32..=12).prop_map(|(w, p, c)| (w, p.min(w as u32), c));
    (
        prop::collection::vec(limit, 1..=2),
        prop::collection::vec(prop_oneof![Just(0u64), 0u64..50, 0u64..3_000], 1..120),
        any::<bool>(),
    )
        .prop_map(|(limits, gaps, obey)| Case { limits, gaps, obey })
}

fn ceil_secs(ms: u64) -> u64 {
    ms.div_ceil(1000)
}

/// The IETF `RateLimit` field as (name, r, t); `t` is left out when the
/// limit counts nothing.
fn ietf(value: &str) -> Vec<(String, u64, Option<u64>)> {
    value
        .split(", ")
        .map(|item| {
            let mut parts = item.split(';');
            let name = parts.next().unwrap().trim_matches('"').to_owned();
            let mut r = None;
            let mut t = None;
            for p in parts {
                if let Some(v) = p.strip_prefix("r=") {
                    r = v.parse().ok();
                } else if let Some(v) = p.strip_prefix("t=") {
                    t = v.parse().ok();
                }
            }
            (name, r.expect("r"), t)
        })
        .collect()
}

fn run(case: &Case, style: HeaderStyle) -> Result<(), TestCaseError> {
    let mut tier = Tier::new();
    for (i, (w, p, c)) in case.limits.iter().enumerate() {
        tier = tier
            .limit(Limit::sliding(format!("l{i}"), *c, Duration::from_millis(*w)).precision(*p));
    }
    let policy = Config::new()
        .tier("t", tier)
        .default_tier("t")
        .headers(style)
        .build()
        .unwrap();
    let window_of = |name: &str| case.limits[name[1..].parse::<usize>().unwrap()].0;
    let longest = case.limits.iter().map(|l| l.0).max().unwrap();
    let clock = ManualClock::new(Duration::from_millis(START_MS));
    let svc = RateLimitLayer::builder(policy)
        .clock(clock.clone())
        .build()
        .layer(Ok200);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut now_ms = START_MS;
        let mut owed_admission = false;
        for gap in &case.gaps {
            clock.advance(Duration::from_millis(*gap));
            now_ms += gap;
            let resp = get_key(&svc, "k").await;
            let h = resp.headers();
            let admitted = resp.status() == http::StatusCode::OK;
            let decided_ms = now_ms;
            if owed_admission {
                prop_assert!(admitted, "refused after waiting out Retry-After");
            }
            owed_admission = false;
            if let Some(v) = h.get("retry-after") {
                let secs: u64 = v.to_str().unwrap().parse().unwrap();
                prop_assert!(secs >= 1);
                prop_assert!(
                    secs <= ceil_secs(longest),
                    "Retry-After {secs} s past a window of {longest} ms"
                );
                if case.obey {
                    // Waiting what it says is enough (nothing else is sent).
                    clock.advance(Duration::from_secs(secs));
                    now_ms += secs * 1000;
                    owed_admission = true;
                }
            }
            if let Some(v) = h.get("x-ratelimit-reset") {
                let reset: u64 = v.to_str().unwrap().parse().unwrap();
                prop_assert!(
                    reset <= ceil_secs(decided_ms + longest),
                    "X-RateLimit-Reset {reset} past the window from {decided_ms} ms"
                );
            }
            if let Some(v) = h.get("ratelimit") {
                for (name, _r, t) in ietf(v.to_str().unwrap()) {
                    let w = window_of(&name);
                    let Some(t) = t else { continue };
                    prop_assert!(t <= ceil_secs(w), "{name}: t={t} past a window of {w} ms");
                }
            }
        }
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn ietf_figures_stay_within_each_window(case in cases()) {
        run(&case, HeaderStyle::Ietf)?;
    }

    #[test]
    fn reset_and_retry_after_stay_within_the_window(case in cases()) {
        run(&case, HeaderStyle::XRateLimit)?;
    }
}
