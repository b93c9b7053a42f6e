//! The key-value operations: reads (one key, a prefix in consistent pages, several keys at
//! one revision), writes, deletes, transactions, the compare-and-swap helpers built on them,
//! and leases.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::json;

use super::client::EtcdClient;
use super::error::EtcdError;
use super::types::{
    prefix_end, CasOutcome, Compare, CreateOutcome, KeyValue, TxnOp, TxnOpResponse, TxnResponse,
};
use super::wire::{RawDelete, RawLease, RawPut, RawRange, RawTxn};

/// How many keys one page of [`EtcdClient::get_prefix`] asks for.
pub(super) const PAGE: i64 = 500;

impl EtcdClient {
    /// Reads one key.
    pub async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, EtcdError> {
        let body = json!({ "key": B64.encode(key) });
        let raw: RawRange = self.parse(&self.call("/v3/kv/range", &body, true).await?)?;
        raw.kvs
            .into_iter()
            .next()
            .map(|kv| self.decode_kv(kv))
            .transpose()
    }

    /// Reads every key that starts with `prefix`, in key order, in pages of 500 keys read at
    /// one revision (a consistent snapshot however many pages it takes).
    pub async fn get_prefix(&self, prefix: &[u8]) -> Result<Vec<KeyValue>, EtcdError> {
        self.get_prefix_limit(prefix, 0).await
    }

    /// Like [`EtcdClient::get_prefix`], and the store's revision the keys were read at (the
    /// header revision of the first page): what a snapshot of the prefix is named by.
    pub async fn get_prefix_at(&self, prefix: &[u8]) -> Result<(Vec<KeyValue>, i64), EtcdError> {
        self.range_pages(prefix, 0).await
    }

    /// Like [`EtcdClient::get_prefix`], but at most `limit` keys (0: no limit).
    pub async fn get_prefix_limit(
        &self,
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<KeyValue>, EtcdError> {
        Ok(self.range_pages(prefix, limit).await?.0)
    }

    async fn range_pages(
        &self,
        prefix: &[u8],
        limit: usize,
    ) -> Result<(Vec<KeyValue>, i64), EtcdError> {
        let end = prefix_end(prefix);
        let mut out = Vec::new();
        let mut from = prefix.to_vec();
        let mut revision = 0i64;
        loop {
            let page = match limit {
                0 => PAGE,
                l => PAGE.min((l - out.len()) as i64),
            };
            let mut body = json!({
                "key": B64.encode(&from),
                "range_end": B64.encode(&end),
                "limit": page.to_string(),
            });
            if revision != 0 {
                body["revision"] = revision.to_string().into();
            }
            let raw: RawRange = self.parse(&self.call("/v3/kv/range", &body, true).await?)?;
            if revision == 0 {
                revision = raw.header.revision;
            }
            let more = raw.more;
            for kv in raw.kvs {
                out.push(self.decode_kv(kv)?);
            }
            if !more || (limit != 0 && out.len() >= limit) {
                return Ok((out, revision));
            }
            let Some(last) = out.last() else {
                return Ok((out, revision));
            };
            from = last.key.clone();
            from.push(0);
        }
    }

    /// Writes one key unconditionally; returns the store's new revision.
    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<i64, EtcdError> {
        self.put_with_lease(key, value, 0).await
    }

    /// Writes one key attached to `lease` (0: none); returns the store's new revision.
    pub async fn put_with_lease(
        &self,
        key: &[u8],
        value: &[u8],
        lease: i64,
    ) -> Result<i64, EtcdError> {
        let mut body = json!({ "key": B64.encode(key), "value": B64.encode(value) });
        if lease != 0 {
            body["lease"] = lease.to_string().into();
        }
        let raw: RawPut = self.parse(&self.call("/v3/kv/put", &body, true).await?)?;
        Ok(raw.header.revision)
    }

    /// Deletes one key; true when it existed.
    pub async fn delete(&self, key: &[u8]) -> Result<bool, EtcdError> {
        let body = json!({ "key": B64.encode(key) });
        let raw: RawDelete = self.parse(&self.call("/v3/kv/deleterange", &body, true).await?)?;
        Ok(raw.deleted > 0)
    }

    /// Deletes every key that starts with `prefix`; returns how many there were.
    pub async fn delete_prefix(&self, prefix: &[u8]) -> Result<i64, EtcdError> {
        let body =
            json!({ "key": B64.encode(prefix), "range_end": B64.encode(prefix_end(prefix)) });
        let raw: RawDelete = self.parse(&self.call("/v3/kv/deleterange", &body, true).await?)?;
        Ok(raw.deleted)
    }

    /// Runs a transaction: if every comparison holds, `success` runs, otherwise `failure`.
    /// Not repeated on another endpoint after an ambiguous failure (see the module docs).
    pub async fn txn(
        &self,
        compare: &[Compare],
        success: &[TxnOp],
        failure: &[TxnOp],
    ) -> Result<TxnResponse, EtcdError> {
        let body = json!({
            "compare": compare.iter().map(Compare::to_json).collect::<Vec<_>>(),
            "success": success.iter().map(TxnOp::to_json).collect::<Vec<_>>(),
            "failure": failure.iter().map(TxnOp::to_json).collect::<Vec<_>>(),
        });
        let repeatable = compare.is_empty()
            && success
                .iter()
                .chain(failure)
                .all(|op| matches!(op, TxnOp::Get(_)));
        let raw: RawTxn = self.parse(&self.call("/v3/kv/txn", &body, repeatable).await?)?;
        let branch = if raw.succeeded { success } else { failure };
        if raw.responses.len() != branch.len() {
            return Err(self.protocol(format!(
                "transaction returned {} answers for {} operations",
                raw.responses.len(),
                branch.len()
            )));
        }
        let mut responses = Vec::with_capacity(branch.len());
        for (op, r) in branch.iter().zip(raw.responses) {
            responses.push(match op {
                TxnOp::Get(_) => TxnOpResponse::Get(
                    r.response_range
                        .and_then(|rr| rr.kvs.into_iter().next())
                        .map(|kv| self.decode_kv(kv))
                        .transpose()?,
                ),
                TxnOp::Put { .. } => {
                    let _ = r.response_put;
                    TxnOpResponse::Put
                }
                TxnOp::Delete(_) | TxnOp::DeletePrefix(_) => {
                    TxnOpResponse::Delete(r.response_delete_range.map_or(0, |d| d.deleted))
                }
            });
        }
        Ok(TxnResponse {
            succeeded: raw.succeeded,
            revision: raw.header.revision,
            responses,
        })
    }

    /// Reads several keys atomically (at one revision).
    pub async fn get_many(&self, keys: &[&[u8]]) -> Result<Vec<Option<KeyValue>>, EtcdError> {
        let ops: Vec<TxnOp> = keys.iter().map(|k| TxnOp::get(*k)).collect();
        let r = self.txn(&[], &ops, &[]).await?;
        Ok(r.responses
            .into_iter()
            .map(|r| match r {
                TxnOpResponse::Get(kv) => kv,
                _ => None,
            })
            .collect())
    }

    /// Creates `key` with `value` unless it exists.
    pub async fn create(&self, key: &[u8], value: &[u8]) -> Result<CreateOutcome, EtcdError> {
        let r = self
            .txn(
                &[Compare::absent(key)],
                &[TxnOp::put(key, value)],
                &[TxnOp::get(key)],
            )
            .await?;
        if r.succeeded {
            return Ok(CreateOutcome::Created(r.revision));
        }
        match r.responses.into_iter().next() {
            Some(TxnOpResponse::Get(Some(kv))) => Ok(CreateOutcome::Exists(kv)),
            // Deleted between the comparison and the read cannot happen inside one
            // transaction; report it as a protocol error rather than guess.
            _ => Err(self.protocol("create failed but the key is absent".into())),
        }
    }

    /// Replaces `key`'s value if its mod revision is still `expected` (0: the key must not
    /// exist, i.e. create-if-absent).
    pub async fn compare_and_swap(
        &self,
        key: &[u8],
        value: &[u8],
        expected: i64,
    ) -> Result<CasOutcome, EtcdError> {
        let r = self
            .txn(
                &[Compare::mod_revision(key, expected)],
                &[TxnOp::put(key, value)],
                &[TxnOp::get(key)],
            )
            .await?;
        if r.succeeded {
            return Ok(CasOutcome::Swapped(r.revision));
        }
        match r.responses.into_iter().next() {
            Some(TxnOpResponse::Get(kv)) => Ok(CasOutcome::Conflict(kv)),
            _ => Ok(CasOutcome::Conflict(None)),
        }
    }

    /// Deletes `key` if its mod revision is still `expected`; true when deleted.
    pub async fn delete_if_revision(&self, key: &[u8], expected: i64) -> Result<bool, EtcdError> {
        let r = self
            .txn(
                &[Compare::mod_revision(key, expected)],
                &[TxnOp::delete(key)],
                &[],
            )
            .await?;
        Ok(r.succeeded)
    }

    /// Grants a lease of `ttl` seconds; returns its id.
    pub async fn grant_lease(&self, ttl: i64) -> Result<i64, EtcdError> {
        let body = json!({ "TTL": ttl.to_string() });
        let raw: RawLease = self.parse(&self.call("/v3/lease/grant", &body, true).await?)?;
        Ok(raw.id)
    }
}
