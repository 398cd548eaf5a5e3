//! What a decision says of one limit: a [`View`] of it after the decision,
//! and why a charge was refused ([`Refusal`]).

use crate::clock::Timestamp;

/// What one limit looks like at a given instant, after a decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct View {
    /// Capacity of the limit (cost units).
    pub capacity: u64,
    /// Cost counted in the current window (after the charge, when charged).
    pub used: u64,
    /// Instant at which all counted cost has left the window, i.e. when
    /// `remaining` is back to `capacity`. Equal to the decision's stamp when
    /// nothing is counted.
    pub reset_at: Timestamp,
    /// When some of the counted cost next leaves the window (the oldest
    /// bucket's end), when that is before `reset_at` and the store says;
    /// `None`: at `reset_at` (one bucket counted, a fixed window, or a
    /// store that does not say). What the IETF `t` parameter announces.
    pub frees_at: Option<Timestamp>,
}

impl View {
    /// A view of a limit of `capacity` with `used` counted, full again at
    /// `reset_at`.
    pub fn new(capacity: u64, used: u64, reset_at: Timestamp) -> Self {
        View {
            capacity,
            used,
            reset_at,
            frees_at: None,
        }
    }

    /// The same view, some of its cost leaving at `at` (see
    /// [`View::frees_at`]).
    pub fn with_frees_at(mut self, at: Option<Timestamp>) -> Self {
        self.frees_at = at;
        self
    }

    /// When some counted cost next leaves the window: `frees_at`, else
    /// `reset_at`.
    pub fn next_free(&self) -> Timestamp {
        self.frees_at.unwrap_or(self.reset_at)
    }

    /// Capacity minus used cost, never below zero.
    pub fn remaining(&self) -> u64 {
        self.capacity.saturating_sub(self.used)
    }
}

/// Why a charge was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// Not now; the charge would fit at `retry_at` if nothing else were
    /// admitted meanwhile.
    Full {
        /// Earliest instant at which this charge fits.
        retry_at: Timestamp,
    },
    /// The cost is larger than the capacity: it can never be admitted.
    NeverFits,
}
