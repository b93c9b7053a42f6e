//! The secrets audit: no known secret in the command line of any process, in a log file, or
//! in `Debug` output.
//!
//! Command lines are world-readable (`/proc/<pid>/cmdline`, `ps`), so a password there is
//! everybody's. Processes come and go (an `archive_command`'s walarchive lives for a
//! fraction of a second), so [`ProcessWatch`] samples `/proc` through a whole scenario and
//! keeps every distinct command line; the secrets are matched at the end, when the test knows
//! them all (instance passwords are generated during the provision it watches). Findings name
//! the secret (`"cell a token"`), never print it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Known secrets: (what it is, its value).
pub type Secrets = Vec<(String, String)>;

/// Every distinct command line seen in `/proc` while it runs (sampled every 100 ms).
pub struct ProcessWatch {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<BTreeSet<String>>,
}

/// The command lines of all processes now (arguments joined by spaces).
pub fn command_lines() -> Vec<String> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        if !e
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            if !cmd.is_empty() {
                out.push(
                    String::from_utf8_lossy(&cmd)
                        .replace('\0', " ")
                        .trim_end()
                        .to_string(),
                );
            }
        }
    }
    out
}

impl ProcessWatch {
    /// Starts sampling.
    pub fn start() -> ProcessWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut seen = BTreeSet::new();
            while !s.load(Ordering::Relaxed) {
                seen.extend(command_lines());
                std::thread::sleep(Duration::from_millis(100));
            }
            seen.extend(command_lines());
            seen
        });
        ProcessWatch { stop, thread }
    }

    /// Stops sampling: the distinct command lines seen.
    pub fn finish(self) -> BTreeSet<String> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the /proc sampler")
    }
}

/// Which of `secrets` appear in which of `texts` (described by `name`): one line per finding,
/// naming the secret, not showing it. `skip(text, what)` exempts a text from one secret.
pub fn findings<'a>(
    texts: impl IntoIterator<Item = (String, &'a str)>,
    secrets: &Secrets,
    skip: impl Fn(&str, &str) -> bool,
) -> Vec<String> {
    let mut out = Vec::new();
    for (name, text) in texts {
        for (what, value) in secrets {
            assert!(value.len() >= 8, "{what} is too short to search for");
            if text.contains(value.as_str()) && !skip(text, what) {
                let shown: String = name.replace(value.as_str(), "<SECRET>");
                out.push(format!("{what} in {shown}"));
            }
        }
    }
    out
}

/// The log files under `dir` (any depth): files named `*.log`.
pub fn log_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                todo.push(e.path());
            } else if ft.is_file() && e.file_name().to_string_lossy().ends_with(".log") {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// The secrets found in the files `paths`.
pub fn in_files(paths: &[PathBuf], secrets: &Secrets) -> Vec<String> {
    let texts: Vec<(String, String)> = paths
        .iter()
        .map(|p| {
            let bytes = std::fs::read(p).unwrap_or_default();
            (
                p.display().to_string(),
                String::from_utf8_lossy(&bytes).into_owned(),
            )
        })
        .collect();
    findings(
        texts.iter().map(|(n, t)| (n.clone(), t.as_str())),
        secrets,
        |_, _| false,
    )
}

/// The REST API passwords in the `node.json` files of the cells under `dir` (any depth).
pub fn restapi_passwords(dir: &Path) -> Secrets {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                // Not into PostgreSQL's data directories.
                if !p.join("PG_VERSION").exists() {
                    todo.push(p);
                }
            } else if e.file_name() == "node.json" {
                let v: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
                let pw = v["restapi_password"]
                    .as_str()
                    .unwrap_or_else(|| panic!("no restapi_password in {}", p.display()));
                out.push((
                    format!("REST API password of {}", p.display()),
                    pw.to_string(),
                ));
            }
        }
    }
    out
}

/// The password of a `postgresql://user:password@host...` URI.
pub fn uri_password(uri: &str) -> String {
    let rest = uri.split_once("://").expect("a URI").1;
    let userinfo = rest.split_once('@').expect("user info in the URI").0;
    userinfo
        .split_once(':')
        .expect("a password in the URI")
        .1
        .to_string()
}
