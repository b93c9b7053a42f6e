//! Forgetting the self-test's instances (`walarchive-broker selftest`, design §5).
//!
//! Why a store operation of its own, and why so narrow: tombstones are kept on purpose (they
//! answer `410 Gone`, name the archive for clones and recovery, and number the next
//! incarnation), so nothing else in the broker ever removes an instance's records. The
//! self-test creates instances only to check the system end to end and must leave nothing
//! behind; so exactly the ids it makes (`walarchive-selftest-…`), once deleted, may be
//! forgotten, and every other id is refused here, whatever the caller.

use super::model::{InstanceRecord, InstanceState};
use super::{ClaimKind, Store, StoreError, Versioned};
use crate::etcd::{Compare, TxnOp};

/// The prefix of every instance id the self-test creates, and of none other.
pub const SELFTEST_ID_PREFIX: &str = "walarchive-selftest-";

/// Whether `id` is one the self-test may purge and forget.
pub fn is_selftest_id(id: &str) -> bool {
    id.strip_prefix(SELFTEST_ID_PREFIX)
        .is_some_and(|rest| !rest.is_empty())
}

impl Store {
    /// Removes every record of the deleted self-test instance `id` (its tombstone, operation,
    /// bindings, secrets, claims and catalog entries) in one transaction; `false` when there
    /// was no record. Refused for an id that is not a self-test's and for an instance that
    /// is not deleted (its nodes and port would be orphaned).
    pub async fn forget_selftest(&self, id: &str) -> Result<bool, StoreError> {
        if !is_selftest_id(id) {
            return Err(StoreError::Refused(format!(
                "{id} is not a self-test instance (ids starting with {SELFTEST_ID_PREFIX}); its records are kept"
            )));
        }
        let ik = self.instance_key(id);
        let Some(inst): Option<Versioned<InstanceRecord>> = self.read(&ik).await? else {
            return Ok(false);
        };
        let rec = &inst.value;
        if rec.state != InstanceState::Deleted {
            return Err(StoreError::Refused(format!(
                "self-test instance {id} is {:?}, not deleted; deprovision it first",
                rec.state
            )));
        }
        let mut ops = vec![
            TxnOp::delete(ik.as_bytes()),
            TxnOp::delete(self.operation_key(id).as_bytes()),
            TxnOp::DeletePrefix(self.bindings_prefix(id).into_bytes()),
            TxnOp::delete(self.secrets_key(id).as_bytes()),
            TxnOp::delete(self.claim_key(id, ClaimKind::Operations).as_bytes()),
            TxnOp::DeletePrefix(
                format!("{}/", self.claim_key(id, ClaimKind::Operations)).into_bytes(),
            ),
        ];
        let mut incarnations: Vec<u32> = rec.previous.iter().map(|i| i.n).collect();
        incarnations.push(rec.incarnation);
        for n in incarnations {
            for key in [
                self.catalog_key(&rec.context, id, n),
                self.legacy_catalog_key(&rec.context, id, n),
            ]
            .into_iter()
            .flatten()
            {
                ops.push(TxnOp::delete(key.as_bytes()));
            }
        }
        let compare = [Compare::mod_revision(ik.as_bytes(), inst.mod_revision)];
        let r = self.etcd.txn(&compare, &ops, &[]).await?;
        if !r.succeeded {
            return Err(StoreError::Contention { key: ik });
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::is_selftest_id;

    #[test]
    fn only_selftest_ids_may_be_forgotten() {
        assert!(is_selftest_id(
            "walarchive-selftest-20261207T101500Z-0a1b2c3d"
        ));
        assert!(!is_selftest_id("walarchive-selftest-"));
        assert!(!is_selftest_id("db1"));
        assert!(!is_selftest_id("x-walarchive-selftest-1"));
        assert!(!is_selftest_id("Walarchive-selftest-1"));
    }
}
