//! Typed access to the records in etcd: reads, and changes by compare-and-swap (single
//! keys) or one transaction (an instance with its operation, port and catalog entry).

use std::ops::RangeInclusive;
use std::sync::Arc;

use chrono::Utc;
use tracing::{debug, info};

use super::model::*;
use super::{until_swapped, Round};
use crate::etcd::{Compare, EtcdClient, EtcdError, KeyValue, TxnOp, TxnOpResponse};
use crate::secrets::{Keyring, SecretsError};

/// Errors of the [`Store`].
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// etcd failed (see [`EtcdError::is_transient`]).
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    /// A record does not decode: written by an incompatible version, or damaged.
    #[error("corrupt record at {key}: {message}")]
    Corrupt {
        /// The key.
        key: String,
        /// The decoding error.
        message: String,
    },
    /// A record that must exist does not.
    #[error("no {what} record for {id}")]
    NotFound {
        /// `instance`, `operation`, `binding`.
        what: &'static str,
        /// The id.
        id: String,
    },
    /// The operation is no longer the instance's current one (e.g. a deprovision replaced a
    /// provision in progress): the worker should stop working on it.
    #[error("operation {operation} of instance {instance} was superseded by operation {current}")]
    Superseded {
        /// The instance.
        instance: String,
        /// The operation the caller works on.
        operation: String,
        /// The current operation.
        current: String,
    },
    /// The operation is already finished.
    #[error("operation {operation} of instance {instance} is already {state}")]
    Finished {
        /// The instance.
        instance: String,
        /// The operation.
        operation: String,
        /// Its state.
        state: OperationState,
    },
    /// Concurrent writers kept changing the record; nothing was written.
    #[error("too much contention on {key}; nothing was changed")]
    Contention {
        /// The key.
        key: String,
    },
    /// Every port of the router's range is taken.
    #[error("no free router port in {min}..={max}")]
    NoFreePort {
        /// First port of the range.
        min: u16,
        /// Last port of the range.
        max: u16,
    },
    /// A transition closure refused the change.
    #[error("{0}")]
    Refused(String),
    /// A sealed secret does not open.
    #[error("cannot open the secret at {key}: {reason}")]
    Secret {
        /// The key.
        key: String,
        /// Why (in the message: not a `source`, so that it is printed once).
        reason: SecretsError,
    },
}

impl StoreError {
    /// True when retrying later may succeed (etcd unavailable, contention).
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Etcd(e) => e.is_transient(),
            StoreError::Contention { .. } => true,
            _ => false,
        }
    }
}

/// Typed access to the broker's records in etcd. Cheap to clone.
///
/// The instances' secrets and the bindings' credentials are sealed with `keyring` (see
/// [`crate::secrets`]) before they are written, and opened when read: etcd never holds them
/// in clear. Records written in clear by earlier versions are still read, and
/// [`Store::reseal_all`] seals them.
#[derive(Debug, Clone)]
pub struct Store {
    pub(super) etcd: EtcdClient,
    pub(super) prefix: String,
    pub(super) keyring: Arc<Keyring>,
}

impl Store {
    /// A store keeping its records under `prefix` (e.g. `/walarchive-broker`), sealing
    /// secrets with `keyring`.
    pub fn new(etcd: EtcdClient, prefix: impl Into<String>, keyring: Arc<Keyring>) -> Store {
        let prefix = prefix.into().trim_end_matches('/').to_string();
        Store {
            etcd,
            prefix,
            keyring,
        }
    }

    /// The etcd client.
    pub fn etcd(&self) -> &EtcdClient {
        &self.etcd
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Reads `key` and opens it with `open` (one of the `open_` functions of `sealed`):
    /// `None` when the key is absent.
    async fn read_sealed<T>(
        &self,
        key: &str,
        open: impl FnOnce(&Self, &KeyValue) -> Result<(T, bool), StoreError>,
    ) -> Result<Option<T>, StoreError> {
        match self.etcd.get(key.as_bytes()).await? {
            Some(kv) => Ok(Some(open(self, &kv)?.0)),
            None => Ok(None),
        }
    }

    pub(super) fn decode<T: serde::de::DeserializeOwned>(
        kv: &KeyValue,
    ) -> Result<Versioned<T>, StoreError> {
        serde_json::from_slice(&kv.value)
            .map(|value| Versioned {
                value,
                mod_revision: kv.mod_revision,
            })
            .map_err(|e| StoreError::Corrupt {
                key: kv.key_str(),
                message: e.to_string(),
            })
    }

    pub(super) async fn read<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<Versioned<T>>, StoreError> {
        match self.etcd.get(key.as_bytes()).await? {
            Some(kv) => Ok(Some(Self::decode(&kv)?)),
            None => Ok(None),
        }
    }

    pub(super) async fn read_prefix<T: serde::de::DeserializeOwned>(
        &self,
        prefix: &str,
    ) -> Result<Vec<Versioned<T>>, StoreError> {
        self.etcd
            .get_prefix(prefix.as_bytes())
            .await?
            .iter()
            .map(Self::decode)
            .collect()
    }

    /// Reads an instance record.
    pub async fn instance(
        &self,
        id: &str,
    ) -> Result<Option<Versioned<InstanceRecord>>, StoreError> {
        self.read(&self.instance_key(id)).await
    }

    /// The secrets of an instance's current incarnation, once the worker generated them.
    pub async fn instance_secrets(
        &self,
        instance_id: &str,
    ) -> Result<Option<InstanceSecrets>, StoreError> {
        self.read_sealed(&self.secrets_key(instance_id), Self::open_secrets)
            .await
    }

    /// Stores `secrets` for an instance unless it has some already; returns the stored ones
    /// (so that concurrent or restarted workers all use the first).
    pub async fn put_instance_secrets(
        &self,
        instance_id: &str,
        secrets: &InstanceSecrets,
    ) -> Result<InstanceSecrets, StoreError> {
        let key = self.secrets_key(instance_id);
        let json = self.seal_secrets(&key, secrets);
        match self.etcd.create(key.as_bytes(), &json).await? {
            crate::etcd::CreateOutcome::Created(_) => Ok(secrets.clone()),
            crate::etcd::CreateOutcome::Exists(kv) => Ok(self.open_secrets(&kv)?.0),
        }
    }

    /// Claims (or renews the claim of) `instance_id` for worker `owner` for `ttl`: true when
    /// `owner` holds it now, false when another worker's claim is still valid.
    pub async fn claim(
        &self,
        instance_id: &str,
        kind: ClaimKind,
        owner: &str,
        ttl: std::time::Duration,
    ) -> Result<bool, StoreError> {
        let key = self.claim_key(instance_id, kind);
        let k = key.as_str();
        until_swapped((), |()| async move {
            let cur: Option<Versioned<Claim>> = self.read(k).await?;
            let now = Utc::now();
            if let Some(c) = &cur {
                if c.value.owner != owner && c.value.until.0 > now {
                    return Ok(Round::Done(false));
                }
            }
            let next = Claim {
                owner: owner.to_string(),
                until: Timestamp(
                    now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX),
                ),
            };
            let json = serde_json::to_vec(&next).expect("JSON");
            if let crate::etcd::CasOutcome::Swapped(_) = self
                .etcd
                .compare_and_swap(k.as_bytes(), &json, cur.map_or(0, |c| c.mod_revision))
                .await?
            {
                return Ok(Round::Done(true));
            }
            Ok::<_, StoreError>(Round::Lost(()))
        })
        .await?
        .ok_or_else(|| StoreError::Contention { key })
    }

    /// Gives up `owner`'s claim of `instance_id` (nothing when another worker holds it).
    pub async fn release_claim(
        &self,
        instance_id: &str,
        kind: ClaimKind,
        owner: &str,
    ) -> Result<(), StoreError> {
        let key = self.claim_key(instance_id, kind);
        if let Some(c) = self.read::<Claim>(&key).await? {
            if c.value.owner == owner {
                self.etcd
                    .delete_if_revision(key.as_bytes(), c.mod_revision)
                    .await?;
            }
        }
        Ok(())
    }

    /// Reads an instance's current operation.
    pub async fn operation(
        &self,
        instance_id: &str,
    ) -> Result<Option<Versioned<OperationRecord>>, StoreError> {
        self.read(&self.operation_key(instance_id)).await
    }

    /// Reads an instance and its operation atomically (one etcd revision).
    pub async fn instance_and_operation(
        &self,
        id: &str,
    ) -> Result<
        (
            Option<Versioned<InstanceRecord>>,
            Option<Versioned<OperationRecord>>,
        ),
        StoreError,
    > {
        let (ik, ok) = (self.instance_key(id), self.operation_key(id));
        let mut r = self
            .etcd
            .get_many(&[ik.as_bytes(), ok.as_bytes()])
            .await?
            .into_iter();
        let inst = r.next().flatten().map(|kv| Self::decode(&kv)).transpose()?;
        let op = r.next().flatten().map(|kv| Self::decode(&kv)).transpose()?;
        Ok((inst, op))
    }

    /// Every instance record (deleted ones included).
    pub async fn instances(&self) -> Result<Vec<Versioned<InstanceRecord>>, StoreError> {
        self.read_prefix(&format!("{}/instances/", self.prefix))
            .await
    }

    /// Every current operation that is in progress: the worker's queue.
    pub async fn operations_in_progress(
        &self,
    ) -> Result<Vec<Versioned<OperationRecord>>, StoreError> {
        let all: Vec<Versioned<OperationRecord>> = self
            .read_prefix(&format!("{}/operations/", self.prefix))
            .await?;
        Ok(all
            .into_iter()
            .filter(|o| o.value.state == OperationState::InProgress)
            .collect())
    }

    /// The instance that owns `port`, if any.
    pub async fn port_owner(&self, port: u16) -> Result<Option<String>, StoreError> {
        Ok(self
            .etcd
            .get(self.port_key(port).as_bytes())
            .await?
            .map(|kv| String::from_utf8_lossy(&kv.value).into_owned()))
    }

    /// Ports in `range` that are reserved right now.
    pub(super) async fn used_ports(
        &self,
        range: &RangeInclusive<u16>,
    ) -> Result<Vec<u16>, StoreError> {
        let prefix = format!("{}/ports/", self.prefix);
        Ok(self
            .etcd
            .get_prefix(prefix.as_bytes())
            .await?
            .iter()
            .filter_map(|kv| kv.key_str()[prefix.len()..].parse::<u16>().ok())
            .filter(|p| range.contains(p))
            .collect())
    }

    /// Reserves a free port of `range` for `instance_id` on its own (create-if-absent on
    /// `ports/<port>`; a lost race moves on to the next free port). Returns the port it
    /// already owns, if any. [`Store::create_instance`] does the same inside its transaction.
    pub async fn allocate_port(
        &self,
        instance_id: &str,
        range: RangeInclusive<u16>,
    ) -> Result<u16, StoreError> {
        let mut used = self.used_ports(&range).await?;
        for port in range.clone() {
            if used.contains(&port) {
                continue;
            }
            match self
                .etcd
                .create(self.port_key(port).as_bytes(), instance_id.as_bytes())
                .await?
            {
                crate::etcd::CreateOutcome::Created(_) => return Ok(port),
                crate::etcd::CreateOutcome::Exists(kv) => {
                    if kv.value == instance_id.as_bytes() {
                        return Ok(port);
                    }
                    used.push(port);
                }
            }
        }
        Err(StoreError::NoFreePort {
            min: *range.start(),
            max: *range.end(),
        })
    }

    /// Releases `port` if `instance_id` owns it; true when released.
    pub async fn release_port(&self, port: u16, instance_id: &str) -> Result<bool, StoreError> {
        let key = self.port_key(port);
        let r = self
            .etcd
            .txn(
                &[Compare::value(key.as_bytes(), instance_id.as_bytes())],
                &[TxnOp::delete(key.as_bytes())],
                &[],
            )
            .await?;
        Ok(r.succeeded)
    }

    /// Creates an instance (its `port` is chosen here from `ports`), its provision
    /// operation, its port reservation and its catalog entry in one transaction, unless an
    /// instance with this id exists.
    pub async fn create_instance(
        &self,
        instance: InstanceRecord,
        operation: OperationRecord,
        ports: RangeInclusive<u16>,
    ) -> Result<CreateInstance, StoreError> {
        self.create_incarnation(instance, operation, ports, None, None)
            .await
    }

    /// Re-provisions a deleted instance: replaces its tombstone `previous` (and its last
    /// operation `previous_operation`, whose history the new operation should carry) with
    /// `instance`, a new incarnation, like [`Store::create_instance`] does for a new id.
    /// [`CreateInstance::Exists`] when either record changed since it was read.
    pub async fn reincarnate_instance(
        &self,
        instance: InstanceRecord,
        operation: OperationRecord,
        ports: RangeInclusive<u16>,
        previous: &Versioned<InstanceRecord>,
        previous_operation: Option<&Versioned<OperationRecord>>,
    ) -> Result<CreateInstance, StoreError> {
        self.create_incarnation(
            instance,
            operation,
            ports,
            Some((
                previous.mod_revision,
                previous_operation.map_or(0, |o| o.mod_revision),
            )),
            None,
        )
        .await
    }

    /// [`Store::create_instance`] (`previous: None`) or [`Store::reincarnate_instance`]
    /// (`previous`: the tombstone and its last operation), and in the same transaction
    /// the check that the record of instance `source.0` (a clone's source) is still at mod
    /// revision `source.1`: [`CreateInstance::Exists`] when it changed (a purge, a
    /// deprovision or a re-provision since the clone was validated: decide again).
    pub async fn create_guarded(
        &self,
        instance: InstanceRecord,
        operation: OperationRecord,
        ports: RangeInclusive<u16>,
        previous: Option<(
            &Versioned<InstanceRecord>,
            Option<&Versioned<OperationRecord>>,
        )>,
        source: Option<(&str, i64)>,
    ) -> Result<CreateInstance, StoreError> {
        let previous = previous.map(|(i, o)| (i.mod_revision, o.map_or(0, |o| o.mod_revision)));
        self.create_incarnation(instance, operation, ports, previous, source)
            .await
    }

    async fn create_incarnation(
        &self,
        mut instance: InstanceRecord,
        operation: OperationRecord,
        ports: RangeInclusive<u16>,
        previous: Option<(i64, i64)>,
        source: Option<(&str, i64)>,
    ) -> Result<CreateInstance, StoreError> {
        let source = source.map(|(id, rev)| (self.instance_key(id), rev));
        let ik = self.instance_key(&instance.id);
        let ok = self.operation_key(&instance.id);
        let op_json = serde_json::to_vec(&operation).expect("JSON");
        let catalog = self.catalog_key(&instance.context, &instance.id, instance.incarnation);
        let entry = CatalogEntry {
            instance_id: instance.id.clone(),
            deleted: false,
            created_at: instance.created_at,
            deleted_at: None,
            incarnation: instance.incarnation,
            repository: instance.repository.clone(),
            purged: None,
        };
        let mut used = self.used_ports(&ports).await?;
        for port in ports.clone() {
            if used.contains(&port) {
                continue;
            }
            instance.port = port;
            let pk = self.port_key(port);
            let mut ops = vec![
                TxnOp::put(ik.as_bytes(), serde_json::to_vec(&instance).expect("JSON")),
                TxnOp::put(ok.as_bytes(), op_json.clone()),
                TxnOp::put(pk.as_bytes(), instance.id.as_bytes()),
            ];
            if let Some(ck) = &catalog {
                ops.push(TxnOp::put(
                    ck.as_bytes(),
                    serde_json::to_vec(&entry).expect("JSON"),
                ));
            }
            let mut compares = vec![Compare::absent(pk.as_bytes())];
            match previous {
                None => compares.push(Compare::absent(ik.as_bytes())),
                Some((irev, orev)) => {
                    compares.push(Compare::mod_revision(ik.as_bytes(), irev));
                    compares.push(Compare::mod_revision(ok.as_bytes(), orev));
                }
            }
            let mut on_failure = vec![TxnOp::get(ik.as_bytes()), TxnOp::get(ok.as_bytes())];
            if let Some((sk, srev)) = &source {
                compares.push(Compare::mod_revision(sk.as_bytes(), *srev));
                on_failure.push(TxnOp::get(sk.as_bytes()));
            }
            let r = self.etcd.txn(&compares, &ops, &on_failure).await?;
            if r.succeeded {
                info!(instance = %instance.id, port, operation = %operation.id,
                      incarnation = instance.incarnation, "instance recorded");
                return Ok(CreateInstance::Created {
                    instance: Box::new(Versioned {
                        value: instance,
                        mod_revision: r.revision,
                    }),
                    operation: Box::new(Versioned {
                        value: operation,
                        mod_revision: r.revision,
                    }),
                });
            }
            let rev = |i: usize| match r.responses.get(i) {
                Some(TxnOpResponse::Get(Some(kv))) => kv.mod_revision,
                _ => 0,
            };
            let changed = match previous {
                None => rev(0) != 0,
                Some((irev, orev)) => rev(0) != irev || rev(1) != orev,
            } || source.as_ref().is_some_and(|(_, srev)| rev(2) != *srev);
            if changed {
                return Ok(CreateInstance::Exists);
            }
            debug!(port, "port taken concurrently; trying the next one");
            used.push(port);
        }
        Err(StoreError::NoFreePort {
            min: *ports.start(),
            max: *ports.end(),
        })
    }

    /// Replaces an instance and its operation together if neither changed since they were
    /// read (`instance.mod_revision`, `operation.mod_revision`; `None`: the operation key
    /// must not exist). False when either changed: re-read and decide again.
    pub async fn replace(
        &self,
        instance: &Versioned<InstanceRecord>,
        new_instance: &InstanceRecord,
        operation: Option<&Versioned<OperationRecord>>,
        new_operation: &OperationRecord,
    ) -> Result<bool, StoreError> {
        self.replace_with(
            instance,
            new_instance,
            operation,
            new_operation,
            Vec::new(),
            Vec::new(),
        )
        .await
        .map(|r| r.is_some())
    }

    /// [`Store::replace`] with extra comparisons and operations in the same transaction;
    /// the new revision when it succeeded.
    pub(super) async fn replace_with(
        &self,
        instance: &Versioned<InstanceRecord>,
        new_instance: &InstanceRecord,
        operation: Option<&Versioned<OperationRecord>>,
        new_operation: &OperationRecord,
        mut compares: Vec<Compare>,
        mut ops: Vec<TxnOp>,
    ) -> Result<Option<i64>, StoreError> {
        let ik = self.instance_key(&new_instance.id);
        let ok = self.operation_key(&new_instance.id);
        compares.push(Compare::mod_revision(ik.as_bytes(), instance.mod_revision));
        compares.push(Compare::mod_revision(
            ok.as_bytes(),
            operation.map_or(0, |o| o.mod_revision),
        ));
        ops.push(TxnOp::put(
            ik.as_bytes(),
            serde_json::to_vec(new_instance).expect("JSON"),
        ));
        ops.push(TxnOp::put(
            ok.as_bytes(),
            serde_json::to_vec(new_operation).expect("JSON"),
        ));
        let r = self.etcd.txn(&compares, &ops, &[]).await?;
        Ok(r.succeeded.then_some(r.revision))
    }

    /// Applies `f` to an instance record and stores it by compare-and-swap, retrying on
    /// conflicts (e.g. to record node placement).
    pub async fn update_instance<F>(&self, id: &str, f: F) -> Result<InstanceRecord, StoreError>
    where
        F: FnMut(&mut InstanceRecord) -> Result<(), StoreError>,
    {
        let key = self.instance_key(id);
        let k = key.as_str();
        until_swapped(f, |mut f| async move {
            let cur: Versioned<InstanceRecord> =
                self.read(k).await?.ok_or_else(|| StoreError::NotFound {
                    what: "instance",
                    id: id.to_string(),
                })?;
            let mut next = cur.value.clone();
            f(&mut next)?;
            next.updated_at = Timestamp::now();
            let json = serde_json::to_vec(&next).expect("JSON");
            if let crate::etcd::CasOutcome::Swapped(_) = self
                .etcd
                .compare_and_swap(k.as_bytes(), &json, cur.mod_revision)
                .await?
            {
                return Ok(Round::Done(next));
            }
            Ok::<_, StoreError>(Round::Lost(f))
        })
        .await?
        .ok_or_else(|| StoreError::Contention { key })
    }

    /// Instances (deleted ones included) that had `name` in `org`/`space`, oldest first.
    pub async fn find_by_name(
        &self,
        org: &str,
        space: &str,
        name: &str,
    ) -> Result<Vec<CatalogEntry>, StoreError> {
        let mut v: Vec<CatalogEntry> = self
            .read_prefix(&self.catalog_prefix(org, space, name))
            .await?
            .into_iter()
            .map(|e: Versioned<CatalogEntry>| e.value)
            .collect();
        v.sort_by_key(|e| e.created_at);
        Ok(v)
    }

    /// Reads a binding.
    pub async fn binding(
        &self,
        instance_id: &str,
        binding_id: &str,
    ) -> Result<Option<Versioned<BindingRecord>>, StoreError> {
        self.read_sealed(
            &self.binding_key(instance_id, binding_id),
            Self::open_binding,
        )
        .await
    }

    /// The bindings of an instance.
    pub async fn bindings(
        &self,
        instance_id: &str,
    ) -> Result<Vec<Versioned<BindingRecord>>, StoreError> {
        self.etcd
            .get_prefix(self.bindings_prefix(instance_id).as_bytes())
            .await?
            .iter()
            .map(|kv| Ok(self.open_binding(kv)?.0))
            .collect()
    }

    /// Writes a binding if its key's mod revision is still `expected` (0: must not exist);
    /// the new revision, or `None` when another writer changed it first.
    pub async fn put_binding(
        &self,
        record: &BindingRecord,
        expected: i64,
    ) -> Result<Option<i64>, StoreError> {
        let key = self.binding_key(&record.instance_id, &record.binding_id);
        let json = self.seal_binding(&key, record);
        Ok(
            match self
                .etcd
                .compare_and_swap(key.as_bytes(), &json, expected)
                .await?
            {
                crate::etcd::CasOutcome::Swapped(rev) => Some(rev),
                crate::etcd::CasOutcome::Conflict(_) => None,
            },
        )
    }

    /// Deletes a binding if its mod revision is still `expected`; true when deleted.
    pub async fn delete_binding(
        &self,
        instance_id: &str,
        binding_id: &str,
        expected: i64,
    ) -> Result<bool, StoreError> {
        Ok(self
            .etcd
            .delete_if_revision(
                self.binding_key(instance_id, binding_id).as_bytes(),
                expected,
            )
            .await?)
    }
}
