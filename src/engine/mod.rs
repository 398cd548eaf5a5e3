//! The engine: the state a layer shares (policy, plan table, store, clock,
//! rejection hook, failure mode) and the one decision it makes per request.
//!
//! Data flows one way:
//!
//! ```text
//! request head ─▶ identity ─▶ policy lookup (route tier, plan, global)
//!              ─▶ store decision ─▶ Action: forward (+ headers, + post-charge guard)
//!                                      or answer (429, 503, 500)
//! ```
//!
//! The tower [`Layer`](crate::RateLimitLayer), [`Service`](crate::RateLimit),
//! [`ResponseFuture`](crate::ResponseFuture) and
//! [`RateLimitBody`](crate::RateLimitBody) only adapt this to tower and
//! http-body: the service calls [`Engine::begin`]; when the store must be
//! awaited, the response future awaits it and calls [`Engine::finish`].

mod control;
mod failure;
mod log;
mod post;
mod wait;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::request::Parts;
use http::Response;

use crate::clock::{Clock, Timestamp};
use crate::config::{Anonymous, Cost, Mode, OnStoreError};
use crate::headers::{self, LimitInfo, Rendered};
use crate::identity::{Caller, ChoosePlan, Identify, Identity};
use crate::observe::{self, Start};
use crate::policy::{KeySecret, Rules};
use crate::reject::{self, Hook, Rejection};
use crate::store::{
    Answer, Batch, Charge, MemoryStore, PostCharge, Refusal, Store, StoreError, Verdict,
};

pub(crate) use control::Active;
pub use control::Controller;
use log::{trace_admitted, trace_rejected};
pub(crate) use post::{PostGuard, PostQueue, PostSink, DEFAULT_POST_IN_FLIGHT};
pub(crate) use wait::{WaitFor, Waiting, Waits};

/// A request was over a limit while the layer ran in shadow mode: it was
/// forwarded anyway. Found in the response's extensions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShadowRejection(pub Rejection);

/// The layer's own answer to a request: as it is, or as a trailers-only
/// gRPC response when the request is a gRPC call (see [`reject::grpc`]).
fn answer(parts: &Parts, resp: Response<Bytes>) -> Action {
    Action::Answer(if reject::is_grpc(parts) {
        reject::grpc(resp, None)
    } else {
        resp
    })
}

/// What to do with a request once it is decided.
pub(crate) enum Action {
    /// Call the inner service, then finish the response with this.
    Forward(Forwarding),
    /// Answer with this response; the inner service is not called.
    Answer(Response<Bytes>),
    /// Wait (a timer in the response future), then decide again with
    /// [`Finish::again`] (`delay_up_to`).
    Wait(Box<WaitFor>),
}

/// What the policy makes of a request before the store.
enum Lookup {
    /// No limit applies.
    Exempt,
    /// Nothing identifies the caller, and the policy refuses that.
    Refused,
    /// These limits apply; `anonymous` when nothing identifies the caller.
    Check { batch: Batch, anonymous: bool },
}

/// What goes with a forwarded request to its response.
#[derive(Debug, Default)]
pub(crate) struct Forwarding {
    /// Rate-limit headers to add.
    pub(crate) rendered: Rendered,
    /// Post-response charges.
    pub(crate) guard: Option<PostGuard>,
    /// Shadow mode: the rejection that was not enforced (boxed: rare, and
    /// it would make every response future larger).
    pub(crate) shadow: Option<Box<Rejection>>,
}

/// A decision the store must finish later.
pub(crate) struct Pending<F> {
    pub(crate) fut: F,
    pub(crate) ctx: Decided,
}

/// Everything [`Finish::finish`] needs besides the store's answer.
#[derive(Debug)]
pub(crate) struct Decided {
    active: Arc<Active>,
    now: Timestamp,
    /// Limits sent to the store.
    sent: usize,
    started: Start,
    /// The request waited already (`delay_up_to`): its deadline and place.
    prior: Option<Waiting>,
}

/// The first step of a request.
pub(crate) enum Decision<F> {
    /// Decided: do this.
    Now(Action),
    /// Await the store, then [`Finish::finish`].
    Later(Pending<F>),
}

/// The end of a decision the store answered later (object safe, so the
/// response future needs no store type parameter).
pub(crate) trait Finish: Send + Sync + 'static {
    fn finish(
        self: Arc<Self>,
        ctx: Decided,
        parts: &Parts,
        decided: Result<Batch, StoreError>,
    ) -> Action;

    /// Decides again a request that waited ([`Action::Wait`]).
    fn again(self: Arc<Self>, parts: &Parts, waiting: Waiting) -> Again;
}

/// A store decision being awaited, with the store type erased.
pub(crate) type Deciding =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Batch, StoreError>> + Send>>;

/// What deciding a request again gives.
pub(crate) enum Again {
    /// Decided: do this.
    Now(Action),
    /// Await the store, then [`Finish::finish`].
    Later(Deciding, Decided),
}

/// The layer's identity and plan hooks (none: the policy's rules).
#[derive(Clone, Default)]
pub(crate) struct Hooks {
    pub(crate) identify: Option<Arc<dyn Identify>>,
    pub(crate) plan: Option<Arc<dyn ChoosePlan>>,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks")
            .field("identify", &self.identify.is_some())
            .field("plan", &self.plan.is_some())
            .finish()
    }
}

/// The state every clone of a layer and its services shares.
#[derive(Debug)]
pub(crate) struct Engine<St> {
    pub(crate) control: Controller,
    /// Who the caller is and which plan, when the application says.
    who: Hooks,
    /// Whether `who` has either hook (one test on every request).
    hooked: bool,
    pub(crate) store: St,
    /// The key of counter names, as the store asks.
    secret: KeySecret,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) hook: Option<Hook>,
    pub(crate) on_error: OnStoreError,
    /// The local store of [`OnStoreError::Fallback`].
    fallback: Option<MemoryStore>,
    pub(crate) post: PostQueue,
    /// When store errors were last logged.
    error_log: failure::ErrorLog,
    /// The controller generation the store last heard of.
    generation: AtomicU64,
    /// Whether the WARN about anonymous requests was written.
    warned_anonymous: AtomicBool,
    /// Runtime plan assignments shared through the store's hash, when it
    /// has one.
    sharing: Option<Arc<crate::sharing::PlanSharing>>,
    /// Requests waiting for room (`delay_up_to`).
    pub(crate) waits: Arc<Waits>,
    /// Blocks started (`block_for`).
    pub(crate) blocks_started: AtomicU64,
}

impl<St: Store> Engine<St> {
    pub(crate) fn new(
        control: Controller,
        store: St,
        clock: Arc<dyn Clock>,
        hook: Option<Hook>,
        (on_error, fallback): (OnStoreError, Option<MemoryStore>),
        post: PostQueue,
        who: Hooks,
    ) -> Self {
        let sharing = store
            .shared_hash()
            .map(|hash| crate::sharing::PlanSharing::new(&control.shared_plans(), hash));
        if let Some(s) = &sharing {
            s.start();
        }
        Engine {
            sharing,
            secret: store.key_secret(),
            control,
            hooked: who.identify.is_some() || who.plan.is_some(),
            who,
            store,
            clock,
            hook,
            on_error,
            fallback,
            post,
            error_log: failure::ErrorLog::default(),
            generation: AtomicU64::new(0),
            warned_anonymous: AtomicBool::new(false),
            waits: Arc::default(),
            blocks_started: AtomicU64::new(0),
        }
    }

    /// Decides a request from its head: exempt, decided now, or a store
    /// answer to await.
    pub(crate) fn begin(
        self: &Arc<Self>,
        parts: &Parts,
        prior: Option<Waiting>,
    ) -> Decision<St::Decide> {
        let started = observe::start();
        if let Some(s) = &self.sharing {
            // Built outside a runtime: started with the first request.
            s.start();
        }
        let generation = self.control.generation();
        if generation != self.generation.load(Ordering::Relaxed) {
            self.generation.store(generation, Ordering::Relaxed);
            self.store.forget_cached();
        }
        let active = self.control.inner.active.load();
        let batch = match self.batch_of(&active.policy.rules, parts, true) {
            Lookup::Check { batch, anonymous } => {
                if anonymous {
                    self.report_anonymous(&active.policy.rules);
                }
                batch
            }
            Lookup::Exempt => {
                observe::exempt();
                return Decision::Now(Action::Forward(Forwarding::default()));
            }
            Lookup::Refused => {
                self.report_anonymous(&active.policy.rules);
                observe::decided(started);
                return Decision::Now(answer(
                    parts,
                    reject::anonymous(&active.policy.rules.identity),
                ));
            }
        };
        let sent = batch.len();
        let now = self.clock.now();
        match self.store.decide(now, batch) {
            Answer::Now(decided) => {
                let next = self.next(&active, parts, (now, sent), decided, prior);
                observe::decided(started);
                Decision::Now(next)
            }
            Answer::Later(fut) => {
                self.post.remember_runtime();
                Decision::Later(Pending {
                    fut,
                    ctx: Decided {
                        active: arc_swap::Guard::into_inner(active),
                        now,
                        sent,
                        started,
                        prior,
                    },
                })
            }
        }
    }

    /// The limits a request is checked against, unless it is exempt or
    /// refused for being anonymous. `first` is false when the fallback
    /// store looks the request up again: what the first lookup counted
    /// (a plan hook naming no plan) is not counted twice.
    fn batch_of(&self, policy: &Rules, parts: &Parts, first: bool) -> Lookup {
        let Some(route_tier) = policy.route_tier(&parts.method, parts.uri.path()) else {
            return Lookup::Exempt;
        };
        let build = |plan: Option<usize>, id: &Identity<'_>, modifier: (f64, u32)| {
            policy.batch(&self.secret, route_tier, plan, id, modifier)
        };
        if self.hooked {
            return match self.identified_by_hooks(policy, parts, first, build) {
                Some((batch, anonymous)) => Lookup::Check { batch, anonymous },
                None => Lookup::Refused,
            };
        }
        // Without hooks, the identity and plan are read directly (as in
        // `identified`, written out: this is every request's path,
        // benches/instructions.sh).
        let id = policy.identity.extract(parts);
        let anonymous = id.caller() == Caller::Anonymous;
        if anonymous && policy.anonymous == Anonymous::Refuse {
            return Lookup::Refused;
        }
        let modifier = policy.modifier_of(&parts.headers);
        let plan = policy.plan(&id, Some(&self.control.inner.plans));
        let batch = build(plan, &id, modifier);
        Lookup::Check { batch, anonymous }
    }

    /// Who sent a request and on which plan, as every decision reads it:
    /// `build` makes what is needed of (plan, identity, modifier); with
    /// whether the caller is anonymous. `None`: anonymous, and the policy
    /// refuses that.
    #[inline(always)]
    fn identified<R>(
        &self,
        policy: &Rules,
        parts: &Parts,
        first: bool,
        build: impl FnOnce(Option<usize>, &Identity<'_>, (f64, u32)) -> R,
    ) -> Option<(R, bool)> {
        // Without hooks, the identity and plan are read directly: the hook
        // path's extra steps cost every request (benches/instructions.sh).
        if self.hooked {
            return self.identified_by_hooks(policy, parts, first, build);
        }
        let id = policy.identity.extract(parts);
        let anonymous = id.caller() == Caller::Anonymous;
        if anonymous && policy.anonymous == Anonymous::Refuse {
            return None;
        }
        let modifier = policy.modifier_of(&parts.headers);
        let plan = policy.plan(&id, Some(&self.control.inner.plans));
        Some((build(plan, &id, modifier), anonymous))
    }

    /// [`Engine::identified`] with the identity and plan hooks.
    fn identified_by_hooks<R>(
        &self,
        policy: &Rules,
        parts: &Parts,
        first: bool,
        build: impl FnOnce(Option<usize>, &Identity<'_>, (f64, u32)) -> R,
    ) -> Option<(R, bool)> {
        let identified = self.who.identify.as_ref().and_then(|h| h.identify(parts));
        let id = match &identified {
            Some(who) => who.identity(&policy.identity),
            None => policy.identity.extract(parts),
        };
        let anonymous = id.caller() == Caller::Anonymous;
        if anonymous && policy.anonymous == Anonymous::Refuse {
            return None;
        }
        let modifier = policy.modifier_of(&parts.headers);
        let chosen = self.who.plan.as_ref().and_then(|h| h.plan(parts, &id));
        let named = chosen.as_deref().and_then(|name| {
            let plan = policy.plan_index(name);
            if plan.is_none() && first {
                self.control
                    .inner
                    .unknown_plans
                    .fetch_add(1, Ordering::Relaxed);
                observe::unknown_plan();
            }
            plan
        });
        let plan = named.or_else(|| policy.plan(&id, Some(&self.control.inner.plans)));
        Some((build(plan, &id, modifier), anonymous))
    }

    /// The caller's identity as [`Engine::batch_of`] reads it (the hook's,
    /// else the policy's rules), as a short keyed hash for logs.
    fn caller_tag(&self, policy: &Rules, parts: &Parts) -> String {
        match self.who.identify.as_ref().and_then(|h| h.identify(parts)) {
            Some(who) => policy.caller_tag(&who.identity(&policy.identity)),
            None => policy.caller_tag(&policy.identity.extract(parts)),
        }
    }

    /// Turns a store's answer into what the service does next.
    fn next(
        self: &Arc<Self>,
        active: &Active,
        parts: &Parts,
        (now, sent): (Timestamp, usize),
        decided: Result<Batch, StoreError>,
        prior: Option<Waiting>,
    ) -> Action {
        let policy = &*active.policy.rules;
        let mut batch = match decided {
            // A store hands back the batch it was given, every limit decided;
            // anything else (say, a batch of its own making) is not trusted.
            Ok(b)
                if b.len() == sent
                    && b.is_decided()
                    && b.limits().all(|l| policy.has_label(l.label)) =>
            {
                b
            }
            Ok(_) => {
                let e = StoreError::new(
                    crate::store::StoreErrorKind::Protocol,
                    "the store left a limit without an outcome, or answered another batch",
                );
                return self.store_failed(active, parts, now, &e);
            }
            Err(e) => return self.store_failed(active, parts, now, &e),
        };
        // Durations from now are measured on the clock the store decided by;
        // latency (a post-charge) on the local one.
        let local_now = now;
        let now = batch.decided_at().unwrap_or(now);
        if policy.concurrent {
            in_flight_figures(policy, &mut batch, now);
        }
        let admitted = batch.admitted();
        let rendered = render(policy, &batch, admitted, now);
        if admitted {
            trace_admitted(policy, &batch);
            active.counters.admitted(&batch);
            return Action::Forward(Forwarding {
                rendered,
                guard: if policy.post_charged {
                    self.post_guard(policy, &batch, local_now)
                } else {
                    None
                },
                shadow: None,
            });
        }
        let Some(blocking) = batch.blocking() else {
            return answer(parts, reject::internal_error());
        };
        // No instant at which every refusing group has room: a cost that
        // can never fit (a modifier shrank a capacity below it).
        let Some(retry_at) = batch.retry_at() else {
            let i = (0..batch.len())
                .find(|&i| batch.outcome(i).and_then(|o| o.refusal()) == Some(Refusal::NeverFits))
                .unwrap_or(blocking);
            let l = batch.limit(i);
            let name = &policy.limits[l.label as usize].name;
            return answer(parts, reject::never_fits(name, l.check_cost(), l.capacity));
        };
        if policy.mode != Mode::Shadow {
            let wait = match policy.delays {
                true => self.wait_for(policy, &batch, (blocking, retry_at), now, prior),
                false => None,
            };
            if let Some(w) = wait {
                return Action::Wait(Box::new(w));
            }
        }
        let shadow = policy.mode == Mode::Shadow;
        let retry_at = match !shadow && policy.blocks {
            true => self
                .start_blocks(policy, &batch, now)
                .map_or(retry_at, |end| end.max(retry_at)),
            false => retry_at,
        };
        let Some(rejection) = rejection(policy, &batch, blocking, retry_at, now) else {
            return answer(parts, reject::internal_error());
        };
        active
            .counters
            .rejected(batch.limit(blocking).label, shadow);
        trace_rejected(&rejection, shadow, || self.caller_tag(policy, parts));
        if shadow {
            return Action::Forward(Forwarding {
                rendered,
                guard: None,
                shadow: Some(Box::new(rejection)),
            });
        }
        let mut resp = reject::response(policy.errors, self.hook.as_ref(), parts, &rejection);
        headers::apply(&rendered, resp.headers_mut());
        if reject::is_grpc(parts) {
            resp = reject::grpc(resp, Some(&reject::grpc_message(&rejection)));
        }
        Action::Answer(resp)
    }

    /// Starts a block for every limit with `block_for` that refused this
    /// request while its block counter had room (no block in force): the
    /// counter is charged the limit's capacity, so that it refuses every
    /// request of the scope on the tier for the block's length. Returns
    /// when the longest block started ends.
    #[cold]
    fn start_blocks(&self, policy: &Rules, batch: &Batch, now: Timestamp) -> Option<Timestamp> {
        let mut end: Option<Timestamp> = None;
        for i in 0..batch.len() {
            let counter = batch.limit(i);
            let Some(compiled) = policy.limits.get(counter.label as usize) else {
                continue;
            };
            let Some(of) = compiled.block_of else {
                continue;
            };
            let Some(Verdict::Room(receipt)) = batch.outcome(i).map(|o| o.verdict) else {
                continue;
            };
            let refused = (0..batch.len()).any(|k| {
                batch.limit(k).label == of
                    && batch.outcome(k).is_some_and(|o| o.refusal().is_some())
            });
            if !refused {
                continue;
            }
            self.blocks_started.fetch_add(1, Ordering::Relaxed);
            let name = policy
                .limits
                .get(of as usize)
                .map_or("", |l| l.name.as_str());
            observe::block_started(&compiled.tier, name);
            self.charge(
                now,
                vec![PostCharge::new(*counter, receipt, counter.capacity)],
            );
            let ends = now + compiled.window;
            end = Some(end.map_or(ends, |e| e.max(ends)));
        }
        end
    }

    /// Whether a refused request may wait for room (`delay_up_to` on the
    /// tier of every limit that refuses it), and how long: until
    /// `retry_at` (the instant the limit `blocking` frees), if that is no
    /// later than its deadline (its first refusal plus the smallest of
    /// those delays) and its scope's queue has a free place. `prior`: the
    /// request waited already.
    #[cold]
    fn wait_for(
        &self,
        policy: &Rules,
        batch: &Batch,
        (blocking, retry_at): (usize, Timestamp),
        now: Timestamp,
        prior: Option<Waiting>,
    ) -> Option<WaitFor> {
        let delay = |i: usize| policy.limits.get(batch.limit(i).label as usize)?.delay;
        let mut up_to: Option<Duration> = None;
        for (_, i) in batch.blockers() {
            let d = delay(i)?.up_to;
            up_to = Some(up_to.map_or(d, |u| u.min(d)));
        }
        let up_to = up_to?;
        // The wait is a tokio timer.
        tokio::runtime::Handle::try_current().ok()?;
        let (deadline, ticket) = match prior {
            Some(w) => w.into_parts(),
            None => {
                let queue = delay(blocking)?.queue;
                let deadline = now + up_to;
                if retry_at > deadline {
                    return None;
                }
                (deadline, self.waits.take(batch.limit(blocking).key, queue)?)
            }
        };
        if retry_at > deadline {
            return None;
        }
        // At least a millisecond: a store's instants are whole milliseconds.
        let sleep = retry_at.saturating_since(now).max(Duration::from_millis(1));
        Some(WaitFor {
            sleep,
            waiting: Waiting::new(deadline, ticket),
        })
    }

    /// The guard that charges an admitted request's post-charged limits.
    fn post_guard(
        self: &Arc<Self>,
        policy: &Rules,
        batch: &Batch,
        now: Timestamp,
    ) -> Option<PostGuard> {
        let mut items = Vec::new();
        for i in 0..batch.len() {
            let limit = *batch.limit(i);
            let held = matches!(limit.charge, Charge::Held(_));
            if !held && limit.charge != Charge::After
                || policy.limits[limit.label as usize].block_of.is_some()
            {
                continue;
            }
            let Some(Verdict::Room(receipt)) = batch.outcome(i).map(|o| o.verdict) else {
                continue;
            };
            if let Charge::Held(n) = limit.charge {
                // Given back when the response ends, however it ends.
                items.push((PostCharge::give_back(limit, receipt, n), Cost::Requests(n)));
                continue;
            }
            let cost = policy.limits[limit.label as usize].cost.clone();
            items.push((PostCharge::new(limit, receipt, 0), cost));
        }
        if items.is_empty() {
            return None;
        }
        let sink: Arc<dyn PostSink> = Arc::clone(self) as Arc<dyn PostSink>;
        Some(PostGuard::new(sink, now, items))
    }
}

impl<St: Store> PostSink for Engine<St> {
    fn now(&self) -> Timestamp {
        self.clock.now()
    }

    fn charge(&self, now: Timestamp, charges: Vec<PostCharge>) {
        match self.store.charge_after(now, charges) {
            Answer::Now(Ok(())) => {}
            Answer::Now(Err(e)) => {
                self.post.failed(&e);
            }
            Answer::Later(fut) => self.post.spawn(fut),
        }
    }
}

impl<St: Store> crate::usage::Peek for Engine<St> {
    fn usage(&self, parts: &Parts) -> crate::usage::UsageFuture {
        let active = self.control.inner.active.load_full();
        let rules = Arc::clone(&active.policy.rules);
        let built = self.identified(&rules, parts, false, |plan, id, modifier| {
            rules.usage_batch(&self.secret, plan, id, modifier)
        });
        let Some((batch, _)) = built else {
            return Box::pin(std::future::ready(Err(crate::usage::UsageError::Anonymous)));
        };
        let (sent, now) = (batch.len(), self.clock.now());
        crate::usage::engine_usage(rules, sent, now, self.store.peek(now, batch))
    }

    fn refused_anonymous(&self) -> Response<Bytes> {
        reject::anonymous(&self.control.inner.active.load().policy.rules.identity)
    }

    fn lift_blocks(
        &self,
        id: &Identity<'_>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<usize, StoreError>> + Send>>
    {
        let counters = self
            .control
            .inner
            .active
            .load()
            .policy
            .rules
            .block_counters(&self.secret, id);
        let n = counters.len();
        if n == 0 {
            return Box::pin(std::future::ready(Ok(0)));
        }
        let reset = self.store.reset(counters);
        Box::pin(async move { reset.await.map(|()| n) })
    }
}

impl<St: Store> Finish for Engine<St> {
    fn finish(
        self: Arc<Self>,
        ctx: Decided,
        parts: &Parts,
        decided: Result<Batch, StoreError>,
    ) -> Action {
        let next = self.next(&ctx.active, parts, (ctx.now, ctx.sent), decided, ctx.prior);
        observe::decided(ctx.started);
        next
    }

    fn again(self: Arc<Self>, parts: &Parts, waiting: Waiting) -> Again {
        match self.begin(parts, Some(waiting)) {
            Decision::Now(action) => Again::Now(action),
            Decision::Later(p) => Again::Later(Box::pin(p.fut), p.ctx),
        }
    }
}

/// Limits on requests in flight free up when requests end, at instants
/// nobody knows: their reset and retry instants (from their `window`, the
/// longest a unit is held) would promise too much, so a second from now
/// is said instead (`Retry-After: 1`).
#[cold]
fn in_flight_figures(policy: &Rules, batch: &mut Batch, now: Timestamp) {
    let soon = now + Duration::from_secs(1);
    for i in 0..batch.len() {
        let label = batch.limit(i).label as usize;
        if !policy.limits.get(label).is_some_and(|l| l.concurrent) {
            continue;
        }
        let Some(mut o) = batch.outcome(i).copied() else {
            continue;
        };
        o.view.reset_at = if o.view.used > 0 { soon } else { now };
        o.view.frees_at = None;
        if let Verdict::Refused(Refusal::Full { .. }) = o.verdict {
            o.verdict = Verdict::Refused(Refusal::Full { retry_at: soon });
        }
        batch.record(i, o);
    }
}

fn render(policy: &Rules, batch: &Batch, admitted: bool, now: Timestamp) -> Rendered {
    let limits = &policy.limits;
    let info = |i: usize| {
        let l = &limits[batch.limit(i).label as usize];
        LimitInfo {
            name: &l.name,
            window_ms: u64::try_from(l.window.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX),
            unit: if l.concurrent {
                "concurrent-requests"
            } else {
                l.cost.unit()
            },
            family: l.family,
        }
    };
    // Without block counters or limits on requests in flight (most
    // policies), nothing is set aside: a constant the compiler removes.
    if !policy.aside {
        return headers::render(policy.headers, batch, admitted, now, |_| false, info);
    }
    let aside = |i: usize| {
        let l = &limits[batch.limit(i).label as usize];
        l.block_of.is_some() || l.concurrent
    };
    headers::render(policy.headers, batch, admitted, now, aside, info)
}

/// The rejection of a refused batch, given the limit `Retry-After` waits
/// for and the instant it has room.
fn rejection(
    policy: &Rules,
    batch: &Batch,
    blocking: usize,
    retry_at: Timestamp,
    now: Timestamp,
) -> Option<Rejection> {
    let view = batch.outcome(blocking)?.view;
    let mut limit = policy.limits.get(batch.limit(blocking).label as usize)?;
    // A block names the limit the caller exceeded (its window and
    // capacity); `Retry-After` is what is left of the block.
    if let Some(of) = limit.block_of {
        limit = policy.limits.get(of as usize)?;
    }
    let wait = retry_at.saturating_since(now).as_nanos();
    let secs = u64::try_from(wait.div_ceil(1_000_000_000)).unwrap_or(u64::MAX);
    Some(Rejection {
        tier: limit.tier.clone(),
        limit: limit.name.clone(),
        capacity: view.capacity,
        remaining: view.remaining(),
        window: limit.window,
        retry_after: Duration::from_secs(secs.max(1)),
        reset: view.reset_at,
        family: limit.family,
        at: now,
    })
}
