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
//!
//! A store shared by several instances can share the table too, through
//! [`SharedPlans`]: it hears every local change and brings in the others'.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use dashmap::DashMap;

/// How long a local change outranks what a shared copy says: long enough
/// for the change to reach the shared copy (a store writes it on its next
/// round, before it reads), short enough that a change made elsewhere just
/// after is taken within a second.
const LOCAL_WINS_FOR: Duration = Duration::from_millis(500);

type Listener = Box<dyn Fn(&str, Option<&str>) + Send + Sync>;

/// Key → plan name, shared by every clone of a layer.
#[derive(Default)]
pub(crate) struct PlanTable {
    map: DashMap<Box<str>, Box<str>>,
    /// Whether any assignment was ever made: requests skip the map until then.
    used: AtomicBool,
    /// Bumped by every change (and by reloads): stores drop cached decisions.
    generation: AtomicU64,
    /// Told of every local change (a store that shares the table).
    listener: OnceLock<Listener>,
    /// When each key was last changed here.
    local: DashMap<Box<str>, Instant>,
}

impl fmt::Debug for PlanTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlanTable")
            .field("assignments", &self.map.len())
            .field("shared", &self.listener.get().is_some())
            .finish()
    }
}

impl PlanTable {
    /// Assigns `plan` to `key` (replacing an earlier assignment).
    pub(crate) fn set(&self, key: &str, plan: &str) {
        self.map.insert(key.into(), plan.into());
        self.changed_here(key, Some(plan));
    }

    /// Removes the assignment of `key`; whether there was one.
    pub(crate) fn remove(&self, key: &str) -> bool {
        let had = self.map.remove(key).is_some();
        self.changed_here(key, None);
        had
    }

    fn changed_here(&self, key: &str, plan: Option<&str>) {
        self.used.store(true, Ordering::Release);
        self.bump();
        if let Some(l) = self.listener.get() {
            self.local.insert(key.into(), Instant::now());
            l(key, plan);
        }
    }

    /// Marks a change of the policy or the table.
    pub(crate) fn bump(&self) {
        self.generation.fetch_add(1, Ordering::Release);
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
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

/// A layer's runtime plan assignments, as a store that shares them between
/// instances sees them: it hears every change made here
/// ([`SharedPlans::on_change`]) and brings in the shared state
/// ([`SharedPlans::replace`]). Given to the store by
/// [`Store::attach`](crate::store::Store::attach).
#[derive(Clone, Debug)]
pub struct SharedPlans(pub(crate) Arc<PlanTable>);

impl SharedPlans {
    /// Calls `f(key, plan)` on every assignment made here (`None`: removed),
    /// so the store can share it. Only the first listener is kept.
    pub fn on_change(&self, f: impl Fn(&str, Option<&str>) + Send + Sync + 'static) {
        let _ = self.0.listener.set(Box::new(f));
    }

    /// Makes the assignments those of `shared` (key → plan), except for
    /// keys changed here in the last half second (their change may not have
    /// reached the shared copy yet). Changes made so are not reported to
    /// [`SharedPlans::on_change`].
    pub fn replace(&self, shared: HashMap<String, String>) {
        let t = &*self.0;
        let recent = |k: &str| {
            t.local
                .get(k)
                .is_some_and(|at| at.elapsed() < LOCAL_WINS_FOR)
        };
        let mut changed = false;
        t.map.retain(|k, _| {
            let keep = shared.contains_key(&**k) || recent(k);
            changed |= !keep;
            keep
        });
        for (k, plan) in shared {
            if recent(&k) {
                continue;
            }
            let same = t.map.get(k.as_str()).is_some_and(|p| **p == *plan);
            if !same {
                t.map.insert(k.into(), plan.into());
                changed = true;
            }
        }
        t.local.retain(|_, at| at.elapsed() < LOCAL_WINS_FOR);
        if changed {
            t.used.store(true, Ordering::Release);
            t.bump();
        }
    }
}
