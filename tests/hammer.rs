//! Many threads deciding for one key at once never admit more than the
//! capacity, and refused charges never leak.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;

use tierlimit::store::{Batch, MemoryStore, Slot, Store};
use tierlimit::window::WindowSpec;

const S: u64 = 1_000_000_000;

fn hammer(store: &MemoryStore, now: u64, slots: &[Slot], threads: usize, per_thread: usize) -> u64 {
    let admitted = Arc::new(AtomicU64::new(0));
    thread::scope(|scope| {
        for _ in 0..threads {
            let admitted = Arc::clone(&admitted);
            let store = store.clone();
            scope.spawn(move || {
                for _ in 0..per_thread {
                    let batch = Batch {
                        slots: slots.to_vec(),
                        admitted: false,
                    };
                    let out = store.decide_now(now, batch).unwrap().unwrap();
                    if out.admitted {
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
    let slots = [Slot::new(42, spec, 1000, 1, 0)];
    let t0 = 1_700_000_000 * S;
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
    let slots = [
        Slot::new(1, minute, 500, 1, 0),
        Slot::new(2, hour, 300, 1, 1),
    ];
    let t0 = 1_700_000_000 * S;
    assert_eq!(hammer(&store, t0, &slots, 8, 2_000), 300);
    let probe = Batch {
        slots: vec![Slot::new(1, minute, 500, 1, 0)],
        admitted: false,
    };
    let out = store.decide_now(t0, probe).unwrap().unwrap();
    assert!(out.admitted);
    assert_eq!(out.slots[0].view.unwrap().used, 301);
}
