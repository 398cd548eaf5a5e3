//! The client address behind trusted proxies: any `X-Forwarded-For` /
//! `Forwarded` headers give the peer or an address that the headers name,
//! never a panic.
#![no_main]

use std::net::IpAddr;

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (bool, Vec<u8>, Vec<u8>)| {
    let (trusted, xff, fwd) = input;
    let config = tierlimit::Config::new()
        .trusted_proxies(if trusted {
            vec!["10.0.0.0/8", "::1/128"]
        } else {
            vec![]
        })
        .build()
        .unwrap();
    let identity = config_identity(&config);
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_bytes(&xff) {
        headers.append("x-forwarded-for", v);
    }
    if let Ok(v) = HeaderValue::from_bytes(&fwd) {
        headers.append("forwarded", v);
    }
    let peer: IpAddr = "10.1.2.3".parse().unwrap();
    let ip = identity.client_ip(peer, &headers);
    if !trusted {
        assert_eq!(ip, peer);
    }
    if ip != peer {
        // An address the headers carry (in some spelling).
        let text = String::from_utf8_lossy(&xff).to_ascii_lowercase()
            + &String::from_utf8_lossy(&fwd).to_ascii_lowercase();
        let named = match ip {
            IpAddr::V4(v4) => text.contains(&v4.to_string()),
            IpAddr::V6(_) => text.contains(':'),
        };
        assert!(named, "{ip} from {text:?}");
    }
});

fn config_identity(policy: &tierlimit::Policy) -> &tierlimit::identity::IdentityConfig {
    policy.identity()
}
