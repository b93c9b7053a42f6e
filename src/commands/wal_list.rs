//! `walarchive wal-list`.

use anyhow::{Context, Result};
use serde::Serialize;
use walarchive::{Repository, WalFileName};

use crate::exit;

#[derive(Serialize)]
struct WalEntry {
    name: String,
    timeline: u32,
    kind: &'static str,
    stored_bytes: u64,
}

pub(crate) async fn wal_list(repo: &Repository, timeline: Option<u32>, json: bool) -> Result<u8> {
    let mut entries = Vec::new();
    for listed in repo.list("wal/").await? {
        let size = listed.size;
        // Only this repository's own WAL (not another repository's nested in it).
        let Some(walarchive::layout::OwnKey::Wal(name)) =
            walarchive::layout::parse_key(&listed.key)
        else {
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
