//! Repositories on each backend, and walarchive invocations against them, for the tests.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use crate::*;

/// A backend to test against.
#[derive(Clone, Copy, Debug)]
pub enum Store {
    S3,
    Azure,
    Swift,
    /// Swift through its S3 API (the s3api middleware) and walarchive's S3 backend.
    SwiftS3,
    /// Google Cloud Storage (fake-gcs-server; see `crate::gcs`).
    Gcs,
    File,
}

/// A fresh, empty repository: its URL, the environment walarchive needs for it, and (for
/// the local-directory backend) the directory, owned by postgres so archive_command can write.
pub struct Repo {
    pub url: String,
    pub env: Vec<(String, String)>,
    pub dir: Option<TestDir>,
}

impl Store {
    pub fn fresh(self) -> Repo {
        match self {
            Store::S3 => Repo {
                url: format!("s3://{}/db", s3().fresh_bucket()),
                env: s3().env(),
                dir: None,
            },
            Store::Azure => Repo {
                url: format!("az://{}/db", azurite().fresh_container()),
                env: azurite().env(),
                dir: None,
            },
            Store::Swift => Repo {
                url: format!("swift://{}/db", swift().fresh_container()),
                env: swift().env(),
                dir: None,
            },
            Store::SwiftS3 => Repo {
                // A Swift container is an s3api bucket.
                url: format!("s3://{}/db", swift().fresh_container()),
                env: swift().s3_env(),
                dir: None,
            },
            Store::Gcs => Repo {
                url: format!("gs://{}/db", gcs().fresh_bucket()),
                env: gcs().env(),
                dir: None,
            },
            Store::File => {
                let dir = TestDir::new_postgres("walarchive-repo-");
                Repo {
                    url: format!("file://{}/repo", dir.path().display()),
                    env: vec![],
                    dir: Some(dir),
                }
            }
        }
    }
}

impl Repo {
    /// `postgresql.conf` lines that archive into this repository.
    pub fn archive_conf(&self) -> String {
        format!(
            "archive_mode = on\narchive_command = '{} --repo {} wal-push %p'\n",
            walarchive_bin().display(),
            self.url
        )
    }

    /// A new cluster archiving into this repository, started with the repository's
    /// environment; `opts.extra_conf` is added after the archive settings.
    pub fn start_primary(&self, opts: PgOptions) -> PgCluster {
        let extra_conf = format!("{}{}", self.archive_conf(), opts.extra_conf);
        let pg = PgCluster::init(PgOptions { extra_conf, ..opts });
        pg.start_with_env(&self.env);
        pg
    }

    /// `postgresql.conf` line that restores from this repository.
    pub fn restore_conf(&self) -> String {
        format!(
            "restore_command = '{} --repo {} wal-fetch %f %p'\n",
            walarchive_bin().display(),
            self.url
        )
    }

    /// Runs walarchive (as root) with `--repo` and this repository's environment.
    pub fn run(&self, args: &[&str]) -> Output {
        let mut a = vec!["--repo", self.url.as_str()];
        a.extend_from_slice(args);
        run_walarchive(&a, &self.env)
    }

    /// Runs walarchive as the postgres user.
    pub fn run_as_postgres(&self, args: &[&str], cwd: &Path) -> Output {
        let mut a = vec!["--repo", self.url.as_str()];
        a.extend_from_slice(args);
        run_walarchive_as_postgres(&a, &self.env, cwd)
    }

    /// The repository directory (local-directory backend only).
    pub fn path(&self) -> PathBuf {
        self.dir.as_ref().expect("a file repository").join("repo")
    }

    /// `wal-list --json`.
    pub fn wal_list(&self) -> Vec<serde_json::Value> {
        json_array(&self.run(&["wal-list", "--json"]))
    }

    /// The names `wal-list` lists (segments, history files, ...).
    pub fn wal_names(&self) -> Vec<String> {
        self.wal_list()
            .iter()
            .map(|e| e["name"].as_str().unwrap().to_string())
            .collect()
    }

    /// Asserts that every segment in `names` is in the repository (`wal-list`) and decodes,
    /// through `wal-fetch`, to the bytes in `pg`'s pg_wal (keep them there with
    /// `wal_keep_size`).
    #[track_caller]
    pub fn assert_archived_intact(&self, pg: &PgCluster, names: &[String]) {
        let listed: Vec<String> = self
            .wal_list()
            .iter()
            .filter(|e| e["kind"] == "segment")
            .map(|e| e["name"].as_str().unwrap().to_string())
            .collect();
        let scratch = TestDir::new("walarchive-intact-");
        for name in names {
            assert!(listed.contains(name), "{name} is not in the repository");
            let dest = scratch.join(name);
            assert_success(&self.run(&["wal-fetch", name, dest.to_str().unwrap()]));
            assert!(
                fs::read(&dest).unwrap() == fs::read(pg.wal_dir().join(name)).unwrap(),
                "{name}: the archived copy differs from pg_wal's"
            );
        }
    }

    /// `backup-push --fast --json` of `pg` (over TCP); panics on failure.
    pub fn backup_push(&self, pg: &PgCluster, extra: &[&str]) -> serde_json::Value {
        let out = self.try_backup_push(pg, extra);
        serde_json::from_slice(&assert_success(&out).stdout).unwrap()
    }

    /// `backup-push --fast --json` of `pg`, whatever its outcome. Runs as the postgres user,
    /// as a cron job would: what it creates in a local repository must stay writable by
    /// archive_command.
    pub fn try_backup_push(&self, pg: &PgCluster, extra: &[&str]) -> Output {
        let conn = format!("host=127.0.0.1 port={} user=postgres", pg.port());
        let mut args = vec!["backup-push", "--pg-conn", &conn, "--fast", "--json"];
        args.extend_from_slice(extra);
        self.run_as_postgres(&args, Path::new("/tmp"))
    }

    /// `backup-list --json [--detail]`.
    pub fn backup_list(&self, detail: bool) -> Vec<serde_json::Value> {
        let mut args = vec!["backup-list", "--json"];
        if detail {
            args.push("--detail");
        }
        json_array(&self.run(&args))
    }

    /// backup-fetch into a new cluster (run as postgres, as an operator would); unstarted.
    pub fn restore(&self, backup: &str, args: &[&str]) -> PgCluster {
        let c = PgCluster::empty();
        let out = self.try_restore_into(&c, backup, args);
        assert_success(&out);
        c.adopt_data_dir();
        c
    }

    /// Restores what `restorable-window --json` resolved (`target`: its backup and recovery
    /// setting) with `--target-action promote`, archiving off; unstarted.
    pub fn restore_resolved(&self, target: &serde_json::Value) -> PgCluster {
        let setting = target["recovery_target"]["setting"].as_str().unwrap();
        let flag = match setting {
            "recovery_target_time" => "--target-time",
            "recovery_target_lsn" => "--target-lsn",
            other => panic!("unexpected setting {other}"),
        };
        let value = target["recovery_target"]["value"].as_str().unwrap();
        let backup = target["backup"].as_str().unwrap();
        let c = self.restore(backup, &[flag, value, "--target-action", "promote"]);
        c.append_conf("archive_mode = off\n");
        c
    }

    /// backup-fetch into `c`'s data directory, whatever its outcome.
    pub fn try_restore_into(&self, c: &PgCluster, backup: &str, args: &[&str]) -> Output {
        let dest = c.data_dir().to_str().unwrap().to_string();
        let mut a = vec!["backup-fetch", &dest, backup];
        a.extend_from_slice(args);
        self.run_as_postgres(&a, c.dir())
    }
}

fn json_array(out: &Output) -> Vec<serde_json::Value> {
    serde_json::from_slice::<serde_json::Value>(&assert_success(out).stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}
