//! Fixed windows in real time zones (`time_zone`): configuration errors,
//! day windows across daylight saving changes through the layer, and
//! `"local"` following `TZ` (in child processes, so that no test depends on
//! the zone of the machine it runs on).

mod common;

use std::time::Duration;

use common::{get_key, Ok200};
use http::Method;
use tierlimit::clock::{ManualClock, Timestamp};
use tierlimit::identity::Identity;
use tierlimit::store::MemoryStore;
use tierlimit::{Policy, RateLimitLayer};
use tower::Layer;

const MS: u64 = 1_000_000;

/// Unix ms of an RFC 9557 zoned time (read by `jiff`, as the crate does).
fn at(s: &str) -> u64 {
    let z: jiff::ZonedDateTime = s.parse().unwrap();
    u64::try_from(z.timestamp().as_millisecond()).unwrap()
}

fn one_limit(limit: &str) -> String {
    format!(r#"{{"tiers": {{"t": {{"limits": [{limit}]}}}}, "default_tier": "t"}}"#)
}

#[test]
fn zone_errors_are_clear() {
    let e = Policy::from_json(&one_limit(
        r#"{"name": "d", "capacity": 5, "window": "1d", "kind": "fixed",
            "time_zone": "Europe/Amsterdam", "utc_offset": "+01:00"}"#,
    ))
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("tiers.t.limits[0].time_zone") && e.contains("not both"),
        "{e}"
    );
    let e = Policy::from_json(&one_limit(
        r#"{"name": "d", "capacity": 5, "window": "1d", "kind": "fixed",
            "time_zone": "Europe/Atlantis"}"#,
    ))
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("tiers.t.limits[0].time_zone") && e.contains("`Europe/Atlantis`"),
        "{e}"
    );
    let e = Policy::from_json(&one_limit(
        r#"{"name": "d", "capacity": 5, "window": "1d", "time_zone": "UTC"}"#,
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("applies to fixed windows only"), "{e}");
}

/// A policy of 3 requests a day on `zone`'s wall clock.
fn daily(zone: &str) -> Policy {
    Policy::from_json(&one_limit(&format!(
        r#"{{"name": "day", "capacity": 3, "window": "1d", "kind": "fixed", "time_zone": "{zone}"}}"#
    )))
    .unwrap()
}

async fn spend_the_day_and_wait(zone: &str, morning: &str, midnight: &str, hours: u64) {
    let start = at(morning);
    let clock = ManualClock::new(Duration::from_millis(start));
    let svc = RateLimitLayer::builder(daily(zone))
        .clock(clock.clone())
        .build()
        .layer(Ok200);
    for _ in 0..3 {
        assert_eq!(get_key(&svc, "k").await.status(), 200);
    }
    let refused = get_key(&svc, "k").await;
    assert_eq!(refused.status(), 429);
    let end = at(midnight);
    let h = refused.headers();
    assert_eq!(h["x-ratelimit-reset"], (end / 1000).to_string(), "{zone}");
    let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert_eq!(retry, (end - start).div_ceil(1000), "{zone}");
    // The local day really is `hours` long: 24 h after the start of the
    // morning's day the window is still the same one.
    let day_start = end - hours * 3_600_000;
    clock.set(Timestamp::from_nanos((day_start + 24 * 3_600_000) * MS));
    if hours > 24 {
        assert_eq!(get_key(&svc, "k").await.status(), 429, "{zone}: a 25 h day");
    }
    clock.set(Timestamp::from_nanos((end - 1) * MS));
    assert_eq!(get_key(&svc, "k").await.status(), 429, "{zone}");
    clock.set(Timestamp::from_nanos(end * MS));
    assert_eq!(get_key(&svc, "k").await.status(), 200, "{zone}: a new day");
}

#[tokio::test]
async fn day_windows_end_at_local_midnight_across_daylight_saving_changes() {
    // 23-hour days.
    spend_the_day_and_wait(
        "Europe/Amsterdam",
        "2026-03-29T01:30[Europe/Amsterdam]",
        "2026-03-30T00:00[Europe/Amsterdam]",
        23,
    )
    .await;
    spend_the_day_and_wait(
        "America/New_York",
        "2026-03-08T00:10[America/New_York]",
        "2026-03-09T00:00[America/New_York]",
        23,
    )
    .await;
    // 25-hour days.
    spend_the_day_and_wait(
        "Europe/Amsterdam",
        "2026-10-25T00:05[Europe/Amsterdam]",
        "2026-10-26T00:00[Europe/Amsterdam]",
        25,
    )
    .await;
    spend_the_day_and_wait(
        "America/New_York",
        "2026-11-01T00:45[America/New_York]",
        "2026-11-02T00:00[America/New_York]",
        25,
    )
    .await;
    // Southern hemisphere: Sydney goes back in April.
    spend_the_day_and_wait(
        "Australia/Sydney",
        "2026-04-05T00:30[Australia/Sydney]",
        "2026-04-06T00:00[Australia/Sydney]",
        25,
    )
    .await;
}

/// Whether the shipped dataapi policy admits a request of `key` at `ms`.
fn dataapi_admits(policy: &Policy, store: &MemoryStore, key: &[u8], ms: u64) -> bool {
    let id = Identity {
        api_key: Some(key),
        ..Identity::default()
    };
    let batch = policy
        .batch_for(
            tierlimit::store::KeySecret::per_process(),
            &Method::GET,
            "/data",
            &id,
        )
        .unwrap();
    store
        .decide_now(Timestamp::from_nanos(ms * MS), batch)
        .admitted()
}

/// Runs in a child process with `TZ` set (see [`local_follows_tz`]): the
/// shipped dataapi policy's day bucket refreshes at the zone's midnight and
/// its hour bucket at the zone's :00.
fn child_checks_local(zone: &str) {
    let path = format!(
        "{}/examples/policies/dataapi.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let policy = Policy::from_file(&path).unwrap();
    let store = MemoryStore::default();
    match zone {
        "America/New_York" => {
            // Spend the whole day (minute, hour and day buckets) on the
            // 25-hour day, then wait for New York's midnight.
            let day = at("2026-11-01T00:00[America/New_York]");
            let end = at("2026-11-02T00:00[America/New_York]");
            let mut t = day;
            while t < end {
                while dataapi_admits(&policy, &store, b"k", t) {}
                t += 60_000;
            }
            // Nothing is left in the last minute of the local day...
            assert!(!dataapi_admits(&policy, &store, b"k", end - 1));
            // ...and all of the day bucket comes back at local midnight: the
            // first 100 + 2600 come from the minute and hour buckets, the
            // next 1150 from the day's.
            let mut n = 0;
            while dataapi_admits(&policy, &store, b"k", end) {
                n += 1;
            }
            assert_eq!(n, 100 + 2600 + 1150);
        }
        "Asia/Kolkata" => {
            // The hour bucket refreshes at 15:00 IST (09:30 UTC).
            let before = at("2026-06-01T14:59[Asia/Kolkata]");
            let mut n = 0;
            while dataapi_admits(&policy, &store, b"h", before) {
                n += 1;
            }
            // Minute bucket, then the hour's, then the day's.
            assert_eq!(n, 100 + 2600 + 1150);
            let top = at("2026-06-01T15:00[Asia/Kolkata]");
            assert!(!dataapi_admits(&policy, &store, b"h", top - 1));
            let mut m = 0;
            while dataapi_admits(&policy, &store, b"h", top) {
                m += 1;
            }
            assert_eq!(m, 100 + 2600, "a new minute and a new local hour");
        }
        other => panic!("no check for {other}"),
    }
}

#[test]
fn local_follows_tz() {
    if let Ok(zone) = std::env::var("TIERLIMIT_CHILD_TZ") {
        child_checks_local(&zone);
        return;
    }
    let exe = std::env::current_exe().unwrap();
    for zone in ["America/New_York", "Asia/Kolkata"] {
        let out = std::process::Command::new(&exe)
            .args([
                "--exact",
                "local_follows_tz",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("TZ", zone)
            .env("TIERLIMIT_CHILD_TZ", zone)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "TZ={zone}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // The child really ran the check.
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("1 passed"), "TZ={zone}: {stdout}");
    }
}

/// Systems without a time zone database (slim containers) fall back on the
/// copy bundled in the binary (jiff reads the system's first, then the
/// bundle): the `tz` feature compiles the bundle in, and it has the rules.
#[test]
fn the_bundled_database_is_there_for_systems_without_one() {
    let bundled = jiff::tz::TimeZoneDatabase::bundled();
    let ny = bundled.get("America/New_York").expect("bundled New York");
    // 10:00 on 1 November 2026 in New York: EST, after the change.
    let ts = jiff::Timestamp::from_second(1_793_545_200).unwrap();
    assert_eq!(ny.to_offset(ts).seconds(), -5 * 3600);
    assert!(bundled.get("Europe/Amsterdam").is_ok());
}
