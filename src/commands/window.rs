//! `walarchive restorable-window`: the window a restore can reach, and what a target
//! resolves to in it (design §1.4). The computing is `walarchive::window`'s; this file
//! parses the target and prints. A refusal is an error (`window::Error::Unrestorable`), so
//! `main` prints its one line and `exit` maps it to [`exit::NOT_RESTORABLE`].

use anyhow::{Context, Result};
use serde_json::{json, Value};
use walarchive::window::{self, Point, Resolved, Wanted, Window};
use walarchive::{Lsn, Repository};
use walarchive_restore::recovery::Target;

use crate::cli::TargetArgs;
use crate::commands::backup_fetch::recovery_target;
use crate::exit;

/// `restorable-window [--target-time T | --target-lsn L | --target-name N] [--complete-to LSN]`.
pub async fn restorable_window(
    repo: &Repository,
    target: &TargetArgs,
    complete_to: Option<&str>,
    json: bool,
) -> Result<u8> {
    let wanted = match recovery_target(target)? {
        None => None,
        Some(Target::Time(_, t)) => Some(Wanted::Time(t)),
        Some(Target::Lsn(l)) => Some(Wanted::Lsn(l)),
        Some(Target::Name(n)) => Some(Wanted::RestorePoint(n)),
        Some(Target::Xid(_) | Target::Immediate) => {
            eprintln!(
                "walarchive restorable-window: error: only --target-time, --target-lsn and --target-name can be resolved (a transaction ID is not in the WAL's order; the immediate target is the earliest point)"
            );
            return Ok(exit::USAGE);
        }
    };
    let complete_to = complete_to
        .map(|s| {
            s.parse::<Lsn>().map_err(|e| walarchive::Error::BadInput {
                path: "--complete-to".into(),
                reason: e.to_string(),
            })
        })
        .transpose()?;
    let w = window::compute(repo).await?;
    let resolved = match &wanted {
        Some(wanted) => Some(window::resolve(repo, &w, wanted, complete_to).await?),
        None => None,
    };
    if json {
        let v = to_json(&w, resolved.as_ref());
        println!(
            "{}",
            serde_json::to_string_pretty(&v).context("cannot print JSON")?
        );
    } else {
        print_text(&w, resolved.as_ref());
    }
    Ok(exit::OK)
}

fn time(t: Option<chrono::DateTime<chrono::Utc>>) -> Value {
    t.map_or(Value::Null, |t| {
        json!(t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
    })
}

fn point(p: &Point) -> Value {
    json!({"lsn": p.lsn.to_string(), "timeline": p.timeline.0, "time": time(p.time)})
}

fn to_json(w: &Window, r: Option<&Resolved>) -> Value {
    let backups: Vec<Value> = w
        .backups
        .iter()
        .map(|b| {
            json!({
                "name": b.name,
                "timeline": b.timeline.0,
                "start_lsn": b.start.to_string(),
                "stop_lsn": b.stop.to_string(),
                "stop_time": time(b.stop_time),
                "reaches": b.reaches.map(|l| l.to_string()),
            })
        })
        .collect();
    let mut v = json!({
        "earliest": point(&w.earliest),
        "latest": point(&w.latest),
        "end": w.end.to_string(),
        "timelines": w.timelines.iter().map(|t| t.0).collect::<Vec<_>>(),
        "backups": backups,
    });
    if let Some(r) = r {
        v["target"] = json!({
            "backup": r.backup,
            "timeline": r.timeline,
            "recovery_target": {
                "setting": r.recovery.postgres_name(),
                "value": r.recovery.postgres_value(),
            },
            "expect": point(&r.expect),
        });
    }
    v
}

fn text_time(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map_or_else(
        || "no transaction since the backup".into(),
        |t| t.format("%Y-%m-%d %H:%M:%S%.f+00").to_string(),
    )
}

fn print_text(w: &Window, r: Option<&Resolved>) {
    let first = w.backups.iter().find(|b| b.reaches.is_some());
    println!(
        "earliest: {} on timeline {} at {} (the end of backup {})",
        w.earliest.lsn,
        w.earliest.timeline,
        text_time(w.earliest.time),
        first.map_or("?", |b| b.name.as_str())
    );
    println!(
        "latest:   {} on timeline {}, last transaction: {} (archived WAL ends at {})",
        w.latest.lsn,
        w.latest.timeline,
        text_time(w.latest.time),
        w.end
    );
    if let Some(r) = r {
        let timeline = r
            .timeline
            .map(|t| format!(", recovery_target_timeline = '{t}'"))
            .unwrap_or_default();
        println!(
            "target:   backup {} with {}{timeline}: the restore holds the WAL to {} on timeline {} (as of {})",
            r.backup,
            r.recovery,
            r.expect.lsn,
            r.expect.timeline,
            text_time(r.expect.time)
        );
    }
}
