//! The broker's harness (feature `broker`): one real etcd speaking TLS with authentication on
//! ([`etcd`]), cell agents with Patroni, PostgreSQL and HAProxy ([`cells`]), the broker's
//! configuration ([`broker`]), its OSB API driven in-process ([`osb`]), an S3 server for
//! repositories in object storage ([`s3`]), a test's cells started and ready ([`rig`]), the
//! real `serve` process ([`serve`]), the secrets audit ([`audit`]) and (feature
//! `browser`) headless Chromium for the dashboard ([`browser`]).
//!
//! The broker's integration tests import it as `common` (`use testkit::broker as common;`).
//! Its unit tests use [`etcd`] too: this crate then links a second copy of the broker's
//! library (a dev-dependency cycle), so they build their own client from
//! [`etcd::EtcdServer`]'s plain settings rather than take one of the other copy's types.

pub mod audit;
#[cfg(feature = "browser")]
pub mod browser;
// The broker tests name its configuration `common::broker::BrokerToml`.
#[allow(clippy::module_inception)]
pub mod broker;
pub mod cells;
pub mod etcd;
pub mod osb;
pub mod rig;
pub mod s3;
pub mod serve;
