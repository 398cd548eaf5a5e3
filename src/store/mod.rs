//! Where counters live, and the contract a store implements.
//!
//! A [`Store`] answers one question per request: "do all of these limits
//! have room for these costs right now? If so, charge them all." The whole
//! request goes to the store in one [`Batch`], so a remote store can answer
//! it in one round trip, and the answer is all or nothing: when one limit
//! refuses, none is charged.
//!
//! [`MemoryStore`] is the embedded default. Anyone can write another one
//! from the public items of this module alone: `tests/common/external.rs`
//! in the repository is a store of exact logs that shares no code with the
//! memory store, and every vendor scenario suite and the post-charge suite
//! run on it (and on the memory store behind an await).
//!
//! # The contract
//!
//! **What goes in.** A [`Batch`] of immutable [`LimitSpec`]s, in the order
//! the policy lists them. Each names its counter by an opaque
//! [`CounterKey`] (a keyed 128-bit hash of tier, scope and scope key) plus a
//! 16-bit `tag` (which limit under that key), and carries its window shape
//! ([`WindowSpec`]), capacity, what it charges ([`Charge`]) and, for
//! members of a cascade group, the group number. The store knows nothing of
//! tiers, routes or identities.
//!
//! **What the store must do** in [`Store::decide`], at the instant `now`
//! it is given (a remote store may use its own clock instead, consistently):
//!
//! 1. Give **every** limit an [`Outcome`] with [`Batch::record`]: the
//!    counter's [`View`] and a [`Verdict`]:
//!    * [`Verdict::Room`]: the limit has room for the request; the
//!      [`Receipt`] says where a later post-charge goes;
//!    * [`Verdict::Refused`]: it has no room, and when it will
//!      ([`Refusal`]);
//!    * [`Verdict::Passed`]: a cascade member after the one that took the
//!      charge (it was not needed).
//! 2. A limit "has room" when its counted cost plus [`LimitSpec::check_cost`]
//!    is at most its capacity ([`Charge::After`] limits check 1 unit: they
//!    admit while used < capacity).
//! 3. Limits outside a cascade must all have room. The members of a cascade
//!    group are contiguous and ordered shortest window first: the first
//!    member with room takes the charge, the following ones are `Passed`;
//!    the group refuses only when every member is `Refused`.
//! 4. **All or nothing**: when every group has room, charge
//!    [`LimitSpec::charge_cost`] to every `Room` limit; otherwise charge
//!    nothing at all (a store that charges as it goes must refund), and
//!    report views as they stand after the refund. [`Batch::admitted`] is
//!    derived from the verdicts, so it cannot disagree with them.
//! 5. Count in windows exactly as the [`WindowSpec`] helpers say: a cost
//!    charged at `t` goes to bucket `index(t)` with the millisecond stamp
//!    `stamp(t)`; each bucket remembers its latest stamp `last`, and its
//!    cost counts while `now < forget_at(i, last)`. Make `reset_at` /
//!    `retry_at` the instants those rules give.
//! 6. Say the instant the decision was made at with
//!    [`Batch::set_decided_at`] (the memory store gives `stamp(now)`; a
//!    remote store deciding by its own clock gives its server's stamp):
//!    `Retry-After` and every "seconds from now" figure are measured from
//!    it, so neither rounding nor a skewed local clock can stretch them
//!    past the window.
//!
//! **Post-charges.** A [`Charge::After`] limit (latency, tokens, error
//! responses) learns its cost after the response. The engine then calls
//! [`Store::charge_after`] once per request with one [`PostCharge`] per
//! such limit: the limit, the receipt the store gave at admission, and the
//! cost. They are charged without a capacity check.
//!
//! **Now or later.** Both methods return an [`Answer`]: `Answer::Now` when
//! the store decided without waiting (the memory store always does; the
//! layer then needs no state machine), `Answer::Later` with a future when
//! it must be awaited. A decision future is awaited on the request path. A
//! post-charge future is **never** awaited on the request path: the engine
//! spawns it on the ambient tokio runtime, with a bounded number in flight;
//! past the bound, or outside a runtime, charges are dropped and counted
//! (`RateLimitLayer::post_charges_dropped`, metric
//! `tierlimit_post_charges_dropped_total`), never lost silently.
//!
//! **Local state.** A store may keep decisions locally (the Redis store
//! caches refusals until their retry instant); [`Store::forget_cached`]
//! tells it that the policy or a plan changed.
//!
//! **Shared plans.** A store shared by several instances can offer a hash
//! every instance reads and writes ([`Store::shared_hash`]; the Redis store
//! does): each layer built on it then shares its runtime plan assignments
//! through it (the sharing is the layer's).
//!
//! **Errors.** A store that cannot decide returns a [`StoreError`] (with its
//! source). What the layer then does is a layer setting: fail open (the
//! default) or closed; see [`OnStoreError`](crate::OnStoreError). A batch
//! returned with a limit left undecided counts as a
//! [`StoreErrorKind::Protocol`] error.
//!
//! # Example: deciding by hand
//!
//! ```
//! use std::time::Duration;
//! use tierlimit::clock::Timestamp;
//! use tierlimit::store::{Batch, CounterKey, LimitSpec, MemoryStore, WindowSpec};
//!
//! let store = MemoryStore::default();
//! let spec = WindowSpec::sliding(Duration::from_secs(60), 30);
//! let limit = LimitSpec::new(CounterKey::from_u128(7), spec, 1, 1);
//! let now = Timestamp::from_secs(1_700_000_000);
//! let first = store.decide_now(now, Batch::from_limits([limit]));
//! let second = store.decide_now(now, Batch::from_limits([limit]));
//! assert!(first.admitted() && !second.admitted());
//! // Refused until exactly one window after the first request.
//! assert_eq!(second.retry_at(), Some(Timestamp::from_secs(1_700_000_060)));
//! ```

mod entry;
pub mod memory;
#[cfg(test)]
mod model_tests;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;
mod redis_config;

use std::cell::Cell;
use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use crate::clock::Timestamp;

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use self::redis::RedisStore;
pub use crate::policy::KeySecret;
pub use crate::window::{Refusal, View, WindowSpec, DEFAULT_PRECISION, MAX_PRECISION};
pub use memory::{MemoryStore, MemoryStoreConfig};
pub use redis_config::{RedisSentinel, RedisStoreConfig, RedisTls, TimeSource};

/// The key of the counters of one (tier, scope key): an opaque, keyed
/// 128-bit hash. Equal keys are the same counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CounterKey(u128);

impl CounterKey {
    /// A key from its 128 bits.
    pub const fn from_u128(bits: u128) -> Self {
        CounterKey(bits)
    }

    /// The key's 128 bits.
    pub const fn as_u128(self) -> u128 {
        self.0
    }
}

/// What a limit charges for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Charge {
    /// This many units, at admission; the request needs room for all of them.
    Now(u64),
    /// A cost known only after the response (latency, tokens, error
    /// responses): admit while used < capacity, charge nothing now, charge
    /// later through [`Store::charge_after`].
    After,
    /// This many units at admission, as [`Charge::Now`], given back when
    /// the response ends (a limit on requests in flight): the engine then
    /// sends a [`PostCharge`] with `give_back` set. A store keeps no local
    /// reservation of such units (no lease) and caches no refusal of them:
    /// room may come back at any moment.
    Held(u64),
}

/// One limit to check for one request: immutable, `Copy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct LimitSpec {
    /// Which counters: one (tier, scope key).
    pub key: CounterKey,
    /// Which limit among the counters under `key` (never 0).
    pub tag: u16,
    /// Where a store with a key cap may count a new `key` when it is full:
    /// one counter shared by every new scope key of the same tier and scope.
    pub overflow_key: CounterKey,
    /// Shape of the limit's window.
    pub window: WindowSpec,
    /// Capacity in cost units.
    pub capacity: u64,
    /// What this request charges.
    pub charge: Charge,
    /// Member of this cascade group (see the [contract](self#the-contract));
    /// `None`: the limit must have room.
    pub cascade: Option<u16>,
    /// Opaque to the store: the caller's label of the limit.
    pub label: u32,
}

/// Mixed into keys to make a default overflow key.
const OVERFLOW_MARK: u128 = 0x6f76_6572_666c_6f77_u128 << 64;

impl LimitSpec {
    /// A limit on counter `key` (tag 1) charging `cost` units at admission.
    /// Its default overflow key is shared by every limit of the same window
    /// and capacity.
    pub fn new(key: CounterKey, window: WindowSpec, capacity: u64, cost: u64) -> Self {
        let shape = (u128::from(window.window_ms()) << 32) ^ u128::from(capacity);
        LimitSpec {
            key,
            tag: 1,
            overflow_key: CounterKey(OVERFLOW_MARK ^ shape),
            window,
            capacity,
            charge: Charge::Now(cost),
            cascade: None,
            label: 0,
        }
    }

    /// Sets the tag (which limit under the key); 0 is raised to 1.
    pub fn with_tag(mut self, tag: u16) -> Self {
        self.tag = tag.max(1);
        self
    }

    /// Sets the overflow key.
    pub fn with_overflow_key(mut self, key: CounterKey) -> Self {
        self.overflow_key = key;
        self
    }

    /// Sets what the request charges.
    pub fn with_charge(mut self, charge: Charge) -> Self {
        self.charge = charge;
        self
    }

    /// Puts the limit in cascade group `group`.
    pub fn in_cascade(mut self, group: Option<u16>) -> Self {
        self.cascade = group;
        self
    }

    /// Sets the caller's label.
    pub fn with_label(mut self, label: u32) -> Self {
        self.label = label;
        self
    }

    /// Units whose room is checked at admission.
    pub fn check_cost(&self) -> u64 {
        match self.charge {
            Charge::Now(n) | Charge::Held(n) => n,
            Charge::After => 1,
        }
    }

    /// Units charged at admission.
    pub fn charge_cost(&self) -> u64 {
        match self.charge {
            Charge::Now(n) | Charge::Held(n) => n,
            Charge::After => 0,
        }
    }
}

/// Where a store counted an admitted limit, for its post-charge: opaque to
/// everyone but the store that made it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Receipt {
    key: CounterKey,
    data: u64,
}

impl Receipt {
    /// A receipt for counter `key` with `data` of the store's choosing.
    pub const fn new(key: CounterKey, data: u64) -> Self {
        Receipt { key, data }
    }

    /// The counter the store charged (the memory store: the limit's key, or
    /// its overflow key when the store was full).
    pub const fn key(&self) -> CounterKey {
        self.key
    }

    /// The store's own data.
    pub const fn data(&self) -> u64 {
        self.data
    }
}

/// A limit's answer in a decided batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// The limit has room. In an admitted batch it was charged (a cascade
    /// member: it took the charge); in a refused batch nothing was charged.
    Room(Receipt),
    /// A cascade member after the one that took the charge: not needed.
    Passed,
    /// No room.
    Refused(Refusal),
}

/// What the store says about one limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Outcome {
    /// The counter after the decision (after any refund).
    pub view: View,
    /// Room, passed or refused.
    pub verdict: Verdict,
}

impl Outcome {
    /// An outcome.
    pub fn new(view: View, verdict: Verdict) -> Self {
        Outcome { view, verdict }
    }

    /// Whether the limit had room.
    pub fn has_room(&self) -> bool {
        matches!(self.verdict, Verdict::Room(_))
    }

    /// Why the limit refused, if it did.
    pub fn refusal(&self) -> Option<Refusal> {
        match self.verdict {
            Verdict::Refused(r) => Some(r),
            _ => None,
        }
    }
}

/// Most limits in one batch (three tiers of at most 20 limits each).
pub const MAX_LIMITS: usize = 64;

/// All limits of one request, decided together: specifications in, one
/// [`Outcome`] per limit out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    items: Items,
    decided_at: Option<Timestamp>,
}

type Items = Vec<(LimitSpec, Option<Outcome>)>;

thread_local! {
    /// The storage of the last batch dropped on this thread, kept for the
    /// next one made here (one per thread: a request has one batch at a time).
    static SPARE: Cell<Items> = const { Cell::new(Vec::new()) };
}

/// Gives a dropped batch's storage to the next batch of this thread
/// (storage for more than [`MAX_LIMITS`] is freed).
impl Drop for Batch {
    fn drop(&mut self) {
        let cap = self.items.capacity();
        if cap == 0 || cap > MAX_LIMITS {
            return;
        }
        let mut items = std::mem::take(&mut self.items);
        items.clear();
        // Outside thread-local storage (a thread being torn down) it is
        // simply freed.
        let _ = SPARE.try_with(|s| drop(s.replace(items)));
    }
}

impl Batch {
    /// An empty batch with room for `n` limits.
    ///
    /// The storage of the batch this thread dropped last is reused (see
    /// [`Batch`]'s `Drop`), so a request's batch costs no allocation.
    pub fn with_capacity(n: usize) -> Self {
        let mut items = SPARE.try_with(Cell::take).unwrap_or_default();
        items.reserve(n);
        Batch {
            items,
            decided_at: None,
        }
    }

    /// A batch of these limits, undecided.
    pub fn from_limits(limits: impl IntoIterator<Item = LimitSpec>) -> Self {
        Batch {
            items: limits.into_iter().map(|l| (l, None)).collect(),
            decided_at: None,
        }
    }

    /// Adds a limit.
    pub fn push(&mut self, limit: LimitSpec) {
        self.items.push((limit, None));
    }

    /// Number of limits.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether the batch has no limit.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Limit `i`.
    ///
    /// # Panics
    ///
    /// When `i >= self.len()`.
    pub fn limit(&self, i: usize) -> &LimitSpec {
        &self.items[i].0
    }

    /// The limits, in order.
    pub fn limits(&self) -> impl ExactSizeIterator<Item = &LimitSpec> + '_ {
        self.items.iter().map(|(l, _)| l)
    }

    /// The store's outcome for limit `i`, once recorded.
    pub fn outcome(&self, i: usize) -> Option<&Outcome> {
        self.items.get(i).and_then(|(_, o)| o.as_ref())
    }

    /// Each limit with its outcome, in order.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn entries(&self) -> impl Iterator<Item = (&LimitSpec, Option<&Outcome>)> + '_ {
        self.items.iter().map(|(l, o)| (l, o.as_ref()))
    }

    /// Records the outcome of limit `i` (a store calls this; a later call
    /// replaces an earlier one). Out of range: nothing happens.
    pub fn record(&mut self, i: usize, outcome: Outcome) {
        if let Some(item) = self.items.get_mut(i) {
            item.1 = Some(outcome);
        }
    }

    /// Records the instant the store decided at, when it decides by its own
    /// clock rather than the `now` it was given (a remote store reading its
    /// server's time, so that instances with skewed clocks agree).
    pub fn set_decided_at(&mut self, at: Timestamp) {
        self.decided_at = Some(at);
    }

    /// The instant the store says it decided at, if it said one.
    pub fn decided_at(&self) -> Option<Timestamp> {
        self.decided_at
    }

    /// Whether every limit has an outcome.
    pub fn is_decided(&self) -> bool {
        self.items.iter().all(|(_, o)| o.is_some())
    }

    /// The groups of the batch: a plain limit is its own group, a cascade's
    /// members are one.
    fn groups(&self) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
        let mut i = 0;
        std::iter::from_fn(move || {
            if i >= self.items.len() {
                return None;
            }
            let start = i;
            let group = self.items[i].0.cascade;
            i += 1;
            if group.is_some() {
                while i < self.items.len() && self.items[i].0.cascade == group {
                    i += 1;
                }
            }
            Some(start..i)
        })
    }

    fn group_has_room(&self, members: std::ops::Range<usize>) -> bool {
        self.items[members]
            .iter()
            .any(|(_, o)| o.is_some_and(|o| o.has_room()))
    }

    /// Whether the request was admitted: every group has a limit with room.
    /// An undecided limit counts as no room.
    pub fn admitted(&self) -> bool {
        // Without cascades every limit is a group of its own.
        if self.items.iter().all(|(l, _)| l.cascade.is_none()) {
            return self
                .items
                .iter()
                .all(|(_, o)| o.is_some_and(|o| o.has_room()));
        }
        self.groups().all(|g| self.group_has_room(g))
    }

    /// For every group without room: (instant it has room, limit that frees
    /// it). A cascade frees when its first member does; `None` when no
    /// member can ever fit.
    pub(crate) fn blockers(&self) -> impl Iterator<Item = (Option<Timestamp>, usize)> + '_ {
        self.groups()
            .filter(|g| !self.group_has_room(g.clone()))
            .map(|g| {
                let start = g.start;
                let best = self.items[g]
                    .iter()
                    .enumerate()
                    .filter_map(|(k, (_, o))| match o.and_then(|o| o.refusal()) {
                        Some(Refusal::Full { retry_at }) => Some((retry_at, start + k)),
                        _ => None,
                    })
                    .min();
                match best {
                    Some((at, k)) => (Some(at), k),
                    None => (None, start),
                }
            })
    }

    /// The earliest instant at which every refusing group has room for this
    /// request; `None` when admitted, or when some limit can never fit the
    /// cost.
    pub fn retry_at(&self) -> Option<Timestamp> {
        let mut at: Option<Timestamp> = None;
        for (when, _) in self.blockers() {
            let when = when?;
            at = Some(at.map_or(when, |a| a.max(when)));
        }
        at
    }

    /// The limit `Retry-After` waits for: the refusing group that frees up
    /// last, through its member that frees first. `None` when admitted.
    pub(crate) fn blocking(&self) -> Option<usize> {
        self.blockers()
            .max_by_key(|(when, _)| when.unwrap_or(Timestamp::from_nanos(u64::MAX)))
            .map(|(_, i)| i)
    }

    /// Whether limit `i` reports in headers: plain limits always; in a
    /// cascade, the member with room (the one charged), or when none has
    /// room, the one that frees up first.
    #[inline]
    pub(crate) fn reports(&self, i: usize) -> bool {
        let Some(g) = self.items[i].0.cascade else {
            return true;
        };
        let Some(members) = self.groups().find(|r| r.contains(&i)) else {
            return true;
        };
        debug_assert!(self.items[members.start].0.cascade == Some(g));
        if let Some(first_room) = self.items[members.clone()]
            .iter()
            .position(|(_, o)| o.is_some_and(|o| o.has_room()))
        {
            return members.start + first_room == i;
        }
        self.blockers()
            .find(|(_, k)| members.contains(k))
            .is_none_or(|(_, k)| k == i)
    }
}

/// The store a configuration asks for (`store.redis` or not): what
/// [`RateLimitLayer::configured`](crate::RateLimitLayer::configured) builds.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum AnyStore {
    /// The memory store.
    Memory(MemoryStore),
    /// Redis (feature `redis`).
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    Redis(RedisStore),
    /// A store that could not be made from its settings (a
    /// [`Deployment`](crate::Deployment) that was not checked): every
    /// decision fails with [`StoreErrorKind::Unavailable`] and this reason,
    /// so the failure mode decides and the error is logged and counted.
    Broken(std::sync::Arc<String>),
}

/// The reason a [`AnyStore::Broken`] gives, as an error.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Unbuilt(std::sync::Arc<String>);

#[cold]
#[inline(never)]
fn unbuilt(why: &std::sync::Arc<String>) -> StoreError {
    StoreError::new(StoreErrorKind::Unavailable, Unbuilt(why.clone()))
}

type BoxFuture<T> = std::pin::Pin<Box<dyn Future<Output = T> + Send>>;

impl Store for AnyStore {
    type Decide = BoxFuture<Result<Batch, StoreError>>;
    type Charge = BoxFuture<Result<(), StoreError>>;

    // Inlined: the memory store's answer stays as cheap as its own.
    #[inline]
    fn decide(&self, now: Timestamp, batch: Batch) -> Answer<Batch, Self::Decide> {
        match self {
            AnyStore::Memory(m) => Answer::Now(Ok(m.decide_now(now, batch))),
            #[cfg(feature = "redis")]
            AnyStore::Redis(r) => r.decide(now, batch),
            AnyStore::Broken(why) => Answer::Now(Err(unbuilt(why))),
        }
    }

    fn peek(&self, now: Timestamp, batch: Batch) -> Answer<Batch, Self::Decide> {
        match self {
            AnyStore::Memory(m) => Answer::Now(Ok(m.peek_now(now, batch))),
            #[cfg(feature = "redis")]
            AnyStore::Redis(r) => r.peek(now, batch),
            AnyStore::Broken(why) => Answer::Now(Err(unbuilt(why))),
        }
    }

    fn reset(&self, limits: Vec<LimitSpec>) -> HashFuture<()> {
        match self {
            AnyStore::Memory(m) => m.reset(limits),
            #[cfg(feature = "redis")]
            AnyStore::Redis(r) => r.reset(limits),
            AnyStore::Broken(why) => Box::pin(std::future::ready(Err(unbuilt(why)))),
        }
    }

    fn forget_cached(&self) {
        #[cfg(feature = "redis")]
        if let AnyStore::Redis(r) = self {
            r.forget_cached();
        }
    }

    fn shared_hash(&self) -> Option<Arc<dyn SharedHash>> {
        match self {
            #[cfg(feature = "redis")]
            AnyStore::Redis(r) => r.shared_hash(),
            _ => None,
        }
    }

    fn key_secret(&self) -> KeySecret {
        match self {
            AnyStore::Memory(m) => m.key_secret(),
            #[cfg(feature = "redis")]
            AnyStore::Redis(r) => r.key_secret(),
            AnyStore::Broken(_) => KeySecret::per_process(),
        }
    }

    fn charge_after(&self, now: Timestamp, charges: Vec<PostCharge>) -> Answer<(), Self::Charge> {
        let answer = match self {
            AnyStore::Memory(m) => m.charge_after(now, charges),
            #[cfg(feature = "redis")]
            AnyStore::Redis(r) => r.charge_after(now, charges),
            AnyStore::Broken(why) => Answer::Now(Err(unbuilt(why))),
        };
        match answer {
            Answer::Now(r) => Answer::Now(r),
            Answer::Later(f) => Answer::Later(Box::pin(f)),
        }
    }
}

/// `batch` with every limit charging nothing, outside any cascade (what
/// [`Store::peek`] decides).
pub(crate) fn free_of_charge(batch: Batch) -> Batch {
    Batch::from_limits(
        batch
            .limits()
            .map(|l| l.with_charge(Charge::Now(0)).in_cascade(None)),
    )
}

/// What a store says: answered now, or a future to await.
///
/// Exhaustive on purpose (not `#[non_exhaustive]`): an answer is either
/// ready or not, and a store's caller matches both arms.
#[derive(Debug)]
pub enum Answer<T, F> {
    /// Answered without waiting.
    Now(Result<T, StoreError>),
    /// Must be awaited.
    Later(F),
}

/// A cost measured after a response, to charge without a capacity check;
/// or, with `give_back`, units of a [`Charge::Held`] limit to take back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PostCharge {
    /// The limit, as it was decided.
    pub limit: LimitSpec,
    /// The receipt the store gave for it at admission.
    pub receipt: Receipt,
    /// Units to charge (to give back, with `give_back`).
    pub cost: u64,
    /// Take `cost` back from the bucket the receipt names (never below
    /// zero; nothing when that bucket has left the window) rather than
    /// charge it.
    pub give_back: bool,
}

impl PostCharge {
    /// A post-charge of `cost` units for `limit`, counted where `receipt` says.
    pub fn new(limit: LimitSpec, receipt: Receipt, cost: u64) -> Self {
        PostCharge {
            limit,
            receipt,
            cost,
            give_back: false,
        }
    }

    /// `cost` units of the [`Charge::Held`] limit `limit` given back to
    /// the bucket `receipt` names (the request they were held for ended).
    pub fn give_back(limit: LimitSpec, receipt: Receipt, cost: u64) -> Self {
        PostCharge {
            limit,
            receipt,
            cost,
            give_back: true,
        }
    }
}

/// What went wrong in a store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// The store cannot be reached.
    Unavailable,
    /// The store did not answer in time.
    Timeout,
    /// The store answered something unusable (or left a limit undecided).
    Protocol,
}

impl StoreErrorKind {
    fn describe(self) -> &'static str {
        match self {
            StoreErrorKind::Unavailable => "rate-limit store unavailable",
            StoreErrorKind::Timeout => "rate-limit store timed out",
            StoreErrorKind::Protocol => "rate-limit store answered something unusable",
        }
    }
}

/// A store could not decide or charge: what kind of failure (its
/// `Display`), and the cause as its `source()` (the Redis error, the
/// elapsed timeout...). Print the chain to see both.
#[derive(Debug, thiserror::Error)]
#[error("{}", kind.describe())]
pub struct StoreError {
    kind: StoreErrorKind,
    #[source]
    source: Option<Box<dyn StdError + Send + Sync>>,
}

impl StoreError {
    /// An error of `kind` caused by `source`.
    pub fn new(kind: StoreErrorKind, source: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        StoreError {
            kind,
            source: Some(source.into()),
        }
    }

    /// An error of `kind` with no further cause.
    pub fn from_kind(kind: StoreErrorKind) -> Self {
        StoreError { kind, source: None }
    }

    /// What went wrong.
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }
}

/// What [`SharedHash`] answers: a future of a result.
pub type HashFuture<T> = std::pin::Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send>>;

/// A hash of text fields every instance sharing a store reads and writes
/// ([`Store::shared_hash`]): what sharing runtime plan assignments needs.
pub trait SharedHash: Send + Sync + fmt::Debug + 'static {
    /// Where it is, for logs (the Redis store: its key).
    fn name(&self) -> String;

    /// Sets (`Some`) or removes (`None`) these fields, in order.
    fn write(&self, fields: Vec<(String, Option<String>)>) -> HashFuture<()>;

    /// Every field and its value.
    fn read(&self) -> HashFuture<std::collections::HashMap<String, String>>;
}

/// Storage of counters; see the [contract](self#the-contract).
pub trait Store: Send + Sync + fmt::Debug + 'static {
    /// The future of a decision that must be awaited.
    type Decide: Future<Output = Result<Batch, StoreError>> + Send + 'static;
    /// The future of post-charges that must be awaited (off the request path).
    type Charge: Future<Output = Result<(), StoreError>> + Send + 'static;

    /// Decides `batch` at `now`: records an outcome for every limit and,
    /// when every group has room, charges them all; otherwise charges none.
    fn decide(&self, now: Timestamp, batch: Batch) -> Answer<Batch, Self::Decide>;

    /// Charges costs measured after a response, without a capacity check.
    fn charge_after(&self, now: Timestamp, charges: Vec<PostCharge>) -> Answer<(), Self::Charge>;

    /// Reads where every limit of `batch` stands at `now`, for a usage
    /// report ([`usage`](crate::usage)): an outcome for each limit as if
    /// it were alone and cost nothing (`Room` while used ≤ capacity), and
    /// no charge, no new counter, no eviction, nothing cached.
    ///
    /// The default decides a copy of the batch whose limits charge 0 and
    /// stand outside any cascade: right for a store whose decision of a
    /// zero cost keeps nothing. A store that keeps state on every decision
    /// (a new key counted against a cap, a local lease) overrides it.
    fn peek(&self, now: Timestamp, batch: Batch) -> Answer<Batch, Self::Decide> {
        self.decide(now, free_of_charge(batch))
    }

    /// Empties the counters of `limits` (each its key and tag), for
    /// everyone sharing the store: what lifting a block
    /// ([`Controller::lift_blocks`](crate::Controller::lift_blocks)) does.
    /// The default says the store cannot.
    fn reset(&self, limits: Vec<LimitSpec>) -> HashFuture<()> {
        let _ = limits;
        Box::pin(std::future::ready(Err(StoreError::new(
            StoreErrorKind::Protocol,
            "this store cannot empty counters",
        ))))
    }

    /// The policy or a plan assignment changed: forget whatever decisions
    /// the store keeps locally (a cache of refusals). Called by the engine
    /// before the next decision; the default does nothing.
    fn forget_cached(&self) {}

    /// A hash of text fields that every instance sharing this store reads
    /// and writes, through which each layer built on the store shares its
    /// runtime plan assignments (the layer owns that sharing; the store
    /// only gives the hash). A store whose counters only this process sees
    /// keeps the default, `None`.
    fn shared_hash(&self) -> Option<Arc<dyn SharedHash>> {
        None
    }

    /// The key of the hash that names this store's counters (read once,
    /// when a layer is built on the store). A store whose counters only
    /// this process sees keeps the default, [`KeySecret::per_process`]; a
    /// store several instances share returns the same key in each of them
    /// ([`KeySecret::shared`]), or they would count apart.
    fn key_secret(&self) -> KeySecret {
        KeySecret::per_process()
    }
}
