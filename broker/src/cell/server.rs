//! The cell agent's HTTP server: its routes, the bearer-token authentication in front of
//! them, and how the agent's errors become answers.
//!
//! Apart from the agent (`super`) so that what crosses the network (status codes, what an
//! error may say, who may ask) can be read and reviewed in one place.

use std::sync::Arc;

use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use serde::Serialize;
use tracing::error;

use super::{Agent, Error, Node, NodeSpec};
use crate::binder::RoleRequest;

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = match &self {
            Error::Invalid(_) => StatusCode::BAD_REQUEST,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            // Not the leader (any more): the broker asks the new one.
            Error::NotLeader(_) => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            error!("{self}");
        }
        let description = match &self {
            // The server's message, SQL and object names stay in this agent's log.
            Error::Postgres(_) => {
                "PostgreSQL refused the request; the cell agent's log has the details".into()
            }
            e => e.to_string(),
        };
        let body = serde_json::json!({"error": description}).to_string();
        (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
    }
}

fn json_response<T: Serialize>(value: &T) -> Response {
    let body = serde_json::to_string(value).expect("API types serialize");
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn auth(State(agent): State<Arc<Agent>>, req: Request, next: Next) -> Response {
    let ok = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| {
            crate::secrets::constant_time_eq(t.as_bytes(), agent.token.expose().as_bytes())
        });
    if !ok {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            r#"{"error":"missing or wrong bearer token"}"#,
        )
            .into_response();
    }
    next.run(req).await
}

async fn list_nodes(State(agent): State<Arc<Agent>>) -> Response {
    let nodes: Vec<Arc<Node>> = agent
        .nodes
        .lock()
        .expect("nodes lock")
        .values()
        .cloned()
        .collect();
    let statuses = futures::future::join_all(nodes.iter().map(|n| agent.status(n))).await;
    json_response(&statuses)
}

async fn get_node(State(agent): State<Arc<Agent>>, UrlPath(name): UrlPath<String>) -> Response {
    match agent.node(&name) {
        Ok(node) => json_response(&agent.status(&node).await),
        Err(e) => e.into_response(),
    }
}

async fn put_node(
    State(agent): State<Arc<Agent>>,
    UrlPath(name): UrlPath<String>,
    body: axum::body::Bytes,
) -> Response {
    let spec: NodeSpec = match serde_json::from_slice(&body) {
        Ok(s) => s,
        Err(e) => return Error::Invalid(format!("node spec: {e}")).into_response(),
    };
    match agent.put_node(&name, spec).await {
        Ok(ports) => json_response(&ports),
        Err(e) => e.into_response(),
    }
}

async fn delete_node(State(agent): State<Arc<Agent>>, UrlPath(name): UrlPath<String>) -> Response {
    match agent.delete_node(&name).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => e.into_response(),
    }
}

async fn backup_node(State(agent): State<Arc<Agent>>, UrlPath(name): UrlPath<String>) -> Response {
    match agent.backup(&name).await {
        Ok(outcome) => json_response(&outcome),
        Err(e) => e.into_response(),
    }
}

/// The body of `POST /v1/nodes/{name}/switchover`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SwitchoverRequest {
    candidate: String,
}

async fn switchover(
    State(agent): State<Arc<Agent>>,
    UrlPath(name): UrlPath<String>,
    body: axum::body::Bytes,
) -> Response {
    let req: SwitchoverRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return Error::Invalid(format!("switchover request: {e}")).into_response(),
    };
    match agent.switchover(&name, &req.candidate).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => e.into_response(),
    }
}

async fn put_role(
    State(agent): State<Arc<Agent>>,
    UrlPath((name, role)): UrlPath<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let req: RoleRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return Error::Invalid(format!("role request: {e}")).into_response(),
    };
    match agent.put_role(&name, &role, req).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => e.into_response(),
    }
}

async fn delete_role(
    State(agent): State<Arc<Agent>>,
    UrlPath((name, role)): UrlPath<(String, String)>,
    axum::extract::RawQuery(q): axum::extract::RawQuery,
) -> Response {
    let group = url::form_urlencoded::parse(q.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == "group")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    match agent.delete_role(&name, &role, &group).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => e.into_response(),
    }
}

async fn node_wal(State(agent): State<Arc<Agent>>, UrlPath(name): UrlPath<String>) -> Response {
    match agent.wal(&name).await {
        Ok(w) => json_response(&w),
        Err(e) => e.into_response(),
    }
}

async fn node_stats(State(agent): State<Arc<Agent>>, UrlPath(name): UrlPath<String>) -> Response {
    match agent.node_stats(&name).await {
        Ok(s) => json_response(&s),
        Err(e) => e.into_response(),
    }
}

async fn switch_wal(State(agent): State<Arc<Agent>>, UrlPath(name): UrlPath<String>) -> Response {
    match agent.switch_wal(&name).await {
        Ok(w) => json_response(&w),
        Err(e) => e.into_response(),
    }
}

async fn push_history(State(agent): State<Arc<Agent>>, UrlPath(name): UrlPath<String>) -> Response {
    match agent.push_history(&name).await {
        Ok(files) => json_response(&files),
        Err(e) => e.into_response(),
    }
}

/// The `prefix` parameters of a query (comma-separated, repeatable).
fn prefixes(q: Option<String>) -> Vec<String> {
    url::form_urlencoded::parse(q.unwrap_or_default().as_bytes())
        .filter(|(k, _)| k == "prefix")
        .flat_map(|(_, v)| {
            v.split(',')
                .filter(|p| !p.is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

async fn login_roles(
    State(agent): State<Arc<Agent>>,
    UrlPath(name): UrlPath<String>,
    axum::extract::RawQuery(q): axum::extract::RawQuery,
) -> Response {
    match agent.login_roles(&name, prefixes(q), true).await {
        Ok(roles) => json_response(&roles),
        Err(e) => e.into_response(),
    }
}

async fn list_roles(
    State(agent): State<Arc<Agent>>,
    UrlPath(name): UrlPath<String>,
    axum::extract::RawQuery(q): axum::extract::RawQuery,
) -> Response {
    match agent.login_roles(&name, prefixes(q), false).await {
        Ok(roles) => json_response(&roles),
        Err(e) => e.into_response(),
    }
}

async fn cell_report(State(agent): State<Arc<Agent>>) -> Response {
    let agent = agent.clone();
    match tokio::task::spawn_blocking(move || agent.report()).await {
        Ok(report) => json_response(&report),
        Err(e) => Error::Invalid(format!("cell report: {e}")).into_response(),
    }
}

pub(super) fn router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/v1/cell", get(cell_report))
        .route("/v1/nodes", get(list_nodes))
        .route(
            "/v1/nodes/{name}",
            get(get_node).put(put_node).delete(delete_node),
        )
        .route("/v1/nodes/{name}/backup", post(backup_node))
        .route("/v1/nodes/{name}/switchover", post(switchover))
        .route("/v1/nodes/{name}/wal", get(node_wal))
        .route("/v1/nodes/{name}/stats", get(node_stats))
        .route("/v1/nodes/{name}/switch-wal", post(switch_wal))
        .route("/v1/nodes/{name}/push-history", post(push_history))
        .route("/v1/nodes/{name}/login-roles", get(login_roles))
        .route("/v1/nodes/{name}/roles", get(list_roles))
        .route(
            "/v1/nodes/{name}/roles/{role}",
            put(put_role).delete(delete_role),
        )
        .layer(middleware::from_fn_with_state(agent.clone(), auth))
        .with_state(agent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cell::pg_error;

    async fn answer(e: Error) -> (StatusCode, String) {
        let r = e.into_response();
        let status = r.status();
        let body = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    /// Only "not the leader" is 409 (the broker asks the new leader); any other refusal of
    /// PostgreSQL is the agent's failure (500), described without the server's message.
    #[tokio::test]
    async fn only_not_the_leader_is_a_conflict() {
        let replica = crate::api::BindError {
            message: "the server is a replica".into(),
            source: Some(Box::new(crate::binder::NotLeader)),
        };
        let e = pg_error("n0", replica.to_string(), &replica);
        assert_eq!(answer(e).await.0, StatusCode::CONFLICT);
        let refused = crate::api::BindError::new(
            "creating role: permission denied for table /srv/secret/pg_authid (42501)",
        );
        let e = pg_error("n0", refused.to_string(), &refused);
        let (status, body) = answer(e).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(
            !body.contains("pg_authid") && !body.contains("/srv"),
            "{body}"
        );
        assert!(body.contains("PostgreSQL refused"), "{body}");
        let (status, _) = answer(Error::Invalid("bad role".into())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }
}
