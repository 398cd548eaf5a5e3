//! A client that paces itself by rate-limit headers: sends N requests
//! through `tierlimit::client::RetryLayer` over hyper-util's client and
//! prints, as its last line, one JSON summary:
//!
//! ```text
//! {"sent": N, "ok": …, "retries": …, "gave_up": …, "waited_ms": …, "errors": …}
//! ```
//!
//! ```sh
//! cargo run --release --features full --example gateway -- --config examples/policies/qstash.json &
//! cargo run --release --features full --example client -- --url http://127.0.0.1:3000/v2/messages/m1 \
//!     --requests 500 --concurrency 8 --header 'authorization: Bearer demo'
//! ```
//!
//! `ok` counts 2xx answers, `gave_up` calls the client gave up on (it says
//! why on stderr), `errors` transport errors (connection refused...).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tierlimit::client::{ClientError, RetryLayer, RetryPolicy};
use tower::{Layer, ServiceExt};

struct Options {
    url: Uri,
    requests: u64,
    concurrency: u64,
    headers: Vec<(HeaderName, HeaderValue)>,
}

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Options, String> {
    let mut url = None;
    let mut requests = None;
    let mut concurrency = 1;
    let mut headers = Vec::new();
    let mut args = args.into_iter();
    while let Some(a) = args.next() {
        let mut value = |flag: &str| args.next().ok_or(format!("{flag} needs a value"));
        match a.as_str() {
            "--url" => {
                let v = value("--url")?;
                let u: Uri = v.parse().map_err(|e| format!("--url `{v}`: {e}"))?;
                if u.scheme_str() != Some("http") {
                    return Err(format!("--url `{v}`: only http:// URLs"));
                }
                url = Some(u);
            }
            "--requests" => {
                let v = value("--requests")?;
                requests = Some(v.parse().map_err(|_| format!("--requests `{v}`: a count"))?);
            }
            "--concurrency" => {
                let v = value("--concurrency")?;
                concurrency = v
                    .parse::<u64>()
                    .ok()
                    .filter(|c| *c > 0)
                    .ok_or(format!("--concurrency `{v}`: a count of at least 1"))?;
            }
            "--header" => {
                let v = value("--header")?;
                let (name, val) = v
                    .split_once(':')
                    .ok_or(format!("--header `{v}`: 'name: value'"))?;
                let name = HeaderName::from_bytes(name.trim().as_bytes())
                    .map_err(|e| format!("--header `{v}`: {e}"))?;
                let val = HeaderValue::from_str(val.trim())
                    .map_err(|e| format!("--header `{v}`: {e}"))?;
                headers.push((name, val));
            }
            "-h" | "--help" => {
                return Err("usage: client --url URL --requests N [--concurrency C] [--header 'name: value']...".into())
            }
            other => return Err(format!("unknown argument `{other}` (try --help)")),
        }
    }
    Ok(Options {
        url: url.ok_or("missing --url URL")?,
        requests: requests.ok_or("missing --requests N")?,
        concurrency,
        headers,
    })
}

#[tokio::main]
async fn main() {
    let opts = match parse_args(std::env::args().skip(1)) {
        Ok(o) => Arc::new(o),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let layer = RetryLayer::new(RetryPolicy::default());
    let http = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let client = layer.layer(http);
    let next = Arc::new(AtomicU64::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let gave_up = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..opts.concurrency.min(opts.requests.max(1)) {
        let (opts, client, next) = (opts.clone(), client.clone(), next.clone());
        let (ok, gave_up, errors) = (ok.clone(), gave_up.clone(), errors.clone());
        workers.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < opts.requests {
                let mut req = Request::get(opts.url.clone())
                    .body(Full::new(Bytes::new()))
                    .expect("a valid request");
                for (k, v) in &opts.headers {
                    req.headers_mut().append(k.clone(), v.clone());
                }
                match client.clone().oneshot(req).await {
                    Ok(resp) => {
                        let success = resp.status().is_success();
                        // Read the body, so the connection is reused.
                        let _ = resp.into_body().collect().await;
                        if success {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(ClientError::GaveUp(g)) => {
                        eprintln!("gave up: {g}");
                        gave_up.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        eprintln!("error: {e}");
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    let stats = layer.stats();
    println!(
        "{{\"sent\": {}, \"ok\": {}, \"retries\": {}, \"gave_up\": {}, \"waited_ms\": {}, \"errors\": {}}}",
        opts.requests,
        ok.load(Ordering::Relaxed),
        stats.retries,
        gave_up.load(Ordering::Relaxed),
        stats.waited.as_millis(),
        errors.load(Ordering::Relaxed),
    );
}
