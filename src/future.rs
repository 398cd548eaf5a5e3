//! The response future: waits for a store's decision when it must be
//! awaited, then for the inner service, and adds the rate-limit headers.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::request::Parts;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::body::RateLimitBody;
use crate::engine::{Decided, Finish, Forwarding, Next, Pending, ShadowRejection};
use crate::headers;
use crate::store::{Batch, StoreError};

pin_project! {
    /// Response future of [`RateLimit`](crate::RateLimit): `F` is the inner
    /// service's future, `S` the inner service and `B` the request body
    /// (kept while a store decision `D` is awaited).
    pub struct ResponseFuture<F, S, B, D> {
        #[pin]
        state: State<F, S, B, D>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, S, B, D> {
        Calling {
            #[pin]
            fut: F,
            forwarding: Forwarding,
        },
        Deciding {
            #[pin]
            fut: D,
            // Boxed: a request head is large, and only requests whose store
            // must be awaited carry one; the common future stays small and
            // cheap to move.
            wait: Box<Waiting<S, B>>,
        },
        Done {
            resp: Option<Response<Bytes>>,
        },
    }
}

/// What a request waiting for its store's decision keeps.
struct Waiting<S, B> {
    ctx: Option<Decided>,
    finish: Arc<dyn Finish>,
    inner: Option<S>,
    parts: Option<Parts>,
    body: Option<B>,
}

impl<F, S, B, D> std::fmt::Debug for ResponseFuture<F, S, B, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, S, B, D> ResponseFuture<F, S, B, D> {
    pub(crate) fn calling(fut: F, forwarding: Forwarding) -> Self {
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
        pending: Pending<D>,
        finish: Arc<dyn Finish>,
        inner: S,
        parts: Parts,
        body: B,
    ) -> Self {
        ResponseFuture {
            state: State::Deciding {
                fut: pending.fut,
                wait: Box::new(Waiting {
                    ctx: Some(pending.ctx),
                    finish,
                    inner: Some(inner),
                    parts: Some(parts),
                    body: Some(body),
                }),
            },
        }
    }
}

impl<F, S, B, D, ResB, E> Future for ResponseFuture<F, S, B, D>
where
    F: Future<Output = Result<Response<ResB>, E>>,
    S: Service<Request<B>, Response = Response<ResB>, Error = E, Future = F>,
    D: Future<Output = Result<Batch, StoreError>>,
{
    type Output = Result<Response<RateLimitBody<ResB>>, E>;

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
                StateProj::Deciding { fut, wait } => {
                    let decided = ready!(fut.poll(cx));
                    let Waiting {
                        ctx,
                        finish,
                        inner,
                        parts,
                        body,
                    } = &mut **wait;
                    let new_state = match (ctx.take(), inner.take(), parts.take(), body.take()) {
                        (Some(ctx), Some(mut inner), Some(parts), Some(body)) => {
                            match Arc::clone(finish).finish(ctx, &parts, decided) {
                                Next::Forward(forwarding) => State::Calling {
                                    fut: inner.call(Request::from_parts(parts, body)),
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
