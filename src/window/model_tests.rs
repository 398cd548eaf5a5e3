//! The counting maths against a brute-force model.
//!
//! A sliding window must never admit more than its capacity in any interval
//! of its length; a burst inside one sub-bucket must stop counting exactly
//! one window after its last request (to the millisecond); spread traffic
//! may be counted at most one sub-bucket late; every reset and retry
//! instant is exact and at most one window after the decision. Fixed
//! windows must hold per clock-aligned window and reset exactly on
//! boundaries.

use proptest::prelude::*;

use super::{Cell, Refusal, View, WindowSpec};

const MS: u64 = 1_000_000;

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

/// An admission as the exact log keeps it.
#[derive(Clone, Copy, Debug)]
struct Admitted {
    at: u64,
    cost: u64,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn sliding_matches_an_exact_log_within_one_bucket(
        bucket_ms in 1u64..50,
        precision in 1u32..12,
        shorter in 0u64..3,
        capacity in 1u64..20,
        start in prop_oneof![0u64..1_000_000_000, 1_700_000_000_000_000_000u64..1_800_000_000_000_000_000],
        // Gaps in nanoseconds: mostly whole milliseconds, sometimes not.
        evs in events(120, 6),
        jitter in prop::collection::vec(prop_oneof![Just(0u64), 0..MS], 200),
    ) {
        // The window need not be a multiple of the bucket.
        let window_ms = (bucket_ms * u64::from(precision)).saturating_sub(shorter).max(1);
        let spec = WindowSpec::sliding_ms(window_ms, precision);
        let (b, w) = (spec.bucket_ms() * MS, window_ms * MS);
        let mut cell = Cell::default();
        let mut t = start;
        let mut log: Vec<Admitted> = Vec::new();
        for (n, e) in evs.iter().enumerate() {
            t += e.gap * MS / 4 + jitter[n];
            let cost = e.cost.min(capacity);
            let stamp = t.div_ceil(MS) * MS;
            // The exact log: cost admitted in (t - w, t].
            let exact: u64 = log.iter().filter(|a| a.at + w > t).map(|a| a.cost).sum();
            // Cost admitted within one bucket counts exactly one window after
            // the last of it (its stamp); so the model counts a bucket's cost
            // while its last stamp + w is after t.
            let bucket_of = |at: u64| at.div_ceil(MS) * MS / b;
            let last_of = |k: u64| log.iter().filter(|a| bucket_of(a.at) == k).map(|a| a.at.div_ceil(MS) * MS).max();
            let model: u64 = log
                .iter()
                .filter(|a| last_of(bucket_of(a.at)).unwrap() + w > t)
                .map(|a| a.cost)
                .sum();
            // Never forgets early; at most one bucket late.
            let widened: u64 = log.iter().filter(|a| a.at + w + b > t).map(|a| a.cost).sum();
            prop_assert!(exact <= model && model <= widened, "exact {} model {} widened {}", exact, model, widened);
            let before = cell.clone();
            match cell.try_charge(&spec, capacity, t, cost) {
                Ok((view, _)) => {
                    prop_assert!(model + cost <= capacity, "admitted at {} with {} counted", t, model);
                    prop_assert_eq!(view.used, model + cost);
                    log.push(Admitted { at: t, cost });
                    // Full again exactly one window after this stamp.
                    prop_assert_eq!(view.reset_at.as_nanos(), stamp + w);
                }
                Err((_, Refusal::NeverFits)) => prop_assert!(false, "cost {} fits {}", cost, capacity),
                Err((view, Refusal::Full { retry_at })) => {
                    prop_assert!(model + cost > capacity, "refused at {} with {} counted", t, model);
                    prop_assert_eq!(view.used, model);
                    // Within one window of the decision's stamp.
                    let retry_at = retry_at.as_nanos();
                    prop_assert!(retry_at > t && retry_at <= stamp + w, "retry {} at {}", retry_at, t);
                    prop_assert!(view.reset_at.as_nanos() <= stamp + w);
                    // Exact: refused just before it, admitted at it.
                    let mut probe = before.clone();
                    prop_assert!(probe.try_charge(&spec, capacity, retry_at - 1, cost).is_err());
                    let mut probe = before.clone();
                    prop_assert!(probe.try_charge(&spec, capacity, retry_at, cost).is_ok());
                }
            }
        }
        // The hard guarantee: every interval [a, a + w) holds at most
        // `capacity`; the worst intervals start at an admission.
        for (i, a) in log.iter().enumerate() {
            let sum: u64 = log[i..].iter().take_while(|x| x.at < a.at + w).map(|x| x.cost).sum();
            prop_assert!(sum <= capacity, "{} admitted in [{}, {})", sum, a.at, a.at + w);
        }
    }

    #[test]
    fn a_burst_in_one_bucket_leaves_exactly_one_window_after_its_last_request(
        bucket_ms in 2u64..1000,
        precision in 1u32..60,
        capacity in 1u64..100,
        start_ms in 1_700_000_000_000u64..1_800_000_000_000,
        spread in 0u64..1000,
    ) {
        let spec = WindowSpec::sliding_ms(bucket_ms * u64::from(precision), precision);
        let (b, w) = (bucket_ms * MS, bucket_ms * u64::from(precision) * MS);
        // `capacity` requests within one bucket, the last at `last`.
        let first = start_ms * MS - (start_ms * MS) % b;
        let last = first + (spread * MS).min(b - MS);
        let mut cell = Cell::default();
        for i in 0..capacity {
            let at = last - (last - first) * (capacity - 1 - i) / (capacity - 1).max(1);
            cell.try_charge(&spec, capacity, at, 1).unwrap();
        }
        let (_, refusal) = cell.try_charge(&spec, capacity, last, 1).unwrap_err();
        let Refusal::Full { retry_at } = refusal else { panic!("{refusal:?}") };
        prop_assert!(retry_at.as_nanos() <= last + w);
        let mut probe = cell.clone();
        prop_assert!(probe.try_charge(&spec, capacity, last + w - MS, 1).is_err());
        prop_assert!(cell.try_charge(&spec, capacity, last + w, capacity).is_ok());
    }

    #[test]
    fn fixed_windows_hold_and_reset_on_boundaries(
        len_ms in 1u64..100,
        offset_ms in -50i64..50,
        capacity in 1u64..10,
        start in prop_oneof![0u64..10_000_000, 1_700_000_000_000_000_000u64..1_800_000_000_000_000_000],
        evs in events(40, 4),
    ) {
        let spec = WindowSpec::fixed_ms(len_ms, offset_ms);
        let (len, offset) = (len_ms as i128 * MS as i128, offset_ms as i128 * MS as i128);
        let mut cell = Cell::default();
        let mut t = start + 100 * MS;
        let mut per_window: std::collections::HashMap<i128, u64> = Default::default();
        for e in &evs {
            t += e.gap * MS / 3;
            let cost = e.cost.min(capacity);
            let w = (t as i128 + offset).div_euclid(len);
            let used = per_window.get(&w).copied().unwrap_or(0);
            match cell.try_charge(&spec, capacity, t, cost) {
                Ok(_) => {
                    prop_assert!(used + cost <= capacity);
                    *per_window.entry(w).or_default() += cost;
                }
                Err((_, Refusal::Full { retry_at })) => {
                    // Fixed windows are exact: refused only when full.
                    prop_assert!(used + cost > capacity);
                    prop_assert_eq!(retry_at.as_nanos() as i128, (w + 1) * len - offset);
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
        let spec = WindowSpec::sliding_ms(100, 10);
        let mut cell = Cell::default();
        let mut t = 1000 * MS;
        for e in &evs {
            t += e.gap * MS;
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

    /// A charge taken back with nobody else's since leaves nothing behind:
    /// from then on the counter
    /// gives exactly the answers (counts, resets, refusals and retry
    /// instants) of one that was never charged, sliding or fixed, whether
    /// the charge went through the one-step path or the general steps, into
    /// an empty, a busy or a new bucket, with saturating counts too.
    #[test]
    fn an_undone_charge_leaves_no_trace(
        sliding in any::<bool>(),
        precision in 1u32..8,
        capacity in prop_oneof![2u64..20, Just(u64::from(u32::MAX) + 5)],
        evs in events(60, 3),
        undo_at in prop::collection::vec(any::<bool>(), 200),
        huge in prop::collection::vec(prop_oneof![9 => Just(false), 1 => Just(true)], 200),
        probes in prop::collection::vec((0u64..150, 1u64..4), 1..6),
    ) {
        let spec = if sliding {
            WindowSpec::sliding_ms(100, precision)
        } else {
            WindowSpec::fixed_ms(100, 0)
        };
        let mut cell = Cell::default();
        let mut t = 1000 * MS + 400_000;
        for (n, e) in evs.iter().enumerate() {
            t += e.gap * MS / 2;
            let cost = if huge[n] { capacity.min(u64::from(u32::MAX)) } else { e.cost.min(capacity) };
            let before = cell.clone();
            let Ok((_, mark)) = cell.try_charge_with(&spec, capacity, t, cost, cost) else {
                continue;
            };
            if !undo_at[n] {
                continue;
            }
            cell.take_back(&spec, t, mark, cost);
            let (mut a, mut b) = (before.clone(), cell.clone());
            if mark.count_after == u32::MAX {
                // A saturated bucket cannot say who charged it: it stays
                // full (never fewer than the charges it holds).
                let (va, _) = a.peek(&spec, capacity, t, 1);
                let (vb, _) = b.peek(&spec, capacity, t, 1);
                prop_assert!(vb.used >= va.used);
                cell = before;
                continue;
            }
            // (`frees_at`, a hint for headers, may differ: the buckets an
            // undo leaves can be laid out otherwise, with the same count
            // and reset.)
            let plain = |v: View| View::new(v.capacity, v.used, v.reset_at);
            for &(later, check) in &probes {
                let at = t + later * MS;
                let (va, fa) = a.peek(&spec, capacity, at, check);
                let (vb, fb) = b.peek(&spec, capacity, at, check);
                prop_assert_eq!(plain(va), plain(vb), "{} ms after the undo", later);
                prop_assert_eq!(fa, fb, "{} ms after the undo", later);
            }
            // And charging goes on the same way.
            let ra = before.clone().try_charge_with(&spec, capacity, t, 1, 1).map(|(v, _)| plain(v));
            let rb = cell.clone().try_charge_with(&spec, capacity, t, 1, 1).map(|(v, _)| plain(v));
            prop_assert_eq!(ra, rb);
        }
    }

    /// A charge taken back after others charged the same bucket never
    /// takes theirs: the counter then holds exactly their cost, and
    /// counts it no earlier than if the taken-back charge had never been
    /// made (at most one bucket later).
    #[test]
    fn taking_a_charge_back_after_others_keeps_theirs(
        sliding in any::<bool>(),
        capacity in 5u64..40,
        gaps in prop::collection::vec(0u64..40, 2..10),
        back_after in 1usize..9,
    ) {
        let spec = if sliding {
            WindowSpec::sliding_ms(100, 4)
        } else {
            WindowSpec::fixed_ms(100, 0)
        };
        let mut cell = Cell::default();
        let mut never = Cell::default();
        let mut t = 1000 * MS;
        let (_, mark) = cell.try_charge_with(&spec, capacity, t, 1, 1).unwrap();
        for (n, gap) in gaps.iter().enumerate() {
            t += gap * MS / 3;
            if n == back_after {
                cell.take_back(&spec, t, mark, 1);
            }
            if cell.try_charge_with(&spec, capacity, t, 1, 1).is_ok() {
                never.try_charge_with(&spec, capacity, t, 1, 1).unwrap();
            }
        }
        if back_after >= gaps.len() {
            cell.take_back(&spec, t, mark, 1);
        }
        let (a, _) = cell.peek(&spec, capacity, t, 1);
        let (b, _) = never.peek(&spec, capacity, t, 1);
        prop_assert_eq!(a.used, b.used, "the others' charges are all there");
        prop_assert!(a.reset_at >= b.reset_at);
        prop_assert!(a.reset_at.as_nanos() <= b.reset_at.as_nanos() + spec.bucket().as_nanos() as u64);
    }
}
