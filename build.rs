//! Only for this repository's own tests: when `redis-server` is not
//! installed, the tests that need one are compiled as ignored
//! (`cfg(no_redis_server)`), so that they are reported as ignored, never as
//! passed. Under `CI=true` they are never ignored: there a missing
//! `redis-server` fails them. Builds of the crate as a dependency (no
//! `.ci/run` next to the manifest) probe nothing.

use std::path::Path;
use std::process::{Command, Stdio};

fn main() {
    println!("cargo::rustc-check-cfg=cfg(no_redis_server)");
    println!("cargo::rustc-check-cfg=cfg(no_nginx)");
    println!("cargo::rustc-check-cfg=cfg(no_flask_limiter)");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=CI");
    println!("cargo::rerun-if-env-changed=PATH");
    println!("cargo::rerun-if-env-changed=TIERLIMIT_TEST_REDIS_SERVER");
    println!("cargo::rerun-if-env-changed=TIERLIMIT_TEST_NGINX");
    println!("cargo::rerun-if-env-changed=TIERLIMIT_TEST_PYTHON");
    let dir = std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default();
    if !Path::new(&dir).join(".ci").join("run").exists() {
        return;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        return;
    }
    // The binary the tests start (tests/common/redis_server.rs reads the
    // same variable).
    let bin =
        std::env::var("TIERLIMIT_TEST_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
    if !runs(&bin, &["--version"]) {
        println!("cargo::rustc-cfg=no_redis_server");
        println!(
            "cargo::warning=redis-server not found: the tests that need it are ignored \
             (install redis-server to run them)"
        );
    }
    // tests/third_party.rs: nginx and Flask-Limiter (the same variables).
    let nginx = std::env::var("TIERLIMIT_TEST_NGINX").ok();
    let nginx_found = match nginx {
        Some(bin) => runs(&bin, &["-v"]),
        None => runs("nginx", &["-v"]) || runs("/usr/sbin/nginx", &["-v"]),
    };
    if !nginx_found {
        println!("cargo::rustc-cfg=no_nginx");
        println!("cargo::warning=nginx not found: tests/third_party.rs's nginx tests are ignored");
    }
    let python = std::env::var("TIERLIMIT_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    if !runs(&python, &["-c", "import flask_limiter"]) {
        println!("cargo::rustc-cfg=no_flask_limiter");
        println!(
            "cargo::warning=Python's flask_limiter not found: tests/third_party.rs's \
             Flask-Limiter tests are ignored (pip install flask flask-limiter)"
        );
    }
}

/// Whether `bin args` runs and succeeds.
fn runs(bin: &str, args: &[&str]) -> bool {
    Command::new(bin)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
