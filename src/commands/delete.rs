//! `delete` and `backup-mark`: retention. A dry run unless `--confirm`: the plan is always
//! printed first, so what would go can be read before anything goes.

use anyhow::{Context, Result};
use walarchive::catalog;
use walarchive::retention::{self, Plan, Policy};
use walarchive::{Error, Repository};
use walarchive_restore::recovery::parse_target_time;

use crate::cli::{DeleteArgs, DeleteCommand};
use crate::exit;

pub async fn delete(repo: &Repository, what: &DeleteCommand) -> Result<u8> {
    let (policy, act) = match what {
        DeleteCommand::Retain { count, act, .. } => (Policy::Retain(*count), act),
        DeleteCommand::Before { target, act } => {
            let policy = if target.starts_with("base_") {
                Policy::BeforeBackup(target.clone())
            } else {
                let t = parse_target_time(target).map_err(|reason| Error::BadInput {
                    path: target.clone(),
                    reason: format!("neither a backup name nor a time: {reason}"),
                })?;
                Policy::BeforeTime(t)
            };
            (policy, act)
        }
        DeleteCommand::Everything { force, act } => (Policy::Everything { force: *force }, act),
        DeleteCommand::Garbage { older_than, act } => (
            Policy::Garbage {
                older_than: *older_than,
            },
            act,
        ),
    };
    let plan = retention::plan(repo, &policy, chrono::Utc::now()).await?;
    report(&plan, act, false)?;
    if act.confirm && !plan.objects.is_empty() {
        let n = retention::execute(repo, &plan).await?;
        tracing::info!("deleted {n} objects");
        report(&plan, act, true)?;
    }
    Ok(exit::OK)
}

fn report(plan: &Plan, act: &DeleteArgs, done: bool) -> Result<()> {
    if act.json {
        // One JSON document: the plan before acting, or the outcome after.
        if done || !act.confirm || plan.objects.is_empty() {
            let mut v = serde_json::to_value(plan).context("cannot print JSON")?;
            v["deleted"] = serde_json::json!(done);
            v["objects_count"] = serde_json::json!(plan.objects.len());
            println!(
                "{}",
                serde_json::to_string_pretty(&v).context("cannot print JSON")?
            );
        }
        return Ok(());
    }
    if done {
        println!(
            "deleted {} objects ({} bytes)",
            plan.objects.len(),
            plan.bytes
        );
        return Ok(());
    }
    let verb = if act.confirm {
        "deleting"
    } else {
        "would delete"
    };
    println!(
        "{verb} {} backup(s){}",
        plan.delete_backups.len(),
        list(&plan.delete_backups)
    );
    match (plan.delete_wal.first(), plan.delete_wal.last()) {
        (Some(first), Some(last)) => {
            println!(
                "{verb} {} WAL file(s), {first} .. {last}",
                plan.delete_wal.len()
            )
        }
        _ => println!("{verb} no WAL"),
    }
    println!(
        "{verb} {} object(s), {} bytes in all",
        plan.objects.len(),
        plan.bytes
    );
    println!(
        "keeping {} backup(s){}",
        plan.keep_backups.len(),
        list(&plan.keep_backups)
    );
    for l in &plan.left_alone {
        println!("leaving {l}");
    }
    if !plan.not_ours.is_empty() {
        let shown: Vec<&str> = plan.not_ours.iter().take(5).map(String::as_str).collect();
        let more = plan.not_ours.len() - shown.len();
        println!(
            "leaving {} object(s) that are not this repository's (another repository nested in it? stray files?): {}{}",
            plan.not_ours.len(),
            shown.join(", "),
            if more > 0 { format!(" and {more} more") } else { String::new() }
        );
    }
    if !act.confirm {
        println!("dry run: nothing was deleted; run again with --confirm to delete");
    }
    Ok(())
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        String::new()
    } else {
        format!(": {}", names.join(", "))
    }
}

pub async fn backup_mark(repo: &Repository, name: &str, unmark: bool) -> Result<u8> {
    catalog::load_manifest(repo, name)
        .await
        .map_err(|e| match e {
            Error::NotFound { .. } => Error::NotFound {
                key: format!("complete backup {name}"),
            },
            e => e,
        })?;
    catalog::set_permanent(repo, name, !unmark).await?;
    let state = if unmark {
        "no longer permanent"
    } else {
        "permanent"
    };
    println!("backup {name} is {state}");
    Ok(exit::OK)
}
