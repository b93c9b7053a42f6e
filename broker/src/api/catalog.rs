//! The catalog: the one service and its plans, each accepting `node-count`.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::AppState;
use crate::config::MAX_NODES;

fn node_count_schema() -> Value {
    json!({
        "parameters": {
            "$schema": "http://json-schema.org/draft-04/schema#",
            "type": "object",
            "additionalProperties": false,
            "properties": {
                "node-count": {
                    "description": "Number of PostgreSQL nodes (the plan's default when omitted).",
                    "type": "integer",
                    "minimum": 1,
                    "maximum": MAX_NODES
                }
            }
        }
    })
}

pub(super) async fn catalog(State(st): State<AppState>) -> Response {
    let s = &st.config.service;
    let plans: Vec<Value> = s
        .plans
        .iter()
        .map(|p| {
            json!({
                "id": p.id,
                "name": p.name,
                "description": p.description,
                "free": p.free,
                "metadata": { "nodeCount": p.node_count },
                "schemas": {
                    "service_instance": {
                        "create": node_count_schema(),
                        "update": node_count_schema(),
                    }
                }
            })
        })
        .collect();
    Json(json!({
        "services": [{
            "id": s.id,
            "name": s.name,
            "description": s.description,
            "tags": s.tags,
            "bindable": s.bindable,
            "instances_retrievable": s.instances_retrievable,
            "bindings_retrievable": s.bindings_retrievable,
            "allow_context_updates": false,
            "plan_updateable": s.plan_updateable,
            "plans": plans,
        }]
    }))
    .into_response()
}
