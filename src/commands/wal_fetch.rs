//! `walarchive wal-fetch` (PostgreSQL's `restore_command`).

use std::time::Instant;

use anyhow::Result;
use walarchive::control;
use walarchive::{ErrorKind, Repository, WalFileName};
use walarchive_restore::FetchError;

use crate::exit;
use crate::exit::StandbyWaits;
use crate::report::{count, note_error};
use crate::settings::Settings;

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

pub(crate) async fn wal_fetch(
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
    // How far a point-in-time restore has come (what the broker shows while a clone replays).
    let archive_recovery = !history
        && data_dir.join("recovery.signal").exists()
        && !data_dir.join("standby.signal").exists();
    count(dest, |c| {
        c.fetch_seconds_total += started.elapsed().as_secs_f64();
        match &result {
            Ok(r) => {
                c.fetch_total += 1;
                c.fetch_bytes_total += r.len;
                if archive_recovery {
                    c.last_restored = Some(name.to_string());
                    c.last_restored_time = Some(chrono::Utc::now().to_rfc3339());
                }
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
