//! Counter keys: the keyed 128-bit hash that names a request's counters,
//! and the secret it is keyed with.
//!
//! A counter's key is `scope_hash ^ group_mask ^ modifier_mask`:
//!
//! - `scope_hash` hashes the request's identity values the limit is scoped
//!   by (API key, user, tenant, IP, caller) with the store's [`KeySecret`],
//!   so nobody without the secret can choose identities that collide;
//! - `group_mask` is a fingerprint of (tier, scope) — where the counters of
//!   one tier and scope live together — and each limit's `tag` (from its
//!   definition) tells its counter apart under that key. Fingerprints are
//!   keyed with a fixed key: they come from the configuration, not from
//!   callers, and must be equal in every instance and across reloads, so
//!   that a limit whose definition did not change keeps its counters.

use std::hash::{BuildHasher, Hasher};
use std::sync::OnceLock;

use siphasher::sip128::{Hasher128, SipHasher13};

use crate::config::{Limit, ScopePart};
use crate::identity::{Caller, Identity};
use crate::window::{Shape, WindowSpec};

/// The key of the hash that turns identities into counter keys
/// (SipHash-1-3, 128 bits).
///
/// Each store says which one its counters are named with
/// ([`Store::key_secret`](crate::store::Store::key_secret)):
///
/// - counters in this process (the memory store) use
///   [`KeySecret::per_process`], random per process, so that nobody can
///   pick identities whose counters land in one map bucket;
/// - counters that several instances share (Redis) must be found under the
///   same key by every instance: [`KeySecret::shared`], derived from a
///   secret text every instance is given (`store.redis.secret`; none is
///   the empty text). Redis hashes key names with its own random seed.
///
/// Its `Debug` never shows the key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeySecret(u64, u64);

impl KeySecret {
    /// A key drawn at random once per process.
    pub fn per_process() -> KeySecret {
        static SECRET: OnceLock<KeySecret> = OnceLock::new();
        *SECRET.get_or_init(|| {
            let a = std::collections::hash_map::RandomState::new();
            let b = std::collections::hash_map::RandomState::new();
            let mut ha = a.build_hasher();
            ha.write_u64(0x7469_6572);
            let mut hb = b.build_hasher();
            hb.write_u64(0x6c69_6d69);
            KeySecret(ha.finish(), hb.finish())
        })
    }

    /// The key every instance given the same `text` derives.
    pub fn shared(text: &str) -> KeySecret {
        let mut h = SipHasher13::new_with_keys(0x7469_6572_6c69_6d69, 0x7265_6469_735f_6b65);
        h.write(b"tierlimit shared counter keys\0");
        h.write(text.as_bytes());
        let k = h.finish128();
        KeySecret(k.h1, k.h2)
    }

    fn hasher(self) -> SipHasher13 {
        SipHasher13::new_with_keys(self.0, self.1)
    }
}

impl std::fmt::Debug for KeySecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeySecret(..)")
    }
}

/// The fixed key of configuration fingerprints (see the module docs).
fn fingerprint() -> SipHasher13 {
    SipHasher13::new_with_keys(0x6669_6e67_6572_7072, 0x696e_7420_6b65_7973)
}

/// The tag of a limit: which counter under its (tier, scope) key it is.
/// Covers everything that gives the counter its meaning, so a reload keeps
/// counters exactly when the definition is unchanged.
pub(super) fn limit_tag(tier: &str, l: &Limit, spec: WindowSpec) -> u16 {
    let mut h = fingerprint();
    h.write(b"limit\0");
    h.write(tier.as_bytes());
    h.write(&[0]);
    h.write(l.name.as_bytes());
    h.write(&[0]);
    h.write_u64(u64::from(l.capacity));
    h.write(format!("{:?}", l.cost).as_bytes());
    match spec.shape() {
        Shape::Sliding {
            bucket_ms,
            window_ms,
            reach,
        } => {
            h.write_u8(3);
            h.write_u64(bucket_ms);
            h.write_u64(window_ms);
            h.write_u32(reach);
        }
        Shape::Fixed {
            len_ms,
            offset_ms,
            zone,
        } => {
            h.write_u8(4);
            h.write_u64(len_ms);
            h.write_i64(offset_ms);
            if let Some(z) = zone {
                h.write(b"zone\0");
                h.write(z.resolved().as_bytes());
            }
        }
    }
    for part in &l.scope {
        h.write_u8(*part as u8);
    }
    if l.kind == crate::config::WindowKind::Concurrent {
        h.write(b"concurrent\0");
    }
    (h.finish128().as_u128() as u16).max(1)
}

/// The fingerprint of a (tier, scope) group: `what` is `group` for the
/// counters' key, `overflow` for the shared entry of keys a full memory
/// store folds together, `aggregate` for a tenant aggregate's group.
pub(super) fn group_fingerprint(what: &[u8], tier: &str, scope: &[ScopePart]) -> u128 {
    let mut g = fingerprint();
    g.write(what);
    g.write(tier.as_bytes());
    g.write(&[0]);
    for part in scope {
        g.write_u8(*part as u8);
    }
    g.finish128().as_u128()
}

fn ip_octets(ip: std::net::IpAddr) -> ([u8; 16], usize) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&v4.octets());
            (b, 4)
        }
        std::net::IpAddr::V6(v6) => (v6.octets(), 16),
    }
}

/// The hash of the identity values `scope` names, keyed with `secret`.
pub(super) fn scope_hash(secret: KeySecret, scope: &[ScopePart], id: &Identity<'_>) -> u128 {
    let mut h = secret.hasher();
    let ip = id.ip.map(ip_octets);
    let ip = ip.as_ref().map(|(b, n)| &b[..*n]);
    for part in scope {
        let (tag, bytes): (u64, Option<&[u8]>) = match part {
            ScopePart::ApiKey => (1, id.api_key),
            ScopePart::User => (2, id.user.map(str::as_bytes)),
            ScopePart::Tenant => (3, id.tenant.map(str::as_bytes)),
            ScopePart::Ip => (4, ip),
            ScopePart::Caller => match id.caller() {
                Caller::ApiKey(k) => (5, Some(k)),
                Caller::User(u) => (6, Some(u.as_bytes())),
                Caller::Ip(_) => (7, ip),
                _ => (8, None),
            },
        };
        // One word of tag, presence and length, then the bytes: no two
        // identities collide by concatenation.
        match bytes {
            Some(b) => {
                h.write_u64(tag | 1 << 8 | (b.len() as u64) << 16);
                h.write(b);
            }
            None => h.write_u64(tag),
        }
    }
    h.finish128().as_u128()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_secrets_agree_and_differ_by_text() {
        assert_eq!(KeySecret::shared("a"), KeySecret::shared("a"));
        assert_ne!(KeySecret::shared("a"), KeySecret::shared("b"));
        assert_eq!(KeySecret::per_process(), KeySecret::per_process());
        assert_ne!(KeySecret::per_process(), KeySecret::shared(""));
        assert_eq!(format!("{:?}", KeySecret::shared("x")), "KeySecret(..)");
    }

    #[test]
    fn scope_hashes_depend_on_the_secret_and_every_value() {
        let id = Identity {
            api_key: Some(b"k"),
            user: Some("u"),
            ..Identity::default()
        };
        let scope = [ScopePart::ApiKey, ScopePart::User];
        let a = scope_hash(KeySecret::shared("a"), &scope, &id);
        assert_eq!(a, scope_hash(KeySecret::shared("a"), &scope, &id));
        assert_ne!(a, scope_hash(KeySecret::shared("b"), &scope, &id));
        let other = Identity {
            user: Some("v"),
            ..id
        };
        assert_ne!(a, scope_hash(KeySecret::shared("a"), &scope, &other));
        // "k" + "" is not "" + "k": lengths are hashed.
        let split = Identity {
            api_key: Some(b""),
            user: Some("k"),
            ..Identity::default()
        };
        let joined = Identity {
            api_key: Some(b"k"),
            user: Some(""),
            ..Identity::default()
        };
        let s = KeySecret::shared("");
        assert_ne!(
            scope_hash(s, &scope, &split),
            scope_hash(s, &scope, &joined)
        );
    }
}
