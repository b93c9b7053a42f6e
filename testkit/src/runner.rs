//! The walarchive binary as PostgreSQL runs it: a copy any user can execute, run as root or
//! as `postgres`, and assertions on its exit status and its one-line errors.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use crate::pg::runuser_cmd;
use crate::*;

/// The binary `name` of the workspace's `package` as cargo built it beside the running test or bench
/// (`target/<profile>/deps/<test>-<hash>` runs; `target/<profile>/<name>` is the binary).
/// Cargo builds a package's binaries before its tests and benches; the packages without
/// it (the broker's) get it built here, once.
pub fn built_binary(package: &str, name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let mut dir = exe.parent().expect("the test's directory");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("the profile's directory");
    }
    let bin = dir.join(name);
    if !bin.exists() {
        let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cargo
            .args(["build", "-p", package, "--bin", name])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if dir.ends_with("release") {
            cargo.arg("--release");
        }
        let st = cargo.status().expect("run cargo build");
        assert!(st.success(), "cargo build --bin {name} failed");
    }
    assert!(bin.exists(), "{} not found", bin.display());
    bin
}

/// Path of a copy of the `walarchive` binary in a 0755 directory under /tmp
/// that the postgres user can execute (copied once per test process).
pub fn walarchive_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let src = built_binary("walarchive-cli", "walarchive");
        let dir = proc_dir().join("bin");
        fs::create_dir_all(&dir).unwrap();
        chmod(&dir, 0o755);
        let dst = dir.join("walarchive");
        fs::copy(&src, &dst)
            .unwrap_or_else(|e| panic!("copy {} -> {}: {e}", src.display(), dst.display()));
        chmod(&dst, 0o755);
        dst
    })
    .clone()
}

/// A `Command` for the copied walarchive binary (runs as root; add
/// args/env/stdin as needed).
pub fn walarchive_cmd() -> Command {
    let mut c = Command::new(walarchive_bin());
    c.stdin(Stdio::null());
    c
}

/// Runs the copied walarchive binary with `args` and extra `env`, as root,
/// and returns its output (never panics on a non-zero exit).
pub fn run_walarchive(args: &[&str], env: &[(String, String)]) -> Output {
    walarchive_cmd()
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("run walarchive")
}

/// Like [`run_walarchive`] but as the postgres user (what archive_command sees),
/// with `cwd` as working directory.
pub fn run_walarchive_as_postgres(args: &[&str], env: &[(String, String)], cwd: &Path) -> Output {
    let mut c = runuser_cmd(&walarchive_bin(), env);
    c.args(args).current_dir(cwd).stdin(Stdio::null());
    c.output().expect("run walarchive as postgres")
}

/// Exit code of `out` (-1 when killed by a signal).
pub fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Panics (showing stdout and stderr) unless `out` exited 0; returns `out`.
#[track_caller]
pub fn assert_success(out: &Output) -> &Output {
    assert!(
        out.status.success(),
        "command failed with {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        stdout(out),
        stderr(out)
    );
    out
}

/// Panics (showing stdout and stderr) unless `out` exited with `expected`.
#[track_caller]
pub fn assert_code(out: &Output, expected: i32) -> &Output {
    assert_eq!(
        code(out),
        expected,
        "unexpected exit code\n--- stdout ---\n{}\n--- stderr ---\n{}",
        stdout(out),
        stderr(out)
    );
    out
}

/// A refused conflicting push: exit status 4, a message that says "different content" and
/// names both checksums (sha256). Returns stderr.
#[track_caller]
pub fn assert_conflict(out: &Output) -> String {
    assert_code(out, 4);
    let err = stderr(out);
    assert!(
        // Both digests, of WAL content (BLAKE3 since object format version 3).
        err.contains("different content") && err.matches("blake3 ").count() >= 2,
        "{err}"
    );
    err
}

/// The single `walarchive <command>: error: ...` line of stderr (panics unless exactly one).
#[track_caller]
pub fn error_line(out: &Output) -> String {
    let err = stderr(out);
    let lines: Vec<&str> = err.lines().filter(|l| l.contains(": error:")).collect();
    assert_eq!(
        lines.len(),
        1,
        "expected exactly one error line\n--- stdout ---\n{}\n--- stderr ---\n{err}",
        stdout(out)
    );
    eprintln!("error line: {}", lines[0]);
    lines[0].to_string()
}
