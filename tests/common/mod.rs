#![allow(dead_code, missing_docs)]
//! Helpers shared by the integration tests.

use std::time::Duration;

use axum::body::Body;
use axum::Router;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use tierlimit::clock::ManualClock;
use tower::ServiceExt;

/// 2024-02-17T20:00:00Z: a whole minute, hour and day boundary.
pub const T0: u64 = 1_708_200_000;

pub fn clock() -> ManualClock {
    ManualClock::new(Duration::from_secs(T0))
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    pub fn num(&self, name: &str) -> u64 {
        self.header(name)
            .unwrap_or_else(|| panic!("missing {name}"))
            .parse()
            .unwrap()
    }
}

pub async fn send(app: &Router, req: Request<Body>) -> Reply {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body: String::from_utf8(bytes.to_vec()).unwrap(),
    }
}

pub fn req(method: &str, path: &str) -> http::request::Builder {
    Request::builder().method(method).uri(path)
}

pub async fn get_as(app: &Router, key: &str, path: &str) -> Reply {
    send(
        app,
        req("GET", path)
            .header("x-api-key", key)
            .body(Body::empty())
            .unwrap(),
    )
    .await
}
