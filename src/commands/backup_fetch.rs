//! `walarchive backup-fetch`: restoring a base backup, and the recovery settings it writes.

use std::time::Instant;

use anyhow::{Context, Result};
use walarchive::Repository;
use walarchive_restore::backup::BackupFetchOptions;
use walarchive_restore::recovery::{self, Target};

use crate::cli::{Cli, TargetArgs};
use crate::exit;
use crate::progress;
use crate::report::human;
use crate::settings::Settings;

pub(crate) fn absolute(p: &std::path::Path) -> Result<std::path::PathBuf> {
    Ok(if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .context("cannot read the current directory")?
            .join(p)
    })
}

pub(crate) fn recovery_target(t: &TargetArgs) -> Result<Option<Target>> {
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
pub(crate) fn restore_command(cli: &Cli, settings: &Settings) -> Result<String> {
    let quote = |what: &str, word: &str| {
        walarchive::shell::quote(word)
            .map(|q| q.into_owned())
            .map_err(|e| walarchive::Error::BadInput {
                path: what.into(),
                reason: e.to_string(),
            })
    };
    let exe = std::env::current_exe().context("cannot find the walarchive executable's path")?;
    let mut cmd = format!(
        "{} --repo {}",
        quote(
            "the walarchive executable's path",
            &exe.display().to_string()
        )?,
        quote("--repo", &settings.repo)?
    );
    if let Some(cfg) = &cli.global.config {
        cmd.push_str(&format!(
            " --config {}",
            quote("--config", &absolute(cfg)?.display().to_string())?
        ));
    }
    cmd.push_str(" wal-fetch %f %p");
    Ok(cmd)
}

pub(crate) async fn backup_fetch(
    repo: &Repository,
    opts: &BackupFetchOptions,
    json: bool,
) -> Result<u8> {
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
