//! `walarchive daemon`, and `wal-push` as its thin client.
//!
//! The client side runs before the repository is opened: when a daemon answers, `wal-push`
//! costs a process start and one round trip on a Unix socket, nothing else. When none
//! answers, `wal-push` pushes by itself (see `walarchive::daemon` for why that keeps
//! every guarantee), after starting a daemon if `--daemon` asks for one.

use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use walarchive::daemon::{self, Answer, How};
use walarchive::Repository;

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
    let key = settings.daemon_key();
    let mut answer = daemon::ask(&pg_wal, path, &key);
    if matches!(&answer, Err(e) if is_absent(e)) && settings.daemon {
        match spawn(&pg_wal) {
            Ok(()) => {
                tracing::info!("started a walarchive daemon for {}", pg_wal.display());
                answer = ask_once_up(&pg_wal, path, &key);
            }
            Err(e) => tracing::warn!("cannot start a walarchive daemon: {e}"),
        }
    }
    match answer {
        Ok(Answer::Archived {
            how,
            raw_len,
            stored_len,
        }) => {
            crate::report::count(path, |c| {
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
            crate::report::count(path, |c| {
                c.push_seconds_total += started.elapsed().as_secs_f64();
                c.push_errors_total += 1;
                crate::report::note_error(c, &e);
            });
            Some(Err(e.into()))
        }
        Err(e) => {
            // A daemon that ran and failed to answer is worth a warning; a socket this call
            // will not trust (see daemon::socket_path) only when a daemon was asked for.
            if is_absent(&e) {
            } else if settings.daemon || e.kind() != std::io::ErrorKind::PermissionDenied {
                tracing::warn!("the walarchive daemon did not answer ({e}): pushing without it");
            } else {
                tracing::debug!("not using a walarchive daemon: {e}");
            }
            None
        }
    }
}

/// No daemon listens (rather than one that failed to answer).
fn is_absent(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
    )
}

/// How long a `wal-push` that just started a daemon waits for it to listen before pushing
/// by itself. A daemon listens within tens of milliseconds (runtime, repository handle,
/// lock, socket); pushing alongside it meanwhile would only make both read, compress and
/// store the same segments (the first call's push-ahead and the new daemon re-checking its
/// work: see docs/benchmarks.md, "The resident daemon").
const SPAWN_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Asks the daemon just started, as soon as it listens (for at most [`SPAWN_WAIT`]).
fn ask_once_up(pg_wal: &Path, path: &Path, key: &str) -> std::io::Result<Answer> {
    let deadline = Instant::now() + SPAWN_WAIT;
    loop {
        std::thread::sleep(std::time::Duration::from_millis(5));
        match daemon::ask(pg_wal, path, key) {
            Err(e) if is_absent(&e) && Instant::now() < deadline => continue,
            other => return other,
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
    // Every file the daemon pushes is checked against the cluster whose pg_wal it serves,
    // found as wal-push finds it for a file in that pg_wal.
    let identity =
        super::wal_push::push_identity(None, settings.env.pgdata.as_deref(), &pg_wal.join("x"))?;
    let opts = daemon::Options {
        idle_exit,
        follow_postmaster,
        key: settings.daemon_key(),
        identity,
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
