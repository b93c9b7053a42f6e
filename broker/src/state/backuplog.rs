//! The backups the broker took of an instance (`backups/<instance_id>`, a [`BackupLog`]):
//! which node took each and who asked for it, which the repository's manifests do not say.
//!
//! A bounded list in one record, appended by compare-and-swap: a few backups a day, read
//! whole by the dashboard; removed with the incarnation when a deprovision succeeds.

use super::model::{BackupEntry, BackupLog, Versioned, BACKUP_LOG};
use super::{until_swapped, Round, Store, StoreError};

impl Store {
    /// `<prefix>/backups/<instance_id>`
    pub fn backups_key(&self, instance_id: &str) -> String {
        format!(
            "{}/backups/{}",
            self.prefix,
            super::encode_component(instance_id)
        )
    }

    /// The backups recorded for the instance, oldest first.
    pub async fn backup_log(&self, instance_id: &str) -> Result<Vec<BackupEntry>, StoreError> {
        Ok(self
            .read::<BackupLog>(&self.backups_key(instance_id))
            .await?
            .map(|v| v.value.entries)
            .unwrap_or_default())
    }

    /// Appends `entry` to the instance's backups (dropping the oldest beyond [`BACKUP_LOG`]).
    pub async fn record_backup(
        &self,
        instance_id: &str,
        entry: BackupEntry,
    ) -> Result<(), StoreError> {
        let key = self.backups_key(instance_id);
        let (k, entry) = (key.as_str(), &entry);
        until_swapped((), |()| async move {
            let cur: Option<Versioned<BackupLog>> = self.read(k).await?;
            let mut log = cur.as_ref().map(|c| c.value.clone()).unwrap_or_default();
            if !log.entries.iter().any(|e| e.name == entry.name) {
                log.entries.push(entry.clone());
            }
            if log.entries.len() > BACKUP_LOG {
                log.entries.drain(..log.entries.len() - BACKUP_LOG);
            }
            let json = serde_json::to_vec(&log).expect("JSON");
            if let crate::etcd::CasOutcome::Swapped(_) = self
                .etcd
                .compare_and_swap(k.as_bytes(), &json, cur.map_or(0, |c| c.mod_revision))
                .await?
            {
                return Ok(Round::Done(()));
            }
            Ok::<_, StoreError>(Round::Lost(()))
        })
        .await?
        .ok_or_else(|| StoreError::Contention { key })
    }
}
