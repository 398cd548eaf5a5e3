//! The JSON configuration loader: any input gets a setup (policy and
//! deployment, the Redis settings checked as redis-rs would open them) or
//! a `ConfigError` that names where it went wrong, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match tierlimit::Setup::from_json(text) {
        Ok(setup) => {
            let policy = setup.policy;
            // A policy that loads can decide a request.
            let id = tierlimit::identity::Identity {
                api_key: Some(b"k"),
                ..Default::default()
            };
            let _ = policy.batch_for(
                tierlimit::store::KeySecret::per_process(),
                &http::Method::GET,
                "/x",
                &id,
            );
        }
        Err(e) => {
            // Every error renders, with a kind and a message.
            assert!(!e.to_string().is_empty());
        }
    }
});
