//! Decisions that arrive while a script call is on the wire share the next
//! one (see [coalescing](super#one-round-trip-for-many-decisions)).

use std::sync::Arc;

use crate::clock::Timestamp;
use crate::store::{Batch, StoreError, StoreErrorKind};

use super::leases::Plan;
use super::script::{expect_len, fill, ts, PER_LIMIT};
use super::Inner;

/// A decision waiting for its script call.
#[derive(Debug)]
pub(super) struct Queued {
    pub(super) now: Timestamp,
    pub(super) batch: Batch,
    /// The batch's [`question`], to remember its refusal.
    pub(super) question: u64,
    /// What it asks of leases.
    pub(super) plan: Plan,
    pub(super) answer: tokio::sync::oneshot::Sender<Result<Batch, StoreError>>,
}

/// The decisions waiting, and how many tasks send them.
#[derive(Debug, Default)]
pub(super) struct Queue {
    pub(super) waiting: std::collections::VecDeque<Queued>,
    pub(super) senders: usize,
}

/// Script calls in flight at once for queued decisions: while one is on
/// the wire the next group gathers.
pub(super) const SENDERS: usize = 2;

/// Most decisions in one script call, and most limits.
pub(super) const GROUP: usize = 64;

pub(super) const GROUP_LIMITS: usize = 512;

/// A copy of `e` for each of several callers (a store error is not `Clone`:
/// its source is kept as text).
pub(super) fn copy_error(e: &StoreError) -> StoreError {
    use std::error::Error as _;
    match e.source() {
        Some(s) => StoreError::new(e.kind(), s.to_string()),
        None => StoreError::from_kind(e.kind()),
    }
}

/// A sender's place: given back under the queue's lock when the sender
/// finds the queue empty (so a decision queued just then starts another),
/// or when its task ends otherwise (cancelled with its runtime).
pub(super) struct Sender {
    pub(super) inner: Arc<Inner>,
    /// Whether the place was given back already.
    pub(super) left: bool,
}

impl Drop for Sender {
    fn drop(&mut self) {
        if self.left {
            return;
        }
        let mut q = self
            .inner
            .queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        q.senders = q.senders.saturating_sub(1);
    }
}

impl Inner {
    /// Decides `batch` in the next script call for queued decisions (one
    /// server): joins the queue, starts a sender when fewer than
    /// [`SENDERS`] run, and waits for the answer, within the timeout from
    /// now. A decision given up before its call leaves the queue unsent.
    pub(super) async fn queued(
        self: Arc<Self>,
        now: Timestamp,
        batch: Batch,
        question: u64,
        plan: Plan,
    ) -> Result<Batch, StoreError> {
        let (answer, rx) = tokio::sync::oneshot::channel();
        let start = {
            let mut q = self
                .queue
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            q.waiting.push_back(Queued {
                now,
                batch,
                question,
                plan,
                answer,
            });
            let start = q.senders < SENDERS;
            q.senders += usize::from(start);
            start
        };
        if start {
            tokio::spawn(Arc::clone(&self).send_queued());
        }
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(StoreError::new(
                StoreErrorKind::Unavailable,
                "the task sending this decision to Redis ended without an answer",
            )),
            // Its call may be on the wire (that call's own timeout counts
            // towards the circuit breaker, once for all its decisions).
            Err(elapsed) => Err(StoreError::new(StoreErrorKind::Timeout, elapsed)),
        }
    }

    /// The next decisions waiting (at most [`GROUP`], [`GROUP_LIMITS`]
    /// limits), in arrival order, without those whose caller has gone;
    /// when none waits, the sender's place is given back under the same
    /// lock (a decision queued after that starts a sender of its own).
    pub(super) fn next_group(&self, place: &mut Sender) -> Vec<Queued> {
        let mut q = self
            .queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut group = Vec::new();
        let mut limits = 0;
        while let Some(next) = q.waiting.front() {
            if !group.is_empty()
                && (group.len() == GROUP || limits + next.batch.len() > GROUP_LIMITS)
            {
                break;
            }
            let Some(next) = q.waiting.pop_front() else {
                break;
            };
            if next.answer.is_closed() {
                let mut back = Vec::new();
                self.leases.abandon(&next.batch, &next.plan, &mut back);
                self.give_back(back);
                continue;
            }
            limits += next.batch.len();
            group.push(next);
        }
        if group.is_empty() {
            q.senders = q.senders.saturating_sub(1);
            place.left = true;
        }
        group
    }

    /// Sends queued decisions, a group per script call, until none waits.
    pub(super) async fn send_queued(self: Arc<Self>) {
        let mut place = Sender {
            inner: Arc::clone(&self),
            left: false,
        };
        loop {
            let group = self.next_group(&mut place);
            if group.is_empty() {
                return;
            }
            let conn = match self.connection().await {
                Ok(conn) => conn,
                Err(e) => {
                    let mut back = Vec::new();
                    for q in group {
                        self.leases.abandon(&q.batch, &q.plan, &mut back);
                        let _ = q.answer.send(Err(copy_error(&e)));
                    }
                    self.give_back(back);
                    continue;
                }
            };
            self.start_flusher();
            // The group is decided at its latest instant (each request's
            // decision stamp is the call's).
            let now = group.iter().map(|q| q.now).max();
            let charges = self.take_pending_in(None);
            let batches: Vec<&Batch> = group.iter().map(|q| &q.batch).collect();
            let asks: Vec<&[_]> = group.iter().map(|q| q.plan.asks.as_slice()).collect();
            let call = self.call(&conn, now, &batches, &asks, &charges, &[]);
            let answer = self.finish_call(call.await, charges, None).and_then(|v| {
                expect_len(&v, group.iter().map(|q| &q.batch))?;
                Ok(v)
            });
            let mut at = 1;
            let mut back = Vec::new();
            for mut q in group {
                let here = at;
                at += 1 + PER_LIMIT * q.batch.len();
                let res = match &answer {
                    Ok(v) => match fill(&mut q.batch, v, here) {
                        Ok(()) => {
                            let values = &v[here + 1..at];
                            self.decided(
                                &mut q.batch,
                                &q.plan,
                                (values, ts(v[0])),
                                q.now,
                                q.question,
                                &mut back,
                            );
                            Ok(q.batch)
                        }
                        Err(e) => {
                            self.leases.abandon(&q.batch, &q.plan, &mut back);
                            Err(e)
                        }
                    },
                    Err(e) => {
                        self.leases.abandon(&q.batch, &q.plan, &mut back);
                        Err(copy_error(e))
                    }
                };
                let _ = q.answer.send(res);
            }
            self.give_back(back);
        }
    }
}
