//! The real etcd the unit tests run against: the test harness's (`testkit::broker::etcd`),
//! reached with this copy of the library's own client.
//!
//! The harness links the library too, as a separate crate (a dev-dependency cycle), so its
//! `EtcdClient` and `EtcdOptions` are not this crate's types. This adapter takes only plain
//! data from it (endpoint, certificate files, password) and builds this crate's client, so
//! the unit tests keep calling `etcd().client()` as before; the server, its watchdog and
//! its users are the harness's alone.

use std::sync::OnceLock;
use std::time::Duration;

use crate::etcd::{EtcdClient, EtcdOptions};
use crate::secrets::Secret;

/// The harness's etcd, seen from this crate.
pub struct TestEtcd {
    server: &'static testkit::broker::etcd::EtcdServer,
    /// The broker's etcd password (user `broker`).
    pub broker_password: Secret,
}

/// The etcd server of this test process (started on first use).
pub fn etcd() -> &'static TestEtcd {
    static ETCD: OnceLock<TestEtcd> = OnceLock::new();
    ETCD.get_or_init(|| {
        let server = testkit::broker::etcd::etcd();
        TestEtcd {
            server,
            broker_password: Secret::new(server.broker_password.expose()),
        }
    })
}

impl TestEtcd {
    /// A key prefix no other test of this process uses.
    pub fn fresh_prefix(&self) -> String {
        self.server.fresh_prefix()
    }

    /// The client URL, `https://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        self.server.endpoint()
    }

    /// How the broker reaches this etcd: TLS with the broker's certificate, user `broker`.
    pub fn options(&self) -> EtcdOptions {
        let pki = testkit::broker::etcd::pki();
        let mut o = EtcdOptions::new(Duration::from_secs(5));
        o.ca_file = Some(pki.ca_file());
        o.identity = Some((pki.broker.cert_file.clone(), pki.broker.key_file.clone()));
        o.credentials = Some(("broker".into(), self.broker_password.clone()));
        o
    }

    /// A client of this etcd, as the broker's.
    pub fn client(&self) -> EtcdClient {
        EtcdClient::with_options(&[self.endpoint()], self.options()).expect("an etcd client")
    }
}
