//! The harness of walarchive's integration tests and benches: real PostgreSQL clusters, real
//! object-store servers on 127.0.0.1, the walarchive binary run as PostgreSQL runs it, and
//! (feature `broker`) etcd, cells and the OSB client of the broker's tests.
//!
//! A dev-dependency only. The test files of the root package import it as `common`
//! (`use testkit as common;`), the name the harness had when it was a `mod common;` compiled
//! into every test binary; everything a test calls is at the crate's root.
//!
//! # Why it looks like this
//!
//! * **Real servers, no mocks.** walarchive talks to PostgreSQL (as its
//!   `archive_command` / `restore_command`, and over the wire) and to object
//!   stores through the `object_store` crate. The tests run the real things:
//!   PostgreSQL 15 from `/usr/lib/postgresql/15/bin` (or 16, 17, 18 from
//!   `/opt/walarchive-test/pg/<major>/bin`: `WALARCHIVE_TEST_PG=18` runs a test binary on
//!   18; [`PgOptions::major`] picks one for a cluster), `s3s-fs` (or `moto_server`
//!   with `WALARCHIVE_TEST_S3=moto`) for S3, and `azurite-blob` for Azure Blob.
//!   `scripts/setup` installs whatever is missing.
//! * **PostgreSQL refuses to run as root.** `initdb`, `pg_ctl`, `pg_basebackup`
//!   and `postgres` run as the `postgres` OS user through
//!   `runuser -u postgres -- <program>`. Every directory PostgreSQL
//!   touches is a fresh temp dir under `/tmp` owned by `postgres`, and the
//!   walarchive binary that PostgreSQL executes is a copy under `/tmp` (mode
//!   0755), because `target/` may sit under `/root`, which postgres cannot
//!   traverse. `runuser -u` (without `-l`) keeps the caller's environment
//!   except HOME, SHELL, USER and LOGNAME; the harness adds the requested
//!   variables to that environment (never to a command line, which any user can
//!   read), so they reach the postmaster and thus every `archive_command` /
//!   `restore_command` it spawns.
//!   `psql`/`pgbench` need no `runuser`: they connect over TCP to 127.0.0.1
//!   with `trust` auth.
//! * **One object-store server per test process.** [`s3()`] and [`azurite()`]
//!   start their server lazily, once, in a `OnceLock`; the tests of one test
//!   binary run as threads and share it, each using its own bucket/container
//!   ([`S3Server::fresh_bucket`], [`Azurite::fresh_container`]). Use
//!   `cargo test` (threads), not nextest (one process per test would start one
//!   server per test).
//! * **Watchdogs instead of destructors.** Statics are never dropped, and a
//!   killed test process runs no destructors at all. So each server is spawned
//!   through `sh -c` with a loop that kills it once the test process's PID is
//!   gone; every PostgreSQL cluster gets a similar watchdog that stops it
//!   (`pg_ctl stop -m immediate`) and removes its directory; the per-process
//!   directory (binary copy, server data) is removed the same way. Watchdogs
//!   run in their own process group, so a Ctrl-C on `cargo test` does not kill
//!   them before they clean up.
//! * **Temp dirs** are removed on drop unless `WALARCHIVE_KEEP_TEST_DIRS=1`
//!   (then their paths are printed to stderr and the watchdogs leave them).
//!
//! Everything is synchronous (`std::process`, `std::net`); the HTTP client runs its requests
//! on a runtime of its own ([`http_request`]).

mod azurite;
#[cfg(feature = "broker")]
pub mod broker;
pub mod bursts;
pub mod gcs;
mod http;
pub mod machine;
mod pg;
mod proxy;
mod repos;
mod runner;
mod s3;
mod servers;
#[cfg(feature = "stores")]
pub mod stores;
pub mod swift;
mod tmp;
mod wait;
mod wal_source;

pub use azurite::{azurite, Azurite};
pub use gcs::{gcs, GcsServer};
pub use http::{
    amz_date, hmac_sha256, http_date, http_request, sha256_hex, uri_encode, HttpResponse,
};
pub use pg::*;
pub use proxy::{Fault, Proxy};
pub use repos::{Repo, Store};
pub use runner::*;
pub use s3::{s3, S3Kind, S3Server};
pub use servers::{await_ready, echo_server, spawn_watchdog};
pub use swift::{swift, SwiftServer};
pub use tmp::*;
pub use wait::{free_port, poll_until, wait_until};
pub use wal_source::WalSource;
