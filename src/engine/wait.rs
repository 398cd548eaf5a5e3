//! Waiting instead of refusing (`delay_up_to` on a tier): who waits, for how
//! long, and how many of one scope wait at once.
//!
//! A request refused by limits whose tiers all set `delay_up_to`, and that
//! the store says has room at `retry_at` no later than its arrival plus the
//! smallest of those delays, takes a place in its scope's queue (the counter
//! key of the limit that frees last; at most `queue` places, per instance)
//! and waits on a tokio timer in its response future; then it is decided
//! again from scratch, by the store, so that it is admitted only when the
//! window has room. Refused again (another request took the slot), it waits
//! again while its first deadline allows, else it gets the 429. The place
//! is given back when the request is decided for good, or when its future
//! is dropped (a client that went away).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::clock::Timestamp;
use crate::store::CounterKey;

/// The places taken in every scope's queue.
#[derive(Debug, Default)]
pub(crate) struct Waits {
    taken: Mutex<HashMap<CounterKey, u32>>,
    /// Requests that waited (each once, however many times it slept).
    pub(crate) delayed: AtomicU64,
    /// Requests waiting now.
    pub(crate) waiting: AtomicU64,
}

impl Waits {
    /// A place in `key`'s queue of `queue` places, if one is free.
    pub(crate) fn take(self: &Arc<Self>, key: CounterKey, queue: u32) -> Option<Ticket> {
        let mut taken = self.taken.lock().unwrap_or_else(|e| e.into_inner());
        let n = taken.entry(key).or_insert(0);
        if *n >= queue {
            return None;
        }
        *n += 1;
        drop(taken);
        self.delayed.fetch_add(1, Ordering::Relaxed);
        self.waiting.fetch_add(1, Ordering::Relaxed);
        crate::observe::delayed(true);
        Some(Ticket {
            waits: Arc::clone(self),
            key,
        })
    }
}

/// A place in a scope's queue, given back when dropped.
#[derive(Debug)]
pub(crate) struct Ticket {
    waits: Arc<Waits>,
    key: CounterKey,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut taken = self.waits.taken.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = taken.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                taken.remove(&self.key);
            }
        }
        drop(taken);
        self.waits.waiting.fetch_sub(1, Ordering::Relaxed);
        crate::observe::delayed(false);
    }
}

/// A request that waits: its deadline (on the clock its store decides by)
/// and its place in the queue. Boxed: every decision carries an
/// `Option<Waiting>`, and a pointer is cheap to move.
#[derive(Debug)]
pub(crate) struct Waiting(Box<(Timestamp, Ticket)>);

impl Waiting {
    pub(crate) fn new(deadline: Timestamp, ticket: Ticket) -> Self {
        Waiting(Box::new((deadline, ticket)))
    }

    /// The deadline and the place.
    pub(crate) fn into_parts(self) -> (Timestamp, Ticket) {
        *self.0
    }
}

/// What a refused request that may wait does: sleep this long, then be
/// decided again.
#[derive(Debug)]
pub(crate) struct WaitFor {
    pub(crate) sleep: Duration,
    pub(crate) waiting: Waiting,
}
