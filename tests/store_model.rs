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

/// A request: groups of (key, tag, cost, post); a group of several slots
/// is a cascade.
#[derive(Clone, Debug)]
struct Req {
    gap_ms: u64,
    groups: Vec<Vec<(u128, u16, u64, bool)>>,
}

fn reqs() -> impl Strategy<Value = Vec<Req>> {
    let slot = (1u128..3, 1u64..4, any::<bool>());
    let group = prop::collection::vec(slot, 1..4);
    let req = (0u64..600, prop::collection::vec(group, 1..3)).prop_map(|(gap_ms, groups)| {
        // Tags are unique per key within a request, as a policy makes them.
        let mut next_tag = 1u16;
        let groups = groups
            .into_iter()
            .map(|g| {
                g.into_iter()
                    .map(|(key, cost, post)| {
                        next_tag += 1;
                        (key, next_tag, cost, post)
                    })
                    .collect()
            })
            .collect();
        Req { gap_ms, groups }
    });
    prop::collection::vec(req, 1..80)
}

fn spec_of(tag: u16) -> (WindowSpec, u64) {
    limit(tag % 3 + 1)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn cascades_and_post_costs_match_the_model(reqs in reqs()) {
        let store = MemoryStore::default();
        let mut model: HashMap<(u128, u16), Cell> = HashMap::new();
        let mut now = 1_700_000_000_000 * MS;
        for req in &reqs {
            now += req.gap_ms * MS;
            let mut slots = Vec::new();
            for (g, group) in req.groups.iter().enumerate() {
                let cascade = (group.len() > 1).then_some(g as u16 + 1);
                for &(key, tag, cost, post) in group {
                    let (spec, cap) = spec_of(tag);
                    slots.push(
                        Slot::new(key, spec, cap, cost.min(cap), 0)
                            .with_tag(tag)
                            .post_charged(post)
                            .in_cascade(cascade),
                    );
                }
            }
            let out = store.decide_now(now, Batch { slots: slots.clone(), admitted: false }).unwrap().unwrap();

            let mut trial = model.clone();
            let mut ok = true;
            let mut chosen = vec![false; slots.len()];
            let mut i = 0;
            for group in &req.groups {
                let mut any = false;
                for _ in group {
                    let s = &slots[i];
                    if !(group.len() > 1 && any) {
                        let cell = trial.entry((s.key, s.tag)).or_default();
                        if cell.try_charge_with(&s.spec, s.capacity, now, s.check_cost(), s.charge_cost()).is_ok() {
                            chosen[i] = true;
                            any = true;
                        } else if group.len() == 1 {
                            ok = false;
                        }
                    }
                    i += 1;
                }
                if group.len() > 1 && !any {
                    ok = false;
                }
            }
            prop_assert_eq!(out.admitted, ok);
            if ok {
                model = trial;
                let got: Vec<bool> = out.slots.iter().map(|s| s.chosen).collect();
                prop_assert_eq!(got, chosen);
                // Post-charge the admitted post slots, in the store and the model.
                let mut charges = Vec::new();
                for s in out.slots.iter().filter(|s| s.post && s.chosen) {
                    let cost = 1 + (now / MS) % 5;
                    charges.push(tierlimit::store::PostCharge { key: s.charged_key().unwrap(), tag: s.tag, spec: s.spec, cost });
                    model.entry((s.key, s.tag)).or_default().charge_unchecked(&s.spec, now, cost);
                }
                store.charge_after(now, charges);
            }
            // Every counter reads the same in the store and the model.
            for s in &slots {
                let mut m = model.get(&(s.key, s.tag)).cloned().unwrap_or_default();
                let (want, _) = m.peek(&s.spec, s.capacity, now, 1);
                let probe = store.decide_now(now, Batch {
                    slots: vec![Slot::new(s.key, s.spec, s.capacity, 1, 0).with_tag(s.tag).post_charged(true)],
                    admitted: false,
                }).unwrap().unwrap();
                prop_assert_eq!(probe.slots[0].view.unwrap().used, want.used);
            }
        }
    }
}
