//! The memory store against a model made of independent pure counters:
//! same admissions, same figures, all-or-nothing charging, whatever the
//! store does inside (inline entries, heap entries, tags, refunds).

use std::collections::HashMap;

use proptest::prelude::*;

use super::{Batch, Charge, CounterKey, LimitSpec, MemoryStore, PostCharge, Store, Verdict};
use crate::clock::Timestamp;
use crate::window::{Cell, WindowSpec};

const MS: u64 = 1_000_000;

/// A limit on `key`, tag `tag`, charging `cost`.
fn spec(key: u128, window: WindowSpec, cap: u64, cost: u64, tag: u16) -> LimitSpec {
    LimitSpec::new(CounterKey::from_u128(key), window, cap, cost).with_tag(tag)
}

fn decide(store: &MemoryStore, now: u64, limits: Vec<LimitSpec>) -> Batch {
    store.decide_now(Timestamp::from_nanos(now), Batch::from_limits(limits))
}

fn used(b: &Batch, i: usize) -> u64 {
    b.outcome(i).unwrap().view.used
}

/// Limit `tag` under every key: (window spec, capacity).
fn limit(tag: u16) -> (WindowSpec, u64) {
    match tag {
        1 => (WindowSpec::sliding_ms(1000, 10), 5),
        2 => (WindowSpec::sliding_ms(5000, 5), 12),
        _ => (WindowSpec::fixed_ms(2000, 0), 7),
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
            let slots: Vec<LimitSpec> = op.slots.iter().map(|&(key, tag, cost)| {
                let (w, cap) = limit(tag);
                spec(key, w, cap, cost.min(cap), tag)
            }).collect();
            let out = decide(&store, now, slots.clone());

            // Model: try every limit on a copy; commit only if all fit.
            let mut trial = model.clone();
            let mut all_fit = true;
            let mut used = Vec::new();
            for s in &slots {
                let cell = trial.entry((s.key.as_u128(), s.tag)).or_default();
                if all_fit {
                    match cell.try_charge(&s.window, s.capacity, now, s.check_cost()) {
                        Ok((v, _)) => used.push(v.used),
                        Err((v, _)) => { all_fit = false; used.push(v.used); }
                    }
                } else {
                    let (v, _) = cell.peek(&s.window, s.capacity, now, s.check_cost());
                    used.push(v.used);
                }
            }
            prop_assert_eq!(out.admitted(), all_fit);
            if all_fit {
                model = trial;
                for (i, u) in used.iter().enumerate() {
                    prop_assert_eq!(self::used(&out, i), *u);
                }
            } else {
                // Nothing charged: every counter reads as in the model.
                for s in &slots {
                    let mut probe = model.get(&(s.key.as_u128(), s.tag)).cloned().unwrap_or_default();
                    let (want, _) = probe.peek(&s.window, s.capacity, now, 1);
                    let got = decide(&store, now, vec![spec(s.key.as_u128(), s.window, u64::from(u32::MAX), 1, s.tag)]);
                    // The probe charged 1 with a huge capacity: the model too.
                    prop_assert_eq!(self::used(&got, 0), want.used + 1);
                    let cell = model.entry((s.key.as_u128(), s.tag)).or_default();
                    cell.try_charge(&s.window, u64::from(u32::MAX), now, 1).unwrap();
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

fn shape_of(tag: u16) -> (WindowSpec, u64) {
    limit(tag % 3 + 1)
}

/// The store limits of a request: a group of several slots is a cascade.
fn limits_of(req: &Req) -> Vec<LimitSpec> {
    let mut slots = Vec::new();
    for (g, group) in req.groups.iter().enumerate() {
        let cascade = (group.len() > 1).then_some(g as u16 + 1);
        for &(key, tag, cost, post) in group {
            let (w, cap) = shape_of(tag);
            let charge = if post {
                Charge::After
            } else {
                Charge::Now(cost.min(cap))
            };
            slots.push(
                spec(key, w, cap, 1, tag)
                    .with_charge(charge)
                    .in_cascade(cascade),
            );
        }
    }
    slots
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
            let slots = limits_of(req);
            let out = decide(&store, now, slots.clone());

            let mut trial = model.clone();
            let mut ok = true;
            let mut chosen = vec![false; slots.len()];
            let mut i = 0;
            for group in &req.groups {
                let mut any = false;
                for _ in group {
                    let s = &slots[i];
                    if !(group.len() > 1 && any) {
                        let cell = trial.entry((s.key.as_u128(), s.tag)).or_default();
                        if cell.try_charge_with(&s.window, s.capacity, now, s.check_cost(), s.charge_cost()).is_ok() {
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
            prop_assert_eq!(out.admitted(), ok);
            if ok {
                model = trial;
                let got: Vec<bool> = (0..out.len()).map(|i| out.outcome(i).unwrap().has_room()).collect();
                prop_assert_eq!(got, chosen);
                // Post-charge the admitted post limits, in the store and the model.
                let mut charges = Vec::new();
                for i in 0..out.len() {
                    let s = *out.limit(i);
                    let Verdict::Room(receipt) = out.outcome(i).unwrap().verdict else { continue };
                    if s.charge != Charge::After {
                        continue;
                    }
                    let cost = 1 + (now / MS) % 5;
                    charges.push(PostCharge::new(s, receipt, cost));
                    model.entry((s.key.as_u128(), s.tag)).or_default().charge_unchecked(&s.window, now, cost);
                }
                let _ = store.charge_after(Timestamp::from_nanos(now), charges);
            }
            // Every counter reads the same in the store and the model.
            for s in &slots {
                let mut m = model.get(&(s.key.as_u128(), s.tag)).cloned().unwrap_or_default();
                let (want, _) = m.peek(&s.window, s.capacity, now, 1);
                let probe = decide(&store, now, vec![spec(s.key.as_u128(), s.window, s.capacity, 1, s.tag).with_charge(Charge::After)]);
                prop_assert_eq!(used(&probe, 0), want.used);
            }
        }
    }
}

/// What a decided limit says, receipts and reset aside (a refused batch's
/// receipts are never used): capacity, used, refusal, whether it had room,
/// whether it was passed.
fn said(b: &Batch, i: usize) -> (u64, u64, Option<crate::window::Refusal>, bool, bool) {
    let o = b.outcome(i).unwrap();
    (
        o.view.capacity,
        o.view.used,
        o.refusal(),
        o.has_room(),
        matches!(o.verdict, Verdict::Passed),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// A refusal answered under shared locks (for a key refused a moment
    /// ago) is the refusal the exclusive path gives: same verdicts, same
    /// counts, same refusals and retry instants, same passed cascade
    /// members, same resets (a charge the exclusive path made and took
    /// back leaves no trace when nobody else charged that bucket since).
    #[test]
    fn refusals_under_shared_locks_are_the_exclusive_ones(reqs in reqs()) {
        let store = MemoryStore::default();
        let mut now = 1_700_000_000_000 * MS;
        let mut shared_refusals = 0;
        for req in &reqs {
            now += req.gap_ms * MS / 4;
            let slots = limits_of(req);
            let mut batch = Batch::from_limits(slots);
            batch.set_decided_at(Timestamp::from_nanos(now));
            let mut shared = batch.clone();
            if store.refuse_shared(now, &mut shared) {
                shared_refusals += 1;
                let exclusive = store.decide_exclusive(now, batch, None);
                prop_assert!(!exclusive.admitted());
                prop_assert!(!shared.admitted());
                for i in 0..exclusive.len() {
                    prop_assert_eq!(said(&shared, i), said(&exclusive, i), "limit {}", i);
                    let (a, b) = (shared.outcome(i).unwrap(), exclusive.outcome(i).unwrap());
                    prop_assert_eq!(a.view.reset_at, b.view.reset_at, "limit {}", i);
                }
                prop_assert_eq!(shared.retry_at(), exclusive.retry_at());
                prop_assert_eq!(shared.blocking(), exclusive.blocking());
            } else {
                store.decide_exclusive(now, batch, None);
            }
        }
        // Whether the shared path ran at all is checked by
        // `memory::tests::a_key_refused_a_moment_ago_is_refused_without_a_write`.
        let _ = shared_refusals;
    }
}
