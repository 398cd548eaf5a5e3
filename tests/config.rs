//! Every kind of bad configuration is refused with its own precise error.

use std::error::Error as _;

use tierlimit::{Config, ConfigErrorKind, Policy};

/// The error of reading, checking and compiling `json`.
/// What checking a whole file (policy and store) says.
fn err(json: &str) -> String {
    tierlimit::Setup::from_json(json).unwrap_err().to_string()
}

const GOOD_TIER: &str = r#""t": {"limits": [{"name": "m", "capacity": 5, "window": "1m"}]}"#;

fn with(extra: &str) -> String {
    format!(r#"{{"tiers": {{{GOOD_TIER}}}, "default_tier": "t"{extra}}}"#)
}

#[test]
fn a_good_file_loads() {
    let c = Config::from_json(&with(
        r#", "routes": [{"methods": ["GET"], "path": "/health", "tier": "exempt"}]"#,
    ))
    .unwrap();
    assert_eq!(c.tiers.len(), 1);
}

#[test]
fn syntax_errors_say_where() {
    let e = err("{\"tiers\": ");
    assert!(e.contains("line 1"), "{e}");
}

#[test]
fn unknown_fields_are_errors() {
    let e = err(&with(r#", "defualt_plan": "x""#));
    assert!(
        e.starts_with("defualt_plan: unknown field `defualt_plan`, expected one of"),
        "{e}"
    );
    let e = err(
        r#"{"tiers": {"t": {"limits": [{"name": "m", "capacity": 5, "window": "1m", "burst": 3}]}}}"#,
    );
    assert!(
        e.starts_with("tiers.t.limits[0].burst: unknown field `burst`"),
        "{e}"
    );
}

#[test]
fn limit_fields_are_checked() {
    let lim = |body: &str| {
        err(&format!(
            r#"{{"tiers": {{"premium": {{"limits": [{{"name": "a", "capacity": 1, "window": "1s"}}, {body}]}}}}}}"#
        ))
    };
    assert_eq!(
        lim(r#"{"name": "m", "capacity": 5, "window": "0s"}"#),
        "tiers.premium.limits[1].window: must be greater than zero"
    );
    assert_eq!(
        lim(r#"{"name": "m", "capacity": 0, "window": "1m"}"#),
        "tiers.premium.limits[1].capacity: must be greater than zero"
    );
    assert_eq!(
        lim(r#"{"name": "m", "capacity": 5000000000, "window": "1m"}"#),
        "tiers.premium.limits[1].capacity: invalid value: integer `5000000000`, expected u32 at line 1 column 116"
    );
    assert_eq!(
        lim(r#"{"name": "a", "capacity": 5, "window": "1m"}"#),
        "tiers.premium.limits[1].name: `a` is used twice in tier `premium`"
    );
    assert_eq!(
        lim(r#"{"name": "", "capacity": 5, "window": "1m"}"#),
        "tiers.premium.limits[1].name: must not be empty"
    );
    assert_eq!(
        lim(r#"{"name": "m", "capacity": 5, "window": "1m", "cost": 6}"#),
        "tiers.premium.limits[1].cost: a request costing 6 can never fit a capacity of 5"
    );
    assert_eq!(
        lim(r#"{"name": "m", "capacity": 5, "window": "1m", "precision": 0}"#),
        "tiers.premium.limits[1].precision: must be between 1 and 3600"
    );
    assert_eq!(
        lim(r#"{"name": "m", "capacity": 5, "window": "1m", "utc_offset": "+01:00"}"#),
        "tiers.premium.limits[1].utc_offset: applies to fixed windows only"
    );
    assert_eq!(
        lim(r#"{"name": "m", "capacity": 5, "window": "1d", "kind": "fixed", "utc_offset": "1h"}"#),
        "tiers.premium.limits[1].utc_offset: `1h` is not a UTC offset such as \"+02:00\" or \"-05:30\""
    );
    assert_eq!(
        lim(r#"{"name": "m", "capacity": 5, "window": "1m", "scope": ["user", "user"]}"#),
        "tiers.premium.limits[1].scope[1]: `User` is listed twice"
    );
    let e = lim(r#"{"name": "m", "capacity": 5, "window": "5 fortnights"}"#);
    assert!(
        e.starts_with("tiers.premium.limits[1].window: `5 fortnights` is not a duration"),
        "{e}"
    );
    assert!(e.contains("fortnights"), "{e}");
    assert!(
        lim(r#"{"name": "m", "capacity": 5, "window": "1m", "kind": "leaky"}"#)
            .starts_with("tiers.premium.limits[1].kind: unknown variant `leaky`")
    );
    assert!(
        lim(r#"{"name": "m", "capacity": 5, "window": "1m", "scope": ["planet"]}"#)
            .starts_with("tiers.premium.limits[1].scope[0]: unknown variant `planet`")
    );
    assert!(lim(r#"{"name": "m", "capacity": -1, "window": "1m"}"#)
        .starts_with("tiers.premium.limits[1].capacity: invalid value: integer `-1`"));
}

#[test]
fn dangling_tier_names_are_errors() {
    assert_eq!(
        err(r#"{"tiers": {}, "default_tier": "nope"}"#),
        "default_tier: unknown tier `nope`"
    );
    assert_eq!(
        err(&with(
            r#", "routes": [{"path": "/a", "tier": "t"}, {"path": "/b", "tier": "gold"}]"#
        )),
        "routes[1].tier: unknown tier `gold`"
    );
    assert_eq!(
        err(&with(r#", "plans": {"default": "basic"}"#)),
        "plans.default: unknown tier `basic`"
    );
    assert_eq!(
        err(&with(
            r#", "plans": {"default": "t", "assignments": {"k1": "gold"}}"#
        )),
        "plans.assignments.k1: unknown tier `gold`"
    );
    assert_eq!(err(&with(r#", "global": "g""#)), "global: unknown tier `g`");
}

#[test]
fn routes_are_checked() {
    assert_eq!(
        err(&with(
            r#", "routes": [{"methods": ["GET", "G T"], "path": "/a", "tier": "t"}]"#
        )),
        "routes[0].methods[1]: `G T` is not an HTTP method"
    );
    assert_eq!(
        err(&with(r#", "routes": [{"path": "a/b", "tier": "t"}]"#)),
        "routes[0].path: path pattern `a/b` must start with `/`"
    );
    assert_eq!(
        err(&with(r#", "routes": [{"path": "/**/b", "tier": "t"}]"#)),
        "routes[0].path: `**` must be the last segment of `/**/b`"
    );
    assert_eq!(
        err(r#"{"tiers": {"exempt": {}}}"#),
        "tiers.exempt: `exempt` is reserved for routes and cannot name a tier"
    );
}

#[test]
fn identity_and_store_are_checked() {
    assert_eq!(
        err(&with(
            r#", "identity": {"trusted_proxies": ["10.0.0.0/8", "10.0.0.0/40"]}"#
        )),
        "identity.trusted_proxies[1]: `10.0.0.0/40` has a prefix length outside 0..=32"
    );
    assert_eq!(
        err(&with(
            r#", "identity": {"trusted_proxies": ["proxy.local"]}"#
        )),
        "identity.trusted_proxies[0]: `proxy.local` is not an IP address or CIDR block"
    );
    assert_eq!(
        err(&with(r#", "identity": {"api_key_header": "x api key"}"#)),
        "identity.api_key_header: `x api key` is not a valid header name"
    );
    assert_eq!(
        err(&with(r#", "store": {"max_keys": 0}"#)),
        "store.max_keys: must be greater than zero"
    );
    assert!(
        err(&with(r#", "headers": "ietf-99""#)).starts_with("headers: unknown variant `ietf-99`")
    );
}

#[test]
fn a_missing_file_is_a_clear_error() {
    let e = Config::from_file("/nonexistent/policy.json").unwrap_err();
    assert_eq!(e.kind(), ConfigErrorKind::Io);
    let io = e
        .source()
        .unwrap()
        .downcast_ref::<std::io::Error>()
        .unwrap();
    assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
    let e = e.to_string();
    assert!(e.starts_with("cannot read /nonexistent/policy.json"), "{e}");
}

#[test]
fn errors_have_a_kind_a_path_and_keep_their_source() {
    let syntax = Config::from_json("{\"tiers\": ").unwrap_err();
    assert_eq!(syntax.kind(), ConfigErrorKind::Syntax);
    // serde's description is the message, said once (not also a source).
    assert!(syntax.to_string().contains("line 1 column"), "{syntax}");
    assert!(syntax.source().is_none());
    let unknown = Policy::from_json(&with(r#", "global": "gold""#)).unwrap_err();
    assert_eq!(unknown.kind(), ConfigErrorKind::Unknown);
    assert_eq!(unknown.path(), "global");
    assert_eq!(unknown.message(), "unknown tier `gold`");
    let invalid = tierlimit::Setup::from_json(&with(r#", "store": {"max_keys": 0}"#)).unwrap_err();
    assert_eq!(invalid.kind(), ConfigErrorKind::Invalid);
    // Parsing alone accepts what only the checks refuse.
    assert!(Config::from_json(&with(r#", "store": {"max_keys": 0}"#)).is_ok());
}

#[test]
fn public_types_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<tierlimit::Policy>();
    assert_send_sync::<tierlimit::Config>();
    assert_send_sync::<tierlimit::ConfigError>();
    assert_send_sync::<tierlimit::RateLimitLayer>();
    assert_send_sync::<tierlimit::Controller>();
    assert_send_sync::<tierlimit::store::Batch>();
    assert_send_sync::<tierlimit::store::StoreError>();
    assert_send_sync::<tierlimit::clock::ManualClock>();
    assert_send_sync::<tierlimit::store::MemoryStore>();
    assert_send_sync::<tierlimit::RateLimit<tower::util::BoxCloneSyncService<(), (), ()>>>();
}

#[test]
fn costs_cascades_modifiers_and_aggregates_are_checked() {
    let lim = |body: &str| err(&format!(r#"{{"tiers": {{"t": {{"limits": [{body}]}}}}}}"#));
    assert!(
        lim(r#"{"name": "m", "capacity": 5, "window": "1m", "cost": "parsecs"}"#)
            .starts_with("tiers.t.limits[0].cost: unknown cost `parsecs`")
    );
    assert!(lim(
        r#"{"name": "m", "capacity": 5, "window": "1m", "cost": {"error_responses": "600-500"}}"#
    )
    .starts_with("tiers.t.limits[0].cost: `600-500` is not a status or status range"));
    assert_eq!(
        lim(r#"{"name": "m", "capacity": 5, "window": "1m", "cost": {"tokens": "bad header"}}"#),
        "tiers.t.limits[0].cost: `bad header` is not a valid header name"
    );
    assert_eq!(
        lim(r#"{"name": "m", "capacity": 5, "window": "1m", "tenant_aggregate": 0}"#),
        "tiers.t.limits[0].tenant_aggregate: must be a factor greater than zero"
    );
    assert!(
        lim(r#"{"name": "m", "capacity": 5, "window": "1m", "family": "weekly"}"#)
            .starts_with("tiers.t.limits[0].family: unknown variant `weekly`")
    );
    assert_eq!(
        err(r#"{"tiers": {"t": {"groups": [{"combine": "cascade", "limits": []}]}}}"#),
        "tiers.t.groups[0].limits: a cascade needs at least one limit"
    );
    assert_eq!(
        err(&with(
            r#", "modifiers": [{"header": "x-app-env", "equals": "sandbox", "factor": -1}]"#
        )),
        "modifiers[0].factor: must be a number greater than zero"
    );
    assert!(err(&with(r#", "mode": "dry-run""#)).starts_with("mode: unknown variant `dry-run`"));
}

#[test]
fn a_tier_nothing_uses_is_refused() {
    // A typo in a route's tier name leaves the real tier unused.
    let e = tierlimit::Config::from_json(
        r#"{ "tiers": {
               "uploads": { "limits": [ { "name": "m", "capacity": 5, "window": "1m" } ] },
               "api": { "limits": [ { "name": "m", "capacity": 60, "window": "1m" } ] } },
             "routes": [ { "methods": ["POST"], "path": "/upload", "tier": "api" } ],
             "default_tier": "api" }"#,
    )
    .and_then(|c| c.build())
    .unwrap_err()
    .to_string();
    assert_eq!(
        e,
        "tiers.uploads: no route, `default_tier`, `global` or plan uses this tier, so it limits nothing"
    );
}

/// An error's `Display` is its own part; the cause is only its `source()`,
/// so printing the chain never says a thing twice.
#[test]
fn display_never_repeats_the_source() {
    use tierlimit::store::{StoreError, StoreErrorKind};
    let io = Config::from_file("/nonexistent/policy.json").unwrap_err();
    let cause = io.source().unwrap().to_string();
    assert_eq!(io.to_string(), "cannot read /nonexistent/policy.json");
    assert!(!io.to_string().contains(&cause));
    let store = StoreError::new(StoreErrorKind::Timeout, "deadline has elapsed");
    assert_eq!(store.to_string(), "rate-limit store timed out");
    assert_eq!(store.source().unwrap().to_string(), "deadline has elapsed");
    let plain = StoreError::from_kind(StoreErrorKind::Unavailable);
    assert_eq!(plain.to_string(), "rate-limit store unavailable");
    assert!(plain.source().is_none());
}

/// Malformed JSON names the deepest place it can, never a `?`, and nothing
/// may follow the document.
#[test]
fn syntax_errors_name_known_places_and_trailing_text_is_refused() {
    let e = Config::from_json(r#"{"tiers": {"t": {"#).unwrap_err();
    assert_eq!(e.path(), "tiers.t");
    assert!(
        e.to_string().starts_with("tiers.t: EOF while parsing"),
        "{e}"
    );
    let e = Config::from_json(r#"{"tiers": {"t": {"limits": [{"name": "m",, }]}}}"#).unwrap_err();
    assert_eq!(e.path(), "tiers.t.limits[0]");
    let e = Config::from_json(r#"{"tenant_users": {"a": 1,}}"#).unwrap_err();
    assert!(
        e.to_string().starts_with("tenant_users: trailing comma"),
        "{e}"
    );
    let e = Config::from_json("{} {}").unwrap_err();
    assert_eq!(e.kind(), ConfigErrorKind::Syntax);
    assert!(e.to_string().starts_with("trailing characters"), "{e}");
    assert!(Config::from_json("{}\n  \n").is_ok());
}
