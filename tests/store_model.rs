//! The memory store against a model made of independent pure counters:
//! same admissions, same figures, all-or-nothing charging, whatever the
//! store does inside (inline entries, heap entries, tags, refunds).

use std::collections::HashMap;

use proptest::prelude::*;
use tierlimit::store::{Batch, MemoryStore, Slot, Store};
use tierlimit::window::{Cell, WindowSpec};

const MS: u64 = 1_000_000;

/// Limit `tag` under every key: (window spec, capacity).
fn limit(tag: u16) -> (WindowSpec, u64) {
    match tag {
        1 => (WindowSpec::sliding(1000 * MS, 10), 5),
        2 => (WindowSpec::sliding(5000 * MS, 5), 12),
        _ => (WindowSpec::fixed(2000 * MS, 0), 7),
    }
}

#[derive(Clone, Debug)]
struct Op {
    gap_ms: u64,
    /// (key, tag, cost)
    slots: Vec<(u128, u16, u64)>,
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let slot = (1u128..4, 1u16..4, 1u64..4);
    let op = (0u64..400, prop::collection::vec(slot, 1..4)).prop_map(|(gap_ms, mut slots)| {
        // One limit appears once per request.
        slots.sort_by_key(|s| (s.0, s.1));
        slots.dedup_by_key(|s| (s.0, s.1));
        Op { gap_ms, slots }
    });
    prop::collection::vec(op, 1..120)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_independent_counters(ops in ops()) {
        let store = MemoryStore::default();
        let mut model: HashMap<(u128, u16), Cell> = HashMap::new();
        let mut now = 1_700_000_000_000 * MS;
        for op in &ops {
            now += op.gap_ms * MS;
            let slots: Vec<Slot> = op.slots.iter().map(|&(key, tag, cost)| {
                let (spec, cap) = limit(tag);
                Slot::new(key, spec, cap, cost.min(cap), 0).with_tag(tag)
            }).collect();
            let out = store.decide_now(now, Batch { slots: slots.clone(), admitted: false }).unwrap().unwrap();

            // Model: try every limit on a copy; commit only if all fit.
            let mut trial = model.clone();
            let mut all_fit = true;
            let mut used = Vec::new();
            for s in &slots {
                let cell = trial.entry((s.key, s.tag)).or_default();
                if all_fit {
                    match cell.try_charge(&s.spec, s.capacity, now, s.cost) {
                        Ok((v, _)) => used.push(v.used),
                        Err((v, _)) => { all_fit = false; used.push(v.used); }
                    }
                } else {
                    let (v, _) = cell.peek(&s.spec, s.capacity, now, s.cost);
                    used.push(v.used);
                }
            }
            prop_assert_eq!(out.admitted, all_fit);
            if all_fit {
                model = trial;
                for (s, u) in out.slots.iter().zip(&used) {
                    prop_assert_eq!(s.view.unwrap().used, *u);
                }
            } else {
                // Nothing charged: every counter reads as in the model.
                for s in &slots {
                    let mut probe = model.get(&(s.key, s.tag)).cloned().unwrap_or_default();
                    let (want, _) = probe.peek(&s.spec, s.capacity, now, 1);
                    let got = store.decide_now(now, Batch {
                        slots: vec![Slot::new(s.key, s.spec, u64::from(u32::MAX), 1, 0).with_tag(s.tag)],
                        admitted: false,
                    }).unwrap().unwrap();
                    // The probe charged 1 with a huge capacity: undo in the model too.
                    prop_assert_eq!(got.slots[0].view.unwrap().used, want.used + 1);
                    let cell = model.entry((s.key, s.tag)).or_default();
                    cell.try_charge(&s.spec, u64::from(u32::MAX), now, 1).unwrap();
                }
            }
        }
    }
}
