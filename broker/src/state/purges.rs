//! The purge of a deleted incarnation's archive, as the records say it: first *purging*
//! (from then on no clone of it is accepted), then *purged* with what was deleted, on the
//! incarnation (the tombstone's own fields, or its entry in `previous`) and on its catalog
//! entries, in one transaction.
//!
//! Why the mark is a write to the instance record: the create transaction of a clone compares
//! its source's record revision (`Store::create_guarded`), so a clone validated before the
//! mark fails that comparison and decides again, and then sees the mark.

use super::model::*;
use super::{until_swapped, Round, Store, StoreError};
use crate::etcd::{Compare, TxnOp};

/// A deleted incarnation as the purge sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeletedIncarnation {
    /// Its number.
    pub n: u32,
    /// Its repository URL.
    pub repository: String,
    /// When it was deleted (for incarnations recorded before deletion times were kept: the
    /// next incarnation's creation).
    pub deleted_at: Timestamp,
    /// Since when it is being purged.
    pub purging: Option<Timestamp>,
    /// Its purge, once done.
    pub purged: Option<Purge>,
}

impl InstanceRecord {
    /// The deleted incarnations of this id, oldest first: every earlier one, and the current
    /// one when this record is a tombstone.
    pub fn deleted_incarnations(&self) -> Vec<DeletedIncarnation> {
        let mut v = Vec::new();
        for (k, inc) in self.previous.iter().enumerate() {
            let next_created = match self.previous.get(k + 1) {
                Some(next) => next.created_at,
                None => Some(self.created_at),
            };
            if let Some(deleted_at) = inc.deleted_at.or(next_created) {
                v.push(DeletedIncarnation {
                    n: inc.n,
                    repository: inc.repository.clone(),
                    deleted_at,
                    purging: inc.purging,
                    purged: inc.purged.clone(),
                });
            }
        }
        if let (InstanceState::Deleted, Some(deleted_at)) = (self.state, self.deleted_at) {
            v.push(DeletedIncarnation {
                n: self.incarnation,
                repository: self.repository.clone(),
                deleted_at,
                purging: self.purging,
                purged: self.purged.clone(),
            });
        }
        v
    }

    /// The purge fields of deleted incarnation `n`; `None` when `n` is not a deleted
    /// incarnation of this record.
    fn purge_fields(&mut self, n: u32) -> Option<(&mut Option<Timestamp>, &mut Option<Purge>)> {
        if n == self.incarnation {
            return (self.state == InstanceState::Deleted)
                .then_some((&mut self.purging, &mut self.purged));
        }
        self.previous
            .iter_mut()
            .find(|i| i.n == n)
            .map(|i| (&mut i.purging, &mut i.purged))
    }
}

impl Store {
    /// Marks deleted incarnation `n` of `instance_id` as being purged (keeping an earlier
    /// mark), by compare-and-swap. The incarnation as it is now; `None` when there is no such
    /// deleted incarnation or it is purged already.
    pub async fn mark_purging(
        &self,
        instance_id: &str,
        n: u32,
    ) -> Result<Option<DeletedIncarnation>, StoreError> {
        let r = self
            .update_instance(instance_id, |i| match i.purge_fields(n) {
                Some((purging, None)) => {
                    purging.get_or_insert_with(Timestamp::now);
                    Ok(())
                }
                _ => Err(StoreError::Refused("nothing to purge".into())),
            })
            .await;
        match r {
            Ok(rec) => Ok(rec.deleted_incarnations().into_iter().find(|d| d.n == n)),
            Err(StoreError::Refused(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Records `purge` on deleted incarnation `n` of `instance_id` and on every catalog entry
    /// of that incarnation, in one transaction (a lookup by name and one by id then both
    /// see it).
    pub async fn record_purge(
        &self,
        instance_id: &str,
        n: u32,
        purge: &Purge,
    ) -> Result<(), StoreError> {
        let ik = self.instance_key(instance_id);
        let catalog = format!("{}/catalog/", self.prefix);
        let (ik, catalog) = (ik.as_str(), catalog.as_str());
        until_swapped((), |()| async move {
            let inst: Versioned<InstanceRecord> =
                self.read(ik).await?.ok_or_else(|| StoreError::NotFound {
                    what: "instance",
                    id: instance_id.to_string(),
                })?;
            let mut next = inst.value.clone();
            let Some((purging, purged)) = next.purge_fields(n) else {
                return Err(StoreError::Refused(format!(
                    "instance {instance_id} has no deleted incarnation {n}"
                )));
            };
            *purging = None;
            *purged = Some(purge.clone());
            next.updated_at = Timestamp::now();
            let mut compares = vec![Compare::mod_revision(ik.as_bytes(), inst.mod_revision)];
            let mut ops = vec![TxnOp::put(
                ik.as_bytes(),
                serde_json::to_vec(&next).expect("JSON"),
            )];
            // Entries are found by what they say (the name of an earlier incarnation is not
            // in the current record); purges are rare, the catalog read is acceptable.
            for kv in self.etcd.get_prefix(catalog.as_bytes()).await? {
                let entry: Versioned<CatalogEntry> = Self::decode(&kv)?;
                let mut e = entry.value;
                if e.instance_id != instance_id || e.incarnation != n {
                    continue;
                }
                e.purged = Some(purge.clone());
                compares.push(Compare::mod_revision(kv.key.clone(), kv.mod_revision));
                ops.push(TxnOp::put(
                    kv.key.clone(),
                    serde_json::to_vec(&e).expect("JSON"),
                ));
            }
            let r = self.etcd.txn(&compares, &ops, &[]).await?;
            Ok(if r.succeeded {
                Round::Done(())
            } else {
                Round::Lost(())
            })
        })
        .await?
        .ok_or_else(|| StoreError::Contention { key: ik.into() })
    }
}
