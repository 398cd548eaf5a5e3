//! Certificates for TLS tests, made by the test (rcgen): a CA, a server
//! certificate for `localhost` and `127.0.0.1` signed by it, a client
//! certificate signed by it (mutual TLS), and a second CA that signed
//! nothing here (a CA the client trusts but the server's certificate is
//! not from). PEM files in a directory of their own, removed on drop.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, Certificate, CertificateParams, DnType, IsCa, KeyPair};

pub struct TestCerts {
    dir: PathBuf,
}

fn ca(name: &str) -> (Certificate, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    (params.self_signed(&key).unwrap(), key)
}

fn leaf(names: &[&str], ca: &(Certificate, KeyPair)) -> (Certificate, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let mut params = CertificateParams::new(names).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "tierlimit test");
    (params.signed_by(&key, &ca.0, &ca.1).unwrap(), key)
}

impl TestCerts {
    pub fn new() -> TestCerts {
        let dir = std::env::temp_dir().join(format!(
            "tierlimit-tls-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = ca("tierlimit test CA");
        let other = ca_pair("another CA");
        let (server, server_key) = leaf(&["localhost", "127.0.0.1"], &ca);
        let (client, client_key) = leaf(&["client"], &ca);
        let write = |name: &str, text: String| std::fs::write(dir.join(name), text).unwrap();
        write("ca.pem", ca.0.pem());
        write("other-ca.pem", other.pem());
        write("server.pem", server.pem());
        write("server.key", server_key.serialize_pem());
        write("client.pem", client.pem());
        write("client.key", client_key.serialize_pem());
        TestCerts { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn ca_pair(name: &str) -> Certificate {
    ca(name).0
}

impl Drop for TestCerts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
