//! `walarchive daemon`, and `wal-push` as its thin client.
//!
//! The client side runs before the repository is opened: when a daemon answers, `wal-push`
//! costs a process start and one round trip on a Unix socket, nothing else. When none
//! answers, `wal-push` pushes by itself (see `walarchive_core::daemon` for why that keeps
//! every guarantee), after starting a daemon if `--daemon` asks for one.

use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use walarchive_core::daemon::{self, Answer, How};
use walarchive_core::Repository;

use crate::exit;
use crate::settings::Settings;

/// Set in the environment of a daemon that `wal-push` starts: the process runs the daemon
/// for this pg_wal directory instead of pushing.
pub const SPAWNED_ENV: &str = "WALARCHIVE_DAEMON_FOR";

/// Asks the daemon serving `path`'s pg_wal to archive it. `None`: no daemon answered, push
/// in this process (a daemon was started for the next calls if settings ask for one).
pub fn push_via_daemon(settings: &Settings, path: &Path) -> Option<Result<u8>> {
    let pg_wal = daemon::pg_wal_of(path)?;
    let started = Instant::now();
    match daemon::ask(&pg_wal, path, &settings.daemon_key()) {
        Ok(Answer::Archived {
            how,
            raw_len,
            stored_len,
        }) => {
            crate::commands::count(path, |c| {
                c.push_seconds_total += started.elapsed().as_secs_f64();
                // What the daemon uploads, it counts itself.
                if how != How::Stored {
                    c.push_already_archived_total += 1;
                }
            });
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            match how {
                How::Ahead => tracing::info!(
                    "{name} was archived by the walarchive daemon ({raw_len} bytes; answered in {:.0?})",
                    started.elapsed()
                ),
                How::Stored => tracing::info!(
                    "archived {name} through the walarchive daemon ({raw_len} -> {stored_len} bytes) in {:.0?}",
                    started.elapsed()
                ),
                How::Already => tracing::info!("{name} was already archived with identical content"),
            }
            Some(Ok(exit::OK))
        }
        Ok(Answer::Refused(e)) => {
            crate::commands::count(path, |c| {
                c.push_seconds_total += started.elapsed().as_secs_f64();
                c.push_errors_total += 1;
                crate::commands::note_error(c, &e);
            });
            Some(Err(e.into()))
        }
        Err(e) => {
            let absent = matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            );
            if !absent {
                tracing::warn!("the walarchive daemon did not answer ({e}): pushing without it");
            }
            if absent && settings.daemon {
                match spawn(&pg_wal) {
                    Ok(()) => {
                        tracing::info!("started a walarchive daemon for {}", pg_wal.display())
                    }
                    Err(e) => tracing::warn!("cannot start a walarchive daemon: {e}"),
                }
            }
            None
        }
    }
}

/// Starts this program again, with the same arguments, as the daemon for `pg_wal`, in a
/// process group of its own (it outlives this call; it stops with PostgreSQL).
fn spawn(pg_wal: &Path) -> std::io::Result<()> {
    use std::os::unix::process::CommandExt;
    std::process::Command::new(std::env::current_exe()?)
        .args(std::env::args_os().skip(1))
        .env(SPAWNED_ENV, pg_wal)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .map(|_child| ())
}

/// In a process `wal-push` started: the daemon for the pg_wal it names, following
/// PostgreSQL's life.
pub fn spawned_for() -> Option<std::path::PathBuf> {
    std::env::var_os(SPAWNED_ENV).map(Into::into)
}

/// Runs the daemon (started by hand, or by `wal-push`).
pub async fn run(
    repo: &Repository,
    settings: &Settings,
    pg_wal: &Path,
    idle_exit: Option<std::time::Duration>,
    follow_postmaster: bool,
) -> Result<u8> {
    let opts = daemon::Options {
        idle_exit,
        follow_postmaster,
        key: settings.daemon_key(),
        ..daemon::Options::with_parallel(settings.parallel)
    };
    match daemon::run(repo, pg_wal, opts).await? {
        Some(_) => Ok(exit::OK),
        None if follow_postmaster => Ok(exit::OK),
        None => {
            eprintln!(
                "walarchive daemon: error: another walarchive daemon already serves {}",
                pg_wal.display()
            );
            Ok(exit::CONFLICT)
        }
    }
}
