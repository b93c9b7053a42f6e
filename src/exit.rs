//! Exit statuses: the contract with PostgreSQL and with operators' scripts.
//!
//! `archive_command` only distinguishes zero from non-zero, but `restore_command` does not:
//! a status of 1..=125 tells PostgreSQL "not available" and ends archive recovery (the server
//! promotes), while a status above 125 makes it abort. So `wal-fetch` answers 1 only for
//! "the repository has no such file" and adds [`FETCH_FATAL_OFFSET`] to every other failure;
//! the one exception is a storage failure on a standby, which never promotes by itself and
//! must keep waiting through an outage (see [`StandbyWaits`]).

use std::process::ExitCode;

use walarchive::ErrorKind;
use walarchive_restore::FetchError;

/// Success.
pub const OK: u8 = 0;
/// `wal-fetch`: the file is not in the repository.
pub const NOT_FOUND: u8 = 1;
/// Wrong command-line arguments.
pub const USAGE: u8 = 2;
/// Bad input: missing file, a directory, not a WAL file name, wrong size, damaged header.
pub const BAD_INPUT: u8 = 3;
/// Already archived with different content.
pub const CONFLICT: u8 = 4;
/// WAL of another cluster than the repository's.
pub const FOREIGN_CLUSTER: u8 = 5;
/// Configuration: no or bad repository URL, unknown scheme, unreadable config, no repository.
pub const CONFIG: u8 = 6;
/// Storage unreachable, refusing the credentials, or failing after retries.
pub const STORAGE: u8 = 7;
/// A stored object fails verification.
pub const CORRUPT: u8 = 8;
/// A local I/O failure (cannot write the destination, disk full).
pub const LOCAL_IO: u8 = 9;
/// An internal error (a bug).
pub const INTERNAL: u8 = 10;
/// PostgreSQL refused the connection or a query (backup-push).
pub const POSTGRES: u8 = 11;
/// WAL a backup needs is missing from the repository (backup-push after its wait,
/// verify backup).
pub const WAL_MISSING: u8 = 12;
/// `status`: the recovery point objective is not met (or cannot be measured).
pub const RPO_NOT_MET: u8 = 13;
/// `wal-verify`: the WAL archive is incomplete (a gap, a timeline without history file, a
/// backup whose WAL is missing).
pub const WAL_INCOMPLETE: u8 = 14;
/// `restorable-window`: the target is outside the restorable window, the restore point does
/// not exist, or nothing is restorable (no complete backup with its WAL).
pub const NOT_RESTORABLE: u8 = 15;
/// Added by `wal-fetch` to every failure other than [`NOT_FOUND`], so PostgreSQL aborts recovery.
pub const FETCH_FATAL_OFFSET: u8 = 200;

/// The status for an error class.
pub fn for_kind(kind: ErrorKind) -> u8 {
    match kind {
        ErrorKind::NotFound => NOT_FOUND,
        ErrorKind::BadInput => BAD_INPUT,
        ErrorKind::Conflict => CONFLICT,
        ErrorKind::ForeignCluster => FOREIGN_CLUSTER,
        ErrorKind::Config => CONFIG,
        ErrorKind::Storage => STORAGE,
        ErrorKind::Corrupt => CORRUPT,
        ErrorKind::LocalIo => LOCAL_IO,
        ErrorKind::Postgres => POSTGRES,
        ErrorKind::WalMissing => WAL_MISSING,
    }
}

/// The status `wal-fetch` exits with for `code`: "not found" stays 1, everything else is
/// made fatal for PostgreSQL.
pub fn for_fetch(code: u8) -> u8 {
    match code {
        OK | NOT_FOUND => code,
        other => other + FETCH_FATAL_OFFSET,
    }
}

/// Converts to a process exit code.
pub fn code(c: u8) -> ExitCode {
    ExitCode::from(c)
}

/// The table printed at the end of `--help`.
pub const HELP: &str = "\
Exit status:
  0    success
  1    wal-fetch: the file is not in the repository (PostgreSQL ends recovery); on a
       standby (standby.signal), also: the store is unavailable (PostgreSQL keeps waiting)
  2    wrong command-line arguments
  3    bad input: missing file, a directory, not a WAL file name, wrong size, damaged page header,
       a history or backup history file that does not parse
  4    already archived with different content (never overwritten)
  5    the file belongs to another cluster than the repository (system identifier, segment size),
       or a segment to another cluster than its data directory's pg_control
  6    configuration: no or bad repository URL, unknown scheme, unreadable config file, no repository,
       a repository whose descriptor is gone (see repo-repair), one created inside or around another;
       wal-push: a history or backup history file with no data directory (--pgdata) to vouch for it
  7    storage: unreachable, credentials refused, missing bucket, failing after retries
  8    a stored object is corrupt (checksum or decoding failure)
  9    local I/O error (cannot read the input or write the destination)
  10   internal error
  11   backup-push: PostgreSQL refused the connection or a query (e.g. pg_backup_stop failed)
  12   WAL a backup needs is missing: backup-push waited --wal-timeout (the backup stays
       incomplete), or verify backup found a segment missing
  13   status: the archive lags more than --rpo, archiving fails, or the lag cannot be measured
  14   wal-verify: the WAL archive is incomplete (gap, timeline without history, backup without its WAL,
       backup that cannot recover to the latest timeline)
  15   restorable-window: the target is outside the restorable window (before its earliest point,
       past the archived WAL, a time after the last archived transaction), the restore point does
       not exist, or nothing is restorable (no complete backup whose WAL is archived)
  wal-fetch adds 200 to every status except 0 and 1 (e.g. 207 for a storage failure), because
  PostgreSQL aborts recovery on a status above 125 instead of ending it early and promoting.";

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
        return NOT_FOUND;
    }
    for cause in e.chain() {
        if let Some(e) = cause.downcast_ref::<walarchive::window::Error>() {
            return match e {
                walarchive::window::Error::Unrestorable(_)
                | walarchive::window::Error::NoBackup => NOT_RESTORABLE,
                e => for_kind(e.kind()),
            };
        }
        if let Some(e) = cause.downcast_ref::<walarchive::Error>() {
            return for_kind(e.kind());
        }
        if let Some(e) = cause.downcast_ref::<FetchError>() {
            return for_kind(e.kind());
        }
    }
    INTERNAL
}
