//! Every `RateLimit-Policy` / `RateLimit` header the `ietf` style produces,
//! parsed by an independent structured-field parser (`sfv`) and checked
//! against draft-ietf-httpapi-ratelimit-headers: every shipped policy
//! switched to `ietf`, token and latency costs, requests in flight, names
//! with quotes, commas and semicolons, a sub-second window, and refusals.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use http::StatusCode;
use sfv::{BareItem, List, ListEntry, Parser};
use tierlimit::config::{Config, HeaderStyle};

/// The quota units of the draft's registry.
const UNITS: [&str; 3] = ["requests", "content-bytes", "concurrent-requests"];

fn parse(value: &str) -> List {
    Parser::new(value)
        .parse::<List>()
        .unwrap_or_else(|e| panic!("not a structured-field list: {value:?}: {e}"))
}

fn int(b: &BareItem) -> Option<i64> {
    b.as_integer().map(i64::from)
}

/// Items as (name, parameters), checking every member is a String item.
fn items(list: &List, field: &str) -> Vec<(String, Vec<(String, BareItem)>)> {
    list.iter()
        .map(|entry| {
            let ListEntry::Item(item) = entry else {
                panic!("{field}: an inner list");
            };
            let name = item
                .bare_item
                .as_string()
                .unwrap_or_else(|| panic!("{field}: an item that is not a String"))
                .as_str()
                .to_owned();
            let params = item
                .params
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), v.clone()))
                .collect();
            (name, params)
        })
        .collect()
}

/// A parameter not defined by the draft must carry a vendor prefix.
fn vendor(key: &str) -> bool {
    key.starts_with("tierlimit-")
}

/// Checks one response's headers against the draft; returns the names it
/// listed.
fn check(r: &Reply) -> Vec<String> {
    let (Some(policy), Some(limits)) = (r.header("ratelimit-policy"), r.header("ratelimit")) else {
        assert!(
            r.header("ratelimit").is_none() && r.header("ratelimit-policy").is_none(),
            "one field without the other"
        );
        return Vec::new();
    };
    let policy = items(&parse(policy), "RateLimit-Policy");
    let limits = items(&parse(limits), "RateLimit");
    let mut names = HashSet::new();
    for (name, params) in &policy {
        assert!(names.insert(name.clone()), "{name:?} listed twice");
        let mut q = None;
        for (k, v) in params {
            match k.as_str() {
                "q" => q = int(v).filter(|q| *q >= 0),
                "w" => assert!(int(v).is_some_and(|w| w > 0), "w of {name:?}: {v:?}"),
                "qu" => {
                    let unit = v.as_string().map(|s| s.as_str().to_owned());
                    assert!(
                        unit.as_deref().is_some_and(|u| UNITS.contains(&u)),
                        "qu of {name:?} outside the registry: {v:?}"
                    );
                }
                "pk" => assert!(v.as_byte_sequence().is_some()),
                other => assert!(vendor(other), "{other} without a vendor prefix"),
            }
        }
        assert!(q.is_some(), "{name:?} has no integer q");
    }
    let mut seen = HashSet::new();
    for (name, params) in &limits {
        assert!(
            names.contains(name),
            "{name:?} in RateLimit, not in the policy"
        );
        assert!(seen.insert(name.clone()), "{name:?} twice in RateLimit");
        let mut r_ = None;
        for (k, v) in params {
            match k.as_str() {
                "r" => r_ = int(v).filter(|r| *r >= 0),
                "t" => {
                    let t = int(v).filter(|t| *t >= 0);
                    assert!(t.is_some(), "t of {name:?}: {v:?}");
                    // Retry-After never points earlier than the reset of a
                    // limit with nothing left.
                    if let (Some(after), Some(0)) = (r.header("retry-after"), r_) {
                        let after: i64 = after.parse().unwrap();
                        assert!(
                            after >= t.unwrap(),
                            "Retry-After {after} < t {t:?} of {name:?}"
                        );
                    }
                }
                "pk" => {}
                other => assert!(vendor(other), "{other} without a vendor prefix"),
            }
        }
        assert!(r_.is_some(), "{name:?} has no integer r");
    }
    policy.into_iter().map(|(n, _)| n).collect()
}

fn ietf(mut config: Config) -> Config {
    config.headers = HeaderStyle::Ietf;
    config
}

#[tokio::test]
async fn every_shipped_policy_as_ietf_parses_and_follows_the_draft() {
    let paths = [
        ("GET", "/x"),
        ("GET", "/api/v1/items"),
        ("POST", "/api/v1/items"),
        ("POST", "/v2/publish/q"),
        ("POST", "/llm/v1/chat/completions?tokens=500"),
        ("GET", "/batch/job"),
    ];
    let mut with_refusals = 0;
    for name in ["qlik", "qarion", "dataapi", "gather", "qstash", "guarded"] {
        let clock = clock();
        let (app, _) = demo(ietf(policy(name)), &clock);
        let (mut checked, mut refused) = (0, 0);
        for (method, path) in paths {
            for i in 0..70 {
                let req = call(method, path, &[("x-api-key", "k1"), ("x-tenant-id", "t")]);
                let r = send(&app, req).await;
                if !check(&r).is_empty() {
                    checked += 1;
                }
                if r.status == StatusCode::TOO_MANY_REQUESTS {
                    refused += 1;
                    if i % 2 == 0 {
                        clock.advance(Duration::from_millis(700));
                    }
                }
            }
        }
        assert!(
            checked > 100,
            "{name}: {checked} responses with ietf headers"
        );
        with_refusals += usize::from(refused > 0);
    }
    // Refusals (Retry-After against t) seen under most policies.
    assert!(with_refusals >= 4, "{with_refusals}");
}

async fn odd_names_costs_and_windows_follow_the_draft() {
    let config = Config::from_json(
        r#"{
          "tiers": {"odd": {"limits": [
            {"name": "a \"quoted\" name", "capacity": 3, "window": "500ms"},
            {"name": "comma, semicolon; equals=1", "capacity": 5, "window": "1m"},
            {"name": "back\\slash", "capacity": 1000, "window": "1h",
             "cost": {"tokens": "x-usage-tokens"}},
            {"name": "slow", "capacity": 100000, "window": "1m", "cost": "latency"},
            {"name": "in-flight", "kind": "concurrent", "capacity": 10, "window": "1m"}
          ]}},
          "default_tier": "odd",
          "headers": "ietf"
        }"#,
    )
    .unwrap();
    let clock = clock();
    let (app, _) = demo(config, &clock);
    let mut refused = 0;
    for i in 0..12 {
        let r = get_as(&app, "k", "/x?tokens=10&sleep_ms=5").await;
        let names = check(&r);
        assert!(names.contains(&"a \"quoted\" name".to_owned()), "{names:?}");
        assert!(names.contains(&"comma, semicolon; equals=1".to_owned()));
        assert!(names.contains(&"back\\slash".to_owned()));
        let policy = r.header("ratelimit-policy").unwrap();
        // The 500 ms window: no `w` (the draft has whole seconds only).
        assert!(
            policy.contains(r#""a \"quoted\" name";q=3;tierlimit-window-ms=500"#),
            "{policy}"
        );
        assert!(
            policy.contains(r#"tierlimit-unit="tokens";w=3600"#),
            "{policy}"
        );
        assert!(
            policy.contains(r#"tierlimit-unit="latency-ms";w=60"#),
            "{policy}"
        );
        // Requests in flight: listed only while refusing (never here).
        assert!(!policy.contains("in-flight"), "{policy}");
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            refused += 1;
        }
        if i == 7 {
            clock.advance(Duration::from_millis(600));
        }
    }
    assert!(refused > 0);
}

async fn t_is_when_quota_is_next_available_not_full_capacity() {
    // Ten a minute in ten-second buckets: three requests at 0 s, two at 25 s.
    let config = Config::from_json(
        r#"{"tiers": {"t": {"limits": [
              {"name": "m", "capacity": 5, "window": "1m", "precision": 6},
              {"name": "idle-hour", "capacity": 100, "window": "1h",
               "cost": {"tokens": "x-usage-tokens"}}]}},
            "default_tier": "t", "headers": "ietf"}"#,
    )
    .unwrap();
    let clock = clock();
    let (app, _) = demo(config, &clock);
    for _ in 0..3 {
        get_as(&app, "k", "/x").await;
    }
    clock.advance(Duration::from_secs(25));
    get_as(&app, "k", "/x").await;
    let r = get_as(&app, "k", "/x").await;
    // Capacity is whole again only at 85 s, but the first three leave at
    // 60 s: 35 s from now.
    assert_eq!(
        r.header("ratelimit").unwrap().split(", ").next(),
        Some("\"m\";r=0;t=35")
    );
    // The token limit has counted nothing (no tokens reported): no `t`.
    assert!(
        r.header("ratelimit")
            .unwrap()
            .contains("\"idle-hour\";r=100"),
        "{:?}",
        r.header("ratelimit")
    );
    assert!(!r
        .header("ratelimit")
        .unwrap()
        .contains("\"idle-hour\";r=100;t"));
    let refused = get_as(&app, "k", "/x").await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.header("retry-after"), Some("35"));
    check(&refused);
}

on_every_store!(
    odd_names_costs_and_windows_follow_the_draft,
    t_is_when_quota_is_next_available_not_full_capacity,
);

#[test]
fn names_an_sf_string_cannot_hold_are_refused_with_ietf_headers() {
    let text = r#"{"tiers": {"t": {"limits": [{"name": "минута", "capacity": 5, "window": "1m"}]}},
                   "default_tier": "t", "headers": "ietf"}"#;
    let err = Config::from_json(text).and_then(|c| c.build()).unwrap_err();
    assert!(err.to_string().contains("printable ASCII"), "{err}");
    // Other header styles send no names: accepted.
    let other = text.replace(r#""headers": "ietf""#, r#""headers": "x-ratelimit""#);
    Config::from_json(&other).and_then(|c| c.build()).unwrap();
}
