//! `verify backup` and `wal-verify`: read what a restore would read, before a restore has to.
//!
//! Both print a summary (text, or one JSON document with `--json`) and, when something is
//! wrong, one `walarchive <command>: error: ...` line on stderr naming the first problem,
//! then exit with that problem's status:
//!
//! - `verify backup`: 1 no such complete backup (or LATEST with none); 8 a part, file,
//!   label or WAL segment is corrupt or a part is missing (the backup is damaged);
//!   12 ([`exit::WAL_MISSING`]) a WAL segment the backup needs is not in the repository.
//! - `wal-verify`: 8 any object is corrupt or a history file is invalid or contradicts the
//!   archive (this wins, being the more alarming); otherwise [`exit::WAL_INCOMPLETE`] (14)
//!   for gaps, timelines without a history file, a backup whose own WAL is missing, or a
//!   backup that cannot recover to the latest timeline.
//!
//! Storage and configuration failures stop either command with their usual statuses.
//! The analysis lives in `walarchive::verify`; this file only does the printing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use walarchive::backup::{needed_segments, Progress};
use walarchive::catalog;
use walarchive::manifest::Manifest;
use walarchive::verify::{self, Analysis, BackupRange, Problem, Scan};
use walarchive::{ErrorKind, Repository, TimelineId};
use walarchive_restore::backup::verify_backup_content;
use walarchive_restore::recovery::{self, Recovery};
use walarchive_restore::FetchError;

use crate::exit;
use crate::progress;

/// Counts the bytes read while forwarding to a progress bar.
struct Counting {
    inner: Arc<dyn Progress>,
    bytes: AtomicU64,
}

impl Progress for Counting {
    fn start(&self, total: u64) {
        self.inner.start(total);
    }
    fn advance(&self, bytes: u64) {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.inner.advance(bytes);
    }
    fn phase(&self, what: &str) {
        self.inner.phase(what);
    }
}

/// One problem found: its exit status, its line, and its JSON.
struct Found {
    status: u8,
    message: String,
    json: serde_json::Value,
}

impl Found {
    fn of(p: &Problem, status: u8, message: String) -> Self {
        let mut json = serde_json::to_value(p).unwrap_or_default();
        json["message"] = serde_json::json!(message);
        Found {
            status,
            message,
            json,
        }
    }
}

fn print_json(v: &serde_json::Value) -> Result<()> {
    println!(
        "{}",
        serde_json::to_string_pretty(v).context("cannot print JSON")?
    );
    Ok(())
}

/// The error line for the first of `found`, and its status (0 when nothing was found).
fn fail(command: &str, found: &[Found]) -> u8 {
    let Some(first) = found.first() else {
        return exit::OK;
    };
    let more = match found.len() {
        1 => String::new(),
        n => format!(" (and {} more)", count(n - 1, "problem")),
    };
    eprintln!("walarchive {command}: error: {}{more}", first.message);
    first.status
}

/// "1 segment", "2 segments".
fn count(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

/// The backup `wanted` names (or the newest complete one for LATEST).
async fn resolve(repo: &Repository, wanted: &str) -> Result<Manifest, FetchError> {
    let entries = catalog::list_backups(repo, true).await?;
    if let Some(e) = entries
        .iter()
        .find(|e| e.name == wanted && !e.is_complete())
    {
        return Err(match &e.damaged {
            Some(why) => FetchError::BadBackup(why.clone()),
            None => FetchError::NoBackup(format!(
                "backup {} is incomplete (interrupted or still running): it has no manifest to verify against",
                e.name
            )),
        });
    }
    let manifests: Vec<Manifest> = entries.into_iter().filter_map(|e| e.manifest).collect();
    recovery::choose(&manifests, wanted, &Recovery::default()).cloned()
}

/// `verify backup NAME|LATEST`.
pub async fn verify_backup(repo: &Repository, name: &str, json: bool) -> Result<u8> {
    let started = Instant::now();
    let d = repo.require_descriptor().await?;
    let m = resolve(repo, name).await?;
    let mut found = Vec::new();

    // Every part, every file against the manifest, backup_label and tablespace_map.
    let counter = Arc::new(Counting {
        inner: progress::bytes_bar(),
        bytes: AtomicU64::new(0),
    });
    let files = match verify_backup_content(repo, &m, counter.clone()).await {
        Ok((files, _)) => Some(files),
        // A missing part or label is damage to an existing backup, not "no such backup".
        Err(e) if matches!(e.kind(), ErrorKind::Corrupt | ErrorKind::NotFound) => {
            let message = format!("backup {}: {e}", m.name);
            let json = serde_json::json!({"kind": "backup_content", "message": message});
            found.push(Found {
                status: exit::CORRUPT,
                message,
                json,
            });
            None
        }
        Err(e) => return Err(e.into()),
    };
    let bytes = counter.bytes.load(Ordering::Relaxed);

    // The WAL from its start to its stop LSN.
    let segs = needed_segments(
        TimelineId(m.timeline),
        m.start_lsn,
        m.stop_lsn,
        m.wal_segment_size,
    );
    let (read, problems) = verify::check_segments(repo, &m.name, &segs, &d).await?;
    for p in &problems {
        let (status, message) = match p {
            Problem::BackupWal { segment, .. } => (
                exit::WAL_MISSING,
                format!(
                    "backup {}: WAL segment {segment}, which the backup needs, is not in the repository (the backup cannot be restored)",
                    m.name
                ),
            ),
            other => (exit::CORRUPT, format!("backup {}: WAL {other}", m.name)),
        };
        found.push(Found::of(p, status, message));
    }

    if json {
        print_json(&serde_json::json!({
            "backup": m.name,
            "timeline": m.timeline,
            "start_lsn": m.start_lsn.to_string(),
            "stop_lsn": m.stop_lsn.to_string(),
            "files_checked": files,
            "bytes_checked": bytes,
            "segments_needed": segs.len(),
            "segments_checked": read,
            "problems": found.iter().map(|f| f.json.clone()).collect::<Vec<_>>(),
            "ok": found.is_empty(),
            "duration_seconds": started.elapsed().as_secs_f64(),
        }))?;
    } else if found.is_empty() {
        println!(
            "backup {} verified: {} files ({}) match the manifest; the WAL from {} to {} on timeline {} ({}) is archived and valid",
            m.name,
            files.unwrap_or_default(),
            mib(bytes),
            m.start_lsn,
            m.stop_lsn,
            m.timeline,
            count(read, "segment")
        );
    }
    Ok(fail("verify", &found))
}

/// `wal-verify`.
pub async fn wal_verify(repo: &Repository, json: bool) -> Result<u8> {
    let started = Instant::now();
    let d = repo.require_descriptor().await?;
    let backups: Vec<BackupRange> = catalog::list_backups(repo, false)
        .await?
        .into_iter()
        .filter_map(|e| {
            let m = e.manifest?;
            Some(BackupRange {
                name: m.name,
                timeline: TimelineId(m.timeline),
                start: m.start_lsn,
                stop: m.stop_lsn,
                permanent: e.permanent,
            })
        })
        .collect();
    let scan = verify::scan_archive(repo, &d, backups).await?;
    let analysis = verify::analyze(&scan.archive);

    // Corruption first: it is the more alarming, and it decides the status.
    let mut problems: Vec<&Problem> = analysis.problems.iter().collect();
    problems.sort_by_key(|p| !p.is_corrupt());
    let found: Vec<Found> = problems
        .iter()
        .map(|p| {
            let status = if p.is_corrupt() {
                exit::CORRUPT
            } else {
                exit::WAL_INCOMPLETE
            };
            Found::of(p, status, p.to_string())
        })
        .collect();

    if json {
        print_json(&serde_json::json!({
            "ok": found.is_empty(),
            "objects_checked": scan.objects_checked,
            "bytes_checked": scan.bytes_checked,
            "timelines": analysis.timelines,
            "pitr": analysis.pitr,
            "problems": found.iter().map(|f| f.json.clone()).collect::<Vec<_>>(),
            "ignored": scan.ignored,
            "duration_seconds": started.elapsed().as_secs_f64(),
        }))?;
    } else {
        print_wal_report(&scan, &analysis, &found, started);
    }
    Ok(fail("wal-verify", &found))
}

fn print_wal_report(scan: &Scan, a: &Analysis, found: &[Found], started: Instant) {
    for t in &a.timelines {
        let range = match (&t.first_segment, &t.last_segment) {
            (Some(f), Some(l)) => format!("{f} to {l}"),
            _ => "no segments".into(),
        };
        let origin = match (t.parent, t.switchpoint) {
            (Some(p), Some(sp)) => format!(", branched off timeline {p} at {sp}"),
            _ if t.timeline.0 > 1 => ", no history file".into(),
            _ => String::new(),
        };
        let partials = if t.partials.is_empty() {
            String::new()
        } else {
            format!(", {} .partial", t.partials.len())
        };
        println!(
            "timeline {}: {range} ({}{partials}){origin}",
            t.timeline,
            count(t.segments, "segment")
        );
    }
    for r in &a.pitr {
        match (r.to_lsn, r.to_timeline) {
            (Some(to), Some(tli)) => println!(
                "backup {} (timeline {}): point-in-time recovery from {} up to {to} on timeline {tli}",
                r.backup, r.timeline, r.from_lsn
            ),
            _ => println!(
                "backup {} (timeline {}): cannot be restored, its WAL up to {} is incomplete",
                r.backup, r.timeline, r.from_lsn
            ),
        }
    }
    for f in found {
        println!("problem: {}", f.message);
    }
    for k in &scan.ignored {
        println!("ignored: {k} (not a WAL file where one belongs)");
    }
    let verdict = match found.len() {
        0 => "no problems".to_string(),
        n => count(n, "problem"),
    };
    println!(
        "checked {} WAL objects ({}) in {:.1}s: {verdict}",
        scan.objects_checked,
        mib(scan.bytes_checked),
        started.elapsed().as_secs_f64()
    );
}
