//! Secrets at rest: the instances' passwords and the bindings' credentials are sealed with
//! the store's [`Keyring`](crate::secrets::Keyring) before they reach etcd, and opened when read.
//!
//! Records written in clear by earlier versions are still read; [`Store::reseal_all`] seals
//! them, and seals again with the current key what an old key sealed.

use serde::{Deserialize, Serialize};
use tracing::info;

use super::model::{BindingRecord, InstanceSecrets, Versioned};
use super::{until_swapped, Round};
use super::{Store, StoreError};
use crate::etcd::{CasOutcome, KeyValue};
use crate::secrets::SecretsError;

/// The stored form of [`InstanceSecrets`]: sealed.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SealedRecord {
    sealed: String,
}

/// What [`Store::reseal_all`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resealed {
    /// Values sealed again with the current key (they were sealed with an old one).
    pub rekeyed: usize,
    /// Values that were in clear (written by an earlier version), now sealed.
    pub were_clear: usize,
    /// Values already sealed with the current key.
    pub current: usize,
}

/// What [`Store::reseal_all`] did with one value.
enum Resealing {
    Current,
    WasClear,
    Rekeyed,
    Gone,
}

impl Store {
    /// Where a record's sealed value belongs: its key without the store's prefix (encoded
    /// components hold no `/`, so no two records share it).
    pub(super) fn purpose<'a>(&self, key: &'a str) -> &'a str {
        key.strip_prefix(&self.prefix).unwrap_or(key)
    }

    pub(super) fn secret_err(key: &str) -> impl FnOnce(SecretsError) -> StoreError + '_ {
        move |reason| StoreError::Secret {
            key: key.to_string(),
            reason,
        }
    }

    /// The secrets of a `secrets/<id>` record, and whether they are sealed with the current
    /// key (false: sealed with an old key, or in clear).
    pub(super) fn open_secrets(
        &self,
        kv: &KeyValue,
    ) -> Result<(InstanceSecrets, bool), StoreError> {
        let key = kv.key_str();
        let corrupt = |e: serde_json::Error| StoreError::Corrupt {
            key: key.clone(),
            message: e.to_string(),
        };
        match serde_json::from_slice::<SealedRecord>(&kv.value) {
            Ok(r) => {
                let (plain, current) = self
                    .keyring
                    .open(self.purpose(&key), &r.sealed)
                    .map_err(Self::secret_err(&key))?;
                Ok((serde_json::from_slice(&plain).map_err(corrupt)?, current))
            }
            // Written in clear by an earlier version.
            Err(_) => Ok((serde_json::from_slice(&kv.value).map_err(corrupt)?, false)),
        }
    }

    pub(super) fn seal_secrets(&self, key: &str, secrets: &InstanceSecrets) -> Vec<u8> {
        let plain = serde_json::to_vec(secrets).expect("JSON");
        serde_json::to_vec(&SealedRecord {
            sealed: self.keyring.seal(self.purpose(key), &plain),
        })
        .expect("JSON")
    }

    /// A binding record as stored: its credentials sealed (`sealed_credentials`) in place of
    /// `credentials`.
    pub(super) fn seal_binding(&self, key: &str, record: &BindingRecord) -> Vec<u8> {
        let mut v = serde_json::to_value(record).expect("JSON");
        let m = v.as_object_mut().expect("an object");
        if let Some(c) = m.remove("credentials") {
            let plain = serde_json::to_vec(&c).expect("JSON");
            m.insert(
                "sealed_credentials".into(),
                self.keyring.seal(self.purpose(key), &plain).into(),
            );
        }
        serde_json::to_vec(&v).expect("JSON")
    }

    /// A stored binding record, its credentials opened; and whether they are sealed with the
    /// current key (or there are none).
    pub(super) fn open_binding(
        &self,
        kv: &KeyValue,
    ) -> Result<(Versioned<BindingRecord>, bool), StoreError> {
        let key = kv.key_str();
        let corrupt = |message: String| StoreError::Corrupt {
            key: key.clone(),
            message,
        };
        let mut v: serde_json::Value =
            serde_json::from_slice(&kv.value).map_err(|e| corrupt(e.to_string()))?;
        let m = v
            .as_object_mut()
            .ok_or_else(|| corrupt("not an object".into()))?;
        let mut current = !m.contains_key("credentials");
        if let Some(sealed) = m.remove("sealed_credentials") {
            let sealed = sealed
                .as_str()
                .ok_or_else(|| corrupt("sealed_credentials is not a string".into()))?;
            let (plain, cur) = self
                .keyring
                .open(self.purpose(&key), sealed)
                .map_err(Self::secret_err(&key))?;
            current = cur;
            let c: serde_json::Value =
                serde_json::from_slice(&plain).map_err(|e| corrupt(e.to_string()))?;
            m.insert("credentials".into(), c);
        }
        let value = serde_json::from_value(v).map_err(|e| corrupt(e.to_string()))?;
        Ok((
            Versioned {
                value,
                mod_revision: kv.mod_revision,
            },
            current,
        ))
    }

    /// Seals again, with the current key, every secret and binding credentials sealed with an
    /// old key or written in clear (by compare-and-swap: a record changed meanwhile is read
    /// again). Fails on a value no key of the keyring opens.
    pub async fn reseal_all(&self) -> Result<Resealed, StoreError> {
        let mut done = Resealed::default();
        for (prefix, binding) in [
            (format!("{}/secrets/", self.prefix), false),
            (format!("{}/bindings/", self.prefix), true),
        ] {
            for kv in self.etcd.get_prefix(prefix.as_bytes()).await? {
                let key = kv.key_str();
                let k = key.as_str();
                let outcome = until_swapped(kv, |kv| async move {
                    let clear = if binding {
                        serde_json::from_slice::<serde_json::Value>(&kv.value)
                            .is_ok_and(|v| v.get("credentials").is_some())
                    } else {
                        serde_json::from_slice::<SealedRecord>(&kv.value).is_err()
                    };
                    let (value, current) = if binding {
                        let (b, current) = self.open_binding(&kv)?;
                        (self.seal_binding(k, &b.value), current)
                    } else {
                        let (s, current) = self.open_secrets(&kv)?;
                        (self.seal_secrets(k, &s), current)
                    };
                    if current {
                        return Ok(Round::Done(Resealing::Current));
                    }
                    match self
                        .etcd
                        .compare_and_swap(kv.key.as_slice(), &value, kv.mod_revision)
                        .await?
                    {
                        CasOutcome::Swapped(_) if clear => Ok(Round::Done(Resealing::WasClear)),
                        CasOutcome::Swapped(_) => Ok(Round::Done(Resealing::Rekeyed)),
                        // Changed meanwhile: decide again on the value the swap lost to.
                        CasOutcome::Conflict(Some(now)) => Ok(Round::Lost(now)),
                        // Deleted meanwhile: nothing left to seal.
                        CasOutcome::Conflict(None) => {
                            Ok::<_, StoreError>(Round::Done(Resealing::Gone))
                        }
                    }
                })
                .await?
                .ok_or(StoreError::Contention { key })?;
                match outcome {
                    Resealing::Current => done.current += 1,
                    Resealing::WasClear => done.were_clear += 1,
                    Resealing::Rekeyed => done.rekeyed += 1,
                    Resealing::Gone => {}
                }
            }
        }
        info!(
            rekeyed = done.rekeyed,
            were_clear = done.were_clear,
            key = self.keyring.current_id(),
            "secrets sealed with the current key"
        );
        Ok(done)
    }
}
