//! The counting maths against a brute-force model.
//!
//! A sliding window must never admit more than its capacity in any interval
//! of its length, and may admit at most one sub-bucket later than an exact
//! sliding log. Retry times must be exact. Fixed windows must hold per
//! clock-aligned window and reset exactly on boundaries.

use proptest::prelude::*;

use super::{Cell, Refusal, WindowSpec};

#[derive(Clone, Debug)]
struct Event {
    gap: u64,
    cost: u64,
}

fn events(max_gap: u64, max_cost: u64) -> impl Strategy<Value = Vec<Event>> {
    prop::collection::vec(
        (0..=max_gap, 1..=max_cost).prop_map(|(gap, cost)| Event { gap, cost }),
        1..200,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn sliding_guarantee_and_bounded_lateness(
        bucket in 1u64..50,
        precision in 1u32..12,
        capacity in 1u64..20,
        start in prop_oneof![0u64..1_000_000, 1_700_000_000_000_000_000u64..1_800_000_000_000_000_000],
        evs in events(120, 6),
    ) {
        let spec = WindowSpec::sliding_nanos(bucket * u64::from(precision), precision);
        let window = bucket * u64::from(precision);
        let mut cell = Cell::default();
        let mut t = start;
        let mut admitted: Vec<(u64, u64)> = Vec::new();
        for e in &evs {
            t += e.gap;
            let cost = e.cost.min(capacity);
            let before = cell.clone();
            match cell.try_charge(&spec, capacity, t, cost) {
                Ok((view, _)) => {
                    admitted.push((t, cost));
                    prop_assert!(view.used <= capacity);
                }
                Err((_, Refusal::NeverFits)) => prop_assert!(false, "cost {} fits {}", cost, capacity),
                Err((view, Refusal::Full { retry_at })) => {
                    // Bounded lateness: an exact log whose window is one
                    // bucket longer would refuse this request too.
                    let lo = t.saturating_sub(window + bucket);
                    let counted: u64 = admitted.iter().filter(|(at, _)| *at > lo || (lo == 0 && *at == 0)).map(|(_, c)| c).sum();
                    prop_assert!(counted + cost > capacity,
                        "refused at {} although only {} counted in the widened window", t, counted);
                    prop_assert!(view.used + cost > capacity);
                    // Exact retry time: refused just before, admitted at it.
                    let retry_at = retry_at.as_nanos();
                    prop_assert!(retry_at > t);
                    let mut probe = before.clone();
                    prop_assert!(probe.try_charge(&spec, capacity, retry_at - 1, cost).is_err());
                    let mut probe = before.clone();
                    prop_assert!(probe.try_charge(&spec, capacity, retry_at, cost).is_ok());
                }
            }
        }
        // The hard guarantee: every interval [a, a + window) holds at most
        // `capacity`; the worst intervals start at an admission.
        for (i, &(a, _)) in admitted.iter().enumerate() {
            let sum: u64 = admitted[i..].iter().take_while(|(at, _)| *at < a + window).map(|(_, c)| c).sum();
            prop_assert!(sum <= capacity, "{} admitted in [{}, {})", sum, a, a + window);
        }
    }

    #[test]
    fn fixed_windows_hold_and_reset_on_boundaries(
        len in 1u64..100,
        offset in -50i64..50,
        capacity in 1u64..10,
        start in prop_oneof![0u64..10_000, 1_700_000_000_000_000_000u64..1_800_000_000_000_000_000],
        evs in events(40, 4),
    ) {
        let spec = WindowSpec::fixed_nanos(len, offset);
        let mut cell = Cell::default();
        let mut t = start + 100;
        let mut per_window: std::collections::HashMap<i64, u64> = Default::default();
        for e in &evs {
            t += e.gap;
            let cost = e.cost.min(capacity);
            let w = (t as i64 + offset).div_euclid(len as i64);
            let used = per_window.get(&w).copied().unwrap_or(0);
            match cell.try_charge(&spec, capacity, t, cost) {
                Ok(_) => {
                    prop_assert!(used + cost <= capacity);
                    *per_window.entry(w).or_default() += cost;
                }
                Err((_, Refusal::Full { retry_at })) => {
                    // Fixed windows are exact: refused only when full.
                    prop_assert!(used + cost > capacity);
                    prop_assert_eq!(retry_at.as_nanos() as i64, (w + 1) * len as i64 - offset);
                }
                Err((_, Refusal::NeverFits)) => prop_assert!(false),
            }
        }
    }

    #[test]
    fn a_refund_restores_the_state_before_the_charge(
        capacity in 2u64..20,
        evs in events(30, 3),
    ) {
        let spec = WindowSpec::sliding_nanos(100, 10);
        let mut cell = Cell::default();
        let mut t = 1000;
        for e in &evs {
            t += e.gap;
            let before = cell.clone();
            if let Ok((_, idx)) = cell.try_charge(&spec, capacity, t, e.cost.min(capacity)) {
                let mut undone = cell.clone();
                undone.refund(&spec, t, idx, e.cost.min(capacity));
                // Same answers from now on as if never charged.
                let mut a = before.clone();
                let (va, _) = a.peek(&spec, capacity, t, 1);
                let (vb, _) = undone.peek(&spec, capacity, t, 1);
                prop_assert_eq!(va.used, vb.used);
            }
        }
    }
}
