//! Runtime plan assignments live apart from the immutable policy: reloads
//! never lose one, whatever the timing.

mod common;

use common::{get_key, Ok200};
use std::time::Duration;

use tierlimit::config::{Config, Limit, Tier};
use tierlimit::{Policy, RateLimitLayer};
use tower::Layer;

/// Plans `standard` (60/min) and `premium` (`premium` per minute); with
/// `gold`, a third plan `gold` exists.
fn policy(premium: u32, gold: bool) -> Policy {
    let minute = Duration::from_secs(60);
    let mut c = Config::new()
        .tier(
            "standard",
            Tier::new().limit(Limit::sliding("per-minute", 60, minute)),
        )
        .tier(
            "premium",
            Tier::new().limit(Limit::sliding("per-minute", premium, minute)),
        )
        .plans("standard", [("configured-key", "premium")]);
    if gold {
        c = c.tier(
            "gold",
            Tier::new().limit(Limit::sliding("per-minute", 5000, minute)),
        );
    }
    c.build().unwrap()
}

async fn limit_seen_by(layer: &RateLimitLayer, key: &str) -> u64 {
    let resp = get_key(&layer.layer(Ok200), key).await;
    resp.headers()["x-ratelimit-limit"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn set_plan_and_reload_race_without_losing_an_assignment() {
    const N: usize = 5_000;
    let layer = RateLimitLayer::new(policy(300, false));
    let ctl = layer.controller();
    let reloader = ctl.clone();
    std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..N {
                ctl.set_plan(format!("key-{i}"), "premium").unwrap();
            }
        });
        s.spawn(move || {
            // Every reload changes the premium limit, so each is a new policy.
            for i in 0..N {
                reloader.reload(policy(300 + (i % 2) as u32, false));
            }
        });
    });
    for i in 0..N {
        let key = format!("key-{i}");
        assert_eq!(ctl.plan_of(&key).as_deref(), Some("premium"), "{key}");
    }
    assert_eq!(ctl.runtime_plans().len(), N);
    // Requests see it: the premium limit, not the standard 60.
    for key in ["key-0", "key-2500", "key-4999"] {
        assert!(limit_seen_by(&layer, key).await >= 300, "{key}");
    }
    assert_eq!(limit_seen_by(&layer, "someone-else").await, 60);
    assert!(limit_seen_by(&layer, "configured-key").await >= 300);
}

#[tokio::test]
async fn an_assignment_waits_while_a_reload_removed_its_plan() {
    let layer = RateLimitLayer::new(policy(300, true));
    layer.set_plan("k", "gold").unwrap();
    assert_eq!(limit_seen_by(&layer, "k").await, 5000);
    // The new policy has no `gold`: the default plan applies meanwhile.
    layer.reload(policy(300, false));
    assert_eq!(layer.plan_of("k").as_deref(), Some("standard"));
    assert!(layer.set_plan("k2", "gold").is_err());
    // `gold` is back: so is the assignment.
    layer.reload(policy(300, true));
    assert_eq!(layer.plan_of("k").as_deref(), Some("gold"));
    // Clearing it leaves the configured plan.
    assert!(layer.controller().clear_plan("k"));
    assert_eq!(layer.plan_of("k").as_deref(), Some("standard"));
}

#[test]
fn only_plans_can_be_assigned_and_the_error_lists_them() {
    let minute = Duration::from_secs(60);
    let policy = Config::new()
        .tier("free", Tier::new().limit(Limit::sliding("m", 60, minute)))
        .tier("pro", Tier::new().limit(Limit::sliding("m", 600, minute)))
        .tier("uploads", Tier::new().limit(Limit::sliding("u", 5, minute)))
        .route(tierlimit::config::Route::new(
            ["POST"],
            "/upload",
            "uploads",
        ))
        .plans("free", [("k", "free")])
        .build()
        .unwrap();
    assert_eq!(policy.plan_names().collect::<Vec<_>>(), ["free", "pro"]);
    let layer = RateLimitLayer::new(policy);
    let e = layer.set_plan("k", "uploads").unwrap_err().to_string();
    assert!(
        e.contains("`uploads` is a route or global tier, not a plan"),
        "{e}"
    );
    assert!(e.contains("the plans are free, pro"), "{e}");
    let e = layer.set_plan("k", "gold").unwrap_err().to_string();
    assert!(
        e.contains("`gold` is no plan; the plans are free, pro"),
        "{e}"
    );
    assert!(layer.set_plan("k", "pro").is_ok());
}
