//! Zoned fixed windows pinned to real zones and real transitions (the
//! expected instants are written as local times and read by `jiff`).

use proptest::prelude::*;

use super::*;
use crate::clock::Timestamp;

const MS: u64 = 1_000_000;
const HOUR: u64 = 3_600_000;
const DAY: u64 = 24 * HOUR;

/// Unix ms of an RFC 9557 zoned time such as
/// `2026-03-29T00:00[Europe/Amsterdam]`.
fn at(s: &str) -> u64 {
    let z: jiff::ZonedDateTime = s.parse().unwrap();
    u64::try_from(z.timestamp().as_millisecond()).unwrap()
}

fn zoned(len_ms: u64, zone: &str) -> WindowSpec {
    WindowSpec::zoned_ms(len_ms, lookup_zone(zone).unwrap())
}

/// The window `ms` falls in, as (start, end) in Unix ms: the end from the
/// spec, the start as the end of the window before.
fn window_of(spec: &WindowSpec, ms: u64) -> (u64, u64) {
    let i = spec.index_at(ms * MS);
    (spec.end_ms(i - 1), spec.end_ms(i))
}

#[test]
fn a_day_window_lasts_23_hours_when_the_clocks_go_forward() {
    // Amsterdam, 29 March 2026: 02:00 CET becomes 03:00 CEST.
    let spec = zoned(DAY, "Europe/Amsterdam");
    let noon = at("2026-03-29T12:00[Europe/Amsterdam]");
    let (start, end) = window_of(&spec, noon);
    assert_eq!(start, at("2026-03-29T00:00[Europe/Amsterdam]"));
    assert_eq!(end, at("2026-03-30T00:00[Europe/Amsterdam]"));
    assert_eq!(end - start, 23 * HOUR);
    // New York, 8 March 2026.
    let spec = zoned(DAY, "America/New_York");
    let (start, end) = window_of(&spec, at("2026-03-08T01:30[America/New_York]"));
    assert_eq!(start, at("2026-03-08T00:00[America/New_York]"));
    assert_eq!(end - start, 23 * HOUR);
}

#[test]
fn a_day_window_lasts_25_hours_when_the_clocks_go_back() {
    // Amsterdam, 25 October 2026: 03:00 CEST becomes 02:00 CET.
    let spec = zoned(DAY, "Europe/Amsterdam");
    for probe in [
        "2026-10-25T00:00:00+02:00[Europe/Amsterdam]",
        "2026-10-25T02:30:00+02:00[Europe/Amsterdam]",
        "2026-10-25T02:30:00+01:00[Europe/Amsterdam]",
        "2026-10-25T23:59:59.999+01:00[Europe/Amsterdam]",
    ] {
        let (start, end) = window_of(&spec, at(probe));
        assert_eq!(start, at("2026-10-25T00:00[Europe/Amsterdam]"), "{probe}");
        assert_eq!(end, at("2026-10-26T00:00[Europe/Amsterdam]"), "{probe}");
        assert_eq!(end - start, 25 * HOUR);
    }
    // The instant before local midnight is the day before; midnight the day.
    let midnight = at("2026-10-25T00:00[Europe/Amsterdam]");
    assert_eq!(
        spec.index_at((midnight - 1) * MS) + 1,
        spec.index_at(midnight * MS)
    );
}

#[test]
fn hour_windows_start_at_local_00_in_half_and_quarter_hour_zones() {
    for (zone, probe, start, end) in [
        (
            "Asia/Kolkata",
            "2026-06-01T15:45[Asia/Kolkata]",
            "2026-06-01T15:00[Asia/Kolkata]",
            "2026-06-01T16:00[Asia/Kolkata]",
        ),
        (
            "Asia/Kathmandu",
            "2026-06-01T15:10[Asia/Kathmandu]",
            "2026-06-01T15:00[Asia/Kathmandu]",
            "2026-06-01T16:00[Asia/Kathmandu]",
        ),
        (
            "Pacific/Chatham",
            "2026-06-01T09:59[Pacific/Chatham]",
            "2026-06-01T09:00[Pacific/Chatham]",
            "2026-06-01T10:00[Pacific/Chatham]",
        ),
        // Adelaide (+09:30, +10:30 in summer), across its April change.
        (
            "Australia/Adelaide",
            "2026-04-05T02:30+09:30[Australia/Adelaide]",
            "2026-04-05T02:00+10:30[Australia/Adelaide]",
            "2026-04-05T03:00+09:30[Australia/Adelaide]",
        ),
    ] {
        let spec = zoned(HOUR, zone);
        assert_eq!(window_of(&spec, at(probe)), (at(start), at(end)), "{zone}");
    }
    // Lord Howe moves its clocks by half an hour; hours still end at :00.
    let spec = zoned(HOUR, "Australia/Lord_Howe");
    // 5 April 2026: 02:00 (+11) becomes 01:30 (+10:30).
    let (_, end) = window_of(&spec, at("2026-04-05T01:45+11:00[Australia/Lord_Howe]"));
    assert_eq!(end, at("2026-04-05T02:00+10:30[Australia/Lord_Howe]"));
    // 4 October 2026: 02:00 (+10:30) becomes 02:30 (+11).
    let (start, end) = window_of(&spec, at("2026-10-04T02:45[Australia/Lord_Howe]"));
    assert_eq!(start, at("2026-10-04T02:30[Australia/Lord_Howe]"));
    assert_eq!(end, at("2026-10-04T03:00[Australia/Lord_Howe]"));
}

#[test]
fn the_repeated_hour_is_one_window_and_the_skipped_hour_none() {
    let spec = zoned(HOUR, "America/New_York");
    // 1 November 2026: 01:00-02:00 happens twice (EDT, then EST).
    let first = at("2026-11-01T01:30-04:00[America/New_York]");
    let second = at("2026-11-01T01:30-05:00[America/New_York]");
    assert_eq!(spec.index_at(first * MS), spec.index_at(second * MS));
    let (start, end) = window_of(&spec, second);
    assert_eq!(start, at("2026-11-01T01:00-04:00[America/New_York]"));
    assert_eq!(end, at("2026-11-01T02:00-05:00[America/New_York]"));
    // Half-hour windows: 01:40 EDT is in the 01:30 window; 01:10 EST, later,
    // must not reopen the 01:00 window that already ended.
    let half = zoned(HOUR / 2, "America/New_York");
    let late_first = at("2026-11-01T01:40-04:00[America/New_York]");
    let early_second = at("2026-11-01T01:10-05:00[America/New_York]");
    assert_eq!(
        half.index_at(early_second * MS),
        half.index_at(late_first * MS)
    );
    // 8 March 2026: 02:00 EST becomes 03:00 EDT; 01:00 ends at 03:00.
    let (start, end) = window_of(&spec, at("2026-03-08T01:59[America/New_York]"));
    assert_eq!(end - start, HOUR);
    assert_eq!(end, at("2026-03-08T03:00[America/New_York]"));
    let (start, end) = window_of(&spec, end);
    assert_eq!(start, at("2026-03-08T03:00[America/New_York]"));
    assert_eq!(end - start, HOUR);
}

#[test]
fn a_daily_budget_is_spent_and_renewed_at_local_midnight() {
    // 500 a day in New York, through the 25-hour day.
    let spec = zoned(DAY, "America/New_York");
    let mut cell = Cell::default();
    let morning = at("2026-11-01T00:30[America/New_York]") * MS;
    for i in 0..500 {
        cell.try_charge(&spec, 500, morning + i * MS, 1).unwrap();
    }
    let (_, refusal) = cell
        .try_charge(&spec, 500, morning + 600 * MS, 1)
        .unwrap_err();
    let midnight = at("2026-11-02T00:00[America/New_York]");
    assert_eq!(
        refusal,
        Refusal::Full {
            retry_at: Timestamp::from_nanos(midnight * MS)
        }
    );
    // 24 hours after the morning it is still the same local day.
    assert!(cell
        .try_charge(&spec, 500, morning + 24 * HOUR * MS, 1)
        .is_err());
    assert!(cell.try_charge(&spec, 500, midnight * MS - 1, 1).is_err());
    assert!(cell.try_charge(&spec, 500, midnight * MS, 1).is_ok());
}

#[test]
fn a_fixed_offset_zone_matches_utc_offset() {
    let zoned = zoned(HOUR, "Etc/GMT-3"); // POSIX sign: UTC+3
    let fixed = WindowSpec::fixed_ms(HOUR, 3 * HOUR as i64);
    for ms in [0u64, 1_700_000_000_123, 1_800_000_000_000] {
        let i = fixed.index_at(ms * MS);
        assert_eq!(zoned.index_at(ms * MS), i);
        assert_eq!(zoned.end_ms(i), fixed.end_ms(i));
    }
}

#[test]
fn zones_are_named_and_unknown_ones_refused() {
    let spec = zoned(DAY, "Europe/Amsterdam");
    assert_eq!(spec.time_zone(), Some("Europe/Amsterdam"));
    assert_eq!(spec.utc_offset_secs(), None);
    assert_eq!(spec, zoned(DAY, "Europe/Amsterdam"));
    assert_ne!(spec, zoned(DAY, "Europe/Berlin"));
    let err = lookup_zone("Mars/Olympus_Mons").unwrap_err();
    assert!(err.contains("Mars/Olympus_Mons"), "{err}");
    assert!(lookup_zone("local").is_ok());
}

proptest! {
    /// Around real transitions: windows never go back, each instant lies
    /// before its window's end and at or after the previous window's end,
    /// and the next window starts where this one ends.
    #[test]
    fn zoned_windows_are_ordered_and_contiguous(
        zone in prop::sample::select(vec![
            "Europe/Amsterdam", "America/New_York", "Australia/Lord_Howe",
            "Australia/Adelaide", "Asia/Kolkata", "America/Santiago", "Pacific/Chatham",
        ]),
        len in prop::sample::select(vec![
            60_000u64, 15 * 60_000, 30 * 60_000, HOUR, 2 * HOUR, 6 * HOUR, DAY, 7 * DAY,
        ]),
        base in prop::sample::select(vec![
            1_774_746_000_000u64, // around 29 March 2026
            1_792_544_400_000,    // around 25 October 2026
            1_793_509_200_000,    // around 1 November 2026
            1_775_347_200_000,    // around 5 April 2026
        ]),
        steps in prop::collection::vec(0u64..3 * HOUR, 1..40),
    ) {
        let spec = zoned(len, zone);
        let mut t = base - 2 * DAY;
        let mut prev = spec.index_at(t * MS);
        for step in steps {
            t += step;
            let i = spec.index_at(t * MS);
            prop_assert!(i >= prev, "{zone}: window went back at {t}");
            let end = spec.end_ms(i);
            prop_assert!(end > t, "{zone}: {t} at or past its window's end {end}");
            prop_assert!(spec.end_ms(i - 1) <= t, "{zone}: {t} before its window's start");
            prop_assert!(spec.index_at(end * MS) > i, "{zone}: the window after {i} is {i} again");
            prop_assert!(spec.index_at((end - 1) * MS) == i, "{zone}: {i} ends early");
            prev = i;
        }
    }
}

proptest! {
    /// The remembered period answers exactly as the zone's rules do, in
    /// whatever order instants come.
    #[test]
    fn the_remembered_period_agrees_with_the_rules(
        (zone, base) in prop::sample::select(vec![
            ("Europe/Amsterdam", 1_792_890_000_000i64),   // falls back
            ("Europe/Amsterdam", 1_774_746_000_000),      // springs forward
            ("America/New_York", 1_793_512_800_000),      // falls back
            ("Australia/Lord_Howe", 1_775_314_800_000),   // falls back 30 min
            ("Asia/Kolkata", 1_775_314_800_000),          // no change
        ]),
        offsets in prop::collection::vec(-3 * HOUR as i64..3 * HOUR as i64, 1..60),
        len in prop::sample::select(vec![HOUR as i64, DAY as i64, 30 * 60_000, 60_000]),
    ) {
        let z = lookup_zone(zone).unwrap();
        for d in offsets {
            let t = base + d;
            prop_assert_eq!(z.wall_ms(t), z.wall_ms_slow(t), "{} at {}", zone, t);
            let w = (z.wall_ms(t).div_euclid(len) + 1) * len;
            prop_assert_eq!(z.instant_of_wall(w), z.instant_of_wall_slow(w), "{} to {}", zone, w);
        }
    }
}
