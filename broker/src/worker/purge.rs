//! Retention of deleted instances' archives (`[repository] keep_deleted`, design §3).
//!
//! Why the archive of a deleted instance is kept at all, and then purged: it is what a clone
//! of the deleted instance restores from (and what an operator recovers a mistaken
//! deprovision from), but storage is not free and a deleted customer's data should not stay
//! forever. So once an incarnation has been deleted for `keep_deleted`, the worker deletes
//! every object of its archive with the walarchive CLI (`delete everything --force`: backups
//! marked permanent too), keeping only the descriptor, which retention never deletes. A
//! purged repository is never reused: a re-provision gets the next incarnation's.
//!
//! The order is what makes it safe against clones: first the incarnation is marked
//! *purging* on the instance record (clone validation refuses it from then on, and a clone
//! validated just before fails its create transaction's comparison of the source record and
//! decides again); then, with that mark written, a clone still restoring from the archive
//! (a provisioning instance whose restore names the repository) holds the purge off until
//! it has finished; then the objects go and the purge is recorded, on the incarnation and
//! on its catalog entries. Each purge runs under the instance's `ClaimKind::Purge` claim, so
//! two brokers never purge the same archive at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::Inner;
use crate::state::{ClaimKind, InstanceState, Purge, StoreError, Timestamp};

/// How often the worker looks for archives due: `keep_deleted / 24`, between 1 s and 1 h (a
/// deleted archive outlives `keep_deleted` by at most about 4 %).
pub(super) fn purge_period(keep: Duration) -> Duration {
    (keep / 24).clamp(Duration::from_secs(1), Duration::from_secs(3600))
}

impl Inner {
    /// Starts a purge sweep when one is due (`next`) and none runs (`task`).
    pub(super) fn start_due_purge(
        self: &Arc<Self>,
        next: &mut Instant,
        task: &mut Option<tokio::task::JoinHandle<()>>,
    ) {
        let Some(keep) = self.config.repository.keep_deleted else {
            return;
        };
        if task.as_ref().is_some_and(|t| !t.is_finished()) || Instant::now() < *next {
            return;
        }
        *next = Instant::now() + purge_period(keep.0);
        let i2 = self.clone();
        *task = Some(tokio::spawn(async move { i2.purge_sweep(keep.0).await }));
    }

    /// Purges every deleted incarnation deleted longer than `keep` ago and not purged yet.
    async fn purge_sweep(self: &Arc<Self>, keep: Duration) {
        let keep = chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX);
        let instances = match self.store.instances().await {
            Ok(v) => v,
            Err(e) => {
                warn!("cannot read the instances for purges: {e}");
                return;
            }
        };
        let now = chrono::Utc::now();
        for inst in instances {
            let inst = inst.value;
            for inc in inst.deleted_incarnations() {
                if inc.purged.is_some() || now - inc.deleted_at.0 < keep {
                    continue;
                }
                let work = async {
                    if let Err(e) = self.purge(&inst.id, inc.n).await {
                        warn!(instance = %inst.id, incarnation = inc.n,
                              repository = %inc.repository,
                              "cannot purge a deleted incarnation's archive yet: {e}");
                    }
                };
                self.claimed(&inst.id, ClaimKind::Purge, work).await;
            }
        }
    }

    /// Purges deleted incarnation `n` of `iid` (see the module's doc for the order).
    async fn purge(&self, iid: &str, n: u32) -> Result<(), String> {
        let Some(inc) = self
            .store
            .mark_purging(iid, n)
            .await
            .map_err(|e| e.to_string())?
        else {
            return Ok(());
        };
        let repository = inc.repository.as_str();
        // Read after the mark: a clone accepted later fails its create transaction.
        let readers: Vec<String> = self
            .store
            .instances()
            .await
            .map_err(|e: StoreError| e.to_string())?
            .into_iter()
            .map(|v| v.value)
            .filter(|i| {
                i.state == InstanceState::Provisioning
                    && i.restore
                        .as_ref()
                        .is_some_and(|r| r.source.repository == repository)
            })
            .map(|i| i.id)
            .collect();
        if !readers.is_empty() {
            debug!(instance = %iid, incarnation = n, repository, ?readers,
                   "purge held off while a restore reads the archive");
            return Ok(());
        }
        let (objects, bytes) = match self
            .walarchive_output(
                repository,
                &["delete", "everything", "--force", "--confirm", "--json"],
            )
            .await
        {
            Ok(out) => deleted_counts(&out)?,
            // No repository (an instance that never archived anything): nothing to delete,
            // unless the prefix holds objects after all (then the error stands).
            Err((Some(6), message)) => match self.repository_contents(repository).await? {
                None => (0, 0),
                Some(what) => return Err(format!("{message} ({what})")),
            },
            Err((_, message)) => return Err(message),
        };
        let purge = Purge {
            at: Timestamp::now(),
            objects,
            bytes,
        };
        self.store
            .record_purge(iid, n, &purge)
            .await
            .map_err(|e| e.to_string())?;
        info!(instance = %iid, incarnation = n, repository, objects, bytes,
              deleted_at = %inc.deleted_at.0.to_rfc3339(),
              "archive of a deleted incarnation purged");
        Ok(())
    }
}

/// `(objects, bytes)` of `walarchive delete ... --json`'s outcome.
fn deleted_counts(json: &str) -> Result<(u64, u64), String> {
    let v: serde_json::Value = serde_json::from_str(json)
        .map_err(|e| format!("walarchive delete printed no JSON document ({e})"))?;
    let n = |k: &str| {
        v[k].as_u64()
            .ok_or_else(|| format!("walarchive delete's JSON has no {k}"))
    };
    Ok((n("objects_count")?, n("bytes")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn period_and_counts() {
        let s = Duration::from_secs;
        assert_eq!(purge_period(s(1)), s(1));
        assert_eq!(purge_period(s(30 * 86400)), s(3600));
        assert_eq!(purge_period(s(12 * 3600)), s(1800));
        assert_eq!(
            deleted_counts(r#"{"objects_count": 3, "bytes": 42, "deleted": true}"#),
            Ok((3, 42))
        );
        assert!(deleted_counts("deleted 3 objects").is_err());
    }
}
