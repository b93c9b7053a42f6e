//! Process-wide basics: temp dirs under /tmp, the `postgres` OS user, detached watchdogs.
//!
//! PostgreSQL refuses to run as root and cannot traverse `target/` when it sits under
//! `/root`, so everything it touches lives in fresh 0755 directories under `/tmp`; a test
//! process that is killed runs no destructors, so what must be cleaned up is cleaned up by a
//! watchdog shell that outlives it.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use crate::*;

/// True when `WALARCHIVE_KEEP_TEST_DIRS=1`: temp dirs are kept for inspection.
pub fn keep_dirs() -> bool {
    std::env::var("WALARCHIVE_KEEP_TEST_DIRS").is_ok_and(|v| v == "1")
}

/// `s` as one word of a `sh` command line ([`walarchive::shell::quote`]); test paths and
/// names never hold a NUL byte.
pub fn sh_quote(s: &str) -> String {
    walarchive::shell::quote(s)
        .expect("test strings hold no NUL byte")
        .into_owned()
}

pub(crate) fn path_str(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

/// Numeric uid and gid of the `postgres` OS user.
pub fn postgres_ids() -> (u32, u32) {
    static IDS: OnceLock<(u32, u32)> = OnceLock::new();
    *IDS.get_or_init(|| {
        let id = |flag: &str| -> u32 {
            let out = Command::new("id")
                .args([flag, "postgres"])
                .output()
                .expect("run `id`");
            assert!(
                out.status.success(),
                "OS user `postgres` does not exist: run scripts/setup"
            );
            String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
        };
        (id("-u"), id("-g"))
    })
}

/// `chown -R postgres:postgres path`.
pub fn chown_postgres(path: &Path) {
    let (uid, gid) = postgres_ids();
    let st = Command::new("chown")
        .arg("-R")
        .arg(format!("{uid}:{gid}"))
        .arg(path)
        .status()
        .expect("run chown");
    assert!(st.success(), "chown -R postgres {}", path.display());
}

/// Sets the permission bits of `path` (e.g. 0o755).
pub fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

/// Starts `script` with `sh -c`, fully detached (double fork, own process
/// group, no stdio), and returns immediately. Used for watchdogs.
pub(crate) fn spawn_detached(script: &str) {
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!("( {script} ) </dev/null >/dev/null 2>&1 &"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .status()
        .expect("spawn watchdog");
    assert!(st.success());
}

/// A temp directory under /tmp (mode 0755), removed on drop unless
/// `WALARCHIVE_KEEP_TEST_DIRS=1`.
pub struct TestDir {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

/// Marker file in temp dirs created with `WALARCHIVE_KEEP_TEST_DIRS=1`;
/// [`sweep_stale_dirs`] leaves such dirs alone.
const KEEP_MARKER: &str = ".walarchive-keep";

/// Removes `/tmp/walarchive-<kind>-<pid>-*` dirs (stopping any PostgreSQL
/// in `<dir>/data`) whose process is gone: leftovers of a test process that
/// was killed before its watchdogs were in place. Runs once per process.
pub fn sweep_stale_dirs() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let Ok(entries) = fs::read_dir("/tmp") else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix("walarchive-") else {
                continue;
            };
            let Some(pid) = rest.split('-').nth(1).and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            let path = e.path();
            if Path::new(&format!("/proc/{pid}")).exists()
                || !path.is_dir()
                || path.join(KEEP_MARKER).exists()
            {
                continue;
            }
            let data = path.join("data");
            if data.join("postmaster.pid").exists() {
                // The left-over server's own major stops it (another major's pg_ctl refuses).
                let bin = major_of_data_dir(&data).map_or_else(pg_bin_dir, bin_dir_for);
                let _ = Command::new("runuser")
                    .args(["-u", "postgres", "--"])
                    .arg(bin.join("pg_ctl"))
                    .arg("-D")
                    .arg(&data)
                    .args(["-m", "immediate", "-w", "-t", "30", "stop"])
                    .current_dir("/tmp")
                    .stdin(Stdio::null())
                    .output();
            }
            let _ = fs::remove_dir_all(&path);
        }
    });
}

impl TestDir {
    /// A fresh directory `/tmp/<prefix><pid>-XXXXXX`, owned by root, mode
    /// 0755. Use prefixes of the form `walarchive-<kind>-`.
    pub fn new(prefix: &str) -> TestDir {
        sweep_stale_dirs();
        let dir = tempfile::Builder::new()
            .prefix(&format!("{prefix}{}-", std::process::id()))
            .tempdir_in("/tmp")
            .expect("create temp dir under /tmp");
        let path = dir.path().to_path_buf();
        chmod(&path, 0o755);
        if keep_dirs() {
            fs::write(path.join(KEEP_MARKER), b"").unwrap();
        }
        TestDir {
            dir: Some(dir),
            path,
        }
    }

    /// Like [`TestDir::new`] but owned by the `postgres` user.
    pub fn new_postgres(prefix: &str) -> TestDir {
        let d = TestDir::new(prefix);
        chown_postgres(&d.path);
        d
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.path.join(p)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if let Some(mut d) = self.dir.take() {
            if keep_dirs() {
                d.disable_cleanup(true);
                eprintln!("WALARCHIVE_KEEP_TEST_DIRS: keeping {}", self.path.display());
            }
        }
    }
}

/// A directory for this test process (binary copy, object-store data), mode
/// 0755, removed by a watchdog after the process exits.
pub fn proc_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let pid = std::process::id();
        sweep_stale_dirs();
        let dir = tempfile::Builder::new()
            .prefix(&format!("walarchive-test-{pid}-"))
            .tempdir_in("/tmp")
            .expect("create process temp dir under /tmp")
            .keep();
        chmod(&dir, 0o755);
        if keep_dirs() {
            fs::write(dir.join(KEEP_MARKER), b"").unwrap();
            eprintln!("WALARCHIVE_KEEP_TEST_DIRS: keeping {}", dir.display());
        } else {
            spawn_detached(&format!(
                "while kill -0 {pid} 2>/dev/null; do sleep 1; done; sleep 2; rm -rf {}",
                sh_quote(path_str(&dir))
            ));
        }
        dir
    })
}

/// Every file of the tree under `root`, relative to it, with its content, sorted: to show a
/// directory (a repository) unchanged.
pub fn file_tree(root: &Path) -> Vec<(String, Vec<u8>)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                out.push((rel, fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}
