//! Where counters live.
//!
//! A [`Store`] answers one question per request: "do all of these limits have
//! room for these costs right now? If so, charge them all." The whole request
//! goes to the store in one [`Batch`], so a remote store (Redis, later) can
//! answer it in one round trip, and an atomic all-or-nothing answer is
//! possible: when one limit refuses, none is charged.
//!
//! The store knows nothing about tiers, routes or identities: each [`Slot`]
//! names its counter by an opaque 128-bit key (one per tier and scope key,
//! shared by that tier's limits with that scope) and a 16-bit tag (which
//! limit), and carries the window shape, capacity and cost.
//! [`memory::MemoryStore`] is the embedded default.

mod entry;
pub mod memory;

use std::fmt;
use std::future::Future;

use crate::window::{Refusal, View, WindowSpec};

pub use memory::{MemoryStore, MemoryStoreConfig};

/// The key of the counters of one (tier, scope key): a keyed 128-bit hash.
pub type CellKey = u128;

/// One limit to check for one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    /// Which counters: one (tier, scope key).
    pub key: CellKey,
    /// Which limit among the counters under `key` (never 0).
    pub tag: u16,
    /// Where to count when the store is full and `key` is new: one counter
    /// shared by every new scope key of the same tier and scope.
    pub overflow_key: CellKey,
    /// Shape of the limit's window.
    pub spec: WindowSpec,
    /// Capacity in cost units.
    pub capacity: u64,
    /// Cost this request would charge.
    pub cost: u64,
    /// The cost is known only after the response (latency, tokens, error
    /// responses): admit while used < capacity, charge nothing now, and
    /// charge later with [`Store::charge_after`].
    pub post: bool,
    /// Member of this cascade group: the group's slots are contiguous,
    /// shortest window first; the first with room takes the charge and the
    /// group refuses only when all are full. `None`: the slot must have room.
    pub cascade: Option<u16>,
    /// Opaque to the store: the caller's index of the limit.
    pub meta: u32,
    /// Filled in by the store: the counter's state after the decision.
    pub view: Option<View>,
    /// Filled in by the store: why this limit had no room, if it had none.
    pub refusal: Option<Refusal>,
    /// Filled in by the store: this limit had room and took (or, in a
    /// refused batch, would have taken) the charge. In a cascade group at
    /// most one slot is chosen.
    pub chosen: bool,
    /// Store scratch: the counter and bucket charged, to undo on refusal.
    pub(crate) charged: Option<(CellKey, u64)>,
}

impl Slot {
    /// A slot for counter `key` (tag 1), not yet decided. Its overflow key
    /// is shared by every slot of the same window, capacity and `meta`.
    pub fn new(key: CellKey, spec: WindowSpec, capacity: u64, cost: u64, meta: u32) -> Self {
        let shape = (u128::from(spec.window_nanos()) << 32)
            ^ (u128::from(meta) << 8)
            ^ u128::from(capacity);
        Slot {
            key,
            tag: 1,
            overflow_key: OVERFLOW_MARK ^ shape,
            spec,
            capacity,
            cost,
            post: false,
            cascade: None,
            meta,
            view: None,
            refusal: None,
            chosen: false,
            charged: None,
        }
    }
}

/// Batches up to this many slots are decided with one lock per key; the
/// policy never makes larger ones (three tiers of at most 20 limits each).
pub const MAX_SLOTS: usize = 64;

/// Mixed into keys to make a default overflow key.
const OVERFLOW_MARK: u128 = 0x6f76_6572_666c_6f77_u128 << 64;

impl Slot {
    /// Sets the tag (which limit under the key); 0 is raised to 1.
    pub fn with_tag(mut self, tag: u16) -> Self {
        self.tag = tag.max(1);
        self
    }

    /// Sets the overflow key.
    pub fn with_overflow_key(mut self, key: CellKey) -> Self {
        self.overflow_key = key;
        self
    }

    /// Marks the cost as charged after the response.
    pub fn post_charged(mut self, post: bool) -> Self {
        self.post = post;
        self
    }

    /// Puts the slot in cascade group `group`.
    pub fn in_cascade(mut self, group: Option<u16>) -> Self {
        self.cascade = group;
        self
    }

    /// Units whose room is checked at admission.
    pub fn check_cost(&self) -> u64 {
        if self.post {
            1
        } else {
            self.cost
        }
    }

    /// Units charged at admission.
    pub fn charge_cost(&self) -> u64 {
        if self.post {
            0
        } else {
            self.cost
        }
    }

    /// The counter key the store charged (the overflow key when the store
    /// was full), once admitted.
    pub fn charged_key(&self) -> Option<CellKey> {
        self.charged.map(|(k, _)| k)
    }
}

/// A cost measured after the response, to charge without a capacity check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PostCharge {
    /// The counters (as charged at admission: [`Slot::charged_key`]).
    pub key: CellKey,
    /// Which limit.
    pub tag: u16,
    /// Its window.
    pub spec: WindowSpec,
    /// Units to charge.
    pub cost: u64,
}

/// All limits of one request, decided together.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    /// The limits, in the order the policy lists them.
    pub slots: Vec<Slot>,
    /// Set by the store: whether every slot had room (and all were charged).
    pub admitted: bool,
}

impl Batch {
    /// Which slots block the request, and until when: for every group that
    /// has no room, `(instant it has room, slot that frees it)`. A plain slot
    /// is its own group; a cascade group frees when its first member does.
    fn blockers(&self) -> impl Iterator<Item = (Option<u64>, usize)> + '_ {
        let mut i = 0;
        std::iter::from_fn(move || {
            while i < self.slots.len() {
                let start = i;
                let group = self.slots[i].cascade;
                i += 1;
                if group.is_some() {
                    while i < self.slots.len() && self.slots[i].cascade == group {
                        i += 1;
                    }
                }
                let members = &self.slots[start..i];
                if members.iter().any(|s| s.chosen) || members.iter().all(|s| s.refusal.is_none()) {
                    continue;
                }
                // Earliest member to free up (a member that can never fit
                // does not count while another can).
                let best = members
                    .iter()
                    .enumerate()
                    .filter_map(|(k, s)| match s.refusal {
                        Some(Refusal::Full { retry_at }) => Some((retry_at, start + k)),
                        _ => None,
                    })
                    .min();
                return Some(match best {
                    Some((at, k)) => (Some(at), k),
                    None => (None, start),
                });
            }
            None
        })
    }

    /// The earliest instant (ns since the epoch) at which every blocking
    /// group has room for this request; `None` when admitted or when some
    /// limit can never fit the cost.
    pub fn retry_at(&self) -> Option<u64> {
        let mut at: Option<u64> = None;
        for (when, _) in self.blockers() {
            let when = when?;
            at = Some(at.map_or(when, |a| a.max(when)));
        }
        at
    }

    /// The slot `Retry-After` waits for: the blocking group that frees up
    /// last, through its member that frees first. `None` when admitted.
    pub fn blocking_slot(&self) -> Option<usize> {
        self.blockers()
            .max_by_key(|(when, _)| when.unwrap_or(u64::MAX))
            .map(|(_, slot)| slot)
    }

    /// Whether slot `i` reports in headers: plain slots always; in a cascade
    /// group, the member that took the charge, or when none could, the one
    /// that frees up first.
    pub fn reports(&self, i: usize) -> bool {
        let s = &self.slots[i];
        let Some(g) = s.cascade else { return true };
        if s.chosen {
            return true;
        }
        let members = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, o)| o.cascade == Some(g));
        if members.clone().any(|(_, o)| o.chosen) {
            return false;
        }
        let first = members
            .filter_map(|(k, o)| match o.refusal {
                Some(Refusal::Full { retry_at }) => Some((retry_at, k)),
                _ => None,
            })
            .min();
        first.is_none_or(|(_, k)| k == i)
    }
}

/// A store could not decide.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store is unreachable or answered something unusable.
    #[error("rate-limit store unavailable: {0}")]
    Unavailable(String),
}

/// Storage of counters; see the [module docs](self).
pub trait Store: Send + Sync + fmt::Debug + 'static {
    /// The future of an asynchronous decision.
    type Future: Future<Output = Result<Batch, StoreError>> + Send + 'static;

    /// Decides `batch` at `now` (ns since the epoch): fills every slot's
    /// `view` (and `refusal` where a limit has no room) and sets `admitted`.
    /// When admitted every slot has been charged; otherwise none has.
    fn decide(&self, now: u64, batch: Batch) -> Self::Future;

    /// Charges costs measured after responses (latency, tokens, error
    /// responses), without a capacity check. Must not block for long: a
    /// remote store sends them in the background.
    fn charge_after(&self, now: u64, charges: Vec<PostCharge>);

    /// A store that can decide without waiting answers here, which spares the
    /// service a state machine; the default hands the batch back.
    ///
    /// # Errors
    ///
    /// Returns the batch unchanged when the store must be awaited.
    fn decide_now(&self, now: u64, batch: Batch) -> Result<Result<Batch, StoreError>, Batch> {
        let _ = now;
        Err(batch)
    }
}
