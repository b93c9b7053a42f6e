//! `status`: archiving lag against the recovery point objective, and metrics.
//!
//! The figures and the verdict come from `walarchive::status` (which explains how each
//! is measured); this module gathers them in the order that keeps a segment archived while
//! `status` runs from showing up as lag — the server, then the `.ready` files, then the
//! repository — and prints them. A server that cannot be reached is reported, not fatal:
//! the repository and the data directory still say a lot. A repository that cannot be
//! read is fatal (storage exit status): without it there is nothing to assess.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use walarchive::status::human::human_seconds;
use walarchive::status::render;
use walarchive::status::{self, rfc3339, Inputs, Report};
use walarchive::{pg, Repository, TimelineId};

use crate::exit;

/// Exit status when the recovery point objective is not met: the lag exceeds `--rpo`, it
/// cannot be measured, nothing is archived, or archive_command is failing.
/// Time limit for connecting to the server and for its queries: a status run that hangs on
/// a dead host would never raise its alert.
const SERVER_TIMEOUT: Duration = Duration::from_secs(15);

/// Options of `status`.
pub struct StatusArgs {
    /// Data directory, to read `pg_wal/archive_status` directly.
    pub pgdata: Option<PathBuf>,
    /// Where the server is.
    pub conn: tokio_postgres::Config,
    /// The recovery point objective.
    pub rpo: Duration,
    /// Print JSON.
    pub json: bool,
    /// Print the Prometheus text exposition format.
    pub prometheus: bool,
}

/// Gathers the figures, prints them, and exits [`exit::RPO_NOT_MET`] unless the objective is met.
pub async fn status(repo: &Repository, args: &StatusArgs) -> Result<u8> {
    let started = Instant::now();

    // 1. The server (its position before anything else).
    let mut cfg = args.conn.clone();
    if cfg.get_connect_timeout().is_none() {
        cfg.connect_timeout(SERVER_TIMEOUT);
    }
    let address = pg::describe(&cfg);
    let client = match tokio::time::timeout(SERVER_TIMEOUT, pg::connect(&cfg)).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "cannot connect to PostgreSQL at {address}: no answer within {SERVER_TIMEOUT:?}"
        )),
    };
    let server = match &client {
        Ok(c) => match tokio::time::timeout(SERVER_TIMEOUT, status::read_server(c)).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err(format!(
                "PostgreSQL at {address} did not answer within {SERVER_TIMEOUT:?}"
            )),
        },
        Err(e) => Err(e.clone()),
    };
    if let Err(e) = &server {
        tracing::debug!("no server figures: {e}");
    }

    // 2. The .ready files: from the data directory when given (and readable: it belongs to
    //    the database's OS user), else through the server.
    let from_dir = args
        .pgdata
        .as_ref()
        .map(|dir| status::read_ready_dir(dir, SystemTime::now()).map_err(|e| e.to_string()));
    let ready =
        match (from_dir, &client, &server) {
            (Some(Ok(r)), _, _) => Some(Ok(r)),
            (dir_failed, Ok(c), Ok(_)) => {
                let via_server =
                    match tokio::time::timeout(SERVER_TIMEOUT, status::read_ready_via_server(c))
                        .await
                    {
                        Ok(r) => r.map_err(|e| {
                            format!("{e} (give --pgdata, or grant the role pg_monitor)")
                        }),
                        Err(_) => Err(format!(
                            "PostgreSQL at {address} did not list archive_status within \
                         {SERVER_TIMEOUT:?}"
                        )),
                    };
                match (dir_failed, via_server) {
                    (Some(Err(d)), Ok(r)) => {
                        tracing::warn!("{d}: counted the .ready files through the server instead");
                        Some(Ok(r))
                    }
                    (Some(Err(d)), Err(s)) => Some(Err(format!("{d}; {s}"))),
                    (_, r) => Some(r),
                }
            }
            (dir, _, _) => dir,
        };
    drop(client);

    // 3. The repository.
    let descriptor = repo.descriptor().await?;
    let ceiling = server
        .as_ref()
        .ok()
        .map(|f| TimelineId(f.timeline))
        .filter(|t| t.0 > 0);
    let listing = repo.list("wal/").await?;
    let wal = status::summarize_wal(&listing, ceiling);
    let backups = status::backups(repo).await?;

    let report = status::assess(Inputs {
        repository: repo.url().to_string(),
        now: chrono::Utc::now(),
        rpo: args.rpo,
        descriptor,
        wal,
        server,
        server_address: address,
        ready,
        backups,
        duration: started.elapsed(),
        counters: args
            .pgdata
            .as_ref()
            .and_then(|d| walarchive::metrics::read(&d.join("pg_wal"))),
    });

    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).context("cannot print JSON")?
        );
    } else if args.prometheus {
        print!("{}", render::prometheus(&report));
    } else {
        print_text(&report);
    }
    Ok(if report.ok {
        exit::OK
    } else {
        exit::RPO_NOT_MET
    })
}

fn print_text(r: &Report) {
    let row = |k: &str, v: String| println!("{k:<18} {v}");
    let dash = || "-".to_string();
    row("repository", r.repository.clone());
    row(
        "newest archived",
        match (&r.newest_archived_segment, &r.newest_archived_time) {
            (Some(s), Some(t)) => format!(
                "{s} at {} ({} ago)",
                rfc3339(t),
                human_seconds(r.newest_archived_age_seconds.unwrap_or(0.0))
            ),
            _ => "none".into(),
        },
    );
    row(
        "archived WAL",
        format!(
            "{} file{}, {} stored",
            r.archived_wal_files,
            if r.archived_wal_files == 1 { "" } else { "s" },
            crate::report::human(r.archived_wal_bytes)
        ),
    );
    match &r.server.figures {
        Some(f) => {
            row(
                "server",
                format!(
                    "{}: {}, timeline {}, {} {} (segment {})",
                    r.server.address,
                    if f.in_recovery { "standby" } else { "primary" },
                    f.timeline,
                    if f.in_recovery {
                        "replayed to"
                    } else {
                        "WAL position"
                    },
                    f.wal_position.map(|p| p.to_string()).unwrap_or_else(dash),
                    f.current_segment
                        .map(|s| s.to_string())
                        .unwrap_or_else(dash),
                ),
            );
            let a = &f.archiver;
            let last = |w: &Option<String>, t: &Option<chrono::DateTime<chrono::Utc>>| match (w, t)
            {
                (Some(w), Some(t)) => format!(" (last {w} at {})", rfc3339(t)),
                _ => String::new(),
            };
            row(
                "archive_command",
                format!(
                    "{} archived{}, {} failed{}{}",
                    a.archived_count,
                    last(&a.last_archived_wal, &a.last_archived_time),
                    a.failed_count,
                    last(&a.last_failed_wal, &a.last_failed_time),
                    if a.failing() { ": FAILING" } else { "" }
                ),
            );
        }
        None => row(
            "server",
            format!(
                "{}: unreachable ({})",
                r.server.address,
                r.server.error.as_deref().unwrap_or("?")
            ),
        ),
    }
    row(
        "waiting (.ready)",
        match (r.ready_files, &r.ready_source) {
            (Some(n), Some(src)) => {
                let oldest = match (&r.oldest_ready_file, r.oldest_ready_age_seconds) {
                    (Some(f), Some(a)) if n > 0 => {
                        format!(", oldest {f} ({} old)", human_seconds(a))
                    }
                    _ => String::new(),
                };
                format!("{n}{oldest} [{src}]")
            }
            _ => "unknown".into(),
        },
    );
    row(
        "archive lag",
        format!(
            "{} segments, {} (RPO {}){}",
            r.lag_segments
                .map(|n| n.to_string())
                .unwrap_or_else(|| "?".into()),
            r.lag_seconds
                .map(human_seconds)
                .unwrap_or_else(|| "unknown".into()),
            human_seconds(r.rpo_seconds),
            r.lag_basis
                .filter(|b| *b != "none waiting")
                .map(|b| format!(" [{b}]"))
                .unwrap_or_default()
        ),
    );
    row(
        "last backup",
        match &r.last_backup {
            Some(b) => format!(
                "{} ended {}{}; {} complete backup{}",
                b.name,
                b.stop_time,
                b.age_seconds
                    .map(|a| format!(" ({} ago)", human_seconds(a)))
                    .unwrap_or_default(),
                r.backups,
                if r.backups == 1 { "" } else { "s" }
            ),
            None => "none".into(),
        },
    );
    row(
        "status",
        if r.ok {
            "OK".into()
        } else {
            "RPO NOT MET".into()
        },
    );
    for p in &r.problems {
        println!("  problem: {p}");
    }
    for n in &r.notes {
        println!("  note: {n}");
    }
}
