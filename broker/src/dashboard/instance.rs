//! `/dashboard/instances/{id}`: one instance as its user sees it: nodes, how to connect,
//! archiving (the worst-case data loss), backups, the restorable window with the command that
//! clones it, size and load, charts over a chosen range, and the operation history.
//!
//! The operator's session and that instance's own session open it; for any other session
//! the answer is the 404 of an instance that does not exist.

use axum::extract::{Path, Query, State};
use axum::response::{Html, IntoResponse, Response};
use axum::Extension;
use chrono::{DateTime, Utc};
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::json;

use super::auth::Sessions;
use super::health::{assess, Facts};
use super::render::{self, bytes, duration, or_dash, time, Nav};
use crate::api::AppState;
use crate::state::{InstanceRecord, InstanceState, OperationRecord};
use crate::stats::{InstanceSnapshot, RepositoryState, Sample};

/// The chart ranges: `(key, label, seconds)`.
const RANGES: &[(&str, &str, i64)] = &[
    ("6h", "6 hours", 6 * 3600),
    ("48h", "48 hours", 48 * 3600),
    ("30d", "30 days", 30 * 86400),
];

/// The charts: `(series key, title, unit of the axis)`.
const CHARTS: &[(&str, &str, &str)] = &[
    ("archive_lag", "Archive lag", "s"),
    ("replication_lag", "Replication lag", "bytes"),
    ("tps", "Transactions per second", ""),
    ("connections", "Connections", ""),
    ("database_size", "Database size", "bytes"),
];

#[derive(Deserialize)]
pub(super) struct PageQuery {
    range: Option<String>,
}

/// `GET /dashboard/instances/{id}`.
pub(super) async fn instance(
    State(st): State<AppState>,
    Extension(sessions): Extension<Sessions>,
    Path(id): Path<String>,
    Query(q): Query<PageQuery>,
) -> Response {
    let Some(session) = sessions.for_instance(&id) else {
        return render::no_such_instance();
    };
    let (record, op) = match st.store.instance_and_operation(&id).await {
        Ok((Some(r), op)) if r.value.state != InstanceState::Deleted => {
            (r.value, op.map(|o| o.value))
        }
        Ok(_) => return render::no_such_instance(),
        Err(e) => {
            tracing::warn!(error = %e, "dashboard: cannot read an instance record");
            return render::unavailable();
        }
    };
    let now = Utc::now();
    let range = RANGES
        .iter()
        .find(|r| Some(r.0) == q.range.as_deref())
        .unwrap_or(&RANGES[0]);
    let stats = st.stats.as_ref();
    let snapshot = stats.and_then(|s| s.latest(&id));
    let repository = stats.and_then(|s| s.repository(&id));
    let series = stats
        .map(|s| s.series(&id, now - chrono::Duration::seconds(range.2)))
        .unwrap_or_default();
    let csrf = session.csrf(&st.config.keyring());
    let nav = Nav {
        operator: sessions.operator().is_some(),
        csrf: &csrf,
    };
    let facts = Facts {
        record: &record,
        operation: op.as_ref(),
        snapshot: snapshot.as_ref(),
        repository: repository.as_ref(),
    };
    let (level, why) = assess(&st.config, &facts, now);
    let name = record
        .context
        .instance_name
        .clone()
        .unwrap_or_else(|| record.id.clone());
    let body = html! {
        h1 { (name) " " span class={ "health " (level.word()) } { (level.word()) } }
        p.muted {
            "Instance " code { (record.id) } " · " (format!("{:?}", record.state).to_lowercase())
            " · plan " (st.config.plan(&record.plan_id).map_or(record.plan_id.as_str(), |p| p.name.as_str()))
            " · PostgreSQL " (record.major()) " · " (record.node_count) " node(s)"
            @if !why.is_empty() { " · " (why.join("; ")) }
        }
        @if stats.is_none() { p.notice { "This broker does not sample statistics ([stats] is off): only the records are shown." } }
        @if let Some(e) = snapshot.as_ref().and_then(|s| s.error.as_ref()) { p.error { (e) } }
        (tiles(&facts, snapshot.as_ref(), &series, now))
        div.grid {
            (connect(&st, &record))
            (archiving(snapshot.as_ref(), now))
        }
        (nodes(&record, snapshot.as_ref(), now))
        (backups(repository.as_ref(), &facts, now))
        (window(&st, &record, repository.as_ref()))
        (charts(&record, range.0, &series))
        (super::forms::forms(&record, snapshot.as_ref(), &csrf))
        (history(op.as_ref(), snapshot.as_ref()))
    };
    Html(render::page(&name, Some(&nav), true, body).into_string()).into_response()
}

/// The numbers at the top.
fn tiles(
    f: &Facts<'_>,
    snap: Option<&InstanceSnapshot>,
    series: &[Sample],
    now: DateTime<Utc>,
) -> Markup {
    let growth = {
        let sizes: Vec<u64> = series.iter().filter_map(|s| s.database_bytes).collect();
        match (sizes.first(), sizes.last()) {
            (Some(a), Some(b)) if sizes.len() > 1 => {
                let d = *b as i64 - *a as i64;
                let sign = if d < 0 { "−" } else { "+" };
                Some(format!("{sign}{} in range", bytes(d.unsigned_abs())))
            }
            _ => None,
        }
    };
    // `data-value`: the figure unformatted, for scripts and tests.
    let tile = |k: &str, v: String, id: &str, raw: Option<String>| {
        html! {
            div.stat id=(id) data-value=[raw] { div.v { (v) } div.k { (k) } }
        }
    };
    html! {
        section.card { div.stats {
            (tile("Database size", or_dash(snap.and_then(|s| s.database_bytes), bytes), "stat-size", snap.and_then(|s| s.database_bytes).map(|b| b.to_string())))
            @if let Some(g) = &growth { div.stat { div.v { (g) } div.k { "Growth" } } }
            (tile("Connections in use / allowed", match snap {
                Some(InstanceSnapshot { connections: Some(c), max_connections, .. }) =>
                    format!("{c} / {}", or_dash(*max_connections, |m| m.to_string())),
                _ => "–".into(),
            }, "stat-connections", snap.and_then(|s| Some(format!("{}/{}", s.connections?, s.max_connections?)))))
            (tile("Transactions per second", or_dash(snap.and_then(|s| s.tps), |t| format!("{t:.1}")), "stat-tps", snap.and_then(|s| s.tps).map(|t| t.to_string())))
            (tile("Cache hit ratio", or_dash(snap.and_then(|s| s.cache_hit_ratio), |r| format!("{:.1} %", r * 100.0)), "stat-cache", snap.and_then(|s| s.cache_hit_ratio).map(|t| t.to_string())))
            (tile("Worst-case data loss (archive lag)", or_dash(f.archive_age(), duration), "stat-archive-lag", f.archive_age().map(|t| t.to_string())))
            (tile("Largest replica lag", or_dash(f.max_replica_lag(), bytes), "stat-replica-lag", f.max_replica_lag().map(|t| t.to_string())))
            (tile("Newest backup", or_dash(f.last_backup(), |t| format!("{} ago", duration((now - t).num_seconds() as f64))), "stat-backup-age", None))
        } }
    }
}

/// How to connect, without any password.
fn connect(st: &AppState, r: &InstanceRecord) -> Markup {
    let host = &st.config.router.host;
    html! {
        section.card #connect {
            h2 { "Connect" }
            p { "Router (always the leader): " code #router { (host) ":" (r.port) } }
            pre { "postgresql://USER@" (host) ":" (r.port) "/app" }
            @if let Some(ro) = r.read_only_port {
                p { "Read-only (the replicas, hot standby): " code #router-read-only { (host) ":" (ro) } }
                pre { "postgresql://USER@" (host) ":" (ro) "/app" }
            }
            p.muted { "USER and its password are a binding's (" code { "cf create-service-key" } "); the broker shows no password here." }
        }
    }
}

/// `pg_stat_archiver` and the data-loss window it means.
fn archiving(snap: Option<&InstanceSnapshot>, now: DateTime<Utc>) -> Markup {
    let a = snap.and_then(|s| s.archive.as_ref());
    html! {
        section.card #archiving {
            h2 { "Archiving" }
            @if let Some(a) = a {
                table { tbody {
                    tr { th { "Last archived segment" } td #last-archived-wal { (a.last_archived_wal.as_deref().unwrap_or("–")) } }
                    tr { th { "Archived at" } td { (or_dash(a.last_archived_at.as_ref(), time)) } }
                    tr { th { "Age" } td { (or_dash(a.last_archived_at.as_ref(), |t| duration(render::age(t, now)))) } }
                    tr { th { "Worst-case data loss" } td { (or_dash(a.lag_seconds, duration)) } }
                    tr { th { "Archived" } td { (a.archived_count) } }
                    tr { th { "Failed attempts" } td #archive-failed { (a.failed_count) } }
                    @if let Some(w) = &a.last_failed_wal {
                        tr { th { "Last failure" } td { (w) " at " (or_dash(a.last_failed_at.as_ref(), time)) } }
                    }
                    tr { th { "archive_timeout" } td { (or_dash(a.archive_timeout_seconds, |s| format!("{s} s"))) } }
                } }
            } @else {
                p.muted { "Not known yet (no leader answered)." }
            }
        }
    }
}

/// The nodes as Patroni and PostgreSQL last told.
fn nodes(r: &InstanceRecord, snap: Option<&InstanceSnapshot>, now: DateTime<Utc>) -> Markup {
    html! {
        section.card #nodes {
            h2 { "Nodes" }
            table {
                thead { tr {
                    th { "Node" } th { "Role" } th { "State" } th { "Host:port" } th { "Cell (zone)" }
                    th.num { "Timeline" } th.num { "Lag" } th.num { "Lag (time)" } th { "Last seen" }
                } }
                tbody {
                    @if let Some(s) = snap {
                        @for n in &s.nodes {
                            tr data-node=(n.name) data-role=(n.role) data-cell=(n.cell) data-port=(n.pg_port) {
                                td { (n.name) }
                                td.role { (n.role) }
                                td { (n.state) }
                                td.addr { (n.host) ":" (n.pg_port) }
                                td { (n.cell) " (" (n.zone) ")" }
                                td.num { (or_dash(n.timeline, |t| t.to_string())) }
                                td.num { (or_dash(n.lag_bytes, bytes)) }
                                td.num { (or_dash(n.lag_seconds, duration)) }
                                td { (or_dash(n.last_seen.as_ref(), |t| format!("{} ago", duration(render::age(t, now))))) }
                            }
                        }
                    } @else {
                        @for n in &r.nodes {
                            tr data-node=(n.name) {
                                td { (n.name) } td { "–" } td { "–" } td { (n.cell) ":" (n.pg_port) }
                                td { (n.cell) " (" (n.zone) ")" } td {} td {} td {} td {}
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The completed backups, newest first.
fn backups(repo: Option<&RepositoryState>, f: &Facts<'_>, now: DateTime<Utc>) -> Markup {
    html! {
        section.card #backups {
            h2 { "Backups" }
            p { "Newest: " (or_dash(f.last_backup(), |t| format!("{} ago", duration((now - t).num_seconds() as f64)))) }
            @match repo {
                Some(r) => {
                    @if let Some(e) = &r.error { p.error { (e) } }
                    table {
                        thead { tr { th { "Backup" } th { "Started" } th { "Stopped" } th.num { "Size" } th.num { "Duration" } th { "Node" } } }
                        tbody {
                            @for b in r.backups.iter().rev() {
                                tr data-backup=(b.name) {
                                    td { (b.name) }
                                    td { (or_dash(b.started_at.as_ref(), time)) }
                                    td { (or_dash(b.stopped_at.as_ref(), time)) }
                                    td.num { (or_dash(b.bytes, bytes)) }
                                    td.num { (or_dash(b.duration_seconds, duration)) }
                                    td { (b.node.as_deref().unwrap_or("–")) }
                                }
                            }
                            @if r.backups.is_empty() { tr { td colspan="6" .muted { "No completed backup yet." } } }
                        }
                    }
                    p.muted { "Read " (time(&r.computed_at)) "." }
                }
                None => p.muted { "The repository has not been read yet." },
            }
        }
    }
}

/// The `cf create-service` command that clones `r` at `at`, quoted for a POSIX shell.
pub(super) fn clone_command(service: &str, plan: &str, source: &str, at: &str) -> String {
    // In the order people write it (a JSON map would sort the keys).
    let text = |v: &str| serde_json::Value::from(v).to_string();
    let params = format!(
        r#"{{"clone-from":{},"clone-at":{}}}"#,
        text(source),
        text(at)
    );
    let q = |s: &str| {
        shlex::try_quote(s)
            .map(|c| c.into_owned())
            .unwrap_or_else(|_| "''".into())
    };
    format!(
        "cf create-service {} {} {} -c {}",
        q(service),
        q(plan),
        q("my-clone"),
        q(&params)
    )
}

/// The restorable window and the command to clone its latest point.
fn window(st: &AppState, r: &InstanceRecord, repo: Option<&RepositoryState>) -> Markup {
    let w = repo.and_then(|r| r.window.as_ref());
    let source = r.context.instance_name.as_deref().unwrap_or(&r.id);
    let plan = st
        .config
        .plan(&r.plan_id)
        .map_or(r.plan_id.as_str(), |p| p.name.as_str());
    html! {
        section.card #window {
            h2 { "Restorable window" }
            @if let Some(w) = w {
                table { tbody {
                    tr { th { "Earliest" } td #window-earliest { (or_dash(w.earliest_at.as_ref(), time)) " (LSN " (w.earliest_lsn) ")" } }
                    tr { th { "Latest" } td #window-latest { (or_dash(w.latest_at.as_ref(), time)) " (LSN " (w.latest_lsn) ")" } }
                } }
                @if let Some(latest) = &w.latest_at {
                    p { "A copy of this database as of the latest point (change " code { "clone-at" } " to any time in the window, " code { "my-clone" } " to the new name):" }
                    pre #clone-command { (clone_command(&st.config.service.name, plan, source, &latest.0.format("%Y-%m-%dT%H:%M:%SZ").to_string())) }
                }
            } @else {
                p.muted { "No restorable window yet (it starts with the first completed backup)." }
            }
        }
    }
}

/// The charts, their range links, their data (JSON for `charts.js`) and a table without
/// JavaScript.
fn charts(r: &InstanceRecord, current: &str, series: &[Sample]) -> Markup {
    let t: Vec<i64> = series.iter().map(|s| s.at.0.timestamp()).collect();
    let col = |f: &dyn Fn(&Sample) -> Option<f64>| series.iter().map(f).collect::<Vec<_>>();
    let data = json!({
        "t": t,
        "series": {
            "archive_lag": col(&|s| s.archive_lag_seconds),
            "replication_lag": col(&|s| s.replication_lag_bytes.map(|b| b as f64)),
            "tps": col(&|s| s.tps),
            "connections": col(&|s| s.connections.map(f64::from)),
            "database_size": col(&|s| s.database_bytes.map(|b| b as f64)),
        }
    });
    let path = super::instance_path(&r.id);
    html! {
        section.card #charts {
            h2 { "Over time" }
            p.ranges {
                @for (k, label, _) in RANGES {
                    a class=(if *k == current { "current" } else { "" }) href={ (path) "?range=" (k) } { "last " (label) }
                }
                span.muted { (series.len()) " samples" }
            }
            div.grid {
                @for (k, title, unit) in CHARTS {
                    div.chart data-series=(k) data-label=(title) data-unit=(unit) { h3 { (title) } }
                }
            }
            script #chart-data type="application/json" { (render::json_for_script(&data)) }
            noscript {
                details {
                    summary { "The samples as a table" }
                    table {
                        thead { tr { th { "Time" } th.num { "Archive lag" } th.num { "Replica lag" } th.num { "TPS" } th.num { "Connections" } th.num { "Size" } } }
                        tbody {
                            @for s in series.iter().rev().take(200) {
                                tr {
                                    td { (time(&s.at)) }
                                    td.num { (or_dash(s.archive_lag_seconds, duration)) }
                                    td.num { (or_dash(s.replication_lag_bytes, bytes)) }
                                    td.num { (or_dash(s.tps, |t| format!("{t:.1}"))) }
                                    td.num { (or_dash(s.connections, |c| c.to_string())) }
                                    td.num { (or_dash(s.database_bytes, bytes)) }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Operations (the current one and the remembered ones) and Patroni's leader changes.
fn history(op: Option<&OperationRecord>, snap: Option<&InstanceSnapshot>) -> Markup {
    html! {
        section.card #history {
            h2 { "History" }
            table {
                thead { tr { th { "Operation" } th { "State" } th { "Started" } th { "Finished" } th { "Description" } } }
                tbody {
                    @if let Some(o) = op {
                        tr data-operation=(o.id) {
                            td { (format!("{:?}", o.kind).to_lowercase()) @if let Some(b) = &o.requested_by { " (" (b) ")" } }
                            td { (o.state) }
                            td { (time(&o.started_at)) }
                            td { (or_dash(o.finished_at.as_ref(), time)) }
                            td { (o.description) }
                        }
                        @for h in o.history.iter().rev() {
                            tr data-operation=(h.id) {
                                td { (format!("{:?}", h.kind).to_lowercase()) @if let Some(b) = &h.requested_by { " (" (b) ")" } }
                                td { (h.state) }
                                td { (or_dash(h.started_at.as_ref(), time)) }
                                td { (or_dash(h.finished_at.as_ref(), time)) }
                                td { (h.description) }
                            }
                        }
                    }
                    @if let Some(s) = snap {
                        @for f in s.failovers.iter().rev() {
                            tr.failover {
                                td { "leader change" }
                                td { "timeline " (f.timeline) " ended" }
                                td { (or_dash(f.at.as_ref(), time)) }
                                td {}
                                td { (f.reason.as_deref().unwrap_or("")) @if let Some(l) = &f.new_leader { " → " (l) } }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clone_command_survives_a_shell() {
        let c = clone_command(
            "walarchive-postgresql",
            "ha",
            "it's \"mine\"",
            "2026-12-07T10:00:00Z",
        );
        // What a POSIX shell makes of it: the words as meant.
        let words = shlex::split(&c).unwrap();
        assert_eq!(
            words[..5],
            [
                "cf",
                "create-service",
                "walarchive-postgresql",
                "ha",
                "my-clone"
            ]
        );
        assert_eq!(words[5], "-c");
        let v: serde_json::Value = serde_json::from_str(&words[6]).unwrap();
        assert_eq!(v["clone-from"], "it's \"mine\"");
        assert_eq!(v["clone-at"], "2026-12-07T10:00:00Z");
        let plain = clone_command("pg", "ha", "db1", "2026-12-07T10:00:00Z");
        assert_eq!(
            plain,
            r#"cf create-service pg ha my-clone -c '{"clone-from":"db1","clone-at":"2026-12-07T10:00:00Z"}'"#
        );
    }
}
