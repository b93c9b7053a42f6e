//! Bindings: synchronous (creating a role is quick). The record goes to `creating` by
//! create-if-absent before the [`Binder`](super::Binder) runs, so two concurrent requests
//! for one binding cannot both create it; a record left half-done by a dead request is
//! taken over once stale.

use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tracing::info;

use super::request::{
    check_plan, check_service, gone, ok_empty, opt_str, query_pairs, req_str, required_query,
    BindingIds, JsonBody,
};
use super::AppState;
use crate::error::ApiError;
use crate::state::{BindingRecord, BindingState, InstanceState, Timestamp, Versioned};

/// A binding left `creating` or `deleting` longer than this (its request died with its
/// broker process) may be taken over by a new request.
const BINDING_STALE: Duration = Duration::from_secs(300);
/// The body of a binding (`PUT .../service_bindings/:binding_id`).
#[derive(Deserialize)]
pub(super) struct BindRequest {
    service_id: Option<String>,
    plan_id: Option<String>,
    app_guid: Option<String>,
    /// Recorded as sent (it tells a re-sent request from a conflicting one).
    bind_resource: Option<Value>,
    /// Bindings accept none (400 `InvalidParameters` otherwise).
    parameters: Option<Value>,
}

fn stale(b: &BindingRecord) -> bool {
    let age = chrono::Utc::now() - b.updated_at.0;
    age.to_std().is_ok_and(|a| a > BINDING_STALE)
}

pub(super) async fn bind(
    State(st): State<AppState>,
    BindingIds(instance_id, binding_id): BindingIds,
    JsonBody(body): JsonBody<BindRequest>,
) -> Result<Response, ApiError> {
    let service_id = req_str(body.service_id, "service_id")?;
    let plan_id = req_str(body.plan_id, "plan_id")?;
    check_service(&st, &service_id)?;
    check_plan(&st, &plan_id)?;
    if !st.config.service.bindable {
        return Err(ApiError::bad_request("This service is not bindable."));
    }
    let params = match &body.parameters {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(Value::Object(p)) if p.is_empty() => Value::Object(Map::new()),
        Some(Value::Object(_)) => {
            return Err(ApiError::invalid_parameters(
                "Bindings accept no parameters.",
            ))
        }
        Some(_) => {
            return Err(ApiError::invalid_parameters(
                "parameters must be a JSON object.",
            ))
        }
    };
    let app_guid = opt_str(body.app_guid, "app_guid")?;
    let fingerprint = json!({
        "app_guid": app_guid,
        "bind_resource": body.bind_resource.unwrap_or(Value::Null),
        "parameters": params,
    });

    let Some(inst) = st.store.instance(&instance_id).await? else {
        return Err(ApiError::not_found("No such service instance."));
    };
    let instance = inst.value;
    match instance.state {
        InstanceState::Ready => {}
        InstanceState::Provisioning | InstanceState::Updating | InstanceState::Deprovisioning => {
            return Err(ApiError::concurrency(
                "An operation for this service instance is in progress; bind once it is finished.",
            ))
        }
        InstanceState::Failed => {
            return Err(ApiError::unprocessable(
                "InstanceNotUsable",
                "This service instance failed and cannot be bound.",
            ))
        }
        InstanceState::Deleted => return Err(ApiError::not_found("No such service instance.")),
    }
    if plan_id != instance.plan_id || service_id != instance.service_id {
        return Err(ApiError::bad_request(
            "service_id and plan_id must be those of the service instance.",
        ));
    }

    let now = Timestamp::now();
    let existing = st.store.binding(&instance_id, &binding_id).await?;
    let expected = match &existing {
        None => 0,
        Some(Versioned {
            value: b,
            mod_revision,
        }) => {
            let same = b.request == fingerprint && b.plan_id == plan_id;
            match b.state {
                BindingState::Failed => *mod_revision,
                _ if !same => {
                    return Err(ApiError::conflict(
                        "A binding with this id already exists with different attributes.",
                    ))
                }
                BindingState::Created => {
                    return Ok((
                        StatusCode::OK,
                        Json(json!({ "credentials": b.credentials })),
                    )
                        .into_response())
                }
                BindingState::Creating | BindingState::Deleting if stale(b) => *mod_revision,
                BindingState::Creating | BindingState::Deleting => {
                    return Err(ApiError::concurrency(
                        "This binding is being created or deleted by another request.",
                    ))
                }
            }
        }
    };
    let mut record = BindingRecord {
        instance_id: instance_id.clone(),
        binding_id: binding_id.clone(),
        service_id,
        plan_id,
        request: fingerprint,
        state: BindingState::Creating,
        credentials: None,
        created_at: existing.as_ref().map_or(now, |e| e.value.created_at),
        updated_at: now,
    };
    let Some(rev) = st.store.put_binding(&record, expected).await? else {
        return Err(ApiError::concurrency(
            "This binding is being created by another request.",
        ));
    };
    match st.binder.bind(&instance, &binding_id).await {
        Ok(credentials) => {
            record.state = BindingState::Created;
            record.credentials = Some(credentials.clone());
            record.updated_at = Timestamp::now();
            if st.store.put_binding(&record, rev).await?.is_none() {
                return Err(ApiError::internal(&format!(
                    "binding {instance_id}/{binding_id} changed while it was being created"
                )));
            }
            info!(instance = %instance_id, binding = %binding_id, "binding created");
            Ok((
                StatusCode::CREATED,
                Json(json!({ "credentials": credentials })),
            )
                .into_response())
        }
        Err(e) => {
            record.state = BindingState::Failed;
            record.updated_at = Timestamp::now();
            let _ = st.store.put_binding(&record, rev).await;
            Err(ApiError::internal(&format!(
                "binding {instance_id}/{binding_id} failed: {e}"
            )))
        }
    }
}

pub(super) async fn unbind(
    State(st): State<AppState>,
    BindingIds(instance_id, binding_id): BindingIds,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let q = query_pairs(&q);
    let service_id = required_query(&q, "service_id")?;
    let plan_id = required_query(&q, "plan_id")?;
    check_service(&st, service_id)?;
    check_plan(&st, plan_id)?;

    let Some(existing) = st.store.binding(&instance_id, &binding_id).await? else {
        return Ok(gone());
    };
    let b = &existing.value;
    if matches!(b.state, BindingState::Creating | BindingState::Deleting) && !stale(b) {
        return Err(ApiError::concurrency(
            "This binding is being created or deleted by another request.",
        ));
    }
    let Some(inst) = st.store.instance(&instance_id).await? else {
        // The instance is gone (its bindings go with it): only the record remains.
        st.store
            .delete_binding(&instance_id, &binding_id, existing.mod_revision)
            .await?;
        return Ok(ok_empty());
    };
    let mut record = b.clone();
    record.state = BindingState::Deleting;
    record.updated_at = Timestamp::now();
    let Some(rev) = st.store.put_binding(&record, existing.mod_revision).await? else {
        return Err(ApiError::concurrency(
            "This binding is being changed by another request.",
        ));
    };
    match st.binder.unbind(&inst.value, &binding_id).await {
        Ok(()) => {
            st.store
                .delete_binding(&instance_id, &binding_id, rev)
                .await?;
            info!(instance = %instance_id, binding = %binding_id, "binding deleted");
            Ok(ok_empty())
        }
        Err(e) => {
            record.state = BindingState::Failed;
            record.updated_at = Timestamp::now();
            let _ = st.store.put_binding(&record, rev).await;
            Err(ApiError::internal(&format!(
                "unbinding {instance_id}/{binding_id} failed: {e}"
            )))
        }
    }
}

pub(super) async fn fetch_binding(
    State(st): State<AppState>,
    BindingIds(instance_id, binding_id): BindingIds,
) -> Result<Response, ApiError> {
    if !st.config.service.bindings_retrievable {
        return Err(ApiError::not_found("Bindings are not retrievable."));
    }
    match st.store.binding(&instance_id, &binding_id).await? {
        Some(b) if b.value.state == BindingState::Created => Ok(Json(json!({
            "credentials": b.value.credentials,
            "parameters": b.value.request.get("parameters").cloned().unwrap_or(json!({})),
        }))
        .into_response()),
        _ => Err(ApiError::not_found("No such binding.")),
    }
}
