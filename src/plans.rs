//! Runtime plan assignments: which plan an API key (or user id) was moved
//! to while the server runs (seed 001's admin tier change).
//!
//! The table is state, kept apart from the immutable [`Policy`](crate::Policy):
//! a reload swaps the policy and never touches this table, so an
//! assignment made at any moment — even while a reload is in flight — is
//! never lost. Assignments are kept by plan **name**: after a reload they
//! apply again as long as the new policy has a plan of that name (while it
//! has none, the caller gets the configured assignment or the default plan,
//! and the runtime assignment waits in the table).

use std::sync::atomic::{AtomicBool, Ordering};

use dashmap::DashMap;

/// Key → plan name, shared by every clone of a layer.
#[derive(Debug, Default)]
pub(crate) struct PlanTable {
    map: DashMap<Box<str>, Box<str>>,
    /// Whether any assignment was ever made: requests skip the map until then.
    used: AtomicBool,
}

impl PlanTable {
    /// Assigns `plan` to `key` (replacing an earlier assignment).
    pub(crate) fn set(&self, key: &str, plan: &str) {
        self.map.insert(key.into(), plan.into());
        self.used.store(true, Ordering::Release);
    }

    /// Removes the assignment of `key`; whether there was one.
    pub(crate) fn remove(&self, key: &str) -> bool {
        self.map.remove(key).is_some()
    }

    /// The plan name assigned to `key`, if any.
    pub(crate) fn get(&self, key: &str) -> Option<String> {
        if !self.used.load(Ordering::Acquire) {
            return None;
        }
        self.map.get(key).map(|p| p.value().to_string())
    }

    /// `f` of the plan name assigned to `key`, without copying it.
    pub(crate) fn resolve<T>(&self, key: &str, f: impl FnOnce(&str) -> Option<T>) -> Option<T> {
        if !self.used.load(Ordering::Acquire) {
            return None;
        }
        self.map.get(key).and_then(|p| f(p.value()))
    }

    /// Every assignment, in no particular order.
    pub(crate) fn all(&self) -> Vec<(String, String)> {
        self.map
            .iter()
            .map(|e| (e.key().to_string(), e.value().to_string()))
            .collect()
    }
}
