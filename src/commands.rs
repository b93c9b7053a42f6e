//! The commands' bodies, and the mapping from errors to exit statuses.

use std::time::Instant;

use anyhow::{Context, Result};
use serde::Serialize;
use walarchive_core::repo::PutOutcome;
use walarchive_core::{push, Repository, WalFileName};
use walarchive_restore::FetchError;

use crate::cli::{Cli, Command};
use crate::exit;
use crate::settings::Settings;

/// Runs the command, returning its exit status on success.
pub async fn run(cli: &Cli) -> Result<u8> {
    let settings = Settings::resolve(&cli.global)?;
    let repo = settings.open()?;
    match &cli.command {
        Command::WalPush { path } => wal_push(&repo, path).await,
        Command::WalFetch { name, dest } => wal_fetch(&repo, name, dest).await,
        Command::WalList { timeline, json } => wal_list(&repo, *timeline, *json).await,
        Command::RepoInfo { json } => repo_info(&repo, *json).await,
    }
}

/// The exit status for an error: the class of the first typed error in the chain.
pub fn exit_status(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if let Some(e) = cause.downcast_ref::<walarchive_core::Error>() {
            return exit::for_kind(e.kind());
        }
        if let Some(e) = cause.downcast_ref::<FetchError>() {
            return exit::for_kind(e.kind());
        }
    }
    exit::INTERNAL
}

async fn wal_push(repo: &Repository, path: &std::path::Path) -> Result<u8> {
    let started = Instant::now();
    let report = push::push_file(repo, path).await?;
    match report.outcome {
        PutOutcome::Stored { stored_len } => tracing::info!(
            "archived {} ({} -> {} bytes, {}) in {:.0?}",
            report.name,
            report.raw_len,
            stored_len,
            repo.compression,
            started.elapsed()
        ),
        PutOutcome::AlreadyStored => {
            tracing::info!(
                "{} was already archived with identical content",
                report.name
            )
        }
    }
    Ok(exit::OK)
}

async fn wal_fetch(repo: &Repository, name: &str, dest: &std::path::Path) -> Result<u8> {
    let started = Instant::now();
    let report = walarchive_restore::fetch_file(repo, name, dest).await?;
    tracing::info!(
        "restored {} ({} bytes) in {:.0?}",
        report.name,
        report.len,
        started.elapsed()
    );
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
    for (key, size) in repo.list("wal/").await? {
        let Some(file) = key.rsplit('/').next() else {
            continue;
        };
        let Ok(name) = file.parse::<WalFileName>() else {
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
