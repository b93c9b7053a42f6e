//! Writing records back into an empty etcd: what `walarchive-broker disaster-recovery`
//! (`crate::recover`) does with a state snapshot's keys.
//!
//! Why a function of the store rather than puts from the command: every other write of the
//! broker is a transaction guarded by what it expects to find, and so is this one: each key
//! is written only where etcd holds none, so a second recovery, a broker started too early or
//! two operators at once can never overwrite a record someone else wrote since.

use super::{Store, StoreError};
use crate::etcd::{Compare, TxnOp};

/// The most keys one transaction writes (etcd refuses more than `--max-txn-ops`, 128 by
/// default, comparisons and operations counted apart).
pub const RESTORE_TXN_KEYS: usize = 100;

impl Store {
    /// Writes `keys` (full keys under the prefix, with their values as they are to be stored:
    /// sealed values stay sealed) in one transaction, on condition that none of them exists.
    /// False, and nothing written, when one does. At most [`RESTORE_TXN_KEYS`] keys.
    pub async fn put_if_all_absent(&self, keys: &[(String, Vec<u8>)]) -> Result<bool, StoreError> {
        let inside = format!("{}/", self.prefix);
        if let Some((k, _)) = keys.iter().find(|(k, _)| !k.starts_with(&inside)) {
            return Err(StoreError::Corrupt {
                key: k.clone(),
                message: format!("not under the prefix {}", self.prefix),
            });
        }
        if keys.len() > RESTORE_TXN_KEYS {
            return Err(StoreError::Refused(format!(
                "{} keys in one transaction (at most {RESTORE_TXN_KEYS})",
                keys.len()
            )));
        }
        let compares: Vec<Compare> = keys
            .iter()
            .map(|(k, _)| Compare::absent(k.as_bytes()))
            .collect();
        let ops: Vec<TxnOp> = keys
            .iter()
            .map(|(k, v)| TxnOp::put(k.as_bytes(), v.clone()))
            .collect();
        Ok(self.etcd.txn(&compares, &ops, &[]).await?.succeeded)
    }
}
