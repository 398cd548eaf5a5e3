//! The response future: waits for a remote store's decision when there is
//! one, then for the inner service, and adds the rate-limit headers.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::body::RateLimitBody;
use crate::headers::{self, Rendered};
use crate::layer::{ShadowRejection, Shared};
use crate::policy::Policy;
use crate::post::PostGuard;
use crate::reject::Rejection;
use crate::store::{Batch, Store, StoreError};

pin_project! {
    /// Response future of [`RateLimit`](crate::RateLimit).
    pub struct ResponseFuture<S, ReqB, St>
    where
        S: Service<Request<ReqB>>,
        St: Store,
    {
        #[pin]
        state: State<S, ReqB, St>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqB, St>
    where
        S: Service<Request<ReqB>>,
        St: Store,
    {
        Calling {
            #[pin]
            fut: S::Future,
            forwarding: Forwarding,
        },
        Deciding {
            #[pin]
            fut: St::Future,
            inner: Option<S>,
            req: Option<Request<ReqB>>,
            shared: Arc<Shared<St>>,
            policy: Arc<Policy>,
            now: u64,
        },
        Done {
            resp: Option<Response<Bytes>>,
        },
    }
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

/// What to do with a request once its batch is decided.
pub(crate) enum Next {
    /// Call the inner service, then finish the response with this.
    Forward(Forwarding),
    /// Answer with this response; the inner service is not called.
    Answer(Response<Bytes>),
}

impl<S, ReqB, St> std::fmt::Debug for ResponseFuture<S, ReqB, St>
where
    S: Service<Request<ReqB>>,
    St: Store,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<S, ReqB, St> ResponseFuture<S, ReqB, St>
where
    S: Service<Request<ReqB>>,
    St: Store,
{
    pub(crate) fn calling(fut: S::Future, forwarding: Forwarding) -> Self {
        ResponseFuture {
            state: State::Calling { fut, forwarding },
        }
    }

    pub(crate) fn answer(resp: Response<Bytes>) -> Self {
        ResponseFuture {
            state: State::Done { resp: Some(resp) },
        }
    }

    pub(crate) fn deciding(
        fut: St::Future,
        inner: S,
        req: Request<ReqB>,
        shared: Arc<Shared<St>>,
        policy: Arc<Policy>,
        now: u64,
    ) -> Self {
        ResponseFuture {
            state: State::Deciding {
                fut,
                inner: Some(inner),
                req: Some(req),
                shared,
                policy,
                now,
            },
        }
    }
}

impl<S, ReqB, ResB, St> Future for ResponseFuture<S, ReqB, St>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    St: Store,
{
    type Output = Result<Response<RateLimitBody<ResB>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Calling { fut, forwarding } => {
                    let resp = match ready!(fut.poll(cx)) {
                        Ok(resp) => resp,
                        Err(e) => {
                            if let Some(g) = forwarding.guard.as_mut() {
                                g.on_error();
                            }
                            // Dropping the guard charges.
                            drop(forwarding.guard.take());
                            return Poll::Ready(Err(e));
                        }
                    };
                    let mut guard = forwarding.guard.take();
                    if let Some(g) = guard.as_mut() {
                        g.on_response(resp.status(), resp.headers());
                    }
                    let mut resp = resp.map(|b| RateLimitBody::inner(b, guard));
                    headers::apply(&forwarding.rendered, resp.headers_mut());
                    if let Some(r) = forwarding.shadow.take() {
                        resp.extensions_mut().insert(ShadowRejection(*r));
                    }
                    return Poll::Ready(Ok(resp));
                }
                StateProj::Deciding {
                    fut,
                    inner,
                    req,
                    shared,
                    policy,
                    now,
                } => {
                    let decided: Result<Batch, StoreError> = ready!(fut.poll(cx));
                    let shared = Arc::clone(shared);
                    let new_state = match (inner.take(), req.take()) {
                        (Some(mut inner), Some(req)) => {
                            match shared.next(policy, *now, decided, || policy.caller_tag(&req)) {
                                Next::Forward(forwarding) => State::Calling {
                                    fut: inner.call(req),
                                    forwarding,
                                },
                                Next::Answer(resp) => State::Done { resp: Some(resp) },
                            }
                        }
                        // Only reachable when polled again after `call` of the
                        // inner service panicked: answer rather than hang.
                        _ => State::Done {
                            resp: Some(crate::reject::internal_error()),
                        },
                    };
                    this.state.set(new_state);
                }
                StateProj::Done { resp } => {
                    let resp = resp
                        .take()
                        .map(|r| r.map(RateLimitBody::full))
                        .unwrap_or_else(|| Response::new(RateLimitBody::full(Bytes::new())));
                    return Poll::Ready(Ok(resp));
                }
            }
        }
    }
}
