//! `walarchive backup-push`.

use std::time::Instant;

use anyhow::{Context, Result};
use walarchive::backup::{self, BackupOptions};
use walarchive::Repository;

use crate::exit;
use crate::progress;
use crate::report::human;

pub(crate) async fn backup_push(repo: &Repository, opts: &BackupOptions, json: bool) -> Result<u8> {
    let started = Instant::now();
    let m = backup::backup_push(repo, opts, progress::bytes_bar()).await?;
    let secs = started.elapsed().as_secs_f64();
    if json {
        let mut v = serde_json::to_value(super::backup_list::BackupSummary::of(&m))
            .context("cannot print JSON")?;
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
