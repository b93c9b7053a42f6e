//! Command-line interface definition.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Continuous WAL archiving and point-in-time restore for PostgreSQL.
#[derive(Debug, Parser)]
#[command(name = "walarchive", version, after_help = crate::exit::HELP, after_long_help = LONG_HELP)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalOpts,
    #[command(subcommand)]
    pub command: Command,
}

const LONG_HELP: &str = concat!(
    "PostgreSQL settings:\n",
    "  archive_mode = on\n",
    "  archive_command = 'walarchive --config /etc/walarchive.toml wal-push %p'\n",
    "  restore_command = 'walarchive --config /etc/walarchive.toml wal-fetch %f %p'\n",
    "  archive_timeout = 60   # bounds data loss when the server and its disk are lost\n\n",
    "Repository URLs: s3://BUCKET/PREFIX, az://CONTAINER/PREFIX (or azure://), gs://BUCKET/PREFIX, swift://CONTAINER/PREFIX, file:///ABS/PATH.\n",
    "Credentials come from the environment (AWS_*, AZURE_*, OS_* for Swift) or the config file's [storage] table.\n\n",
);

/// Options every command takes.
#[derive(Debug, Args)]
pub struct GlobalOpts {
    /// Repository URL (s3://, az://, azure://, gs://, swift://, file://).
    #[arg(long, global = true, env = "WALARCHIVE_REPO", value_name = "URL")]
    pub repo: Option<String>,
    /// Configuration file (TOML). Default: /etc/walarchive.toml when it exists.
    #[arg(long, global = true, env = "WALARCHIVE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Codec for new objects: zstd, zstd:LEVEL, lz4 or none [default: zstd:1].
    #[arg(
        long,
        global = true,
        env = "WALARCHIVE_COMPRESSION",
        value_name = "CODEC"
    )]
    pub compression: Option<String>,
    /// zstd level, 1-22 (overrides a level given in --compression).
    #[arg(
        long,
        global = true,
        env = "WALARCHIVE_COMPRESSION_LEVEL",
        value_name = "N"
    )]
    pub compression_level: Option<i32>,
    /// Attempts per storage request before giving up on transient failures [default: 6].
    #[arg(long, global = true, env = "WALARCHIVE_RETRIES", value_name = "N")]
    pub retries: Option<u32>,
    /// Time limit of one storage request, in seconds [default: 120].
    #[arg(
        long,
        global = true,
        env = "WALARCHIVE_REQUEST_TIMEOUT",
        value_name = "SECONDS"
    )]
    pub request_timeout: Option<f64>,
    /// Concurrent uploads/downloads: wal-push pushes this many ready segments ahead in
    /// parallel; backup-push and backup-fetch move this many parts at once [default: 2].
    #[arg(long, global = true, env = "WALARCHIVE_PARALLEL", value_name = "N", value_parser = clap::value_parser!(u32).range(1..=64))]
    pub parallel: Option<u32>,
    /// wal-fetch: segments to download ahead of PostgreSQL's requests [default: 8; 0 disables].
    #[arg(long, global = true, env = "WALARCHIVE_PREFETCH", value_name = "N", value_parser = clap::value_parser!(u32).range(0..=256))]
    pub prefetch: Option<u32>,
    /// wal-push: hand segments to a resident `walarchive daemon` that pushes every `.ready`
    /// segment as soon as it appears, starting one when none runs (it stops with PostgreSQL,
    /// or after a minute of idleness). A running daemon is used even without this
    /// [default: false].
    #[arg(long, global = true, env = "WALARCHIVE_DAEMON", value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    pub daemon: Option<bool>,
    /// Mode of the objects walarchive writes to a file:// repository (directories get the
    /// matching search bits), whatever the umask: 0600, 0640, 0660 or 0644 [default: 0600].
    #[arg(long, global = true, env = "WALARCHIVE_FILE_MODE", value_name = "MODE")]
    pub file_mode: Option<String>,
    /// More logging (-v debug, -vv trace). WALARCHIVE_LOG takes a tracing filter instead.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only log warnings and errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Archive one WAL file: PostgreSQL's archive_command (`wal-push %p`).
    ///
    /// Exits 0 only once the file is durably stored. A file already archived with the same
    /// content succeeds; with different content it fails (status 4) and nothing is overwritten.
    WalPush {
        /// Path of the WAL file (PostgreSQL's %p, relative to the data directory).
        path: PathBuf,
        /// The data directory the file belongs to, whose global/pg_control says which
        /// cluster wrote it [default: the parent of %p's pg_wal, else $PGDATA, else the
        /// current directory, as archive_command runs in the data directory].
        #[arg(long, value_name = "DIR")]
        pgdata: Option<PathBuf>,
    },
    /// Archive continuously: push every `.ready` segment of a data directory as soon as it
    /// appears, and answer wal-push over a Unix socket (in pg_wal, or in /tmp/walarchive.UID
    /// when that path is too long).
    ///
    /// archive_command stays `walarchive wal-push %p`: when this daemon runs, wal-push only
    /// asks it and returns as soon as its segment is durably stored (same checks, same exit
    /// statuses); without it, wal-push pushes by itself. `--daemon` on wal-push starts one
    /// on demand instead of running this by hand.
    Daemon {
        /// The data directory (its pg_wal is watched).
        #[arg(long, env = "PGDATA", value_name = "DIR")]
        pgdata: PathBuf,
        /// Stop after this many seconds with nothing to push [default: never].
        #[arg(long, value_name = "SECONDS")]
        idle_exit: Option<u64>,
    },
    /// Restore one WAL file: PostgreSQL's restore_command (`wal-fetch %f %p`).
    ///
    /// Exits 0 when restored, 1 when the repository does not have the file, and above 200
    /// for any other failure, so that PostgreSQL aborts recovery rather than promoting early;
    /// except on a standby (standby.signal), where a storage failure exits 1 so that
    /// PostgreSQL keeps waiting and asks again (a standby never promotes by itself).
    WalFetch {
        /// WAL file name (PostgreSQL's %f).
        name: String,
        /// Destination path (PostgreSQL's %p).
        dest: PathBuf,
        /// The data directory being recovered [default: the one %p is in, else the current
        /// directory, which PostgreSQL makes the data directory]. With standby.signal there,
        /// a storage failure exits 1 (PostgreSQL keeps waiting) instead of 207.
        #[arg(long, value_name = "DIR")]
        pgdata: Option<PathBuf>,
    },
    /// List the archived WAL files.
    WalList {
        /// Only this timeline (decimal).
        #[arg(long)]
        timeline: Option<u32>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Take a base backup of a running server (primary or standby).
    ///
    /// Connects with libpq's environment (PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE) or
    /// --pg-conn, runs pg_backup_start/pg_backup_stop on one session, streams the data
    /// directory and tablespaces into the repository, waits until the WAL from the backup's
    /// start to its stop is archived, and only then writes the manifest that makes it complete.
    BackupPush {
        /// Data directory (default: the server's data_directory setting).
        #[arg(long, env = "PGDATA", value_name = "DIR")]
        pgdata: Option<PathBuf>,
        /// Connection string (key=value or URI); libpq's PG* variables fill the rest.
        #[arg(long, value_name = "CONNINFO")]
        pg_conn: Option<String>,
        /// Backup label (default: the backup's name).
        #[arg(long)]
        label: Option<String>,
        /// Request an immediate checkpoint instead of waiting for a spread one.
        #[arg(long)]
        fast: bool,
        /// Uncompressed size of one part, in MiB (memory use is a few parts).
        #[arg(long, value_name = "MIB", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
        part_size: u32,
        /// Seconds to wait for the backup's WAL to be archived.
        #[arg(long, value_name = "SECONDS", default_value_t = 600)]
        wal_timeout: u64,
        /// Mark the backup permanent: retention never deletes it or the WAL it needs.
        #[arg(long)]
        permanent: bool,
        /// Print a JSON summary.
        #[arg(long)]
        json: bool,
    },
    /// Mark a backup permanent (never deleted by retention), or unmark it.
    BackupMark {
        /// Backup name.
        name: String,
        /// Remove the mark.
        #[arg(long)]
        unmark: bool,
    },
    /// Delete old backups and the WAL only they needed (a dry run unless --confirm).
    #[command(subcommand)]
    Delete(DeleteCommand),
    /// Verify a backup: every object, every file's checksum, and the WAL from its start to its stop.
    #[command(subcommand)]
    Verify(VerifyCommand),
    /// Verify the WAL archive: gaps, missing history files, undecodable objects, and how far
    /// point-in-time recovery can go from each backup.
    WalVerify {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Archiving status and recovery point objective: exits non-zero when the archive lags
    /// behind more than --rpo.
    Status {
        /// Data directory (to count WAL files waiting to be archived).
        #[arg(long, env = "PGDATA", value_name = "DIR")]
        pgdata: Option<PathBuf>,
        /// Connection string; libpq's PG* variables fill the rest. Without a reachable
        /// server, the figures that need one are left out.
        #[arg(long, value_name = "CONNINFO")]
        pg_conn: Option<String>,
        /// The recovery point objective, in seconds.
        #[arg(long, value_name = "SECONDS", default_value_t = 600)]
        rpo: u64,
        /// Print JSON.
        #[arg(long, conflicts_with = "prometheus")]
        json: bool,
        /// Print the Prometheus text exposition format.
        #[arg(long)]
        prometheus: bool,
    },
    /// List the base backups.
    BackupList {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Also list incomplete backups (in progress or interrupted), and more columns.
        #[arg(long)]
        detail: bool,
    },
    /// Restore a base backup and set up point-in-time recovery.
    ///
    /// Writes the data directory (mode 0700) and tablespaces, verifies every file, fsyncs,
    /// writes backup_label, tablespace_map, recovery.signal (or standby.signal) and the
    /// recovery settings in postgresql.auto.conf, so that `pg_ctl start` performs the
    /// recovery. With a target, LATEST is the newest backup that ends before it.
    BackupFetch {
        /// Destination data directory (missing or empty, or a data directory with --force).
        dest: PathBuf,
        /// Backup name, or LATEST.
        backup: String,
        #[command(flatten)]
        target: TargetArgs,
        /// recovery_target_timeline: latest, current, or a timeline number.
        #[arg(long, value_name = "TIMELINE", value_parser = parse_timeline)]
        target_timeline: Option<String>,
        /// recovery_target_action once the target is reached.
        #[arg(long, value_name = "ACTION", value_parser = ["promote", "pause", "shutdown"])]
        target_action: Option<String>,
        /// Stop just before the target instead of just after it.
        #[arg(long, requires = "target_kind")]
        target_exclusive: bool,
        /// Write standby.signal (stay a standby) instead of recovery.signal.
        #[arg(long)]
        standby: bool,
        /// Restore tablespace OID into DIR instead of its original location (repeatable).
        #[arg(long, value_name = "OID=DIR", value_parser = parse_tablespace_map)]
        tablespace_map: Vec<(u32, PathBuf)>,
        /// Replace DEST when it is a stopped PostgreSQL data directory (refused while a
        /// postmaster.pid is there, and for any other non-empty directory); its contents are
        /// moved aside, deleted once the restore is complete, and put back if it fails.
        #[arg(long)]
        force: bool,
        /// Keep FILE up to date (about once a second, and at the end) with the restore's
        /// progress as JSON: {"backup", "bytes_done", "bytes_total", "done"}; each write
        /// replaces it whole.
        #[arg(long, value_name = "FILE")]
        progress_file: Option<PathBuf>,
        /// Print a JSON summary.
        #[arg(long)]
        json: bool,
    },
    /// The restorable window: the earliest and latest points a restore can reach, and for a
    /// target, the backup and the exact recovery setting that reach it.
    ///
    /// Reads the listing, the history files, the manifests and the last segments (a time or
    /// restore point target also reads the WAL from the backup on). Exits 15 with one line
    /// when the target is outside the window, the restore point does not exist, or nothing is
    /// restorable; a time after the last archived transaction is refused unless --complete-to
    /// says the archive holds everything the server wrote.
    RestorableWindow {
        #[command(flatten)]
        target: TargetArgs,
        /// The server's WAL is all written up to this LSN (its pg_current_wal_lsn(), or the
        /// end of a server that is gone): a time after the last archived transaction is then
        /// the latest point instead of a refusal.
        #[arg(long, value_name = "LSN")]
        complete_to: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show the repository's descriptor (cluster, WAL segment size, format).
    RepoInfo {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Rebuild a lost descriptor from the repository's own objects (their headers, WAL page
    /// headers, backup manifests), refusing when they disagree. A dry run unless --confirm.
    RepoRepair {
        /// Also take the cluster's identity from this data directory's pg_control (needed
        /// when no object states the segment size, and checked against the objects).
        #[arg(long, value_name = "DIR")]
        pgdata: Option<PathBuf>,
        /// Write the rebuilt descriptor.
        #[arg(long)]
        confirm: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

impl Command {
    /// The command's name as typed.
    pub fn name(&self) -> &'static str {
        match self {
            Command::WalPush { .. } => "wal-push",
            Command::Daemon { .. } => "daemon",
            Command::WalFetch { .. } => "wal-fetch",
            Command::WalList { .. } => "wal-list",
            Command::RepoInfo { .. } => "repo-info",
            Command::RepoRepair { .. } => "repo-repair",
            Command::BackupPush { .. } => "backup-push",
            Command::BackupList { .. } => "backup-list",
            Command::BackupFetch { .. } => "backup-fetch",
            Command::BackupMark { .. } => "backup-mark",
            Command::Delete(_) => "delete",
            Command::Verify(_) => "verify",
            Command::WalVerify { .. } => "wal-verify",
            Command::Status { .. } => "status",
            Command::RestorableWindow { .. } => "restorable-window",
        }
    }
}

/// The recovery target (at most one).
#[derive(Debug, Args)]
#[group(id = "target_kind", multiple = false)]
pub struct TargetArgs {
    /// Recover to this time (with a UTC offset, e.g. "2026-11-22 05:30:00+00").
    #[arg(long, value_name = "TIME")]
    pub target_time: Option<String>,
    /// Recover to this LSN (e.g. 0/3000028).
    #[arg(long, value_name = "LSN")]
    pub target_lsn: Option<String>,
    /// Recover to this transaction ID.
    #[arg(long, value_name = "XID")]
    pub target_xid: Option<u64>,
    /// Recover to this restore point (pg_create_restore_point).
    #[arg(long, value_name = "NAME")]
    pub target_name: Option<String>,
    /// Recover only to the end of the backup (the earliest consistent point).
    #[arg(long)]
    pub target_immediate: bool,
}

fn parse_timeline(s: &str) -> Result<String, String> {
    match s {
        "latest" | "current" => Ok(s.to_string()),
        n if n.parse::<u32>().is_ok_and(|n| n > 0) => Ok(n.to_string()),
        _ => Err("expected latest, current or a timeline number".into()),
    }
}

fn parse_tablespace_map(s: &str) -> Result<(u32, PathBuf), String> {
    let (oid, dir) = s.split_once('=').ok_or("expected OID=DIR")?;
    let oid = oid
        .parse::<u32>()
        .map_err(|_| format!("{oid:?} is not a tablespace OID"))?;
    let dir = PathBuf::from(dir);
    if !dir.is_absolute() {
        return Err(format!("{} is not an absolute path", dir.display()));
    }
    Ok((oid, dir))
}

/// What `delete` deletes.
#[derive(Debug, Subcommand)]
pub enum DeleteCommand {
    /// Keep the newest COUNT complete backups (and permanent ones); delete older backups and
    /// the WAL only they needed.
    Retain {
        /// Backups to keep.
        #[arg(value_parser = clap::value_parser!(u32).range(1..))]
        count: u32,
        /// Count full backups only (all walarchive backups are full; accepted for wal-g users).
        #[arg(long)]
        full: bool,
        #[command(flatten)]
        act: DeleteArgs,
    },
    /// Delete the backups older than a backup (kept) or a time, and the WAL only they needed.
    Before {
        /// A backup name, or a time with a UTC offset ("2026-11-22 05:00:00+00").
        target: String,
        #[command(flatten)]
        act: DeleteArgs,
    },
    /// Delete every backup and all WAL (permanent backups too with --force).
    Everything {
        /// Also delete permanent backups.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        act: DeleteArgs,
    },
    /// Delete what nothing needs: leftovers of interrupted backups, and WAL older than the
    /// oldest backup.
    Garbage {
        /// Only incomplete backups started longer ago than this (e.g. 30m, 6h, 2d): a younger
        /// one may still be running.
        #[arg(long, value_name = "DURATION", default_value = "6h", value_parser = parse_duration)]
        older_than: std::time::Duration,
        #[command(flatten)]
        act: DeleteArgs,
    },
}

/// Options of every `delete` command.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Act: without it, only the plan is printed.
    #[arg(long)]
    pub confirm: bool,
    /// Print the plan (and the outcome) as JSON.
    #[arg(long)]
    pub json: bool,
}

/// What `verify` verifies.
#[derive(Debug, Subcommand)]
pub enum VerifyCommand {
    /// A backup (by name, or LATEST).
    Backup {
        /// Backup name or LATEST.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Parses "90s", "30m", "6h", "2d" (or plain seconds), with `humantime` ("1h 30m" too).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let bad = || format!("{s:?} is not a duration like 30m, 6h or 2d");
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse()
            .map(std::time::Duration::from_secs)
            .map_err(|_| bad());
    }
    humantime::parse_duration(s).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// clap's own consistency checks of the definition (conflicts, defaults, names).
    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn durations_parse() {
        for (s, secs) in [
            ("90", 90),
            ("90s", 90),
            ("30m", 1800),
            ("6h", 21_600),
            ("2d", 172_800),
            (" 1h 30m ", 5400),
        ] {
            assert_eq!(parse_duration(s), Ok(Duration::from_secs(secs)), "{s}");
        }
        for bad in ["", "x", "-5", "5 parsecs", "1.5x"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
