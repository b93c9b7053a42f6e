//! What callers of the etcd client send and get back: keys with their revisions, the
//! comparisons and operations of a transaction and their answers, and the outcomes of the
//! compare-and-swap helpers. The JSON of requests is written here too (`to_json`), next to
//! the types it encodes; the JSON of answers is read in `wire`.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Value};

/// One key with its value and revisions, as etcd stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: Vec<u8>,
    /// The value.
    pub value: Vec<u8>,
    /// Revision of the key's creation (since its last deletion).
    pub create_revision: i64,
    /// Revision of the key's last modification: the token for compare-and-swap.
    pub mod_revision: i64,
    /// Number of modifications since creation (1 after creation).
    pub version: i64,
    /// The lease the key is attached to (0: none).
    pub lease: i64,
}

impl KeyValue {
    /// The key as UTF-8 (lossy).
    pub fn key_str(&self) -> String {
        String::from_utf8_lossy(&self.key).into_owned()
    }
}

/// What a [`Compare`] looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompareTarget {
    /// The create revision (0 when the key does not exist).
    CreateRevision(i64),
    /// The mod revision (0 when the key does not exist).
    ModRevision(i64),
    /// The version (0 when the key does not exist).
    Version(i64),
    /// The value.
    Value(Vec<u8>),
}

/// The comparison operator of a [`Compare`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    /// `==`
    Equal,
    /// `!=`
    NotEqual,
    /// `>`
    Greater,
    /// `<`
    Less,
}

/// One condition of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    /// The key compared.
    pub key: Vec<u8>,
    /// The operator.
    pub op: CompareOp,
    /// What is compared, and with which value.
    pub target: CompareTarget,
}

impl Compare {
    /// The key does not exist.
    pub fn absent(key: impl Into<Vec<u8>>) -> Compare {
        Compare {
            key: key.into(),
            op: CompareOp::Equal,
            target: CompareTarget::CreateRevision(0),
        }
    }

    /// The key's mod revision is `rev` (0: the key does not exist).
    pub fn mod_revision(key: impl Into<Vec<u8>>, rev: i64) -> Compare {
        Compare {
            key: key.into(),
            op: CompareOp::Equal,
            target: CompareTarget::ModRevision(rev),
        }
    }

    /// The key's value is `value`.
    pub fn value(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Compare {
        Compare {
            key: key.into(),
            op: CompareOp::Equal,
            target: CompareTarget::Value(value.into()),
        }
    }

    pub(super) fn to_json(&self) -> Value {
        let result = match self.op {
            CompareOp::Equal => "EQUAL",
            CompareOp::NotEqual => "NOT_EQUAL",
            CompareOp::Greater => "GREATER",
            CompareOp::Less => "LESS",
        };
        let mut v = json!({ "key": B64.encode(&self.key), "result": result });
        let m = v.as_object_mut().expect("object");
        match &self.target {
            CompareTarget::CreateRevision(r) => {
                m.insert("target".into(), "CREATE".into());
                m.insert("create_revision".into(), r.to_string().into());
            }
            CompareTarget::ModRevision(r) => {
                m.insert("target".into(), "MOD".into());
                m.insert("mod_revision".into(), r.to_string().into());
            }
            CompareTarget::Version(r) => {
                m.insert("target".into(), "VERSION".into());
                m.insert("version".into(), r.to_string().into());
            }
            CompareTarget::Value(val) => {
                m.insert("target".into(), "VALUE".into());
                m.insert("value".into(), B64.encode(val).into());
            }
        }
        v
    }
}

/// One operation of a transaction branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOp {
    /// Read one key.
    Get(Vec<u8>),
    /// Write one key (lease 0: none).
    Put {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
        /// The lease to attach (0: none).
        lease: i64,
    },
    /// Delete one key.
    Delete(Vec<u8>),
    /// Delete every key that starts with the prefix.
    DeletePrefix(Vec<u8>),
}

impl TxnOp {
    /// A put without lease.
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> TxnOp {
        TxnOp::Put {
            key: key.into(),
            value: value.into(),
            lease: 0,
        }
    }

    /// A delete of one key.
    pub fn delete(key: impl Into<Vec<u8>>) -> TxnOp {
        TxnOp::Delete(key.into())
    }

    /// A read of one key.
    pub fn get(key: impl Into<Vec<u8>>) -> TxnOp {
        TxnOp::Get(key.into())
    }

    pub(super) fn to_json(&self) -> Value {
        match self {
            TxnOp::Get(k) => json!({ "request_range": { "key": B64.encode(k) } }),
            TxnOp::Put { key, value, lease } => {
                let mut put = json!({ "key": B64.encode(key), "value": B64.encode(value) });
                if *lease != 0 {
                    put["lease"] = lease.to_string().into();
                }
                json!({ "request_put": put })
            }
            TxnOp::Delete(k) => json!({ "request_delete_range": { "key": B64.encode(k) } }),
            TxnOp::DeletePrefix(p) => json!({ "request_delete_range": {
                "key": B64.encode(p), "range_end": B64.encode(prefix_end(p)) } }),
        }
    }
}

/// The answer to one [`TxnOp`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOpResponse {
    /// Answer to [`TxnOp::Get`]: the key, if it exists.
    Get(Option<KeyValue>),
    /// Answer to [`TxnOp::Put`].
    Put,
    /// Answer to a delete: how many keys were deleted.
    Delete(i64),
}

/// The outcome of [`EtcdClient::txn`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnResponse {
    /// True when every comparison held (the `success` branch ran).
    pub succeeded: bool,
    /// The store's revision after the transaction.
    pub revision: i64,
    /// One answer per operation of the branch that ran.
    pub responses: Vec<TxnOpResponse>,
}

/// The outcome of a create-if-absent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateOutcome {
    /// The key was created at this revision.
    Created(i64),
    /// The key already exists (as returned).
    Exists(KeyValue),
}

/// The outcome of a compare-and-swap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CasOutcome {
    /// The value was replaced; the key's new mod revision.
    Swapped(i64),
    /// The key changed (or vanished) since the expected revision: its current state.
    Conflict(Option<KeyValue>),
}

/// The end of the key range of all keys starting with `prefix` (etcd's `range_end`).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte was 0xff (or the prefix is empty): "\0" means "to the end of the keyspace".
    vec![0]
}
