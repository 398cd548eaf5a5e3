//! API key and identity extraction from request heads: any header bytes
//! give an identity whose key is within `max_key_len` and trimmed, never a
//! panic.
#![no_main]

use http::{HeaderValue, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (Vec<u8>, Vec<u8>, u8)| {
    let (key, auth, max) = input;
    let max = usize::from(max).max(1);
    let policy = tierlimit::Config::new().max_key_len(max).build().unwrap();
    let mut req = Request::get("/x").body(()).unwrap();
    if let Ok(v) = HeaderValue::from_bytes(&key) {
        req.headers_mut().insert("x-api-key", v);
    }
    if let Ok(v) = HeaderValue::from_bytes(&auth) {
        req.headers_mut().insert("authorization", v);
    }
    let (parts, ()) = req.into_parts();
    let id = policy.identity().extract(&parts);
    if let Some(k) = id.api_key {
        assert!(!k.is_empty() && k.len() <= max);
        assert_eq!(k, k.trim_ascii());
    }
    let _ = id.caller();
    let _ = id.plan_key();
});
