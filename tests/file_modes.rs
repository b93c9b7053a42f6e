//! File modes in a `file://` repository: objects 0600 and directories 0700 whatever the
//! umask of whoever runs walarchive (PostgreSQL's archive_command, a cron job's backup-push,
//! root by hand), or the mode `file_mode` asks for (0640: directories 0750). Base-backup
//! parts hold the whole database, `pg_authid` included. What root writes into the postgres
//! user's repository becomes that user's.

use testkit as common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::*;

/// Runs walarchive as the postgres user under `umask` (through `sh`), with `env`.
fn run_with_umask(umask: &str, args: &[&str], env: &[(String, String)], cwd: &Path) -> Output {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--", "env"]);
    for (k, v) in env {
        c.arg(format!("{k}={v}"));
    }
    c.args(["sh", "-c", &format!("umask {umask} && exec \"$0\" \"$@\"")])
        .arg(walarchive_bin())
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null());
    c.output().expect("run walarchive under a umask")
}

/// Every file and directory under `root` (root included) with its permission bits.
fn modes(root: &Path) -> Vec<(PathBuf, bool, u32)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        out.push((dir.clone(), true, mode_of(&dir)));
        for e in fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let m = mode_of(&p);
                out.push((p, false, m));
            }
        }
    }
    out
}

fn mode_of(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

/// Asserts that every object under the repository has `file` and every directory `dir`,
/// and that the repository holds what was asked of it: the descriptor, WAL, a backup's
/// parts and manifest.
#[track_caller]
fn assert_modes(repo: &Path, file: u32, dir: u32) {
    let all = modes(repo);
    let names: Vec<String> = all
        .iter()
        .map(|(p, _, _)| p.display().to_string())
        .collect();
    for wanted in [
        "walarchive.repo",
        "/part-000001",
        "/manifest.json",
        "/wal/00000001/",
    ] {
        assert!(
            names.iter().any(|n| n.contains(wanted)),
            "no {wanted} in the repository: {names:#?}"
        );
    }
    for (p, is_dir, m) in &all {
        let want = if *is_dir { dir } else { file };
        assert_eq!(*m, want, "{} is {m:04o}, expected {want:04o}", p.display());
    }
}

/// A cluster archiving under `umask` (archive_command runs `sh -c`) and a backup taken by
/// the postgres user under `umask`, both with
/// `env` (a file mode, or none). Returns the repository and the cluster.
fn archive_and_back_up(umask: &str, env: &[(String, String)]) -> (Repo, PgCluster) {
    let repo = Store::File.fresh();
    let pg = PgCluster::init(PgOptions {
        extra_conf: format!(
            "archive_mode = on\narchive_command = 'umask {umask} && {} --repo {} wal-push %p'\n",
            walarchive_bin().display(),
            repo.url
        ),
        ..Default::default()
    });
    pg.start_with_env(env);
    pg.psql("create table t as select g from generate_series(1, 5000) g");
    pg.archive_everything();
    let conn = format!("host=127.0.0.1 port={} user=postgres", pg.port());
    let out = run_with_umask(
        umask,
        &[
            "--repo",
            &repo.url,
            "backup-push",
            "--pg-conn",
            &conn,
            "--fast",
        ],
        env,
        Path::new("/tmp"),
    );
    assert_success(&out);
    pg.archive_everything();
    (repo, pg)
}

/// Pushes a copy of one of `pg`'s segments into a fresh repository as root under `umask`.
fn push_as_root(umask: &str, pg: &PgCluster, env: &[(String, String)]) -> Repo {
    let repo = Store::File.fresh();
    let seg = pg
        .done_segments()
        .into_iter()
        .next()
        .expect("an archived segment");
    let scratch = TestDir::new("walarchive-modes-");
    fs::copy(pg.wal_dir().join(&seg), scratch.join(&seg)).unwrap();
    let out = walarchive_cmd()
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .args([
            "--repo",
            &repo.url,
            "wal-push",
            scratch.join(&seg).to_str().unwrap(),
        ])
        .pre_exec_umask(umask)
        .output()
        .unwrap();
    assert_success(&out);
    repo
}

/// Sets the child's umask (it inherits it through exec).
trait PreExecUmask {
    fn pre_exec_umask(&mut self, umask: &str) -> &mut Self;
}

impl PreExecUmask for Command {
    fn pre_exec_umask(&mut self, umask: &str) -> &mut Self {
        use std::os::unix::process::CommandExt;
        let mask = nix::sys::stat::Mode::from_bits_truncate(u32::from_str_radix(umask, 8).unwrap());
        // SAFETY: umask is async-signal-safe and only changes the child's mask.
        unsafe {
            self.pre_exec(move || {
                nix::sys::stat::umask(mask);
                Ok(())
            })
        }
    }
}

#[test]
fn objects_are_private_whatever_the_umask() {
    for umask in ["022", "002"] {
        let (repo, pg) = archive_and_back_up(umask, &[]);
        assert_modes(&repo.path(), 0o600, 0o700);
        let by_root = push_as_root(umask, &pg, &[]);
        let all = modes(&by_root.path());
        assert!(all.iter().any(|(_, d, _)| !d), "nothing pushed by root");
        // Root wrote into the postgres user's repository: what it created is that user's
        // (else archive_command could neither read nor write there).
        let (uid, gid) = postgres_ids();
        for (p, is_dir, m) in all {
            let want = if is_dir { 0o700 } else { 0o600 };
            assert_eq!(m, want, "root, umask {umask}: {} is {m:04o}", p.display());
            let meta = fs::metadata(&p).unwrap();
            use std::os::unix::fs::MetadataExt;
            assert_eq!((meta.uid(), meta.gid()), (uid, gid), "{}", p.display());
        }
        // And the postgres user can push into it afterwards.
        let seg = pg
            .done_segments()
            .into_iter()
            .nth(1)
            .expect("a second segment");
        let scratch = TestDir::new_postgres("walarchive-modes-");
        fs::copy(pg.wal_dir().join(&seg), scratch.join(&seg)).unwrap();
        chown_postgres(scratch.path());
        assert_success(&by_root.run_as_postgres(
            &["wal-push", scratch.join(&seg).to_str().unwrap()],
            scratch.path(),
        ));
    }
}

#[test]
fn file_mode_grants_what_it_says() {
    let env = vec![("WALARCHIVE_FILE_MODE".to_string(), "0640".to_string())];
    // Under a umask wider (022) and narrower (077, PostgreSQL's own) than the mode.
    for umask in ["022", "077"] {
        let (repo, _pg) = archive_and_back_up(umask, &env);
        assert_modes(&repo.path(), 0o640, 0o750);
    }
    // A mode walarchive cannot use is a configuration error, by flag, variable or file key.
    let scratch = TestDir::new("walarchive-modes-");
    let config = scratch.join("walarchive.toml");
    fs::write(&config, "file_mode = \"0755\"\n").unwrap();
    let url = format!("file://{}/repo", scratch.path().display());
    for (args, env) in [
        (vec!["--file-mode", "0755"], vec![]),
        (
            vec![],
            vec![("WALARCHIVE_FILE_MODE".to_string(), "rw-r-----".to_string())],
        ),
        (vec!["--config", config.to_str().unwrap()], vec![]),
    ] {
        let mut a = vec!["--repo", url.as_str()];
        a.extend(args.iter().copied());
        a.push("wal-list");
        let out = run_walarchive(&a, &env);
        assert_code(&out, 6);
        let line = error_line(&out);
        assert!(
            line.contains("file_mode") && line.contains("0640"),
            "{line}"
        );
    }
}

/// backup-fetch gives every restored file and directory exactly the mode the manifest
/// recorded (here 0640 and 0750 beside PostgreSQL's 0600 and 0700), whatever the umask it
/// runs under: narrower (077) or none at all (000).
#[test]
fn backup_fetch_restores_the_manifests_modes_whatever_the_umask() {
    let (repo, pg) = archive_and_back_up("022", &[]);
    let data = pg.data_dir().to_path_buf();
    fs::set_permissions(data.join("PG_VERSION"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::set_permissions(data.join("base"), fs::Permissions::from_mode(0o750)).unwrap();
    let conn = format!("host=127.0.0.1 port={} user=postgres", pg.port());
    let out = run_with_umask(
        "022",
        &[
            "--repo",
            &repo.url,
            "backup-push",
            "--pg-conn",
            &conn,
            "--fast",
        ],
        &[],
        Path::new("/tmp"),
    );
    assert_success(&out);
    let source: std::collections::BTreeMap<PathBuf, u32> = modes(&data)
        .into_iter()
        .filter_map(|(p, _, m)| Some((p.strip_prefix(&data).ok()?.to_path_buf(), m)))
        .collect();
    // What the restore writes itself, and what changes in a running cluster.
    let own = [
        "",
        "backup_label",
        "postgresql.auto.conf",
        "recovery.signal",
        "postmaster.pid",
        "postmaster.opts",
    ];
    for umask in ["077", "000"] {
        let scratch = TestDir::new_postgres("walarchive-restore-modes-");
        let dest = scratch.join("data");
        let out = run_with_umask(
            umask,
            &[
                "--repo",
                &repo.url,
                "backup-fetch",
                dest.to_str().unwrap(),
                "LATEST",
            ],
            &[],
            Path::new("/tmp"),
        );
        assert_success(&out);
        let mut compared = 0;
        for (p, _, m) in modes(&dest) {
            let rel = p.strip_prefix(&dest).unwrap().to_path_buf();
            if own.iter().any(|o| rel == Path::new(o)) || rel.starts_with("pg_wal") {
                continue;
            }
            if let Some(want) = source.get(&rel) {
                assert_eq!(m, *want, "umask {umask}: {} is {m:04o}", rel.display());
                compared += 1;
            }
        }
        assert!(
            compared > 100,
            "umask {umask}: only {compared} entries compared"
        );
        assert_eq!(mode_of(&dest.join("PG_VERSION")), 0o640, "umask {umask}");
        assert_eq!(mode_of(&dest.join("base")), 0o750, "umask {umask}");
    }
}

/// An object already stored with a wider mode than the repository's (0644: an older
/// walarchive under umask 022) is narrowed by the next, identical, push of it: to 0600, or
/// to what `file_mode` allows (0640); one narrower than that is left as it is.
#[test]
fn an_identical_re_push_narrows_a_wider_object() {
    let pg = PgCluster::init(PgOptions::default());
    pg.start();
    let seg = pg.switch_wal();
    let scratch = TestDir::new_postgres("walarchive-modes-");
    fs::copy(pg.wal_dir().join(&seg), scratch.join(&seg)).unwrap();
    pg.stop();
    chown_postgres(scratch.path());
    let repo = Store::File.fresh();
    let object = repo
        .path()
        .join(format!("wal/{}/{}/{seg}", &seg[..8], &seg[8..16]));
    let file = scratch.join(&seg).to_str().unwrap().to_string();
    let args = ["--repo", repo.url.as_str(), "wal-push", file.as_str()];
    assert_success(&run_with_umask("022", &args, &[], scratch.path()));
    let push = |env: &[(String, String)]| {
        let out = run_with_umask("022", &args, env, scratch.path());
        assert_success(&out);
        assert!(
            stderr(&out).contains("already archived with identical content"),
            "{}",
            stderr(&out)
        );
    };
    let original = fs::read(&object).unwrap();
    let group = [("WALARCHIVE_FILE_MODE".to_string(), "0640".to_string())];
    for (was, env, becomes) in [
        (0o644, &[][..], 0o600),
        (0o666, &group[..], 0o640),
        (0o644, &group[..], 0o640),
        (0o400, &[][..], 0o400),
    ] {
        fs::set_permissions(&object, fs::Permissions::from_mode(was)).unwrap();
        push(env);
        assert_eq!(
            mode_of(&object),
            becomes,
            "{was:04o} with {env:?}: {:04o}",
            mode_of(&object)
        );
        assert_eq!(fs::read(&object).unwrap(), original);
    }
}
