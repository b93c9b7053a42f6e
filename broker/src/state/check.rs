//! Whether a stored value is a record this broker reads back, by the kind its key names: what
//! `walarchive-broker state-backup verify` asks of every key of a snapshot, so that a backup
//! that would not restore is found while etcd still holds the originals.

use super::model::{BackupLog, CatalogEntry, Claim, InstanceRecord, OperationRecord};
use super::{Store, StoreError};
use crate::etcd::KeyValue;

impl Store {
    /// Decodes `value`, stored at `key` (a key under this store's prefix), as the record its
    /// key says it is, opening sealed secrets with the store's keyring; the kind of record
    /// (`instances`, `operations`, ...). Keys of no kind the broker writes are refused too.
    pub fn check_record(&self, key: &str, value: &[u8]) -> Result<&'static str, StoreError> {
        let corrupt = |message: String| StoreError::Corrupt {
            key: key.to_string(),
            message,
        };
        let rest = key
            .strip_prefix(&self.prefix)
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(|| corrupt(format!("not under the prefix {}", self.prefix)))?;
        let (kind, _) = rest.split_once('/').unwrap_or((rest, ""));
        let kv = KeyValue {
            key: key.as_bytes().to_vec(),
            value: value.to_vec(),
            create_revision: 0,
            mod_revision: 0,
            version: 0,
            lease: 0,
        };
        match kind {
            "instances" => Self::decode::<InstanceRecord>(&kv).map(|_| "instances"),
            "operations" => Self::decode::<OperationRecord>(&kv).map(|_| "operations"),
            "catalog" => Self::decode::<CatalogEntry>(&kv).map(|_| "catalog"),
            "claims" => Self::decode::<Claim>(&kv).map(|_| "claims"),
            "backups" => Self::decode::<BackupLog>(&kv).map(|_| "backups"),
            "bindings" => self.open_binding(&kv).map(|_| "bindings"),
            "secrets" => self.open_secrets(&kv).map(|_| "secrets"),
            "ports" => {
                let port = &rest["ports/".len().min(rest.len())..];
                port.parse::<u16>()
                    .map_err(|_| corrupt(format!("{port:?} is not a port")))?;
                match std::str::from_utf8(value) {
                    Ok(id) if !id.is_empty() => Ok("ports"),
                    _ => Err(corrupt("not an instance id".into())),
                }
            }
            other => Err(corrupt(format!(
                "{other:?} is no kind of record the broker writes"
            ))),
        }
    }
}
