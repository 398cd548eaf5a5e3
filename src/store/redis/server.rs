//! What the server's settings let Redis drop, said once after connecting.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use crate::store::StoreError;

use super::{within, Inner};

/// Plain-words warnings for a server whose `maxmemory-policy`,
/// `maxmemory`, `save` and `appendonly` are these.
pub(super) fn server_warnings(policy: &str, maxmemory: &str, save: &str, aof: &str) -> Vec<String> {
    let mut out = Vec::new();
    let limited = maxmemory.trim() != "0" && !maxmemory.trim().is_empty();
    if limited && policy != "noeviction" {
        let what = if policy.starts_with("allkeys") {
            "rate-limit counters and runtime plan assignments"
        } else {
            "rate-limit counters"
        };
        out.push(format!(
            "Redis may evict {what} when it reaches maxmemory ({maxmemory} bytes, \
             maxmemory-policy {policy}): an evicted counter starts again from zero and lets \
             its caller through again. Set maxmemory-policy noeviction (a full Redis then \
             refuses writes and the store fails as on_error says) or give Redis room"
        ));
    }
    if save.trim().is_empty() && aof != "yes" {
        out.push(
            "Redis keeps nothing on disk (save \"\" and appendonly no): a restart empties \
             it, every caller's budget starts again, and runtime plan assignments survive \
             only as long as an instance that knows them writes them back. Turn on \
             appendonly yes (or RDB snapshots) to keep plans across restarts"
                .to_owned(),
        );
    }
    out
}

impl Inner {
    /// Checks the server's settings once, in the background, and logs what
    /// they let Redis drop (see [`RedisStore::check_server`]).
    pub(super) fn check_server_once(&self) {
        if self.server_checked.swap(true, Ordering::AcqRel) {
            return;
        }
        let (Ok(rt), Some(me)) = (tokio::runtime::Handle::try_current(), self.me()) else {
            return;
        };
        rt.spawn(async move {
            match me.check_server().await {
                Ok(warnings) => {
                    for w in warnings {
                        #[cfg(feature = "tracing")]
                        tracing::warn!(target: "tierlimit", "{w}");
                        #[cfg(not(feature = "tracing"))]
                        let _ = w;
                    }
                }
                Err(e) => {
                    #[cfg(feature = "tracing")]
                    tracing::info!(
                        target: "tierlimit",
                        error = %crate::error::Chain(&e),
                        "could not read Redis's maxmemory-policy and persistence settings; \
                         make sure Redis runs with maxmemory-policy noeviction and keeps data \
                         on disk (see the README)"
                    );
                    #[cfg(not(feature = "tracing"))]
                    let _ = e;
                }
            }
        });
    }

    /// Reads the settings that decide whether Redis can drop counters or
    /// plan assignments; plain-words warnings for those that can.
    pub(super) async fn check_server(&self) -> Result<Vec<String>, StoreError> {
        let conn = self.connection().await?;
        let get = |name: &'static str| {
            let mut cmd = redis::cmd("CONFIG");
            cmd.arg("GET").arg(name);
            let mut conn = conn.clone();
            async move {
                let read = cmd.query_async::<HashMap<String, String>>(&mut conn);
                let mut m = within(self.timeout * 4, read).await?;
                Ok::<String, StoreError>(m.remove(name).unwrap_or_default())
            }
        };
        let policy = get("maxmemory-policy").await?;
        let maxmemory = get("maxmemory").await?;
        let save = get("save").await?;
        let aof = get("appendonly").await?;
        Ok(server_warnings(&policy, &maxmemory, &save, &aof))
    }
}
