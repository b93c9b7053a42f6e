//! The broker's durable state: JSON records in etcd, changed only by compare-and-swap.
//!
//! Why etcd and CAS: the OSB API answers immediately and a separate worker does the slow
//! work (placing nodes, starting Patroni, waiting for the first base backup), possibly in
//! another broker process. Both sides read a record, decide, and write it back only if its
//! `mod_revision` is unchanged, so neither a second broker nor a restarted worker can
//! overwrite a decision it did not see. Multi-key changes (an instance with its operation,
//! its port and its catalog entry) are single etcd transactions.
//!
//! Key layout (all under the configured prefix, default `/walarchive-broker`):
//!
//! | key | value |
//! | --- | --- |
//! | `instances/<instance_id>` | [`InstanceRecord`] |
//! | `operations/<instance_id>` | [`OperationRecord`]: the one current operation, with a short history |
//! | `bindings/<instance_id>/<binding_id>` | [`BindingRecord`] |
//! | `ports/<port>` | the owning instance id (plain text): its port and its read-only port |
//! | `backups/<instance_id>` | [`BackupLog`]: the backups the broker took, with the node and who asked |
//! | `secrets/<instance_id>` | [`InstanceSecrets`] of the current incarnation |
//! | `claims/<instance_id>` | [`Claim`]: the worker working on the instance's operations |
//! | `claims/<instance_id>/backup` | [`Claim`]: the worker taking its scheduled backups |
//! | `claims/<instance_id>/purge` | [`Claim`]: the worker purging its deleted incarnations' archives |
//! | `catalog/<org>/<space>/<name>/<instance_id>[%2F<n>]` | [`CatalogEntry`] (one per incarnation) |
//!
//! Path components are percent-encoded outside RFC 3986's unreserved characters (the API
//! only accepts ids made of those, so ids appear as they are).
//!
//! Port policy: a port is reserved (create-if-absent on `ports/<port>`) in the same
//! transaction that creates the instance, so the API can answer with a complete record and
//! two concurrent provisions can never share a port. The instance keeps it through updates
//! and failures; it is released only when a deprovision succeeds.
//!
//! Re-provisioning a deleted id starts a new *incarnation* (a fresh port, secrets and
//! cluster). Its predecessors' archives are kept for restores and clones, and a new cluster
//! (another system identifier) cannot archive into them, so incarnation `n >= 2` gets the
//! repository `<base>/<instance_id>.<n>`; each incarnation has its own catalog entry naming
//! its repository.
//!
//! The catalog key includes the instance id (rather than mapping a name to one id) so that a
//! name reused after a deprovision does not hide the deleted instance: clones of deleted
//! instances are found by name, and there may be several.
//!
//! Instance records are kept as tombstones (`state: deleted`) after deprovisioning: they
//! answer `410 Gone`, say where the repository is, and give a re-provision the next
//! incarnation number.
//!
//! The rooms: [`model`] holds the records (plain data, what the API and the worker decide
//! on; `model/restore.rs` those of clones and of an id's earlier incarnations); `store` reads and
//! writes them (one etcd transaction per decision), `operations` records an operation's steps
//! and its end, `backuplog` the backups the broker took, `ports` the read-only router port
//! given after creation, `purges` the purges of deleted
//! incarnations' archives, `forget` the removal of the self-test's deleted instances; `keys` lays them out under the prefix; `sealed` keeps secrets
//! sealed at rest; `check` says whether a stored value decodes as the record its key names
//! (state backups); `recovered` writes a snapshot's records back (disaster recovery); [`cas`] is the one retry loop of every
//! compare-and-swap decision.

mod backuplog;
pub mod cas;
mod check;
mod forget;
mod keys;
pub mod model;
mod operations;
mod ports;
mod purges;
mod recovered;
mod sealed;
mod store;

pub use cas::{until_swapped, Round, CAS_ATTEMPTS};
pub use forget::{is_selftest_id, SELFTEST_ID_PREFIX};
pub use keys::encode_component;
pub use model::*;
pub use recovered::RESTORE_TXN_KEYS;
pub use sealed::Resealed;
pub use store::{Store, StoreError};

#[cfg(test)]
mod tests;
