//! One real S3 server (`s3s-fs`) per test process, for repositories in object storage.
//!
//! Why s3s-fs, started like this: it is the S3 server the workspace's own tests use (see
//! `testkit::s3`), and it stores every object as a plain file under `<root>/<bucket>/<key>`,
//! so a test can see every key the nodes and the broker wrote without an S3 listing of its
//! own. A bucket is a directory: creating one is a `mkdir`. The server runs under a `sh`
//! watchdog in its own process group that kills it once this process is gone (statics are
//! never dropped, and a killed test runs no destructors), like the etcd of `etcd.rs`.

use std::io::Write as _;
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::cells::{free_port, sh_quote};

/// The S3 server of this test process.
pub struct S3Server {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Where it keeps buckets (directories) and objects (files).
    pub root: PathBuf,
    /// Access key.
    pub access_key: String,
    /// Secret key.
    pub secret_key: String,
    counter: AtomicU64,
}

/// The S3 server of this test process (started on first use).
pub fn s3() -> &'static S3Server {
    static S3: OnceLock<S3Server> = OnceLock::new();
    S3.get_or_init(S3Server::start)
}

fn program() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for home in ["CARGO_HOME", "HOME"] {
        if let Some(h) = std::env::var_os(home) {
            let h = PathBuf::from(h);
            dirs.push(if home == "HOME" {
                h.join(".cargo/bin")
            } else {
                h.join("bin")
            });
        }
    }
    dirs.into_iter()
        .map(|d| d.join("s3s-fs"))
        .find(|p| p.is_file())
        .expect("s3s-fs not found (PATH, ~/.cargo/bin): run scripts/setup")
}

impl S3Server {
    fn start() -> S3Server {
        let prog = program();
        let pid = std::process::id();
        let dir = tempfile::Builder::new()
            .prefix(&format!("walarchive-broker-s3-{pid}-"))
            .tempdir_in("/tmp")
            .expect("temp dir under /tmp")
            .keep();
        let root = dir.join("root");
        std::fs::create_dir(&root).unwrap();
        let log = dir.join("s3s-fs.log");
        let (access_key, secret_key) = (
            "broker-test-access".to_string(),
            "broker-test-secret".to_string(),
        );
        let rm = if super::cells::keep_dirs() {
            ":".to_string()
        } else {
            format!("rm -rf {}", sh_quote(&dir.to_string_lossy()))
        };
        for _attempt in 0..3 {
            let port = free_port();
            let script = format!(
                "\"$0\" \"$@\" >{log} 2>&1 </dev/null & s=$!\n\
                 while kill -0 {pid} 2>/dev/null; do\n\
                   if ! kill -0 $s 2>/dev/null; then wait $s; exit $?; fi\n\
                   sleep 0.5\n\
                 done\n\
                 kill $s 2>/dev/null; sleep 1; kill -9 $s 2>/dev/null; {rm}; exit 0",
                log = sh_quote(&log.to_string_lossy()),
            );
            let mut watchdog = Command::new("sh")
                .arg("-c")
                .arg(script)
                .arg(&prog)
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--access-key", &access_key, "--secret-key", &secret_key])
                .arg(&root)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .expect("spawn the s3s-fs watchdog");
            let started = Instant::now();
            loop {
                if let Ok(Some(st)) = watchdog.try_wait() {
                    eprintln!("s3s-fs exited early ({st}); retrying on another port");
                    break;
                }
                if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
                    let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n");
                    eprintln!(
                        "s3s-fs on 127.0.0.1:{port} ready in {:.1} s",
                        started.elapsed().as_secs_f64()
                    );
                    return S3Server {
                        port,
                        root,
                        access_key,
                        secret_key,
                        counter: AtomicU64::new(0),
                    };
                }
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "s3s-fs did not start:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        panic!(
            "s3s-fs failed to start three times:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A new, empty bucket (a directory of the server's root).
    pub fn fresh_bucket(&self) -> String {
        let name = format!(
            "b-{}-{}",
            std::process::id(),
            self.counter.fetch_add(1, Ordering::Relaxed)
        );
        std::fs::create_dir(self.root.join(&name)).unwrap();
        name
    }

    /// A walarchive configuration file at `path` (mode 0644, so that the nodes' OS user
    /// reads it) with this server's endpoint and credentials.
    pub fn walarchive_config(&self, path: &Path) {
        std::fs::write(
            path,
            format!(
                "[storage]\naws_access_key_id = \"{}\"\naws_secret_access_key = \"{}\"\n\
                 aws_region = \"us-east-1\"\naws_endpoint = \"{}\"\naws_allow_http = \"true\"\n",
                self.access_key,
                self.secret_key,
                self.endpoint()
            ),
        )
        .unwrap();
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
    }
}

/// Every file under `dir`, as paths relative to it, sorted.
pub fn files_under(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                out.push(p.strip_prefix(base).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}
