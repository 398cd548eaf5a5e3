//! The hash `PREFIX:plans`, through which the layers built on this store
//! share their runtime plan assignments (the sharing itself is the
//! layer's: see `crate::sharing`).

use std::collections::HashMap;
use std::sync::Arc;

use crate::store::{HashFuture, SharedHash};

use super::{unavailable, within, Inner};

/// The plans hash of one store.
#[derive(Debug)]
pub(super) struct PlansHash {
    pub(super) inner: Arc<Inner>,
    pub(super) key: String,
}

impl SharedHash for PlansHash {
    fn name(&self) -> String {
        format!("{} on Redis {}", self.key, self.inner.watch.address())
    }

    fn write(&self, fields: Vec<(String, Option<String>)>) -> HashFuture<()> {
        let (inner, key) = (Arc::clone(&self.inner), self.key.clone());
        Box::pin(async move {
            if inner.circuit_open() {
                return Err(unavailable("Redis failed repeatedly; retrying shortly"));
            }
            let mut conn = inner.connection().await?;
            let mut pipe = redis::pipe();
            for (k, v) in &fields {
                match v {
                    Some(v) => pipe.cmd("HSET").arg(&key).arg(k).arg(v).ignore(),
                    None => pipe.cmd("HDEL").arg(&key).arg(k).ignore(),
                };
            }
            within(inner.timeout, pipe.query_async::<()>(&mut conn)).await
        })
    }

    fn read(&self) -> HashFuture<HashMap<String, String>> {
        let (inner, key) = (Arc::clone(&self.inner), self.key.clone());
        Box::pin(async move {
            if inner.circuit_open() {
                return Err(unavailable("Redis failed repeatedly; retrying shortly"));
            }
            let mut conn = inner.connection().await?;
            let mut hgetall = redis::cmd("HGETALL");
            hgetall.arg(&key);
            let read = hgetall.query_async::<HashMap<String, String>>(&mut conn);
            within(inner.timeout, read).await
        })
    }
}
