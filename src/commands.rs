//! The commands' bodies, and the mapping from errors to exit statuses.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;
use walarchive::backup::{self, BackupOptions};
use walarchive::control::{self, ClusterIdentity};
use walarchive::manifest::Manifest;
use walarchive::metrics::{self, Counters};
use walarchive::repo::PutOutcome;
use walarchive::{catalog, pg, pushahead, ErrorKind, Repository, WalFileName};
use walarchive_restore::backup::BackupFetchOptions;
use walarchive_restore::recovery::{self, Recovery, Target};
use walarchive_restore::FetchError;

use crate::cli::{Cli, Command, TargetArgs, VerifyCommand};
use crate::exit;
use crate::progress;
use crate::settings::Settings;
use crate::{cmd_daemon, cmd_delete, cmd_status, cmd_verify};

/// Runs the command, returning its exit status on success.
pub async fn run(cli: &Cli) -> Result<u8> {
    let settings = Settings::resolve(&cli.global)?;
    let spawned = matches!(cli.command, Command::WalPush { .. })
        .then(cmd_daemon::spawned_for)
        .flatten();
    if let (Command::WalPush { path, .. }, None) = (&cli.command, &spawned) {
        // Before opening the repository: a daemon's answer needs nothing else.
        if let Some(answered) = cmd_daemon::push_via_daemon(&settings, path) {
            return answered;
        }
    }
    let repo = settings.open()?;
    if let Some(pg_wal) = spawned {
        // A daemon this program started from wal-push: it follows PostgreSQL's life.
        return cmd_daemon::run(
            &repo,
            &settings,
            &pg_wal,
            Some(walarchive::daemon::SPAWNED_IDLE_EXIT),
            true,
        )
        .await;
    }
    if reads_an_existing_repository(&cli.command) {
        // An empty table from a wrong URL would read as an empty archive: say there is no
        // repository there instead (status 6), as wal-fetch does.
        repo.require_descriptor().await?;
    }
    match &cli.command {
        Command::WalPush { path, pgdata } => {
            let identity = push_identity(pgdata.as_deref(), settings.env.pgdata.as_deref(), path)?;
            wal_push(&repo, path, identity.as_ref(), settings.parallel).await
        }
        Command::Daemon { pgdata, idle_exit } => {
            let idle = idle_exit.map(Duration::from_secs);
            cmd_daemon::run(&repo, &settings, &pgdata.join("pg_wal"), idle, false).await
        }
        Command::WalFetch { name, dest, pgdata } => {
            wal_fetch(&repo, &settings, name, dest, pgdata.as_deref()).await
        }
        Command::WalList { timeline, json } => wal_list(&repo, *timeline, *json).await,
        Command::RepoInfo { json } => repo_info(&repo, *json).await,
        Command::RepoRepair {
            pgdata,
            confirm,
            json,
        } => repo_repair(&repo, pgdata.as_deref(), *confirm, *json).await,
        Command::BackupPush {
            pgdata,
            pg_conn,
            label,
            fast,
            part_size,
            wal_timeout,
            permanent,
            json,
        } => {
            let opts = BackupOptions {
                pgdata: pgdata.clone(),
                conn: pg::config(pg_conn.as_deref(), &settings.env.pg)?,
                label: label.clone(),
                fast_checkpoint: *fast,
                part_size: (*part_size as usize) << 20,
                parallel: settings.parallel,
                wal_timeout: Duration::from_secs(*wal_timeout),
                permanent: *permanent,
            };
            backup_push(&repo, &opts, *json).await
        }
        Command::BackupList { json, detail } => backup_list(&repo, *json, *detail).await,
        Command::BackupMark { name, unmark } => cmd_delete::backup_mark(&repo, name, *unmark).await,
        Command::Delete(what) => cmd_delete::delete(&repo, what).await,
        Command::Verify(VerifyCommand::Backup { name, json }) => {
            cmd_verify::verify_backup(&repo, name, *json).await
        }
        Command::WalVerify { json } => cmd_verify::wal_verify(&repo, *json).await,
        Command::Status {
            pgdata,
            pg_conn,
            rpo,
            json,
            prometheus,
        } => {
            let conn = pg::config(pg_conn.as_deref(), &settings.env.pg)?;
            let args = cmd_status::StatusArgs {
                pgdata: pgdata.clone(),
                conn,
                rpo: Duration::from_secs(*rpo),
                json: *json,
                prometheus: *prometheus,
            };
            cmd_status::status(&repo, &args).await
        }
        Command::BackupFetch {
            dest,
            backup,
            target,
            target_timeline,
            target_action,
            target_exclusive,
            standby,
            tablespace_map,
            force,
            json,
        } => {
            let recovery = Recovery {
                target: recovery_target(target)?,
                timeline: target_timeline.clone(),
                action: target_action.clone(),
                exclusive: *target_exclusive,
                standby: *standby,
            };
            let opts = BackupFetchOptions {
                dest: absolute(dest)?,
                backup: backup.clone(),
                recovery,
                tablespace_map: tablespace_map.iter().cloned().collect(),
                force: *force,
                restore_command: restore_command(cli, &settings)?,
                parallel: settings.parallel,
            };
            backup_fetch(&repo, &opts, *json).await
        }
    }
}

/// The commands that only make sense on a repository that exists: everything but the
/// writers that create one (wal-push, the daemon, backup-push), repo-repair (which rebuilds a
/// lost descriptor) and wal-fetch, which reads the descriptor alongside the object it
/// fetches and answers its own statuses.
fn reads_an_existing_repository(command: &Command) -> bool {
    match command {
        Command::WalPush { .. }
        | Command::Daemon { .. }
        | Command::BackupPush { .. }
        | Command::WalFetch { .. }
        | Command::RepoRepair { .. } => false,
        Command::WalList { .. }
        | Command::BackupList { .. }
        | Command::BackupFetch { .. }
        | Command::BackupMark { .. }
        | Command::Delete(_)
        | Command::Verify(_)
        | Command::WalVerify { .. }
        | Command::Status { .. }
        | Command::RepoInfo { .. } => true,
    }
}

fn absolute(p: &std::path::Path) -> Result<std::path::PathBuf> {
    Ok(if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .context("cannot read the current directory")?
            .join(p)
    })
}

fn recovery_target(t: &TargetArgs) -> Result<Option<Target>> {
    let bad = |m: String| walarchive::Error::BadInput {
        path: "recovery target".into(),
        reason: m,
    };
    Ok(if let Some(s) = &t.target_time {
        Some(Target::Time(
            s.clone(),
            recovery::parse_target_time(s).map_err(bad)?,
        ))
    } else if let Some(l) = &t.target_lsn {
        Some(Target::Lsn(l.parse().map_err(
            |e: walarchive::lsn::LsnParseError| bad(e.to_string()),
        )?))
    } else if let Some(x) = t.target_xid {
        Some(Target::Xid(x))
    } else if let Some(n) = &t.target_name {
        Some(Target::Name(n.clone()))
    } else if t.target_immediate {
        Some(Target::Immediate)
    } else {
        None
    })
}

/// The restore_command written into a restored data directory: this very binary, with the
/// same repository (and configuration file, when one was named), so that recovery reads
/// from exactly where the backup came from. Credentials are not copied: PostgreSQL's
/// environment or the configuration file must provide them.
fn restore_command(cli: &Cli, settings: &Settings) -> Result<String> {
    let exe = std::env::current_exe().context("cannot find the walarchive executable's path")?;
    let mut cmd = format!(
        "{} --repo {}",
        shell_word(&exe.display().to_string()),
        shell_word(&settings.repo)
    );
    if let Some(cfg) = &cli.global.config {
        cmd.push_str(&format!(
            " --config {}",
            shell_word(&absolute(cfg)?.display().to_string())
        ));
    }
    cmd.push_str(" wal-fetch %f %p");
    Ok(cmd)
}

fn shell_word(s: &str) -> String {
    if s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-:=+@,".contains(&b))
    {
        s.to_string()
    } else {
        format!(
            "\"{}\"",
            s.replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('$', "\\$")
                .replace('`', "\\`")
        )
    }
}

#[derive(Serialize)]
struct BackupSummary<'a> {
    name: &'a str,
    complete: bool,
    start_time: &'a str,
    stop_time: Option<&'a str>,
    start_lsn: Option<String>,
    stop_lsn: Option<String>,
    timeline: Option<u32>,
    pg_version: Option<u32>,
    original_bytes: Option<u64>,
    stored_bytes: Option<u64>,
    from_standby: Option<bool>,
    label: Option<&'a str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    damaged: bool,
}

impl<'a> BackupSummary<'a> {
    fn of(m: &'a Manifest) -> Self {
        BackupSummary {
            name: &m.name,
            complete: true,
            start_time: &m.start_time,
            stop_time: Some(&m.stop_time),
            start_lsn: Some(m.start_lsn.to_string()),
            stop_lsn: Some(m.stop_lsn.to_string()),
            timeline: Some(m.timeline),
            pg_version: Some(m.pg_version_num / 10000),
            original_bytes: Some(m.original_bytes),
            stored_bytes: Some(m.stored_bytes),
            from_standby: Some(m.from_standby),
            label: Some(&m.label),
            damaged: false,
        }
    }
}

async fn backup_push(repo: &Repository, opts: &BackupOptions, json: bool) -> Result<u8> {
    let started = Instant::now();
    let m = backup::backup_push(repo, opts, progress::bytes_bar()).await?;
    let secs = started.elapsed().as_secs_f64();
    if json {
        let mut v = serde_json::to_value(BackupSummary::of(&m)).context("cannot print JSON")?;
        v["duration_seconds"] = serde_json::json!(secs);
        println!(
            "{}",
            serde_json::to_string_pretty(&v).context("cannot print JSON")?
        );
    } else {
        println!(
            "backup {} complete: {} -> {} ({}), {:.1}s, {:.1} MiB/s",
            m.name,
            human(m.original_bytes),
            human(m.stored_bytes),
            m.compression,
            secs,
            m.original_bytes as f64 / (1 << 20) as f64 / secs.max(1e-6)
        );
    }
    Ok(exit::OK)
}

async fn backup_list(repo: &Repository, json: bool, detail: bool) -> Result<u8> {
    let entries = catalog::list_backups(repo, detail).await?;
    let summaries: Vec<BackupSummary<'_>> = entries
        .iter()
        .map(|e| match &e.manifest {
            Some(m) => BackupSummary::of(m),
            None => BackupSummary {
                name: &e.name,
                complete: false,
                start_time: e
                    .started
                    .as_ref()
                    .map(|s| s.start_time.as_str())
                    .unwrap_or(""),
                stop_time: None,
                start_lsn: None,
                stop_lsn: None,
                timeline: None,
                pg_version: None,
                original_bytes: None,
                stored_bytes: None,
                from_standby: None,
                label: e.started.as_ref().map(|s| s.label.as_str()),
                damaged: e.damaged.is_some(),
            },
        })
        .collect();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&summaries).context("cannot print JSON")?
        );
        return Ok(exit::OK);
    }
    let dash = || "-".to_string();
    if detail {
        println!(
            "{:<28} {:<10} {:<27} {:<27} {:>12} {:>12} {:>3} {:>4} {:>10} {:>10} {:<7}",
            "NAME",
            "STATUS",
            "START",
            "STOP",
            "START LSN",
            "STOP LSN",
            "TLI",
            "PG",
            "SIZE",
            "STORED",
            "SOURCE"
        );
    } else {
        println!(
            "{:<28} {:<27} {:<27} {:>12} {:>12} {:>3} {:>10} {:>10}",
            "NAME", "START", "STOP", "START LSN", "STOP LSN", "TLI", "SIZE", "STORED"
        );
    }
    for s in &summaries {
        let stop = s.stop_time.unwrap_or("-");
        let start_lsn = s.start_lsn.clone().unwrap_or_else(dash);
        let stop_lsn = s.stop_lsn.clone().unwrap_or_else(dash);
        let tli = s.timeline.map(|t| t.to_string()).unwrap_or_else(dash);
        let size = s.original_bytes.map(human).unwrap_or_else(dash);
        let stored = s.stored_bytes.map(human).unwrap_or_else(dash);
        if detail {
            let status = match (s.complete, s.damaged) {
                (true, _) => "complete",
                (false, true) => "damaged",
                (false, false) => "incomplete",
            };
            let pg = s.pg_version.map(|v| v.to_string()).unwrap_or_else(dash);
            let source = match s.from_standby {
                Some(true) => "standby",
                Some(false) => "primary",
                None => "-",
            };
            println!(
                "{:<28} {:<10} {:<27} {:<27} {:>12} {:>12} {:>3} {:>4} {:>10} {:>10} {:<7}",
                s.name,
                status,
                s.start_time,
                stop,
                start_lsn,
                stop_lsn,
                tli,
                pg,
                size,
                stored,
                source
            );
        } else {
            println!(
                "{:<28} {:<27} {:<27} {:>12} {:>12} {:>3} {:>10} {:>10}",
                s.name, s.start_time, stop, start_lsn, stop_lsn, tli, size, stored
            );
        }
    }
    Ok(exit::OK)
}

async fn backup_fetch(repo: &Repository, opts: &BackupFetchOptions, json: bool) -> Result<u8> {
    let started = Instant::now();
    let fetched =
        walarchive_restore::backup::fetch_backup(repo, opts, progress::bytes_bar()).await?;
    let secs = started.elapsed().as_secs_f64();
    let m = &fetched.manifest;
    if json {
        let v = serde_json::json!({
            "name": m.name,
            "dest": opts.dest,
            "files": fetched.files,
            "bytes": fetched.bytes,
            "start_lsn": m.start_lsn.to_string(),
            "stop_lsn": m.stop_lsn.to_string(),
            "timeline": m.timeline,
            "signal": if opts.recovery.standby { "standby.signal" } else { "recovery.signal" },
            "duration_seconds": secs,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&v).context("cannot print JSON")?
        );
    } else {
        println!(
            "restored backup {} into {} ({} files, {}) in {:.1}s; start PostgreSQL on it to recover",
            m.name,
            opts.dest.display(),
            fetched.files,
            human(fetched.bytes),
            secs
        );
    }
    Ok(exit::OK)
}

pub(crate) fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A storage failure of `wal-fetch` on a standby, answered "not available" (status 1) so
/// that PostgreSQL keeps waiting and asks again, instead of stopping the standby: a standby
/// never promotes by itself, so this answer cannot end a recovery early, and an outage of
/// the store must not take every standby down with it. Archive recovery toward a target
/// (recovery.signal) has no such luxury: there, "not available" ends recovery and promotes,
/// so a storage failure stays fatal (above 125). Corrupt objects, another cluster's WAL and
/// configuration errors stay fatal on a standby too: they never go away by waiting. A timeline
/// history file waits only when the store said earlier that it lacks it ([`RefusesToGuess`]).
#[derive(Debug)]
pub struct StandbyWaits;

impl std::fmt::Display for StandbyWaits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(
            "the repository is unavailable; this is a standby (standby.signal), so wal-fetch \
             answers 'not available' (status 1) and PostgreSQL will ask again",
        )
    }
}

/// Whether `e` carries [`StandbyWaits`] (as its context).
pub fn standby_waits(e: &anyhow::Error) -> bool {
    e.downcast_ref::<StandbyWaits>().is_some()
}

/// The exit status for an error: the class of the first typed error in the chain.
pub fn exit_status(e: &anyhow::Error) -> u8 {
    if standby_waits(e) {
        return exit::NOT_FOUND;
    }
    for cause in e.chain() {
        if let Some(e) = cause.downcast_ref::<walarchive::Error>() {
            return exit::for_kind(e.kind());
        }
        if let Some(e) = cause.downcast_ref::<FetchError>() {
            return exit::for_kind(e.kind());
        }
    }
    exit::INTERNAL
}

/// Adds one call's outcome to the counters in the `pg_wal` directory `wal_path` is in.
pub(crate) fn count(wal_path: &std::path::Path, change: impl FnOnce(&mut Counters)) {
    let Some(dir) = metrics::dir_for(wal_path) else {
        return;
    };
    if let Err(e) = metrics::update(&dir, change) {
        tracing::debug!(
            "cannot update {}: {e}",
            dir.join(metrics::FILE_NAME).display()
        );
    }
}

pub(crate) fn note_error(c: &mut Counters, e: &dyn std::fmt::Display) {
    c.last_error = Some(e.to_string().replace('\n', " "));
    c.last_error_time = Some(chrono::Utc::now().to_rfc3339());
}

/// The cluster `wal-push` pushes `path` for: the pg_control of its data directory (see
/// `control::locate_data_dir`), or none when there is no data directory to be found (a
/// segment is then identified by its page header alone).
pub(crate) fn push_identity(
    pgdata: Option<&std::path::Path>,
    env_pgdata: Option<&std::path::Path>,
    path: &std::path::Path,
) -> Result<Option<ClusterIdentity>> {
    let Some(dir) = control::locate_data_dir(pgdata, env_pgdata, path) else {
        tracing::debug!(
            "no data directory (global/pg_control) found for {}: a segment is identified by its page header alone",
            path.display()
        );
        return Ok(None);
    };
    if !dir.join(control::CONTROL_FILE).is_file() {
        return Err(walarchive::Error::Config(format!(
            "{} is not a PostgreSQL data directory (no {}): check --pgdata",
            dir.display(),
            control::CONTROL_FILE
        ))
        .into());
    }
    Ok(Some(control::read_identity(&dir)?))
}

async fn wal_push(
    repo: &Repository,
    path: &std::path::Path,
    identity: Option<&ClusterIdentity>,
    parallel: usize,
) -> Result<u8> {
    let started = Instant::now();
    let opts = pushahead::Options::with_parallel(parallel);
    let pushahead::Outcome {
        requested,
        from_marker,
        ahead,
    } = pushahead::push(repo, path, identity, &opts).await;
    count(path, |c| {
        c.push_seconds_total += started.elapsed().as_secs_f64();
        // Segments pushed ahead count once, as uploads, here; PostgreSQL's own call for them
        // later counts as "already archived".
        for r in &ahead {
            if let PutOutcome::Stored { stored_len } = r.outcome {
                c.push_total += 1;
                c.push_bytes_total += r.raw_len;
                c.push_stored_bytes_total += stored_len;
            }
        }
        match &requested {
            Ok(r) => match r.outcome {
                PutOutcome::Stored { stored_len } => {
                    c.push_total += 1;
                    c.push_bytes_total += r.raw_len;
                    c.push_stored_bytes_total += stored_len;
                }
                PutOutcome::AlreadyStored => c.push_already_archived_total += 1,
            },
            Err(e) => {
                c.push_errors_total += 1;
                note_error(c, e);
            }
        }
    });
    let report = requested?;
    let ahead_note = if ahead.is_empty() {
        String::new()
    } else {
        format!("; pushed {} segments ahead", ahead.len())
    };
    match report.outcome {
        _ if from_marker => tracing::info!(
            "{} was archived ahead by an earlier wal-push (marker, content and repository checked) in {:.0?}",
            report.name,
            started.elapsed()
        ),
        PutOutcome::Stored { stored_len } => tracing::info!(
            "archived {} ({} -> {} bytes, {}) in {:.0?}{ahead_note}",
            report.name,
            report.raw_len,
            stored_len,
            repo.compression,
            started.elapsed()
        ),
        PutOutcome::AlreadyStored => {
            tracing::info!(
                "{} was already archived with identical content{ahead_note}",
                report.name
            )
        }
    }
    Ok(exit::OK)
}

/// The data directory `wal-fetch` restores for: `--pgdata`, else the one `%p` is in, else
/// the current directory, which PostgreSQL makes the data directory when it runs
/// restore_command.
fn recovery_data_dir(
    dest: &std::path::Path,
    pgdata: Option<&std::path::Path>,
) -> std::path::PathBuf {
    match pgdata {
        Some(d) => d.to_path_buf(),
        None => match dest.parent() {
            Some(wal) if wal.file_name().is_some_and(|n| n == "pg_wal") => wal
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map(std::path::Path::to_path_buf)
                .unwrap_or_else(|| ".".into()),
            _ => ".".into(),
        },
    }
}

/// A storage failure of `wal-fetch` for a timeline history file on a standby, with no
/// record that the store ever said the file is absent: answering "not available" would tell
/// a promoting standby that the timeline is free (see `walarchive_restore::absent_history`),
/// so it stays fatal (207).
#[derive(Debug)]
pub struct RefusesToGuess(String);

impl std::fmt::Display for RefusesToGuess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the repository is unavailable and there is no record that it lacks {}: answering \
             'not available' could let a promoting standby take a timeline the archive already \
             holds, so wal-fetch refuses to guess",
            self.0
        )
    }
}

/// What every fetched object must be, from the pg_control of the data directory being
/// recovered (`Repository::assume_identity`: no descriptor GET per segment); without a
/// readable one, the descriptor says it.
fn take_identity_from_pg_control(repo: &Repository, data_dir: &std::path::Path) {
    if !data_dir.join(control::CONTROL_FILE).is_file() {
        return;
    }
    match control::read_identity(data_dir) {
        Ok(id) => repo.assume_identity(&id),
        Err(e) => tracing::debug!("reading the repository's descriptor instead: {e}"),
    }
}

async fn wal_fetch(
    repo: &Repository,
    settings: &Settings,
    name: &str,
    dest: &std::path::Path,
    pgdata: Option<&std::path::Path>,
) -> Result<u8> {
    use walarchive_restore::absent_history;
    use walarchive_restore::prefetch::{self, PrefetchOptions};
    use walarchive_restore::Source;
    let opts = PrefetchOptions {
        depth: settings.prefetch,
        parallel: settings.parallel,
        inline: settings.env.prefetch_inline,
    };
    let data_dir = recovery_data_dir(dest, pgdata);
    take_identity_from_pg_control(repo, &data_dir);
    let worker = settings.env.prefetch_worker.as_deref();
    if let Some(job) = prefetch::worker_job(name, dest, &opts, worker) {
        // A prefetch worker started by the wal-fetch that restored `name`: nobody waits for
        // it, it restores nothing, and its problems are only logged.
        prefetch::run_worker(repo, &job).await;
        return Ok(exit::OK);
    }
    let started = Instant::now();
    let result = prefetch::fetch(repo, name, dest, &opts).await;
    let history = matches!(name.parse(), Ok(WalFileName::History(_)));
    if history {
        match &result {
            Ok(_) => absent_history::forget(&data_dir, name),
            Err(FetchError::NotFound(_)) => absent_history::record(&data_dir, name),
            Err(_) => {}
        }
    }
    let standby_outage = matches!(&result, Err(e) if e.kind() == ErrorKind::Storage)
        && data_dir.join("standby.signal").exists();
    // A history file answers 1 in an outage only on the store's own earlier word.
    let standby_waits = standby_outage && (!history || absent_history::recorded(&data_dir, name));
    count(dest, |c| {
        c.fetch_seconds_total += started.elapsed().as_secs_f64();
        match &result {
            Ok(r) => {
                c.fetch_total += 1;
                c.fetch_bytes_total += r.len;
            }
            Err(FetchError::NotFound(_)) => c.fetch_not_found_total += 1,
            Err(e) => {
                c.fetch_errors_total += 1;
                if standby_waits {
                    c.fetch_standby_waits_total += 1;
                }
                note_error(c, e);
            }
        }
    });
    let report = match result {
        Ok(r) => r,
        Err(e) if standby_waits => return Err(anyhow::Error::new(e).context(StandbyWaits)),
        Err(e) if standby_outage => {
            return Err(anyhow::Error::new(e).context(RefusesToGuess(name.to_string())))
        }
        Err(e) => return Err(e.into()),
    };
    let from = match report.source {
        Source::Prefetch => " from the prefetch directory",
        Source::Repository => "",
    };
    tracing::info!(
        "restored {}{from} ({} bytes) in {:.0?}",
        report.name,
        report.len,
        started.elapsed()
    );
    // The answer is in place; downloading ahead never changes it.
    prefetch::read_ahead(repo, &report, dest, &opts).await;
    Ok(exit::OK)
}

#[derive(Serialize)]
struct WalEntry {
    name: String,
    timeline: u32,
    kind: &'static str,
    stored_bytes: u64,
}

async fn wal_list(repo: &Repository, timeline: Option<u32>, json: bool) -> Result<u8> {
    let mut entries = Vec::new();
    for listed in repo.list("wal/").await? {
        let size = listed.size;
        // Only this repository's own WAL (not another repository's nested in it).
        let Some(walarchive::layout::OwnKey::Wal(name)) =
            walarchive::layout::parse_key(&listed.key)
        else {
            continue;
        };
        if timeline.is_some_and(|t| t != name.timeline().0) {
            continue;
        }
        let kind = match name {
            WalFileName::Segment(_) => "segment",
            WalFileName::Partial(_) => "partial",
            WalFileName::History(_) => "history",
            WalFileName::BackupHistory { .. } => "backup",
        };
        entries.push(WalEntry {
            name: name.to_string(),
            timeline: name.timeline().0,
            kind,
            stored_bytes: size,
        });
    }
    entries.sort_by(|a, b| (a.timeline, &a.name).cmp(&(b.timeline, &b.name)));
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&entries).context("cannot print JSON")?
        );
    } else {
        println!("{:<42} {:>8} {:>12}", "NAME", "KIND", "STORED");
        for e in &entries {
            println!("{:<42} {:>8} {:>12}", e.name, e.kind, e.stored_bytes);
        }
    }
    Ok(exit::OK)
}

async fn repo_info(repo: &Repository, json: bool) -> Result<u8> {
    let d = repo.require_descriptor().await?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&d).context("cannot print JSON")?
        );
    } else {
        println!("repository:          {}", repo.url());
        println!("format version:      {}", d.format_version);
        println!("system identifier:   {}", d.system_identifier);
        let version = d
            .pg_version
            .map(|v| v.to_string())
            .unwrap_or_else(|| "unknown".into());
        println!(
            "PostgreSQL version:  {version} (WAL page magic 0x{:04X})",
            d.wal_page_magic
        );
        println!("WAL segment size:    {} MiB", d.wal_segment_size >> 20);
        println!("created by:          {}", d.created_by);
    }
    Ok(exit::OK)
}

async fn repo_repair(
    repo: &Repository,
    pgdata: Option<&std::path::Path>,
    confirm: bool,
    json: bool,
) -> Result<u8> {
    let identity = match pgdata {
        Some(dir) => push_identity(Some(dir), None, dir)?,
        None => None,
    };
    let r = walarchive::repair::repair(repo, identity.as_ref(), confirm).await?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&r).context("cannot print JSON")?
        );
        return Ok(exit::OK);
    }
    if let Some(d) = &r.existing {
        println!(
            "{} has a descriptor (system identifier {}): nothing to repair",
            repo.url(),
            d.system_identifier
        );
        return Ok(exit::OK);
    }
    for e in &r.evidence {
        let mut said = Vec::new();
        if let Some(s) = &e.system_identifier {
            said.push(format!("system identifier {s}"));
        }
        if let Some(s) = e.wal_segment_size {
            said.push(format!("WAL segment size {s}"));
        }
        if let Some(m) = e.wal_page_magic {
            said.push(format!("WAL page magic 0x{m:04X}"));
        }
        println!("{}: {}", e.source, said.join(", "));
    }
    let d = r.rebuilt.as_ref().expect("rebuilt when there was none");
    let what = format!(
        "descriptor for system identifier {}, WAL segment size {}, WAL page magic 0x{:04X} (from {} objects)",
        d.system_identifier, d.wal_segment_size, d.wal_page_magic, r.objects
    );
    if r.written {
        println!("wrote the {what}");
    } else if confirm {
        println!(
            "a descriptor was written meanwhile, describing the same cluster: nothing written"
        );
    } else {
        println!("would write the {what}");
        println!("dry run: nothing was written; run again with --confirm to write it");
    }
    Ok(exit::OK)
}
