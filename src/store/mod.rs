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
    /// Opaque to the store: the caller's index of the limit.
    pub meta: u32,
    /// Filled in by the store: the counter's state after the decision.
    pub view: Option<View>,
    /// Filled in by the store: why this limit refused, if it did.
    pub refusal: Option<Refusal>,
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
            meta,
            view: None,
            refusal: None,
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
    /// The earliest instant (ns since the epoch) at which every refusing limit
    /// has room for this request; `None` when admitted or when a limit can
    /// never fit the cost.
    pub fn retry_at(&self) -> Option<u64> {
        let mut at = None;
        for slot in &self.slots {
            match slot.refusal {
                Some(Refusal::Full { retry_at }) => {
                    at = Some(at.map_or(retry_at, |a: u64| a.max(retry_at)))
                }
                Some(Refusal::NeverFits) => return None,
                None => {}
            }
        }
        at
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
