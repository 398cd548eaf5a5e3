//! TLS certificates, read from the files `store.redis.tls` names.

use crate::store::{RedisStoreConfig, StoreError};

#[cfg(feature = "redis-tls")]
pub(super) type Certificates = Option<redis::TlsCertificates>;
#[cfg(not(feature = "redis-tls"))]
pub(super) type Certificates = Option<std::convert::Infallible>;

/// The certificates of `config.tls`, read now (a missing or unreadable
/// file is an error naming the field and the file).
#[cfg(feature = "redis-tls")]
pub(super) fn certificates(config: &RedisStoreConfig) -> Result<Certificates, StoreError> {
    // rustls needs a crypto provider: aws-lc-rs unless the program
    // chose one (with two providers compiled in, rustls would not pick).
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    }
    let Some(tls) = &config.tls else {
        return Ok(None);
    };
    let read = |field: &str, path: &Option<std::path::PathBuf>| {
        path.as_ref()
            .map(|p| {
                std::fs::read(p).map_err(|e| {
                    StoreError::new(
                        crate::store::StoreErrorKind::Unavailable,
                        format!("store.redis.tls.{field}: cannot read {}: {e}", p.display()),
                    )
                })
            })
            .transpose()
    };
    let root_cert = read("ca_file", &tls.ca_file)?;
    let client_tls = match (
        read("cert_file", &tls.cert_file)?,
        read("key_file", &tls.key_file)?,
    ) {
        (Some(client_cert), Some(client_key)) => Some(redis::ClientTlsConfig {
            client_cert,
            client_key,
        }),
        _ => None,
    };
    Ok(Some(redis::TlsCertificates {
        client_tls,
        root_cert,
    }))
}

#[cfg(not(feature = "redis-tls"))]
pub(super) fn certificates(_config: &RedisStoreConfig) -> Result<Certificates, StoreError> {
    // `RedisStoreConfig::check` refused TLS settings in this build.
    Ok(None)
}
