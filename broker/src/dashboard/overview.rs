//! `/dashboard/`: the operator's overview: every instance with its health at a glance,
//! sortable on the server (`?sort=`, so it works without JavaScript), and the cells' load.
//! Only the operator's session opens it (a per-instance session gets 403).

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::Extension;
use maud::html;
use serde::Deserialize;

use super::auth::Sessions;
use super::health::{assess, Facts, Level};
use super::render::{self, Nav};
use crate::api::AppState;
use crate::state::InstanceState;

#[derive(Deserialize)]
pub(super) struct SortQuery {
    sort: Option<String>,
}

/// One row of the instance table.
struct Row {
    id: String,
    name: String,
    state: String,
    nodes: String,
    port: u16,
    level: Level,
    why: Vec<String>,
    archive_age: Option<f64>,
    replica_lag: Option<u64>,
    backup_age: Option<f64>,
    size: Option<u64>,
}

/// The columns one can sort by: `(key, heading)`.
const COLUMNS: &[(&str, &str)] = &[
    ("name", "Instance"),
    ("health", "Health"),
    ("state", "State"),
    ("nodes", "Nodes up"),
    ("archive", "Archive age"),
    ("lag", "Replica lag"),
    ("backup", "Last backup"),
    ("size", "Size"),
];

fn sort(rows: &mut [Row], key: &str) {
    let none_last = |a: Option<f64>| a.unwrap_or(f64::INFINITY);
    match key {
        "health" => rows.sort_by(|a, b| b.level.cmp(&a.level).then(a.name.cmp(&b.name))),
        "state" => rows.sort_by(|a, b| a.state.cmp(&b.state).then(a.name.cmp(&b.name))),
        "nodes" => rows.sort_by(|a, b| a.nodes.cmp(&b.nodes)),
        "archive" => {
            rows.sort_by(|a, b| none_last(b.archive_age).total_cmp(&none_last(a.archive_age)))
        }
        "lag" => rows.sort_by_key(|r| std::cmp::Reverse(r.replica_lag)),
        "backup" => {
            rows.sort_by(|a, b| none_last(b.backup_age).total_cmp(&none_last(a.backup_age)))
        }
        "size" => rows.sort_by_key(|r| std::cmp::Reverse(r.size)),
        _ => rows.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id))),
    }
}

/// `GET /dashboard/`.
pub(super) async fn overview(
    State(st): State<AppState>,
    Extension(sessions): Extension<Sessions>,
    Query(q): Query<SortQuery>,
) -> Response {
    let Some(session) = sessions.operator() else {
        return render::error_page(
            StatusCode::FORBIDDEN,
            "Operators only",
            "This page lists every instance; your link opens one instance only.",
        );
    };
    let records = match st.store.instances().await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "dashboard: cannot list instances");
            return render::unavailable();
        }
    };
    let now = chrono::Utc::now();
    let mut rows = Vec::new();
    for r in records.into_iter().map(|r| r.value) {
        if r.state == InstanceState::Deleted {
            continue;
        }
        let op = st
            .store
            .operation(&r.id)
            .await
            .ok()
            .flatten()
            .map(|o| o.value);
        let snapshot = st.stats.as_ref().and_then(|s| s.latest(&r.id));
        let repository = st.stats.as_ref().and_then(|s| s.repository(&r.id));
        let facts = Facts {
            record: &r,
            operation: op.as_ref(),
            snapshot: snapshot.as_ref(),
            repository: repository.as_ref(),
        };
        let (level, why) = assess(&st.config, &facts, now);
        let up = snapshot
            .as_ref()
            .map(|s| s.nodes.iter().filter(|n| n.role != "unknown").count());
        rows.push(Row {
            name: r
                .context
                .instance_name
                .clone()
                .unwrap_or_else(|| r.id.clone()),
            state: format!("{:?}", r.state).to_lowercase(),
            nodes: match up {
                Some(up) => format!("{up}/{}", r.node_count),
                None => format!("?/{}", r.node_count),
            },
            port: r.port,
            level,
            why,
            archive_age: facts.archive_age(),
            replica_lag: facts.max_replica_lag(),
            backup_age: facts.last_backup().map(|t| (now - t).num_seconds() as f64),
            size: snapshot.as_ref().and_then(|s| s.database_bytes),
            id: r.id,
        });
    }
    let key = q.sort.as_deref().unwrap_or("name");
    sort(&mut rows, key);
    let cells = st.stats.as_ref().map(|s| s.cells()).unwrap_or_default();
    let csrf = session.csrf(&st.config.keyring());
    let nav = Nav {
        operator: true,
        csrf: &csrf,
    };
    let count = |l: Level| rows.iter().filter(|r| r.level == l).count();
    let body = html! {
        h1 { "Instances" }
        p.muted {
            (rows.len()) " instances: "
            span.health.red { (count(Level::Red)) " red" } " "
            span.health.amber { (count(Level::Amber)) " amber" } " "
            span.health.green { (count(Level::Green)) " green" }
            @if st.stats.is_none() { " · statistics are not sampled by this broker" }
        }
        section.card {
            table #instances {
                thead { tr {
                    @for (k, h) in COLUMNS {
                        th { a href={ "?sort=" (k) } { (h) @if *k == key { " ▾" } } }
                    }
                    th.num { "Port" }
                } }
                tbody {
                    @for r in &rows {
                        tr data-instance=(r.id) {
                            td { a href=(super::instance_path(&r.id)) { (r.name) } }
                            td {
                                span class={ "health " (r.level.word()) } { (r.level.word()) }
                                @if !r.why.is_empty() { " " span.muted { (r.why.join("; ")) } }
                            }
                            td { (r.state) }
                            td { (r.nodes) }
                            td { (render::or_dash(r.archive_age, render::duration)) }
                            td { (render::or_dash(r.replica_lag, render::bytes)) }
                            td { (render::or_dash(r.backup_age, |a| format!("{} ago", render::duration(a)))) }
                            td { (render::or_dash(r.size, render::bytes)) }
                            td.num { (r.port) }
                        }
                    }
                }
            }
        }
        h2 { "Cells" }
        section.card {
            table #cells {
                thead { tr { th { "Cell" } th { "Zone" } th { "Up" } th.num { "Nodes" } th.num { "Free ports" } th { "Majors" } } }
                tbody {
                    @for c in &cells {
                        tr {
                            td { (c.name) }
                            td { (c.zone) }
                            td { span class={ "health " (if c.up { "green" } else { "red" }) } { (if c.up { "up" } else { "down" }) } }
                            td.num { (c.nodes) }
                            td.num { (render::or_dash(c.free_ports, |p| p.to_string())) }
                            td { (c.majors.iter().map(|m| m.to_string()).collect::<Vec<_>>().join(", ")) }
                        }
                    }
                    @if cells.is_empty() { tr { td colspan="6" .muted { "No cell statistics yet." } } }
                }
            }
        }
    };
    Html(render::page("Instances", Some(&nav), false, body).into_string()).into_response()
}
