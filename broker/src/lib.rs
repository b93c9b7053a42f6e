//! The walarchive service broker: an Open Service Broker (API 2.17) that provisions highly
//! available PostgreSQL clusters (Patroni, etcd, HAProxy) whose WAL and base backups go to
//! walarchive repositories.
//!
//! The OSB API ([`api`]) only validates requests and records decisions in etcd ([`state`],
//! over the small gateway client [`etcd`]); the provisioning [`worker`] executes the
//! recorded operations on the cells ([`cell`]) and routes to the clusters ([`router`]). Keeping every decision in etcd, changed by compare-and-swap, is what lets
//! several broker processes and a restarted worker agree without a coordinator.
#![warn(missing_docs)]

pub mod actions;
pub mod admin;
pub mod api;
pub mod archive;
pub mod backoff;
pub mod binder;
pub mod cell;
pub mod config;
pub mod dashboard;
pub mod dev;
pub mod error;
pub mod etcd;
pub mod http;
pub mod links;
pub mod metrics;
pub mod names;
pub mod patroni;
pub mod pgmajor;
pub mod process;
pub mod recover;
pub mod router;
pub mod sampler;
pub mod secrets;
pub mod selftest;
pub mod state;
pub mod statebackup;
pub mod stats;
pub mod tls;
pub mod windows;
pub mod worker;

pub use api::{AppState, BindError, Binder, NoBinder};
pub use config::BrokerConfig;
pub use error::ApiError;
pub use etcd::{EtcdClient, EtcdError};
pub use http::app;
pub use state::{InstanceSecrets, Store, StoreError};
pub use worker::{Worker, WorkerError};

#[cfg(test)]
mod test_etcd;
