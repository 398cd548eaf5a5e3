//! Many threads deciding for one key at once never admit more than the
//! capacity, and refused charges never leak.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;

use std::time::Duration;

use tierlimit::clock::Timestamp;
use tierlimit::store::{Batch, CounterKey, LimitSpec, MemoryStore, WindowSpec};

const S: Duration = Duration::from_secs(1);

fn limit(key: u128, window: WindowSpec, capacity: u64) -> LimitSpec {
    LimitSpec::new(CounterKey::from_u128(key), window, capacity, 1)
}

fn hammer(
    store: &MemoryStore,
    now: Timestamp,
    slots: &[LimitSpec],
    threads: usize,
    per_thread: usize,
) -> u64 {
    let admitted = Arc::new(AtomicU64::new(0));
    thread::scope(|scope| {
        for _ in 0..threads {
            let admitted = Arc::clone(&admitted);
            let store = store.clone();
            scope.spawn(move || {
                for _ in 0..per_thread {
                    let batch = Batch::from_limits(slots.iter().copied());
                    let out = store.decide_now(now, batch);
                    if out.admitted() {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    admitted.load(Ordering::Relaxed)
}

#[test]
fn one_hot_key_from_many_threads() {
    let store = MemoryStore::default();
    let spec = WindowSpec::sliding(60 * S, 30);
    let slots = [limit(42, spec, 1000)];
    let t0 = Timestamp::from_secs(1_700_000_000);
    assert_eq!(hammer(&store, t0, &slots, 8, 5_000), 1000);
    // Half a window later the window is still full.
    assert_eq!(hammer(&store, t0 + 30 * S, &slots, 8, 1_000), 0);
    // A window plus one bucket later everything has left.
    assert_eq!(hammer(&store, t0 + 62 * S, &slots, 8, 1_000), 1000);
}

#[test]
fn two_limits_from_many_threads_charge_all_or_nothing() {
    let store = MemoryStore::default();
    let minute = WindowSpec::sliding(60 * S, 30);
    let hour = WindowSpec::sliding(3600 * S, 30);
    // The hour limit is the tighter one: it decides; the minute limit must
    // hold exactly the admitted count (no leaked charge from refusals).
    let slots = [limit(1, minute, 500), limit(2, hour, 300)];
    let t0 = Timestamp::from_secs(1_700_000_000);
    assert_eq!(hammer(&store, t0, &slots, 8, 2_000), 300);
    let out = store.decide_now(t0, Batch::from_limits([limit(1, minute, 500)]));
    assert!(out.admitted());
    assert_eq!(out.outcome(0).unwrap().view.used, 301);
}

#[test]
fn refusals_remembered_for_one_batch_do_not_refuse_another() {
    // Every request counts on limit 1 (1 000 a minute); half of them also
    // on limit 2 (one a minute), under the same first key: after its first
    // request, that half is refused and remembered as refused, and the
    // other half must still get all of limit 1 — no more, no less — while
    // both kinds race on eight threads.
    let store = MemoryStore::default();
    let spec = WindowSpec::sliding(60 * S, 30);
    let wide = limit(7, spec, 1000);
    let narrow = LimitSpec::new(CounterKey::from_u128(7), spec, 1, 1).with_tag(2);
    let t0 = Timestamp::from_secs(1_700_000_000);
    let admitted = Arc::new(AtomicU64::new(0));
    thread::scope(|scope| {
        for t in 0..8 {
            let admitted = Arc::clone(&admitted);
            let store = store.clone();
            scope.spawn(move || {
                for i in 0..1_000 {
                    let batch = if (i + t) % 2 == 0 {
                        Batch::from_limits([wide])
                    } else {
                        Batch::from_limits([wide, narrow])
                    };
                    if store.decide_now(t0, batch).admitted() {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    assert_eq!(admitted.load(Ordering::Relaxed), 1000);
    let probe = store.decide_now(t0, Batch::from_limits([limit(7, spec, 10_000)]));
    assert_eq!(
        probe.outcome(0).unwrap().view.used,
        1001,
        "no charge leaked"
    );
}
