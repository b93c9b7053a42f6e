//! `walarchive repo-info`.

use anyhow::{Context, Result};
use walarchive::Repository;

use crate::exit;

pub(crate) async fn repo_info(repo: &Repository, json: bool) -> Result<u8> {
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
