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
use crate::engine::{
    Action, Again, Decided, Deciding, Finish, Forwarding, Pending, ShadowRejection, WaitFor,
    Waiting,
};
use crate::headers;
use crate::store::{Batch, StoreError};

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
        // A refused request waiting for room (`delay_up_to`), then decided
        // again.
        Waiting {
            sleep: Pin<Box<tokio::time::Sleep>>,
            wait: Box<AwaitingStore<S, B>>,
            waiting: Option<Waiting>,
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

    pub(crate) fn waiting(
        w: WaitFor,
        finish: Arc<dyn Finish>,
        inner: S,
        parts: Parts,
        body: B,
    ) -> Self {
        ResponseFuture {
            state: State::Waiting {
                sleep: Box::pin(tokio::time::sleep(w.sleep)),
                wait: Box::new(AwaitingStore {
                    ctx: None,
                    finish,
                    inner: Some(inner),
                    parts: Some(parts),
                    body: Some(body),
                }),
                waiting: Some(w.waiting),
            },
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
                        (Some(ctx), Some(inner), Some(parts), Some(body)) => {
                            let action = Arc::clone(finish).finish(ctx, &parts, decided);
                            after(action, finish, (inner, parts, body))
                        }
                        // Only reachable when polled again after `call` of the
                        // inner service panicked: answer rather than hang.
                        _ => State::Done {
                            resp: Some(crate::reject::internal_error()),
                        },
                    };
                    this.state.set(new_state);
                }
                StateProj::Waiting {
                    sleep,
                    wait,
                    waiting,
                } => {
                    ready!(sleep.as_mut().poll(cx));
                    let new_state = decide_again(wait, waiting);
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

/// The state a request that waited moves to once decided again (kept out
/// of `poll`: rare, and it would make every request's poll larger).
#[cold]
#[inline(never)]
fn decide_again<S, B>(wait: &mut AwaitingStore<S, B>, waiting: &mut Option<Waiting>) -> State<S, B>
where
    S: Service<Request<B>>,
{
    let AwaitingStore {
        finish,
        inner,
        parts,
        body,
        ..
    } = wait;
    match (waiting.take(), inner.take(), parts.take(), body.take()) {
        (Some(waiting), Some(inner), Some(parts), Some(body)) => {
            match Arc::clone(finish).again(&parts, waiting) {
                Again::Now(action) => after(action, finish, (inner, parts, body)),
                Again::Later(fut, ctx) => State::Deciding {
                    fut,
                    wait: Box::new(AwaitingStore {
                        ctx: Some(ctx),
                        finish: Arc::clone(finish),
                        inner: Some(inner),
                        parts: Some(parts),
                        body: Some(body),
                    }),
                },
            }
        }
        _ => State::Done {
            resp: Some(crate::reject::internal_error()),
        },
    }
}

/// The state a decided request moves to: calling the inner service, done
/// with the layer's answer, or waiting to be decided again.
#[inline(never)]
fn after<S, B>(
    action: Action,
    finish: &Arc<dyn Finish>,
    (mut inner, parts, body): (S, Parts, B),
) -> State<S, B>
where
    S: Service<Request<B>>,
{
    match action {
        Action::Forward(forwarding) => State::Calling {
            fut: inner.call(Request::from_parts(parts, body)),
            forwarding,
        },
        Action::Answer(resp) => State::Done { resp: Some(resp) },
        Action::Wait(w) => {
            let WaitFor { sleep, waiting } = *w;
            State::Waiting {
                sleep: Box::pin(tokio::time::sleep(sleep)),
                wait: Box::new(AwaitingStore {
                    ctx: None,
                    finish: Arc::clone(finish),
                    inner: Some(inner),
                    parts: Some(parts),
                    body: Some(body),
                }),
                waiting: Some(waiting),
            }
        }
    }
}
