//! One real etcd per test process, for the broker's tests.
//!
//! Why it looks like this (the same reasoning as the workspace's `tests/common`): the broker's
//! state lives in etcd and its concurrency rests on etcd's transactions, so the tests run the
//! real server (`/usr/bin/etcd`, Debian's etcd-server; `WALARCHIVE_ETCD` overrides), not a
//! mock. It is started lazily, once per test binary, in a `OnceLock`; tests share it and each
//! uses its own key prefix ([`EtcdServer::fresh_prefix`]). Statics are never dropped and a
//! killed test process runs no destructors, so etcd runs under a `sh -c` watchdog in its own
//! process group that kills it and removes its data directory once this process is gone.
//!
//! This file is self-contained (std and tempfile only) because the library's unit tests
//! include it too (`#[path]` in `src/lib.rs`).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The etcd server shared by the tests of this process.
pub struct EtcdServer {
    /// Client port on 127.0.0.1.
    pub client_port: u16,
    /// Peer port on 127.0.0.1.
    pub peer_port: u16,
    /// Data directory (removed by the watchdog).
    pub dir: PathBuf,
    counter: AtomicU64,
}

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

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A port on 127.0.0.1 that is free right now (the kernel's choice).
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// `GET path` on 127.0.0.1:port; the status code and body (None when unreachable).
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

impl EtcdServer {
    fn start() -> EtcdServer {
        let bin = binary();
        assert!(
            bin.exists(),
            "{} not found: run scripts/setup (apt: etcd-server)",
            bin.display()
        );
        let pid = std::process::id();
        let mut last_log = String::new();
        for _attempt in 0..3 {
            // On tmpfs when there is one: etcd fsyncs every write, and a disk shared with
            // busy builds makes it slow enough for Patroni's requests to time out.
            let parent = if std::path::Path::new("/dev/shm").is_dir() {
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
            let client = format!("http://127.0.0.1:{client_port}");
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
                if http_get(client_port, "/health")
                    .is_some_and(|(s, b)| s == 200 && b.contains("true"))
                {
                    eprintln!(
                        "etcd on 127.0.0.1:{client_port} ready in {:.1} s ({})",
                        started.elapsed().as_secs_f64(),
                        dir.display()
                    );
                    return EtcdServer {
                        client_port,
                        peer_port,
                        dir,
                        counter: AtomicU64::new(0),
                    };
                }
                if started.elapsed() > Duration::from_secs(60) {
                    let _ = watchdog.kill();
                    panic!(
                        "etcd did not become ready within 60 s\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        panic!("etcd failed to start three times; last log:\n{last_log}");
    }

    /// The client URL, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// A key prefix no other test of this process uses (`/test-<n>`, no trailing slash).
    pub fn fresh_prefix(&self) -> String {
        format!("/test-{}", self.counter.fetch_add(1, Ordering::Relaxed))
    }
}
