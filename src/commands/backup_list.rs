//! `walarchive backup-list`.

use anyhow::{Context, Result};
use serde::Serialize;
use walarchive::manifest::Manifest;
use walarchive::{catalog, Repository};

use crate::exit;
use crate::report::human;

#[derive(Serialize)]
pub(super) struct BackupSummary<'a> {
    name: &'a str,
    complete: bool,
    start_time: &'a str,
    stop_time: Option<&'a str>,
    start_lsn: Option<String>,
    stop_lsn: Option<String>,
    timeline: Option<u32>,
    pg_version: Option<u32>,
    original_bytes: Option<u64>,
    stored_bytes: Option<u64>,
    from_standby: Option<bool>,
    label: Option<&'a str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    damaged: bool,
    /// Pages of the source that failed their checksum when the backup copied them.
    #[serde(skip_serializing_if = "is_zero")]
    source_pages_failing_checksum: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl<'a> BackupSummary<'a> {
    pub(super) fn of(m: &'a Manifest) -> Self {
        BackupSummary {
            name: &m.name,
            complete: true,
            start_time: &m.start_time,
            stop_time: Some(&m.stop_time),
            start_lsn: Some(m.start_lsn.to_string()),
            stop_lsn: Some(m.stop_lsn.to_string()),
            timeline: Some(m.timeline),
            pg_version: Some(m.pg_version_num / 10000),
            original_bytes: Some(m.original_bytes),
            stored_bytes: Some(m.stored_bytes),
            from_standby: Some(m.from_standby),
            label: Some(&m.label),
            damaged: false,
            source_pages_failing_checksum: m.damaged_page_count(),
        }
    }
}

pub(crate) async fn backup_list(repo: &Repository, json: bool, detail: bool) -> Result<u8> {
    let entries = catalog::list_backups(repo, detail).await?;
    let summaries: Vec<BackupSummary<'_>> = entries
        .iter()
        .map(|e| match &e.manifest {
            Some(m) => BackupSummary::of(m),
            None => BackupSummary {
                name: &e.name,
                complete: false,
                start_time: e
                    .started
                    .as_ref()
                    .map(|s| s.start_time.as_str())
                    .unwrap_or(""),
                stop_time: None,
                start_lsn: None,
                stop_lsn: None,
                timeline: None,
                pg_version: None,
                original_bytes: None,
                stored_bytes: None,
                from_standby: None,
                label: e.started.as_ref().map(|s| s.label.as_str()),
                damaged: e.damaged.is_some(),
                source_pages_failing_checksum: 0,
            },
        })
        .collect();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&summaries).context("cannot print JSON")?
        );
        return Ok(exit::OK);
    }
    let dash = || "-".to_string();
    if detail {
        println!(
            "{:<28} {:<10} {:<27} {:<27} {:>12} {:>12} {:>3} {:>4} {:>10} {:>10} {:<7}",
            "NAME",
            "STATUS",
            "START",
            "STOP",
            "START LSN",
            "STOP LSN",
            "TLI",
            "PG",
            "SIZE",
            "STORED",
            "SOURCE"
        );
    } else {
        println!(
            "{:<28} {:<27} {:<27} {:>12} {:>12} {:>3} {:>10} {:>10}",
            "NAME", "START", "STOP", "START LSN", "STOP LSN", "TLI", "SIZE", "STORED"
        );
    }
    for s in &summaries {
        let stop = s.stop_time.unwrap_or("-");
        let start_lsn = s.start_lsn.clone().unwrap_or_else(dash);
        let stop_lsn = s.stop_lsn.clone().unwrap_or_else(dash);
        let tli = s.timeline.map(|t| t.to_string()).unwrap_or_else(dash);
        let size = s.original_bytes.map(human).unwrap_or_else(dash);
        let stored = s.stored_bytes.map(human).unwrap_or_else(dash);
        if detail {
            let status = match (s.complete, s.damaged) {
                (true, _) => "complete",
                (false, true) => "damaged",
                (false, false) => "incomplete",
            };
            let pg = s.pg_version.map(|v| v.to_string()).unwrap_or_else(dash);
            let source = match s.from_standby {
                Some(true) => "standby",
                Some(false) => "primary",
                None => "-",
            };
            println!(
                "{:<28} {:<10} {:<27} {:<27} {:>12} {:>12} {:>3} {:>4} {:>10} {:>10} {:<7}",
                s.name,
                status,
                s.start_time,
                stop,
                start_lsn,
                stop_lsn,
                tli,
                pg,
                size,
                stored,
                source
            );
        } else {
            println!(
                "{:<28} {:<27} {:<27} {:>12} {:>12} {:>3} {:>10} {:>10}",
                s.name, s.start_time, stop, start_lsn, stop_lsn, tli, size, stored
            );
        }
    }
    for s in summaries
        .iter()
        .filter(|s| s.source_pages_failing_checksum > 0)
    {
        println!(
            "note: backup {} holds {} page(s) that failed their checksum on the source when it was taken (damage a restore brings back; its manifest lists them)",
            s.name, s.source_pages_failing_checksum
        );
    }
    Ok(exit::OK)
}
