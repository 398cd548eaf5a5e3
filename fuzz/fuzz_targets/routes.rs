//! Path normalisation and route matching: odd paths (percent-escapes,
//! dot segments, doubled slashes, non-UTF-8 escapes) and odd patterns never
//! panic, and another spelling of a path is never exempt where the path
//! itself is not.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tierlimit::config::{Config, Limit, Route, Tier};
use tierlimit::identity::Identity;

fn policy(pattern: &str) -> Option<tierlimit::Policy> {
    Config::new()
        .tier(
            "t",
            Tier::new().limit(Limit::sliding("l", 10, std::time::Duration::from_secs(60))),
        )
        .route(Route::exempt(["GET"], pattern))
        .default_tier("t")
        .build()
        .ok()
}

fuzz_target!(|input: (&str, &str)| {
    let (pattern, path) = input;
    let id = Identity {
        api_key: Some(b"k"),
        ..Default::default()
    };
    let fixed = ["/a/{id}/b", "/a/**", "/*/x", "/health"];
    for p in fixed.iter().copied().chain([pattern]) {
        let Some(policy) = policy(p) else { continue };
        let exempt = policy
            .batch_for(
                tierlimit::store::KeySecret::per_process(),
                &http::Method::GET,
                path,
                &id,
            )
            .is_none();
        // The same path with a doubled slash and a "." segment in front is
        // the same path once normalised, but spelled otherwise: exempt only
        // where the path itself is.
        if let Some(rest) = path.strip_prefix('/') {
            let odd = format!("//./{rest}");
            let again = policy
                .batch_for(
                    tierlimit::store::KeySecret::per_process(),
                    &http::Method::GET,
                    &odd,
                    &id,
                )
                .is_none();
            assert!(
                !again || exempt,
                "pattern {p:?}: {odd:?} exempt, {path:?} not"
            );
        }
    }
});
