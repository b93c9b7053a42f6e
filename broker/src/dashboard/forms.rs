//! The instance page's action forms (backup now, switchover, node count) and what their POST
//! does: check the session and its CSRF token, ask for confirmation (a second form, so it
//! works without JavaScript), then [`crate::actions::request`], whose refusal sentence is
//! shown as it is. After an accepted action the browser goes back to the instance page
//! (post/redirect/get), whose history shows the new operation.

use axum::extract::{Form, Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Extension;
use maud::{html, Markup};
use serde::Deserialize;

use super::auth::Sessions;
use super::render::{self, Nav};
use crate::actions::{self, Action};
use crate::api::AppState;
use crate::state::InstanceRecord;
use crate::stats::InstanceSnapshot;

/// The fields of every action form.
#[derive(Debug, Deserialize)]
pub(super) struct ActionForm {
    csrf: String,
    /// `yes` once confirmed.
    #[serde(default)]
    confirm: Option<String>,
    /// Switchover: the replica to lead.
    #[serde(default)]
    candidate: Option<String>,
    /// Node count: the new number.
    #[serde(default)]
    nodes: Option<String>,
}

/// The forms on the instance page; `csrf` is the session's token.
pub(super) fn forms(r: &InstanceRecord, snap: Option<&InstanceSnapshot>, csrf: &str) -> Markup {
    let base = format!("{}/actions", super::instance_path(&r.id));
    // Replicas the sampler saw, else every node of the record but the known leader.
    let leader = snap.and_then(|s| s.leader.clone());
    let candidates: Vec<&str> = match snap {
        Some(s) if s.nodes.iter().any(|n| n.role == "replica") => s
            .nodes
            .iter()
            .filter(|n| n.role == "replica")
            .map(|n| n.name.as_str())
            .collect(),
        _ => r
            .nodes
            .iter()
            .filter(|n| Some(&n.name) != leader.as_ref())
            .map(|n| n.name.as_str())
            .collect(),
    };
    html! {
        section.card #actions {
            h2 { "Actions" }
            p.muted { "Each asks for confirmation, then runs as an operation (see History)." }
            form.action #action-backup method="post" action={ (base) "/backup" } {
                input type="hidden" name="csrf" value=(csrf);
                button type="submit" { "Take a backup now" }
            }
            @if candidates.is_empty() {
                p.muted { "Switchover: no replica to switch over to." }
            } @else {
                form.action #action-switchover method="post" action={ (base) "/switchover" } {
                    input type="hidden" name="csrf" value=(csrf);
                    label { "Switch over to " select name="candidate" {
                        @for c in &candidates { option value=(c) { (c) } }
                    } }
                    button type="submit" { "Switch over" }
                }
            }
            form.action #action-node-count method="post" action={ (base) "/node-count" } {
                input type="hidden" name="csrf" value=(csrf);
                label { "Nodes " input type="number" name="nodes" min="1" max=(crate::config::MAX_NODES) value=(r.node_count); }
                button type="submit" { "Change node count" }
            }
        }
    }
}

/// `POST /dashboard/instances/{id}/actions/{action}`.
pub(super) async fn act(
    State(st): State<AppState>,
    Extension(sessions): Extension<Sessions>,
    Path((id, kind)): Path<(String, String)>,
    Form(f): Form<ActionForm>,
) -> Response {
    let Some(session) = sessions.for_instance(&id) else {
        return render::no_such_instance();
    };
    let keyring = st.config.keyring();
    if !crate::secrets::constant_time_eq(session.csrf(&keyring).as_bytes(), f.csrf.as_bytes()) {
        return render::csrf_refused();
    }
    let name = match st.store.instance(&id).await {
        Ok(Some(r)) => r
            .value
            .context
            .instance_name
            .clone()
            .unwrap_or_else(|| r.value.id.clone()),
        Ok(None) => return render::no_such_instance(),
        Err(e) => {
            tracing::warn!(error = %e, "dashboard: cannot read an instance record");
            return render::unavailable();
        }
    };
    let (action, question) = match kind.as_str() {
        "backup" => (Action::Backup, format!("Take a base backup of {name} now?")),
        "switchover" => {
            let Some(c) = f.candidate.clone().filter(|c| !c.is_empty()) else {
                return refused(&st, session, &id, "Choose the replica to switch over to.");
            };
            let q = format!("Switch {name} over to {c}? Connections to the leader are closed; the router's port stays.");
            (Action::Switchover { candidate: c }, q)
        }
        "node-count" => match f.nodes.as_deref().map(str::trim).map(str::parse::<u8>) {
            Some(Ok(n)) => (
                Action::NodeCount(n),
                format!("Change {name} to {n} node(s)?"),
            ),
            _ => {
                return refused(
                    &st,
                    session,
                    &id,
                    "The node count must be a number from 1 to 5.",
                )
            }
        },
        _ => {
            return render::error_page(
                StatusCode::NOT_FOUND,
                "Not found",
                "There is no such action.",
            )
        }
    };
    if f.confirm.as_deref() != Some("yes") {
        return confirm_page(&st, session, &id, &kind, &question, &f);
    }
    let by = if sessions.operator().is_some() {
        "operator"
    } else {
        "user"
    };
    match actions::request(&st, &id, action, by).await {
        Ok(_) => {
            if let Some(s) = &st.stats {
                s.refresh(&id);
            }
            Redirect::to(&format!("{}#history", super::instance_path(&id))).into_response()
        }
        Err(e) => refused(&st, session, &id, &e.to_string()),
    }
}

fn nav<'a>(session: &super::auth::Session, csrf: &'a str) -> Nav<'a> {
    Nav {
        operator: session.instance.is_none(),
        csrf,
    }
}

/// The second step: the same form again with `confirm=yes`, or back.
fn confirm_page(
    st: &AppState,
    session: &super::auth::Session,
    id: &str,
    kind: &str,
    question: &str,
    f: &ActionForm,
) -> Response {
    let csrf = session.csrf(&st.config.keyring());
    let back = super::instance_path(id);
    let body = html! {
        section.card #confirm {
            h1 { "Confirm" }
            p { (question) }
            form.action method="post" action={ (back) "/actions/" (kind) } {
                input type="hidden" name="csrf" value=(csrf);
                input type="hidden" name="confirm" value="yes";
                @if let Some(c) = &f.candidate { input type="hidden" name="candidate" value=(c); }
                @if let Some(n) = &f.nodes { input type="hidden" name="nodes" value=(n); }
                button.danger type="submit" { "Yes, do it" }
                a href=(back) { "Cancel" }
            }
        }
    };
    Html(render::page("Confirm", Some(&nav(session, &csrf)), false, body).into_string())
        .into_response()
}

/// An action refused: its sentence (from [`actions::ActionError`] or the form's check).
fn refused(st: &AppState, session: &super::auth::Session, id: &str, why: &str) -> Response {
    let csrf = session.csrf(&st.config.keyring());
    let body = html! {
        section.card #refused {
            h1 { "Not done" }
            p.error role="alert" { (why) }
            p { a href=(super::instance_path(id)) { "Back to the instance" } }
        }
    };
    (
        StatusCode::CONFLICT,
        Html(render::page("Not done", Some(&nav(session, &csrf)), false, body).into_string()),
    )
        .into_response()
}
