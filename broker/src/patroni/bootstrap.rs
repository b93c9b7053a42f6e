//! A node that bootstraps its cluster from another instance's archive (a clone): Patroni's
//! custom bootstrap method and the two scripts it runs.
//!
//! Patroni 3.0.2 runs a custom bootstrap only on the member that wins the `initialize` key,
//! as `command --scope=S --datadir=D`; with `keep_existing_recovery_conf` it keeps the
//! recovery settings and `recovery.signal` that walarchive's `backup-fetch --target-*`
//! writes, starts PostgreSQL, waits for the promotion at the target, and then runs
//! `post_bootstrap` (with a connection string) *before* it sets the real `pg_hba`: until
//! then only the local superuser and replication user get in. So:
//!
//! * `restore-bootstrap.sh` restores the backup (`--progress-file` for the cell's status),
//!   removes what belongs to the source's Patroni (`patroni.dynamic.json`, the `*.backup`
//!   copies of its configuration) and every archive setting of the source from the restored
//!   configuration files: `postgresql.auto.conf` overrides the `postgresql.conf` Patroni
//!   writes, so a source's `ALTER SYSTEM SET archive_command` would make the clone archive
//!   into its source, whose system identifier it shares (walarchive cannot tell them apart).
//!   On failure it leaves `restore.failed` (`{"status", "stderr"}`), which also tells the cell
//!   never to restart this Patroni (a restarted one would bootstrap again, forever).
//! * `restore-post-bootstrap.sh` takes the login away from the source's binding roles and
//!   group role, in one idempotent `DO` block quoting names server-side (`%I`), so no
//!   credential of the source ever opens the clone.

use std::path::Path;

use serde::{Deserialize, Serialize};
use walarchive::shell::{quote, QuoteError};

/// File name of the custom bootstrap script in the node directory.
pub const RESTORE_BOOTSTRAP_SCRIPT: &str = "restore-bootstrap.sh";
/// File name of the post-bootstrap script in the node directory.
pub const RESTORE_POST_BOOTSTRAP_SCRIPT: &str = "restore-post-bootstrap.sh";
/// `backup-fetch --progress-file`, in the node directory.
pub const RESTORE_PROGRESS_FILE: &str = "restore-progress.json";
/// Written by the bootstrap script when the restore failed, in the node directory.
pub const RESTORE_FAILED_FILE: &str = "restore.failed";
/// Patroni's name for the bootstrap method.
pub const METHOD: &str = "walarchive_restore";

/// Where a node bootstrapped from an archive stops recovering: walarchive's `--target-time`
/// or `--target-lsn`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum BootstrapTarget {
    /// An RFC 3339 time with a zone (`2026-12-07T10:15:00Z`).
    Time(String),
    /// An LSN (`0/5A3F2D8`).
    Lsn(String),
}

/// How to bootstrap a cluster from a point in another instance's archive (Patroni's custom
/// bootstrap, see the module's comment).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootstrapSpec {
    /// The repository restored from (read only: the node archives into its own).
    pub source_repository: String,
    /// The base backup to restore (a name, or `LATEST`).
    pub backup: String,
    /// Where recovery stops; the node then promotes.
    pub recovery_target: BootstrapTarget,
    /// `recovery_target_timeline`, when the target is off the archive's newest timeline
    /// (`latest` otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<u32>,
    /// Take the login away from every binding role (`b_*`, `h_*`) and the group role of the
    /// source before anyone can connect: a clone never honours its source's credentials.
    #[serde(default)]
    pub disable_roles: bool,
    /// The source's group role (owner of the application database).
    pub group_role: String,
    /// The source is the node's own repository: a disaster recovery restores an instance from
    /// its own archive and goes on archiving there on a new timeline. Without it a source
    /// equal to the node's repository is refused (a clone must archive elsewhere).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub same_repository: bool,
}

/// The longest backup name a bootstrap spec may name.
pub const BACKUP_NAME_MAX: usize = 128;

impl BootstrapTarget {
    /// The option and value walarchive's `backup-fetch` takes: times in one form
    /// (`2026-12-07 10:15:00.000000+00`), never as they were written; LSNs as walarchive
    /// prints them.
    pub fn backup_fetch_args(&self) -> Result<[String; 2], String> {
        match self {
            BootstrapTarget::Time(t) => {
                let at = walarchive::manifest::parse_time(t).ok_or_else(|| {
                    format!("bootstrap.recovery_target: {t:?} is not an RFC 3339 time with a zone")
                })?;
                Ok([
                    "--target-time".into(),
                    at.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string(),
                ])
            }
            BootstrapTarget::Lsn(l) => {
                let lsn: walarchive::Lsn = l.parse().map_err(|_| {
                    format!("bootstrap.recovery_target: {l:?} is not an LSN (0/5A3F2D8)")
                })?;
                Ok(["--target-lsn".into(), lsn.to_string()])
            }
        }
    }
}

/// `restore-bootstrap.sh`: see the module's comment. `timeline` is `--target-timeline`.
pub fn restore_bootstrap_script(
    walarchive: &Path,
    node_dir: &Path,
    spec: &BootstrapSpec,
) -> Result<String, QuoteError> {
    // validate() refused what has no arguments; a spec that slipped past it fails here.
    let [opt, value] = spec
        .recovery_target
        .backup_fetch_args()
        .map_err(|_| QuoteError)?;
    let timeline = match spec.timeline {
        Some(n) => format!(" --target-timeline {n}"),
        None => String::new(),
    };
    Ok(format!(
        r#"#!/bin/sh
# Written by walarchive-broker: Patroni's custom bootstrap "{METHOD}" (a clone restored
# from another instance's archive).
node_dir={node_dir}
datadir=
for arg; do
    case "$arg" in
        --datadir=*) datadir="${{arg#--datadir=}}" ;;
    esac
done
if [ -z "$datadir" ]; then
    echo "restore-bootstrap: no --datadir argument" >&2
    exit 2
fi
failed() {{
    # $1: the status; the last lines of walarchive's output say why.
    tail -n 10 "$node_dir/restore-stderr.log" 2>/dev/null | python3 -c 'import json, sys; print(json.dumps({{"status": int(sys.argv[1]), "stderr": sys.stdin.read()}}))' "$1" >"$node_dir/.{RESTORE_FAILED_FILE}.tmp" \
        || printf '{{"status": %d, "stderr": ""}}\n' "$1" >"$node_dir/.{RESTORE_FAILED_FILE}.tmp"
    mv "$node_dir/.{RESTORE_FAILED_FILE}.tmp" "$node_dir/{RESTORE_FAILED_FILE}"
    exit "$1"
}}
{walarchive} --repo {source} backup-fetch --force --progress-file "$node_dir/{RESTORE_PROGRESS_FILE}" {opt} {value}{timeline} --target-action promote "$datadir" {backup} 2>"$node_dir/restore-stderr.log"
status=$?
cat "$node_dir/restore-stderr.log" >&2
[ "$status" -eq 0 ] || failed "$status"
# The source's Patroni state and its copies of its configuration files.
rm -f "$datadir/patroni.dynamic.json" "$datadir"/*.backup || failed 1
# This node archives into its own repository: no archive setting of the source may stay
# (postgresql.auto.conf overrides the postgresql.conf Patroni writes).
for f in "$datadir/postgresql.auto.conf" "$datadir/postgresql.conf"; do
    if [ -f "$f" ]; then
        sed -i -E '/^[[:space:]]*archive_(command|library|mode)([[:space:]=]|$)/Id' "$f" || failed 1
    fi
done
exit 0
"#,
        node_dir = quote(&node_dir.display().to_string())?,
        walarchive = quote(&walarchive.display().to_string())?,
        source = quote(&spec.source_repository)?,
        opt = quote(&opt)?,
        value = quote(&value)?,
        backup = quote(&spec.backup)?,
    ))
}

/// `restore-post-bootstrap.sh` (Patroni passes a connection string as the last argument):
/// see the module's comment. `group_role` was checked to be a plain SQL name.
pub fn restore_post_bootstrap_script(
    psql: &Path,
    spec: &BootstrapSpec,
) -> Result<String, QuoteError> {
    if !spec.disable_roles {
        return Ok("#!/bin/sh\n# Written by walarchive-broker: Patroni's post_bootstrap for a clone that keeps its roles.\nexit 0\n".into());
    }
    if !spec
        .group_role
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(QuoteError);
    }
    Ok(format!(
        r#"#!/bin/sh
# Written by walarchive-broker: Patroni's post_bootstrap for a clone. Runs before Patroni
# writes the real pg_hba: the source's binding roles and group role lose their login first.
for conn; do :; done
{psql} -X -q -v ON_ERROR_STOP=1 -d "$conn" <<'SQL'
DO $walarchive$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT rolname FROM pg_catalog.pg_roles
             WHERE rolname ~ '^[bh]_' OR rolname = '{group}'
    LOOP
        EXECUTE format('ALTER ROLE %I NOLOGIN PASSWORD NULL', r.rolname);
    END LOOP;
END
$walarchive$;
SQL
"#,
        psql = quote(&psql.display().to_string())?,
        group = spec.group_role,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> BootstrapSpec {
        BootstrapSpec {
            source_repository: "s3://bucket/base/old db".into(),
            backup: "base_20261207T020000Z".into(),
            recovery_target: BootstrapTarget::Time("2026-12-07T11:15:00+01:00".into()),
            timeline: Some(3),
            disable_roles: true,
            group_role: "g_app".into(),
            same_repository: false,
        }
    }

    #[test]
    fn bootstrap_script_quotes_every_word() {
        let s = restore_bootstrap_script(
            Path::new("/opt/wa bin/walarchive"),
            Path::new("/var/lib/cell/n 0"),
            &spec(),
        )
        .unwrap();
        assert!(s.contains("\nnode_dir='/var/lib/cell/n 0'\n"), "{s}");
        assert!(
            s.contains("\n'/opt/wa bin/walarchive' --repo 's3://bucket/base/old db' backup-fetch --force --progress-file \"$node_dir/restore-progress.json\" --target-time '2026-12-07 10:15:00.000000+00' --target-timeline 3 --target-action promote \"$datadir\" base_20261207T020000Z 2>"),
            "{s}"
        );
        assert!(s.contains("rm -f \"$datadir/patroni.dynamic.json\" \"$datadir\"/*.backup"));
        let lsn = BootstrapSpec {
            recovery_target: BootstrapTarget::Lsn("0/5a3f2d8".into()),
            timeline: None,
            ..spec()
        };
        let s = restore_bootstrap_script(Path::new("/w"), Path::new("/n"), &lsn).unwrap();
        assert!(
            s.contains(" --target-lsn 0/5A3F2D8 --target-action promote "),
            "{s}"
        );
        let bad = BootstrapSpec {
            recovery_target: BootstrapTarget::Time("yesterday".into()),
            ..spec()
        };
        assert!(restore_bootstrap_script(Path::new("/w"), Path::new("/n"), &bad).is_err());
    }

    /// The script run by /bin/sh against a fake walarchive: arguments as intended, the
    /// source's archive settings and Patroni files gone, or `restore.failed` with the status.
    #[test]
    fn bootstrap_script_runs() {
        let d = tempfile::tempdir().unwrap();
        let node = d.path().join("node dir");
        let data = node.join("data");
        std::fs::create_dir_all(&data).unwrap();
        let fake = d.path().join("walarchive");
        let args = d.path().join("args");
        std::fs::write(
            &fake,
            format!(
                "#!/bin/sh\nprintf '%s\\n' \"$@\" > {}\necho 'restore: object damaged' >&2\nexit ${{FAKE_STATUS:-0}}\n",
                quote(&args.display().to_string()).unwrap()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let script = node.join(RESTORE_BOOTSTRAP_SCRIPT);
        std::fs::write(
            &script,
            restore_bootstrap_script(&fake, &node, &spec()).unwrap(),
        )
        .unwrap();
        std::fs::write(
            data.join("postgresql.auto.conf"),
            "archive_command = 'walarchive --repo s3://src wal-push %p'\nARCHIVE_MODE on\narchive_library=''\nrestore_command = 'x'\narchive_timeout = 60\n",
        )
        .unwrap();
        std::fs::write(
            data.join("postgresql.conf"),
            "port = 5432\n  archive_command='x'\n",
        )
        .unwrap();
        std::fs::write(data.join("patroni.dynamic.json"), "{}").unwrap();
        std::fs::write(data.join("postgresql.conf.backup"), "").unwrap();
        let run = |status: &str| {
            std::process::Command::new("/bin/sh")
                .arg(&script)
                .arg("--scope=s")
                .arg(format!("--datadir={}", data.display()))
                .env("FAKE_STATUS", status)
                .output()
                .unwrap()
        };
        let out = run("0");
        assert!(out.status.success(), "{out:?}");
        let got = std::fs::read_to_string(&args).unwrap();
        assert!(
            got.ends_with(&format!(
                "promote\n{}\nbase_20261207T020000Z\n",
                data.display()
            )),
            "{got}"
        );
        assert_eq!(
            std::fs::read_to_string(data.join("postgresql.auto.conf")).unwrap(),
            "restore_command = 'x'\narchive_timeout = 60\n"
        );
        assert_eq!(
            std::fs::read_to_string(data.join("postgresql.conf")).unwrap(),
            "port = 5432\n"
        );
        assert!(!data.join("patroni.dynamic.json").exists());
        assert!(!data.join("postgresql.conf.backup").exists());
        assert!(!node.join(RESTORE_FAILED_FILE).exists());

        let out = run("8");
        assert_eq!(out.status.code(), Some(8), "{out:?}");
        let failed: serde_json::Value =
            serde_json::from_slice(&std::fs::read(node.join(RESTORE_FAILED_FILE)).unwrap())
                .unwrap();
        assert_eq!(failed["status"], 8);
        assert_eq!(failed["stderr"], "restore: object damaged\n");
    }

    #[test]
    fn post_bootstrap_script() {
        let s =
            restore_post_bootstrap_script(Path::new("/usr/lib/postgresql/15/bin/psql"), &spec())
                .unwrap();
        assert!(
            s.contains("WHERE rolname ~ '^[bh]_' OR rolname = 'g_app'"),
            "{s}"
        );
        assert!(
            s.contains("format('ALTER ROLE %I NOLOGIN PASSWORD NULL', r.rolname)"),
            "{s}"
        );
        assert!(s.contains("<<'SQL'"), "no shell expansion in the SQL: {s}");
        let keep = BootstrapSpec {
            disable_roles: false,
            ..spec()
        };
        let s = restore_post_bootstrap_script(Path::new("/psql"), &keep).unwrap();
        assert!(!s.contains("ALTER ROLE"), "{s}");
        let evil = BootstrapSpec {
            group_role: "g'; drop".into(),
            ..spec()
        };
        assert!(restore_post_bootstrap_script(Path::new("/psql"), &evil).is_err());
    }
}
