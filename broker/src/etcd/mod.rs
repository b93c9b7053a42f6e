//! A small etcd v3 client over etcd's JSON gRPC gateway (`POST /v3/kv/...`).
//!
//! Why the gateway and not gRPC: Patroni's own etcd3 DCS talks to the same gateway, so the
//! broker needs nothing that the clusters it provisions do not already depend on, and a plain
//! HTTP client (reqwest, already in the tree) is enough: no protobuf code generation, no tonic.
//!
//! Why failover is careful: a request that never reached a server (connection refused) can be
//! sent to the next endpoint whatever it is. A request that may have been applied (a timeout
//! or a 5xx after sending) is only repeated elsewhere when repeating it cannot change its
//! outcome: reads, plain puts and deletes. A transaction with comparisons is not repeated,
//! since a second attempt would fail its comparison against its own first write and report a
//! lost race that was in fact won; the caller gets a transient error and re-reads instead.
//!
//! The gateway's JSON follows the proto3 mapping: keys and values are base64, 64-bit integers
//! are strings, and zero values (an empty list, `false`, `0`) are left out.
//!
//! The rooms: [`client`] holds the connection (endpoints, TLS, failover, authentication
//! tokens), [`kv`] the key-value operations built on it, [`auth`] the setup of etcd's
//! authentication, [`types`] what callers send and get back, `wire` the gateway's JSON, and
//! [`error`] the one error type.

pub mod auth;
pub mod client;
pub mod error;
pub mod kv;
pub mod types;
mod wire;

pub use auth::EtcdUser;
pub use client::{EtcdClient, EtcdOptions};
pub use error::EtcdError;
pub use types::{
    prefix_end, CasOutcome, Compare, CompareOp, CompareTarget, CreateOutcome, KeyValue, TxnOp,
    TxnOpResponse, TxnResponse,
};

#[cfg(test)]
mod tests;
