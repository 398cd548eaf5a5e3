//! Runtime plan assignments: which plan an API key, a user or a tenant was
//! moved to while the server runs (seed 001's admin tier change).
//!
//! Each assignment names what it applies to ([`PlanSubject`]): an API key
//! `vip` and a user id `vip` are different callers, and an assignment to
//! one never reaches the other. A request takes the plan of its API key
//! when that has one, else of its user, else of its tenant, else the
//! default plan; at each step a runtime assignment outranks the
//! configuration's.
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

/// What a plan assignment applies to. `From<&str>` and `From<String>`
/// make an API key, so `layer.set_plan("key-123", "premium")` assigns an
/// API key's plan.
///
/// ```
/// use tierlimit::PlanSubject;
///
/// assert_eq!(PlanSubject::from("k1"), PlanSubject::ApiKey("k1".into()));
/// assert_ne!(PlanSubject::ApiKey("x".into()), PlanSubject::User("x".into()));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PlanSubject {
    /// An API key (the configured header or `Authorization: Bearer`).
    ApiKey(String),
    /// A user id (the [`UserId`](crate::identity::UserId) extension).
    User(String),
    /// A tenant id (the [`TenantId`](crate::identity::TenantId) extension):
    /// every request of the tenant whose key and user have no plan.
    Tenant(String),
}

impl From<&str> for PlanSubject {
    fn from(key: &str) -> Self {
        PlanSubject::ApiKey(key.to_owned())
    }
}

impl From<String> for PlanSubject {
    fn from(key: String) -> Self {
        PlanSubject::ApiKey(key)
    }
}

impl From<&String> for PlanSubject {
    fn from(key: &String) -> Self {
        PlanSubject::ApiKey(key.clone())
    }
}

/// The kinds of [`PlanSubject`], in the order a request looks them up.
pub(crate) const KINDS: usize = 3;

impl PlanSubject {
    /// Its kind (0 API key, 1 user, 2 tenant) and id.
    pub(crate) fn parts(&self) -> (usize, &str) {
        match self {
            PlanSubject::ApiKey(k) => (0, k),
            PlanSubject::User(u) => (1, u),
            PlanSubject::Tenant(t) => (2, t),
        }
    }

    /// The id alone.
    pub fn id(&self) -> &str {
        self.parts().1
    }

    /// How shared copies spell it: `k:`, `u:` or `t:`, then the id.
    pub(crate) fn encode(&self) -> String {
        let (kind, id) = self.parts();
        spelled(kind, id)
    }

    /// Reads [`PlanSubject::encode`]'s spelling; anything else (a field
    /// written before assignments named their subject) is an API key.
    pub(crate) fn decode(s: &str) -> PlanSubject {
        match s.split_once(':') {
            Some(("k", id)) => PlanSubject::ApiKey(id.into()),
            Some(("u", id)) => PlanSubject::User(id.into()),
            Some(("t", id)) => PlanSubject::Tenant(id.into()),
            _ => PlanSubject::ApiKey(s.into()),
        }
    }
}

/// How shared copies spell the subject of `kind` (see
/// [`PlanSubject::parts`]) and `id`.
fn spelled(kind: usize, id: &str) -> String {
    format!("{}:{id}", ["k", "u", "t"][kind])
}

/// Subject → plan name, shared by every clone of a layer: one map per kind
/// of subject, so a lookup borrows the request's id as it is.
#[derive(Default)]
pub(crate) struct PlanTable {
    maps: [DashMap<Box<str>, Box<str>>; KINDS],
    /// Whether any assignment was ever made: requests skip the map until then.
    used: AtomicBool,
    /// Bumped by every change (and by reloads): stores drop cached decisions.
    generation: AtomicU64,
    /// Told of every local change (a store that shares the table).
    listener: OnceLock<Listener>,
    /// When each subject (encoded) was last changed here.
    local: DashMap<Box<str>, Instant>,
}

impl fmt::Debug for PlanTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlanTable")
            .field(
                "assignments",
                &self.maps.iter().map(DashMap::len).sum::<usize>(),
            )
            .field("shared", &self.listener.get().is_some())
            .finish()
    }
}

impl PlanTable {
    /// Assigns `plan` to `subject` (replacing an earlier assignment).
    pub(crate) fn set(&self, subject: &PlanSubject, plan: &str) {
        let (kind, id) = subject.parts();
        self.maps[kind].insert(id.into(), plan.into());
        self.changed_here(subject, Some(plan));
    }

    /// Removes the assignment of `subject`; whether there was one.
    pub(crate) fn remove(&self, subject: &PlanSubject) -> bool {
        let (kind, id) = subject.parts();
        let had = self.maps[kind].remove(id).is_some();
        self.changed_here(subject, None);
        had
    }

    fn changed_here(&self, subject: &PlanSubject, plan: Option<&str>) {
        self.used.store(true, Ordering::Release);
        self.bump();
        if let Some(l) = self.listener.get() {
            let key = subject.encode();
            self.local.insert(key.as_str().into(), Instant::now());
            l(&key, plan);
        }
    }

    /// Marks a change of the policy or the table.
    pub(crate) fn bump(&self) {
        self.generation.fetch_add(1, Ordering::Release);
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// `f` of the plan name assigned to the subject of `kind` (see
    /// [`PlanSubject::parts`]) and `id`, without copying it.
    pub(crate) fn resolve<T>(
        &self,
        kind: usize,
        id: &str,
        f: impl FnOnce(&str) -> Option<T>,
    ) -> Option<T> {
        if !self.used.load(Ordering::Acquire) {
            return None;
        }
        self.maps[kind].get(id).and_then(|p| f(p.value()))
    }

    /// Every assignment, in no particular order.
    pub(crate) fn all(&self) -> Vec<(PlanSubject, String)> {
        let make = [PlanSubject::ApiKey, PlanSubject::User, PlanSubject::Tenant];
        self.maps
            .iter()
            .zip(make)
            .flat_map(|(m, make)| {
                m.iter()
                    .map(move |e| (make(e.key().to_string()), e.value().to_string()))
            })
            .collect()
    }
}

/// A layer's runtime plan assignments, as the layer's plan sharing sees
/// them: it hears every change made here
/// ([`SharedPlans::on_change`]) and brings in the shared state
/// ([`SharedPlans::replace`]).
///
/// Subjects are spelled `k:<API key>`, `u:<user id>` or `t:<tenant id>`;
/// a key without one of these prefixes (written by a version before
/// assignments named their subject) is read as an API key.
#[derive(Clone, Debug)]
pub(crate) struct SharedPlans(pub(crate) Arc<PlanTable>);

impl SharedPlans {
    /// Calls `f(key, plan)` on every assignment made here (`None`: removed),
    /// so the layer's plan sharing can write it. Only the first listener is
    /// kept (a layer has one table and one sharing).
    pub(crate) fn on_change(&self, f: impl Fn(&str, Option<&str>) + Send + Sync + 'static) {
        let _ = self.0.listener.set(Box::new(f));
    }

    /// Every assignment here, subjects spelled as shared copies spell them
    /// (so a store can write them back when its copy lost them).
    pub(crate) fn all(&self) -> Vec<(String, String)> {
        self.0
            .all()
            .into_iter()
            .map(|(subject, plan)| (subject.encode(), plan))
            .collect()
    }

    /// Makes the assignments those of `shared` (key → plan), except for
    /// keys changed here in the last half second (their change may not have
    /// reached the shared copy yet). Changes made so are not reported to
    /// [`SharedPlans::on_change`].
    pub(crate) fn replace(&self, shared: HashMap<String, String>) {
        let t = &*self.0;
        let recent = |k: &str| {
            t.local
                .get(k)
                .is_some_and(|at| at.elapsed() < LOCAL_WINS_FOR)
        };
        let mut changed = false;
        // By subject, each spelled as `PlanSubject::encode` spells it.
        let shared: HashMap<String, String> = shared
            .into_iter()
            .map(|(k, plan)| (PlanSubject::decode(&k).encode(), plan))
            .collect();
        for (kind, map) in t.maps.iter().enumerate() {
            map.retain(|k, _| {
                let key = spelled(kind, k);
                let keep = shared.contains_key(&key) || recent(&key);
                changed |= !keep;
                keep
            });
        }
        for (k, plan) in shared {
            if recent(&k) {
                continue;
            }
            let subject = PlanSubject::decode(&k);
            let (kind, id) = subject.parts();
            let same = t.maps[kind].get(id).is_some_and(|p| **p == *plan);
            if !same {
                t.maps[kind].insert(id.into(), plan.into());
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
