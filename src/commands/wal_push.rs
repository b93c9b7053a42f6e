//! `walarchive wal-push` (PostgreSQL's `archive_command`), and the cluster it pushes for.

use std::time::Instant;

use anyhow::Result;
use walarchive::control::{self, ClusterIdentity};
use walarchive::repo::PutOutcome;
use walarchive::{pushahead, Repository};

use crate::exit;
use crate::report::{count, note_error};

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

pub(crate) async fn wal_push(
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
