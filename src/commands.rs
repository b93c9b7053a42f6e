//! Dispatch: runs the command the command line names. Each command lives in its own module
//! below; what several share is in `report` (sizes, counters) and `exit` (statuses).

mod backup_fetch;
mod backup_list;
mod backup_push;
mod daemon;
mod delete;
mod repo_info;
mod repo_repair;
mod status;
mod verify;
mod wal_fetch;
mod wal_list;
mod wal_push;
mod window;

use std::time::Duration;

use anyhow::Result;
use walarchive::backup::BackupOptions;
use walarchive::pg;
use walarchive_restore::backup::BackupFetchOptions;
use walarchive_restore::recovery::Recovery;

use crate::cli::{Cli, Command, VerifyCommand};
use crate::settings::Settings;

/// Runs the command, returning its exit status on success.
pub async fn run(cli: &Cli) -> Result<u8> {
    let settings = Settings::resolve(&cli.global)?;
    let spawned = matches!(cli.command, Command::WalPush { .. })
        .then(daemon::spawned_for)
        .flatten();
    if let (Command::WalPush { path, .. }, None) = (&cli.command, &spawned) {
        // Before opening the repository: a daemon's answer needs nothing else.
        if let Some(answered) = daemon::push_via_daemon(&settings, path) {
            return answered;
        }
    }
    let repo = settings.open()?;
    if let Some(pg_wal) = spawned {
        // A daemon this program started from wal-push: it follows PostgreSQL's life.
        return daemon::run(
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
            let identity =
                wal_push::push_identity(pgdata.as_deref(), settings.env.pgdata.as_deref(), path)?;
            wal_push::wal_push(&repo, path, identity.as_ref(), settings.parallel).await
        }
        Command::Daemon { pgdata, idle_exit } => {
            let idle = idle_exit.map(Duration::from_secs);
            daemon::run(&repo, &settings, &pgdata.join("pg_wal"), idle, false).await
        }
        Command::WalFetch { name, dest, pgdata } => {
            wal_fetch::wal_fetch(&repo, &settings, name, dest, pgdata.as_deref()).await
        }
        Command::WalList { timeline, json } => wal_list::wal_list(&repo, *timeline, *json).await,
        Command::RepoInfo { json } => repo_info::repo_info(&repo, *json).await,
        Command::RepoRepair {
            pgdata,
            confirm,
            json,
        } => repo_repair::repo_repair(&repo, pgdata.as_deref(), *confirm, *json).await,
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
            backup_push::backup_push(&repo, &opts, *json).await
        }
        Command::BackupList { json, detail } => {
            backup_list::backup_list(&repo, *json, *detail).await
        }
        Command::BackupMark { name, unmark } => delete::backup_mark(&repo, name, *unmark).await,
        Command::Delete(what) => delete::delete(&repo, what).await,
        Command::Verify(VerifyCommand::Backup { name, json }) => {
            verify::verify_backup(&repo, name, *json).await
        }
        Command::WalVerify { json } => verify::wal_verify(&repo, *json).await,
        Command::RestorableWindow {
            target,
            complete_to,
            json,
        } => window::restorable_window(&repo, target, complete_to.as_deref(), *json).await,
        Command::Status {
            pgdata,
            pg_conn,
            rpo,
            json,
            prometheus,
        } => {
            let conn = pg::config(pg_conn.as_deref(), &settings.env.pg)?;
            let args = status::StatusArgs {
                pgdata: pgdata.clone(),
                conn,
                rpo: Duration::from_secs(*rpo),
                json: *json,
                prometheus: *prometheus,
            };
            status::status(&repo, &args).await
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
            progress_file,
            json,
        } => {
            let recovery = Recovery {
                target: backup_fetch::recovery_target(target)?,
                timeline: target_timeline.clone(),
                action: target_action.clone(),
                exclusive: *target_exclusive,
                standby: *standby,
            };
            let opts = BackupFetchOptions {
                dest: backup_fetch::absolute(dest)?,
                backup: backup.clone(),
                recovery,
                tablespace_map: tablespace_map.iter().cloned().collect(),
                force: *force,
                restore_command: backup_fetch::restore_command(cli, &settings)?,
                parallel: settings.parallel,
                progress_file: progress_file
                    .as_deref()
                    .map(backup_fetch::absolute)
                    .transpose()?,
            };
            backup_fetch::backup_fetch(&repo, &opts, *json).await
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
        | Command::RestorableWindow { .. }
        | Command::Status { .. }
        | Command::RepoInfo { .. } => true,
    }
}
