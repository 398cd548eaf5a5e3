//! Seed 000 (Qlik) from `examples/policies/qlik.json`.

mod common;

use std::time::Duration;

use common::*;
use http::StatusCode;

fn as_user<'a>(tenant: &'a str, user: &'a str) -> [(&'a str, &'a str); 2] {
    [("x-tenant-id", tenant), ("x-user-id", user)]
}

fn qlik_body(n: u64) -> String {
    format!(
        r#"{{"errors":[{{"code":"HTTP-429","title":"API rate limit reached.","detail":"You need to wait {n} seconds until limit is lifted."}}]}}"#
    )
}

async fn tier2_full_while_tier1_still_answers() {
    let clock = clock();
    let (app, _) = demo(policy("qlik"), &clock);
    let u = as_user("acme", "alice");
    for (i, m) in ["POST", "PUT", "PATCH", "DELETE"]
        .iter()
        .cycle()
        .take(500)
        .enumerate()
    {
        let r = send(&app, call(m, "/api/v1/items", &u)).await;
        assert_eq!(r.status, StatusCode::OK, "write {i}");
        assert_eq!(r.num("x-ratelimit-limit"), 500);
    }
    clock.advance(Duration::from_secs(60));
    let r = send(&app, call("DELETE", "/api/v1/items/7", &u)).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    let n = r.num("retry-after");
    // Five minutes: the writes at T0 leave exactly at T0 + 300.
    assert_eq!(n, 300 - 60);
    assert_eq!(r.body, qlik_body(n));
    // Reads are another tier.
    let r = send(&app, call("GET", "/api/v1/items", &u)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.num("x-ratelimit-limit"), 5000);
    assert_eq!(r.num("x-ratelimit-remaining"), 4999);
    // Another user of the tenant still writes.
    let r = send(&app, call("POST", "/api/v1/items", &as_user("acme", "bob"))).await;
    assert_eq!(r.status, StatusCode::OK);
}

async fn the_special_reloads_endpoint_has_its_own_limit() {
    let clock = clock();
    let (app, _) = demo(policy("qlik"), &clock);
    let u = as_user("acme", "alice");
    for _ in 0..10 {
        let r = send(&app, call("POST", "/api/v1/reloads", &u)).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.num("x-ratelimit-limit"), 10);
    }
    let r = send(&app, call("POST", "/api/v1/reloads", &u)).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.body, qlik_body(r.num("retry-after")));
    // Reloads did not use the Tier 2 budget, and Tier 2 does not block reloads.
    let r = send(&app, call("POST", "/api/v1/items", &u)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.num("x-ratelimit-remaining"), 499);
    // GET on the reloads path is Tier 1.
    let r = send(&app, call("GET", "/api/v1/reloads", &u)).await;
    assert_eq!(r.num("x-ratelimit-limit"), 5000);
}

async fn the_tenant_aggregate_is_user_limit_times_users_times_half() {
    let clock = clock();
    let (app, _) = demo(policy("qlik"), &clock);
    // "duo" has 2 users: 5000 × 2 × 0.5 = 5000 reads for the whole tenant.
    let mut admitted = 0;
    for i in 0..5200 {
        let user = if i % 2 == 0 { "ann" } else { "ben" };
        let r = send(&app, call("GET", "/api/v1/items", &as_user("duo", user))).await;
        if r.status == StatusCode::OK {
            admitted += 1;
        } else {
            assert_eq!(r.num("x-ratelimit-limit"), 5000);
            assert_eq!(r.body, qlik_body(r.num("retry-after")));
        }
    }
    assert_eq!(
        admitted, 5000,
        "each user stays under 5000, the tenant does not"
    );
    // A tenant not listed counts one user: its aggregate (2500) binds first.
    let mut admitted = 0;
    for _ in 0..3000 {
        let r = send(&app, call("GET", "/x", &as_user("solo", "sam"))).await;
        admitted += u32::from(r.status == StatusCode::OK);
    }
    assert_eq!(admitted, 2500);
    // A big tenant: per-user limits bind (5000 each).
    let mut admitted = 0;
    for _ in 0..5100 {
        let r = send(&app, call("GET", "/x", &as_user("acme", "carol"))).await;
        admitted += u32::from(r.status == StatusCode::OK);
    }
    assert_eq!(admitted, 5000);
}

async fn one_thousand_per_minute_evaluated_over_five_minutes_allows_bursts() {
    let clock = clock();
    let (app, _) = demo(policy("qlik"), &clock);
    let u = as_user("acme", "burst");
    // 3000 reads in the first minute: more than 1000/min, fine within 5 min.
    for _ in 0..3000 {
        assert_eq!(
            send(&app, call("GET", "/x", &u)).await.status,
            StatusCode::OK
        );
    }
    clock.advance(Duration::from_secs(120));
    for _ in 0..2000 {
        assert_eq!(
            send(&app, call("GET", "/x", &u)).await.status,
            StatusCode::OK
        );
    }
    assert_eq!(
        send(&app, call("GET", "/x", &u)).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
}

on_every_store!(
    tier2_full_while_tier1_still_answers,
    the_special_reloads_endpoint_has_its_own_limit,
    the_tenant_aggregate_is_user_limit_times_users_times_half,
    one_thousand_per_minute_evaluated_over_five_minutes_allows_bursts,
);
