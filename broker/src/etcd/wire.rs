//! The raw JSON shapes of the gateway's answers (proto3 mapping: base64 keys and values,
//! 64-bit integers as strings, zero values left out), decoded into [`super::types`] by the
//! client.

use serde::Deserialize;
use serde_json::Value;

/// The raw JSON shape of a key-value pair.
#[derive(Deserialize)]
pub(super) struct RawKv {
    #[serde(default)]
    pub(super) key: String,
    #[serde(default)]
    pub(super) value: String,
    #[serde(default, deserialize_with = "de_i64")]
    pub(super) create_revision: i64,
    #[serde(default, deserialize_with = "de_i64")]
    pub(super) mod_revision: i64,
    #[serde(default, deserialize_with = "de_i64")]
    pub(super) version: i64,
    #[serde(default, deserialize_with = "de_i64")]
    pub(super) lease: i64,
}

#[derive(Deserialize, Default)]
pub(super) struct RawHeader {
    #[serde(default, deserialize_with = "de_i64")]
    pub(super) revision: i64,
}

#[derive(Deserialize)]
pub(super) struct RawRange {
    #[serde(default)]
    pub(super) header: RawHeader,
    #[serde(default)]
    pub(super) kvs: Vec<RawKv>,
    #[serde(default)]
    pub(super) more: bool,
}

#[derive(Deserialize)]
pub(super) struct RawPut {
    #[serde(default)]
    pub(super) header: RawHeader,
}

#[derive(Deserialize)]
pub(super) struct RawDelete {
    #[serde(default, deserialize_with = "de_i64")]
    pub(super) deleted: i64,
}

#[derive(Deserialize)]
pub(super) struct RawTxn {
    #[serde(default)]
    pub(super) header: RawHeader,
    #[serde(default)]
    pub(super) succeeded: bool,
    #[serde(default)]
    pub(super) responses: Vec<RawOpResponse>,
}

#[derive(Deserialize)]
pub(super) struct RawOpResponse {
    pub(super) response_range: Option<RawRange>,
    pub(super) response_put: Option<Value>,
    pub(super) response_delete_range: Option<RawDelete>,
}

#[derive(Deserialize)]
pub(super) struct RawAuth {
    #[serde(default)]
    pub(super) token: String,
}

#[derive(Deserialize)]
pub(super) struct RawLease {
    #[serde(rename = "ID", default, deserialize_with = "de_i64")]
    pub(super) id: i64,
}

/// Accepts a proto3-JSON int64: a string, or (leniently) a number.
fn de_i64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum N {
        S(String),
        I(i64),
    }
    match N::deserialize(d)? {
        N::S(s) => s.parse().map_err(serde::de::Error::custom),
        N::I(i) => Ok(i),
    }
}
