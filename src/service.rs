//! The [`RateLimit`] service: decide, then forward or answer 429.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use crate::body::RateLimitBody;
use crate::future::{Forwarding, Next, ResponseFuture};
use crate::layer::Shared;
use crate::policy::Lookup;
use crate::store::{MemoryStore, Store};

/// Middleware enforcing a rate-limit policy; made by
/// [`RateLimitLayer`](crate::RateLimitLayer).
///
/// Clones share one budget. Over the limit is a 429 **response**, never an
/// error and never `Pending`: `poll_ready` only asks the inner service, and
/// the inner error type passes through unchanged.
#[derive(Debug)]
pub struct RateLimit<S, St = MemoryStore> {
    inner: S,
    shared: Arc<Shared<St>>,
}

impl<S: Clone, St> Clone for RateLimit<S, St> {
    fn clone(&self) -> Self {
        RateLimit {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S, St> RateLimit<S, St> {
    pub(crate) fn new(inner: S, shared: Arc<Shared<St>>) -> Self {
        RateLimit { inner, shared }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, St, ReqB, ResB> Service<Request<ReqB>> for RateLimit<S, St>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone,
    St: Store,
{
    type Response = Response<RateLimitBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqB, St>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let shared = &self.shared;
        let started = crate::observe::start();
        let policy = shared.policy.load();
        let batch = match policy.lookup(&req) {
            Lookup::Exempt => {
                crate::observe::exempt();
                return ResponseFuture::calling(self.inner.call(req), Forwarding::default());
            }
            Lookup::Check(batch) => batch,
        };
        let now = shared.clock.now_nanos();
        match shared.store.decide_now(now, batch) {
            Ok(decided) => {
                let next = shared.next(&policy, now, decided, || policy.caller_tag(&req));
                crate::observe::decided(started);
                match next {
                    Next::Forward(forwarding) => {
                        ResponseFuture::calling(self.inner.call(req), forwarding)
                    }
                    Next::Answer(resp) => ResponseFuture::answer(resp),
                }
            }
            Err(batch) => {
                // The store must be awaited: the inner service that was made
                // ready goes into the future, a clone stays here.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                let fut = shared.store.decide(now, batch);
                let policy = arc_swap::Guard::into_inner(policy);
                ResponseFuture::deciding(fut, inner, req, Arc::clone(shared), policy, now)
            }
        }
    }
}
