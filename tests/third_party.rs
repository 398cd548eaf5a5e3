//! The client against rate limiters nobody here wrote, started by the
//! test on a free loopback port: nginx's `limit_req` (bare 429s, in its
//! queued and `nodelay` modes) and Flask-Limiter (`X-RateLimit-*` and
//! `Retry-After`, in its three strategies), eight workers sharing one
//! `RetryLayer` over hyper-util's client.
//!
//! They run in real time, about 10 s each (in parallel). Nothing here
//! asserts on speed (the figures are printed: `--nocapture`); they assert
//! what the client promises: every request served, nobody giving up, and
//! no more 429s than the server's limit makes unavoidable.
//!
//! When `nginx` or Python's `flask_limiter` is missing, `build.rs`
//! compiles these tests as ignored (`cfg(no_nginx)`,
//! `cfg(no_flask_limiter)`), so they are reported as ignored, never as
//! passed; under `CI=true` nothing is ignored (`.ci/run` installs both).
//! `TIERLIMIT_TEST_NGINX` and `TIERLIMIT_TEST_PYTHON` name other binaries.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tierlimit::client::{RetryLayer, RetryPolicy};
use tower::{service_fn, Layer, ServiceExt};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A server process, killed when dropped.
struct Server {
    child: Child,
    dir: PathBuf,
}

impl Server {
    /// Starts `cmd` and waits until it listens on `port`.
    fn start(mut cmd: Command, port: u16, dir: PathBuf, what: &str) -> Server {
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{what} could not be started: {e}"));
        let mut server = Server { child, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("{what} exited at start ({status})");
            }
            assert!(Instant::now() < deadline, "{what} did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn scratch(kind: &str, port: u16) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tierlimit-{kind}-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// nginx with `limit_req` at 5 a second, burst 5 (`nodelay` or queued),
/// keyed by client address (all the test's requests), serving a static file at `/ok`.
fn nginx(nodelay: bool) -> (Server, u16) {
    let port = free_port();
    let dir = scratch("nginx", port);
    std::fs::write(dir.join("ok"), "ok\n").unwrap();
    let d = dir.display();
    let mode = if nodelay { " nodelay" } else { "" };
    let conf = format!(
        "master_process off;\n\
         error_log {d}/error.log;\n\
         pid {d}/nginx.pid;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n\
           access_log off;\n\
           client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n\
           fastcgi_temp_path {d}/fastcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
           limit_req_zone $binary_remote_addr zone=one:1m rate=5r/s;\n\
           limit_req_status 429;\n\
           server {{\n\
             listen 127.0.0.1:{port};\n\
             location / {{ limit_req zone=one burst=5{mode}; root {d}; }}\n\
           }}\n\
         }}\n"
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let bin = std::env::var("TIERLIMIT_TEST_NGINX").unwrap_or_else(|_| {
        if Command::new("nginx")
            .arg("-v")
            .stderr(Stdio::null())
            .status()
            .is_ok()
        {
            "nginx".into()
        } else {
            "/usr/sbin/nginx".into()
        }
    });
    let mut cmd = Command::new(bin);
    cmd.arg("-e")
        .arg(dir.join("error.log"))
        .arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .args(["-g", "daemon off;"]);
    (Server::start(cmd, port, dir, "nginx"), port)
}

/// Flask-Limiter under `limit` with `strategy` (tests/third_party/flask_limited.py).
fn flask_limiter(limit: &str, strategy: &str) -> (Server, u16) {
    let port = free_port();
    let dir = scratch("flask", port);
    let app = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/third_party/flask_limited.py"
    );
    let python = std::env::var("TIERLIMIT_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let mut cmd = Command::new(python);
    cmd.arg(app).arg(limit).arg(strategy).arg(port.to_string());
    (Server::start(cmd, port, dir, "Flask-Limiter's app"), port)
}

/// What the client did.
struct Outcome {
    took: Duration,
    ok: u32,
    gave_up: u64,
    /// Every response the server gave: (since the start, status).
    answers: Vec<(Duration, StatusCode)>,
}

impl Outcome {
    fn refusals(&self) -> usize {
        self.answers
            .iter()
            .filter(|(_, s)| *s == StatusCode::TOO_MANY_REQUESTS)
            .count()
    }

    /// 429s in each second since the start.
    fn refusals_per_second(&self) -> Vec<u32> {
        let mut per = Vec::new();
        for (at, status) in &self.answers {
            let s = at.as_secs() as usize;
            if per.len() <= s {
                per.resize(s + 1, 0);
            }
            if *status == StatusCode::TOO_MANY_REQUESTS {
                per[s] += 1;
            }
        }
        per
    }
}

/// `requests` GETs of `url` by eight workers sharing one client.
async fn eight_workers(url: String, requests: u32) -> Outcome {
    let start = Instant::now();
    let answers: Arc<Mutex<Vec<(Duration, StatusCode)>>> = Arc::default();
    let http = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let seen = {
        let answers = Arc::clone(&answers);
        service_fn(move |req: Request<Full<Bytes>>| {
            let (http, answers) = (http.clone(), Arc::clone(&answers));
            async move {
                let resp = http.request(req).await?;
                answers
                    .lock()
                    .unwrap()
                    .push((start.elapsed(), resp.status()));
                Ok::<_, hyper_util::client::legacy::Error>(resp)
            }
        })
    };
    let layer = RetryLayer::new(RetryPolicy::default());
    let client = layer.layer(seen);
    let next = Arc::new(AtomicU32::new(0));
    let ok = Arc::new(AtomicU32::new(0));
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (client, next, ok, url) = (client.clone(), next.clone(), ok.clone(), url.clone());
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < requests {
                    let req = Request::get(url.as_str())
                        .body(Full::new(Bytes::new()))
                        .unwrap();
                    match client.clone().oneshot(req).await {
                        Ok(resp) => {
                            let success = resp.status().is_success();
                            let _ = resp.into_body().collect().await;
                            if success {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(e) => eprintln!("{e}"),
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let answers = answers.lock().unwrap().clone();
    Outcome {
        took: start.elapsed(),
        ok: ok.load(Ordering::Relaxed),
        gave_up: layer.stats().gave_up,
        answers,
    }
}

/// 60 requests through nginx's 5 a second (burst 5): all served, nobody
/// gives up, at most two 429s in any second after the first.
async fn through_nginx(nodelay: bool) {
    let (_nginx, port) = nginx(nodelay);
    let out = eight_workers(format!("http://127.0.0.1:{port}/ok"), 60).await;
    let per_second = out.refusals_per_second();
    println!(
        "nginx limit_req 5r/s burst=5{}: 60 in {:?} (ideal {}), {} 429s, per second {:?}",
        if nodelay { " nodelay" } else { "" },
        out.took,
        // nodelay: 6 at once, then 5 a second; queued: one every 200 ms.
        if nodelay { "10.8 s" } else { "11.8 s" },
        out.refusals(),
        per_second
    );
    assert_eq!((out.ok, out.gave_up), (60, 0), "{per_second:?}");
    for (i, n) in per_second.iter().enumerate().skip(1) {
        assert!(*n <= 2, "{n} 429s in second {i}: {per_second:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(no_nginx, ignore = "nginx is not installed")]
async fn nginx_limit_req_queued_every_request_served_few_429s() {
    through_nginx(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(no_nginx, ignore = "nginx is not installed")]
async fn nginx_limit_req_nodelay_every_request_served_few_429s() {
    through_nginx(true).await;
}

/// 50 requests through Flask-Limiter's 10 per 2 s: all served, nobody
/// gives up, and after the first burst (eight workers at once) about one
/// 429 per window at most.
async fn through_flask_limiter(strategy: &str) {
    let (_flask, port) = flask_limiter("10 per 2 seconds", strategy);
    let out = eight_workers(format!("http://127.0.0.1:{port}/ok"), 50).await;
    let windows = out.took.as_secs().div_ceil(2) as usize;
    println!(
        "Flask-Limiter 10 per 2 s, {strategy}: 50 in {:?} (ideal 8 s), {} 429s",
        out.took,
        out.refusals()
    );
    assert_eq!((out.ok, out.gave_up), (50, 0), "{strategy}");
    assert!(
        out.refusals() <= 8 + windows,
        "{strategy}: {} 429s in {:?}",
        out.refusals(),
        out.took
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(no_flask_limiter, ignore = "Python's flask_limiter is not installed")]
async fn flask_limiter_fixed_window_every_request_served() {
    through_flask_limiter("fixed-window").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(no_flask_limiter, ignore = "Python's flask_limiter is not installed")]
async fn flask_limiter_moving_window_every_request_served() {
    through_flask_limiter("moving-window").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(no_flask_limiter, ignore = "Python's flask_limiter is not installed")]
async fn flask_limiter_sliding_window_counter_every_request_served() {
    through_flask_limiter("sliding-window-counter").await;
}
