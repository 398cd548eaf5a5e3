//! Unit tests of counters ([`Cell`]) under window specs.

use std::time::Duration;

use super::millis::NANOS_PER_MS;
use super::*;
use crate::clock::Timestamp;

const S: u64 = 1_000_000_000;
const MS: u64 = NANOS_PER_MS;

#[test]
fn a_folded_ring_holds_its_total_until_its_oldest_bucket_leaves() {
    let spec = WindowSpec::sliding_ms(60_000, 60);
    let mut cell = Cell::default();
    let t0 = 1_000 * S;
    for i in 0..5 {
        cell.try_charge(&spec, 10, t0 + i * 10 * S, 1).unwrap();
    }
    assert!(matches!(cell, Cell::Ring(_)));
    cell.fold_into_oldest(&spec);
    assert_eq!(
        cell,
        Cell::One {
            count: 5,
            last: 1_000_000
        }
    );
    // All five leave when the first would: at 1060 s, not 1100 s.
    assert!(cell.try_charge(&spec, 5, 1060 * S - 1, 1).is_err());
    let (view, _) = cell.try_charge(&spec, 5, 1060 * S, 1).unwrap();
    assert_eq!(view.used, 1);
    // A single bucket is left as it is.
    let before = cell.clone();
    cell.fold_into_oldest(&spec);
    assert_eq!(cell, before);
}

#[test]
fn sliding_admits_capacity_then_refuses_until_one_window_after_the_first() {
    let spec = WindowSpec::sliding_ms(60_000, 60);
    let mut cell = Cell::default();
    let t0 = 1_000 * S;
    for i in 0..3 {
        let (view, _) = cell.try_charge(&spec, 3, t0 + i * S, 1).unwrap();
        assert_eq!(view.used, i + 1);
    }
    let (view, refusal) = cell.try_charge(&spec, 3, t0 + 3 * S, 1).unwrap_err();
    assert_eq!(view.remaining(), 0);
    // The first charge (1000 s, alone in its bucket) leaves at 1060 s.
    assert_eq!(
        refusal,
        Refusal::Full {
            retry_at: Timestamp::from_secs(1060)
        }
    );
    assert_eq!(view.reset_at, Timestamp::from_secs(1062));
    assert!(cell.try_charge(&spec, 3, 1060 * S - 1, 1).is_err());
    assert!(cell.try_charge(&spec, 3, 1060 * S, 1).is_ok());
}

#[test]
fn a_burst_leaves_exactly_one_window_after_its_last_request() {
    // The per-second burst of seed 005: 1 s in 10 buckets of 100 ms.
    let spec = WindowSpec::sliding_ms(1000, 10);
    let mut cell = Cell::default();
    let t0 = 1_700_000_000 * S + 3 * MS;
    for i in 0..80 {
        cell.try_charge(&spec, 80, t0 + i * 10_000, 1).unwrap();
    }
    let last = t0 + 79 * 10_000; // 3.79 ms: stamped 4 ms
    let (view, refusal) = cell.try_charge(&spec, 80, last + 1, 1).unwrap_err();
    let back = Timestamp::from_nanos(1_700_000_001 * S + 4 * MS);
    assert_eq!(refusal, Refusal::Full { retry_at: back });
    assert_eq!(view.reset_at, back);
    // 1.05 s later all 80 fit again.
    for i in 0..80 {
        cell.try_charge(&spec, 80, t0 + 1050 * MS + i * 10_000, 1)
            .unwrap();
    }
}

#[test]
fn figures_never_point_past_one_window() {
    let spec = WindowSpec::sliding_ms(60_000, 30);
    let mut cell = Cell::default();
    let now = 1_000 * S + 1_999 * MS; // end of a 2 s bucket
    let (view, _) = cell.try_charge(&spec, 1, now, 1).unwrap();
    assert_eq!(view.reset_at.as_nanos() - now, 60 * S);
    let (_, refusal) = cell.try_charge(&spec, 1, now + 1, 1).unwrap_err();
    let Refusal::Full { retry_at } = refusal else {
        panic!("{refusal:?}")
    };
    assert!(retry_at.as_nanos() - (now + 1) < 60 * S);
}

#[test]
fn fixed_resets_on_the_boundary_in_the_offset() {
    // One-day window at UTC+2: resets at 22:00 UTC.
    let day = 86_400 * S;
    let spec = WindowSpec::fixed(Duration::from_secs(86_400), 2 * 3600);
    let mut cell = Cell::default();
    let t = 19_000 * day + 21 * 3600 * S; // 21:00 UTC = 23:00 local
    cell.try_charge(&spec, 1, t, 1).unwrap();
    let (_, refusal) = cell.try_charge(&spec, 1, t + 1, 1).unwrap_err();
    assert_eq!(
        refusal,
        Refusal::Full {
            retry_at: Timestamp::from_nanos(19_000 * day + 22 * 3600 * S)
        }
    );
    assert!(cell
        .try_charge(&spec, 1, 19_000 * day + 22 * 3600 * S - 1, 1)
        .is_err());
    assert!(cell
        .try_charge(&spec, 1, 19_000 * day + 22 * 3600 * S, 1)
        .is_ok());
}

#[test]
fn never_fits_is_its_own_refusal() {
    let spec = WindowSpec::sliding_ms(1000, 10);
    let mut cell = Cell::default();
    let (_, refusal) = cell.try_charge(&spec, 5, S, 6).unwrap_err();
    assert_eq!(refusal, Refusal::NeverFits);
}

#[test]
fn refund_undoes_a_charge() {
    let spec = WindowSpec::sliding_ms(10_000, 10);
    let mut cell = Cell::default();
    cell.try_charge(&spec, 2, S, 1).unwrap();
    let (_, idx) = cell.try_charge(&spec, 2, 2 * S, 1).unwrap();
    cell.refund(&spec, 2 * S, idx, 1);
    assert!(cell.try_charge(&spec, 2, 2 * S, 1).is_ok());
    assert!(cell.try_charge(&spec, 2, 2 * S, 1).is_err());
}

#[test]
fn clock_going_back_charges_the_newest_bucket() {
    let spec = WindowSpec::sliding_ms(10_000, 10);
    let mut cell = Cell::default();
    cell.try_charge(&spec, 2, 100 * S, 1).unwrap();
    cell.try_charge(&spec, 2, 50 * S, 1).unwrap();
    assert!(cell.try_charge(&spec, 2, 100 * S, 1).is_err());
    // Both leave with the newest bucket's window.
    assert!(cell.try_charge(&spec, 2, 110 * S - 1, 1).is_err());
    assert!(cell.try_charge(&spec, 2, 110 * S, 2).is_ok());
}

#[test]
fn shapes_round_to_whole_milliseconds() {
    let spec = WindowSpec::sliding(Duration::from_millis(10), 30);
    assert_eq!(
        (spec.bucket(), spec.reach()),
        (Duration::from_millis(1), 10)
    );
    let spec = WindowSpec::sliding(Duration::from_millis(1000), 7);
    assert_eq!((spec.bucket_ms(), spec.reach()), (143, 7));
    assert_eq!(spec.window(), Duration::from_secs(1));
    let spec = WindowSpec::sliding(Duration::from_micros(1500), 1);
    assert_eq!(spec.window(), Duration::from_millis(2));
    // A year in one bucket still fits a slot's 32-bit offset.
    let spec = WindowSpec::sliding(Duration::from_secs(366 * 86_400), 1);
    assert!(spec.bucket_ms() <= u64::from(u32::MAX));
    assert_eq!(spec.reach(), 8);
}

#[test]
fn cell_is_small() {
    assert_eq!(std::mem::size_of::<Cell>(), 16);
}
