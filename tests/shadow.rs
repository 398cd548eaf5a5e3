//! Shadow mode counts and reports, never rejects; would-be rejections are
//! visible on the response.

mod common;

use std::time::Duration;

use common::*;
use http::StatusCode;
use tierlimit::config::{Config, Limit, Mode, Tier};
use tierlimit::ShadowRejection;
use tower::ServiceExt;

#[tokio::test]
async fn shadow_mode_never_rejects_but_marks_the_response() {
    let clock = clock();
    let config = Config::new()
        .tier(
            "t",
            Tier::new().limit(Limit::sliding("m", 2, Duration::from_secs(60))),
        )
        .default_tier("t")
        .mode(Mode::Shadow);
    let (app, _) = demo(config, &clock);
    for expected in [1, 0] {
        let resp = app
            .clone()
            .oneshot(call("GET", "/x", &[("x-api-key", "s")]))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            resp.headers()["x-ratelimit-remaining"],
            expected.to_string().as_str()
        );
        assert!(resp.extensions().get::<ShadowRejection>().is_none());
    }
    let resp = app
        .clone()
        .oneshot(call("GET", "/x", &[("x-api-key", "s")]))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "forwarded anyway");
    assert_eq!(resp.headers()["x-ratelimit-remaining"], "0");
    assert!(resp.headers().get("retry-after").is_none());
    let shadow = resp.extensions().get::<ShadowRejection>().expect("marked");
    assert_eq!(shadow.0.limit, "m");
    assert_eq!(shadow.0.retry_after_secs(), 60);
    // The would-be-rejected request was not counted: still exactly 2 in the window.
    clock.advance(Duration::from_secs(60));
    let r = send(&app, call("GET", "/x", &[("x-api-key", "s")])).await;
    assert_eq!(r.num("x-ratelimit-remaining"), 1);
}

#[tokio::test]
async fn ietf_headers_follow_the_draft_syntax() {
    let clock = clock();
    let mut config = policy("gather");
    config.headers = tierlimit::config::HeaderStyle::Ietf;
    let (app, _) = demo(config, &clock);
    let r = send(&app, call("GET", "/x", &[("x-api-key", "i")])).await;
    assert_eq!(
        r.header("ratelimit-policy"),
        Some(r#""burst";q=100;w=60, "hourly";q=1000;w=3600"#)
    );
    // Sliding windows: full capacity returns exactly one window after the
    // latest request, never later.
    assert_eq!(
        r.header("ratelimit"),
        Some(r#""burst";r=99;t=60, "hourly";r=999;t=3600"#)
    );
    assert!(r.header("x-ratelimit-limit").is_none());
}
