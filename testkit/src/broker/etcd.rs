//! One real etcd per test process, for the broker's tests, speaking TLS only.
//!
//! Why it looks like this (the same reasoning as the rest of this crate): the broker's
//! state lives in etcd and its concurrency rests on etcd's transactions, so the tests run the
//! real server (`/usr/bin/etcd`, Debian's etcd-server; `WALARCHIVE_ETCD` overrides), not a
//! mock, configured as production should be: clients must speak TLS and present a certificate
//! of the tests' throwaway CA ([`pki`]), and authentication is on, with a user for the broker
//! and one for Patroni whose roles reach only the key prefixes the tests use. It is started lazily, once per test binary, in a
//! `OnceLock`; tests share it and each uses its own key prefix ([`EtcdServer::fresh_prefix`]).
//! Statics are never dropped and a killed test process runs no destructors, so etcd runs under
//! a `sh -c` watchdog in its own process group that kills it and removes its directories once
//! this process is gone.
//!
//! The library's unit tests use it too, through a second copy of the library (see
//! [`crate::broker`]): they take [`EtcdServer::endpoint`], [`pki`]'s files and the broker's
//! password from here and build their own client.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use walarchive_broker::etcd::{EtcdClient, EtcdOptions, EtcdUser};
use walarchive_broker::patroni::Secret;
use walarchive_broker::tls::{ThrowawayCa, TlsFiles};

use crate::{free_port, sh_quote};

/// The tests' throwaway CA and the certificates every test shares.
pub struct Pki {
    /// Where the certificates are (mode 0755, so that the postgres user reads them).
    pub dir: PathBuf,
    ca: std::sync::Mutex<ThrowawayCa>,
    /// The broker's certificate (its API, and its client certificate for cells and etcd).
    pub broker: TlsFiles,
    /// etcd's server certificate.
    pub etcd_server: TlsFiles,
}

/// The throwaway CA of this test process (made on first use).
pub fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let pid = std::process::id();
        let dir = tempfile::Builder::new()
            .prefix(&format!("walarchive-broker-pki-{pid}-"))
            .tempdir_in("/tmp")
            .expect("temp dir under /tmp")
            .keep();
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        watchdog(&format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; sleep 5; rm -rf {}",
            sh_quote(&dir.to_string_lossy())
        ));
        let ca = ThrowawayCa::new(&dir, "walarchive-broker tests CA").expect("a CA");
        let broker = ca.issue("broker").expect("a certificate");
        let etcd_server = ca.issue("etcd-server").expect("a certificate");
        Pki {
            dir,
            ca: std::sync::Mutex::new(ca),
            broker,
            etcd_server,
        }
    })
}

impl Pki {
    /// A certificate for `name` signed by the tests' CA.
    pub fn issue(&self, name: &str) -> TlsFiles {
        self.ca.lock().unwrap().issue(name).expect("a certificate")
    }

    /// The CA's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.broker.ca_file.clone()
    }
}

/// The etcd server shared by the tests of this process.
pub struct EtcdServer {
    /// Client port on 127.0.0.1.
    pub client_port: u16,
    /// Peer port on 127.0.0.1.
    pub peer_port: u16,
    /// Data directory (removed by the watchdog).
    pub dir: PathBuf,
    /// The root user's password.
    pub root_password: Secret,
    /// The broker's etcd password (user `broker`), also in [`EtcdServer::password_file`].
    pub broker_password: Secret,
    /// Patroni's etcd password (user `patroni`), also in [`EtcdServer::password_file`].
    pub patroni_password: Secret,
    counter: AtomicU64,
}

/// The key prefixes the tests' users may read and write: every test's state (`/test-<n>`,
/// `/broker/test-<n>`) and Patroni namespace below them.
pub const TEST_PREFIXES: &[&str] = &["/test-", "/broker/"];

/// The etcd server of this test process (started on first use).
pub fn etcd() -> &'static EtcdServer {
    static ETCD: OnceLock<EtcdServer> = OnceLock::new();
    ETCD.get_or_init(EtcdServer::start)
}

fn binary() -> PathBuf {
    std::env::var_os("WALARCHIVE_ETCD")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/etcd"))
}

/// Runs `script` with `sh -c`, detached in its own process group (it outlives this process).
fn watchdog(script: &str) {
    #[allow(clippy::zombie_processes)]
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("spawn a watchdog");
}

/// `etcdctl` against the server at `endpoint`, over TLS with the broker's certificate.
fn etcdctl(endpoint: &str) -> Command {
    let pki = pki();
    let bin = binary()
        .parent()
        .map(|d| d.join("etcdctl"))
        .unwrap_or_else(|| Path::new("/usr/bin/etcdctl").to_path_buf());
    let mut c = Command::new(bin);
    c.env("ETCDCTL_API", "3")
        .args(["--endpoints", endpoint])
        .arg("--cacert")
        .arg(pki.ca_file())
        .arg("--cert")
        .arg(&pki.broker.cert_file)
        .arg("--key")
        .arg(&pki.broker.key_file)
        .args(["--dial-timeout", "2s", "--command-timeout", "5s"]);
    c
}

impl EtcdServer {
    fn start() -> EtcdServer {
        let bin = binary();
        assert!(
            bin.exists(),
            "{} not found: run scripts/setup (apt: etcd-server)",
            bin.display()
        );
        let pki = pki();
        let pid = std::process::id();
        let mut last_log = String::new();
        for _attempt in 0..3 {
            // On tmpfs when there is one: etcd fsyncs every write, and a disk shared with
            // busy builds makes it slow enough for Patroni's requests to time out.
            let parent = if Path::new("/dev/shm").is_dir() {
                "/dev/shm"
            } else {
                "/tmp"
            };
            let dir = tempfile::Builder::new()
                .prefix(&format!("walarchive-etcd-{pid}-"))
                .tempdir_in(parent)
                .expect("create etcd temp dir")
                .keep();
            let (client_port, peer_port) = (free_port(), free_port());
            let data = dir.join("data");
            let log = dir.join("etcd.log");
            let client = format!("https://127.0.0.1:{client_port}");
            let peer = format!("http://127.0.0.1:{peer_port}");
            let keep = std::env::var("WALARCHIVE_KEEP_TEST_DIRS").is_ok_and(|v| v == "1");
            let rm = if keep {
                ":".to_string()
            } else {
                format!("rm -rf {}", sh_quote(&dir.to_string_lossy()))
            };
            // The watchdog: start etcd, exit when it exits (so that the caller sees an early
            // death), kill it once the test process is gone, then remove its directory.
            let script = format!(
                "\"$0\" \"$@\" >{log} 2>&1 </dev/null & s=$!\n\
                 while kill -0 {pid} 2>/dev/null; do\n\
                   if ! kill -0 $s 2>/dev/null; then wait $s; st=$?; {rm}; exit $st; fi\n\
                   sleep 0.5\n\
                 done\n\
                 kill $s 2>/dev/null; sleep 1; kill -9 $s 2>/dev/null; {rm}; exit 0",
                log = sh_quote(&log.to_string_lossy()),
            );
            let mut watchdog: Child = Command::new("sh")
                .arg("-c")
                .arg(script)
                .arg(&bin)
                .args(["--name", "test"])
                .arg("--data-dir")
                .arg(&data)
                .args(["--listen-client-urls", &client])
                .args(["--advertise-client-urls", &client])
                .args(["--listen-peer-urls", &peer])
                .args(["--initial-advertise-peer-urls", &peer])
                .args(["--initial-cluster", &format!("test={peer}")])
                .args(["--initial-cluster-state", "new"])
                .arg("--cert-file")
                .arg(&pki.etcd_server.cert_file)
                .arg("--key-file")
                .arg(&pki.etcd_server.key_file)
                .arg("--trusted-ca-file")
                .arg(pki.ca_file())
                .arg("--client-cert-auth")
                .args(["--logger", "zap", "--log-level", "warn"])
                .env("ETCD_UNSUPPORTED_ARCH", std::env::consts::ARCH)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .expect("spawn the etcd watchdog");
            let started = Instant::now();
            loop {
                if let Ok(Some(st)) = watchdog.try_wait() {
                    last_log = std::fs::read_to_string(&log).unwrap_or_default();
                    eprintln!("etcd exited early ({st}); retrying on other ports");
                    break;
                }
                let healthy = etcdctl(&client)
                    .args(["endpoint", "health"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                if healthy {
                    let server = EtcdServer {
                        client_port,
                        peer_port,
                        dir,
                        root_password: Secret::generate(),
                        broker_password: Secret::generate(),
                        patroni_password: Secret::generate(),
                        counter: AtomicU64::new(0),
                    };
                    server.enable_auth();
                    eprintln!(
                        "etcd on 127.0.0.1:{client_port} ready in {:.1} s ({})",
                        started.elapsed().as_secs_f64(),
                        server.dir.display()
                    );
                    return server;
                }
                if started.elapsed() > Duration::from_secs(60) {
                    let _ = watchdog.kill();
                    panic!(
                        "etcd did not become ready within 60 s\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        panic!("etcd failed to start three times; last log:\n{last_log}");
    }

    /// Turns authentication on, with the users `broker` and `patroni` (the password files
    /// beside the data, mode 0600, Patroni's owned by postgres when there is such a user).
    fn enable_auth(&self) {
        for (user, pw) in [
            ("broker", &self.broker_password),
            ("patroni", &self.patroni_password),
        ] {
            let f = self.password_file(user);
            std::fs::write(&f, pw.expose()).unwrap();
            std::fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .unwrap();
        }
        // A runtime of its own, on a thread of its own: this may run inside a test's runtime.
        let mut opts = self.options();
        opts.credentials = None;
        let endpoint = self.endpoint();
        let (root, broker, patroni) = (
            self.root_password.clone(),
            self.broker_password.clone(),
            self.patroni_password.clone(),
        );
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async {
                    let c = EtcdClient::with_options(&[endpoint], opts).unwrap();
                    c.enable_auth(
                        &root,
                        &[
                            EtcdUser {
                                name: "broker",
                                password: &broker,
                                prefixes: TEST_PREFIXES,
                            },
                            EtcdUser {
                                name: "patroni",
                                password: &patroni,
                                prefixes: TEST_PREFIXES,
                            },
                        ],
                    )
                    .await
                })
        })
        .join()
        .unwrap()
        .expect("enable etcd's authentication");
    }

    /// The file holding `user`'s password.
    pub fn password_file(&self, user: &str) -> PathBuf {
        self.dir.join(format!("{user}.password"))
    }

    /// The client URL, `https://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.client_port)
    }

    /// How the broker reaches this etcd: TLS with the broker's certificate.
    pub fn options(&self) -> EtcdOptions {
        let pki = pki();
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

    /// The settings of a broker configuration's `[etcd]` table for this server (without
    /// `prefix`).
    pub fn config_lines(&self) -> String {
        let pki = pki();
        format!(
            "endpoints = [\"{}\"]\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n\
             username = \"broker\"\npassword_file = \"{}\"\n",
            self.endpoint(),
            pki.ca_file().display(),
            pki.broker.cert_file.display(),
            pki.broker.key_file.display(),
            self.password_file("broker").display(),
        )
    }

    /// A key prefix no other test of this process uses (`/test-<n>`, no trailing slash).
    pub fn fresh_prefix(&self) -> String {
        format!("/test-{}", self.counter.fetch_add(1, Ordering::Relaxed))
    }
}
