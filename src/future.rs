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
use crate::engine::{Action, Decided, Finish, Forwarding, Pending, ShadowRejection};
use crate::headers;
use crate::store::{Batch, StoreError};

/// A store decision being awaited (boxed: only a store that must be awaited
/// makes one, and the future's type then does not name the store).
type Deciding = Pin<Box<dyn Future<Output = Result<Batch, StoreError>> + Send>>;

pin_project! {
    /// Response future of [`RateLimit`](crate::RateLimit) around the inner
    /// service `S` taking requests with body `B`: the store's decision when
    /// it must be awaited, then the inner service's future, then the
    /// rate-limit headers.
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: State<S, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B>
    where
        S: Service<Request<B>>,
    {
        Calling {
            #[pin]
            fut: S::Future,
            forwarding: Forwarding,
        },
        Deciding {
            fut: Deciding,
            // Boxed: a request head is large, and only requests whose store
            // must be awaited carry one; the common future stays small and
            // cheap to move.
            wait: Box<AwaitingStore<S, B>>,
        },
        Done {
            resp: Option<Response<Bytes>>,
        },
    }
}

/// What a request waiting for its store's decision keeps.
struct AwaitingStore<S, B> {
    ctx: Option<Decided>,
    finish: Arc<dyn Finish>,
    inner: Option<S>,
    parts: Option<Parts>,
    body: Option<B>,
}

impl<S: Service<Request<B>>, B> std::fmt::Debug for ResponseFuture<S, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<S: Service<Request<B>>, B> ResponseFuture<S, B> {
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

    pub(crate) fn deciding<D>(
        pending: Pending<D>,
        finish: Arc<dyn Finish>,
        inner: S,
        parts: Parts,
        body: B,
    ) -> Self
    where
        D: Future<Output = Result<Batch, StoreError>> + Send + 'static,
    {
        ResponseFuture {
            state: State::Deciding {
                fut: Box::pin(pending.fut),
                wait: Box::new(AwaitingStore {
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

impl<S, B, ResB> Future for ResponseFuture<S, B>
where
    S: Service<Request<B>, Response = Response<ResB>>,
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
                StateProj::Deciding { fut, wait } => {
                    let decided = ready!(fut.as_mut().poll(cx));
                    let AwaitingStore {
                        ctx,
                        finish,
                        inner,
                        parts,
                        body,
                    } = &mut **wait;
                    let new_state = match (ctx.take(), inner.take(), parts.take(), body.take()) {
                        (Some(ctx), Some(mut inner), Some(parts), Some(body)) => {
                            match Arc::clone(finish).finish(ctx, &parts, decided) {
                                Action::Forward(forwarding) => State::Calling {
                                    fut: inner.call(Request::from_parts(parts, body)),
                                    forwarding,
                                },
                                Action::Answer(resp) => State::Done { resp: Some(resp) },
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
