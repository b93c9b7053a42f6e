//! The catalog: the one service and its plans, each accepting `node-count`, and at creation
//! `postgresql-version`, `clone-from` and `clone-at` (the schemas say what `request::parse_parameters` accepts).

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::AppState;
use crate::config::MAX_NODES;

/// The create schema: `node-count`, `postgresql-version`, `clone-from`, `clone-at`.
fn create_schema() -> Value {
    let mut s = node_count_schema();
    let props = s["parameters"]["properties"]
        .as_object_mut()
        .expect("properties");
    let majors: Vec<String> = crate::pgmajor::SUPPORTED
        .iter()
        .map(u32::to_string)
        .collect();
    props.insert(
        "postgresql-version".into(),
        json!({
            "description": format!("PostgreSQL major version ({} when omitted; a clone runs its source's, and may only name that). It cannot change later: in-place major upgrades are not supported.", crate::pgmajor::NEWEST),
            "type": "string",
            "enum": majors,
            "default": crate::pgmajor::NEWEST.to_string()
        }),
    );
    props.insert(
        "clone-from".into(),
        json!({
            "description": "Copy this instance's data: the name of an instance in this space, or an instance id of this organization (deleted instances too).",
            "type": "string",
            "minLength": 1,
            "maxLength": 255
        }),
    );
    props.insert(
        "clone-at".into(),
        json!({
            "description": "With clone-from: the point to copy, a time (RFC 3339, with a zone), an LSN, or {\"restore-point\": NAME}; the latest archived point when omitted.",
            "oneOf": [
                { "type": "string", "format": "date-time" },
                { "type": "string", "pattern": "^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$" },
                {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["restore-point"],
                    "properties": {
                        "restore-point": { "type": "string", "minLength": 1, "maxLength": 63 }
                    }
                }
            ]
        }),
    );
    s
}

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
                        "create": create_schema(),
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
