//! The [`RateLimit`] service: asks the engine, then forwards or answers.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use crate::body::RateLimitBody;
use crate::engine::{Action, Decision, Engine, Finish};
use crate::future::ResponseFuture;
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
    engine: Arc<Engine<St>>,
}

impl<S: Clone, St> Clone for RateLimit<S, St> {
    fn clone(&self) -> Self {
        RateLimit {
            inner: self.inner.clone(),
            engine: Arc::clone(&self.engine),
        }
    }
}

impl<S, St> RateLimit<S, St> {
    pub(crate) fn new(inner: S, engine: Arc<Engine<St>>) -> Self {
        RateLimit { inner, engine }
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
    type Future = ResponseFuture<S, ReqB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let (parts, body) = req.into_parts();
        match self.engine.begin(&parts, None) {
            Decision::Now(Action::Forward(forwarding)) => ResponseFuture::calling(
                self.inner.call(Request::from_parts(parts, body)),
                forwarding,
            ),
            Decision::Now(Action::Answer(resp)) => ResponseFuture::answer(resp),
            Decision::Now(Action::Wait(w)) => {
                // As for a store that must be awaited: the ready inner
                // service goes into the future.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                let finish: Arc<dyn Finish> = Arc::clone(&self.engine) as Arc<dyn Finish>;
                ResponseFuture::waiting(*w, finish, inner, parts, body)
            }
            Decision::Later(pending) => {
                // The store must be awaited: the inner service that was made
                // ready goes into the future, a clone stays here.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                let finish: Arc<dyn Finish> = Arc::clone(&self.engine) as Arc<dyn Finish>;
                ResponseFuture::deciding(pending, finish, inner, parts, body)
            }
        }
    }
}
