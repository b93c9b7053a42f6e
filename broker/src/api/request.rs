//! What the handlers share to read a request: the query, the ids of the URL and the JSON
//! body, behind extractors whose rejection is the API's own [`ApiError`] (in the OSB shape),
//! the checks of ids, service, plan and parameters, and the small fixed answers.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use super::AppState;
use crate::config::{PlanConfig, MAX_NODES};
use crate::error::ApiError;
use crate::state::Parameters;

pub(super) fn query_pairs(q: &Option<String>) -> Vec<(String, String)> {
    q.as_deref()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default()
}

pub(super) fn query_get<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// A query parameter DELETE requests must carry (`service_id`, `plan_id`), not empty.
pub(super) fn required_query<'a>(
    pairs: &'a [(String, String)],
    name: &str,
) -> Result<&'a str, ApiError> {
    query_get(pairs, name)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::bad_request(format!("The {name} query parameter is required.")))
}

pub(super) fn accepts_incomplete(pairs: &[(String, String)]) -> bool {
    query_get(pairs, "accepts_incomplete") == Some("true")
}

/// Checks an id from the URL or body: see [`crate::names::check_id`] (anything else is
/// mapped to safe names wherever it is used outside the broker's records).
fn validate_id(id: &str, what: &'static str) -> Result<(), ApiError> {
    crate::names::check_id(id, what).map_err(|e| ApiError::bad_request(format!("{e}.")))
}

/// The instance id of the URL, percent-decoded and checked (400 in the OSB shape when it is
/// not UTF-8, empty, too long or holds control characters).
pub(super) struct InstanceId(pub(super) String);

impl<S: Send + Sync> FromRequestParts<S> for InstanceId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(id) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| bad_path())?;
        validate_id(&id, "instance_id")?;
        Ok(InstanceId(id))
    }
}

/// The instance and binding ids of the URL, decoded and checked like [`InstanceId`].
pub(super) struct BindingIds(pub(super) String, pub(super) String);

impl<S: Send + Sync> FromRequestParts<S> for BindingIds {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path((instance, binding)) = Path::<(String, String)>::from_request_parts(parts, state)
            .await
            .map_err(|_| bad_path())?;
        validate_id(&instance, "instance_id")?;
        validate_id(&binding, "binding_id")?;
        Ok(BindingIds(instance, binding))
    }
}

fn bad_path() -> ApiError {
    ApiError::bad_request("The ids in the URL must be percent-encoded UTF-8.")
}

/// A JSON request body of type `T`, behind an extractor whose rejection is the API's own
/// error (in the manner of axum's `customize-extractor-error` example): a body that is not a
/// JSON object, or not one of `T`'s shape, is answered with a 400 `BadRequest` in the OSB
/// shape rather than axum's plain-text rejection. The `Content-Type` is not checked (as
/// platforms are not required to send it).
pub(super) struct JsonBody<T>(pub(super) T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let body = Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::new(e.status(), "BadRequest", e.body_text()))?;
        let not_an_object = || ApiError::bad_request("The request body must be a JSON object.");
        if body.is_empty() {
            return Err(not_an_object());
        }
        // Read as a value first, to tell bad JSON from JSON of another shape.
        match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(_)) => serde_json::from_slice(&body)
                .map(JsonBody)
                .map_err(|e| ApiError::bad_request(format!("The request body is not valid: {e}."))),
            Ok(_) => Err(not_an_object()),
            Err(e) => Err(ApiError::bad_request(format!(
                "The request body is not valid JSON: {e}."
            ))),
        }
    }
}

/// A string field: `Ok(None)` when absent or null, 400 when empty.
pub(super) fn opt_str(v: Option<String>, field: &str) -> Result<Option<String>, ApiError> {
    match v {
        Some(s) if s.is_empty() => Err(ApiError::bad_request(format!(
            "{field} must be a non-empty string."
        ))),
        v => Ok(v),
    }
}

pub(super) fn req_str(v: Option<String>, field: &str) -> Result<String, ApiError> {
    opt_str(v, field)?.ok_or_else(|| ApiError::bad_request(format!("{field} is required.")))
}

pub(super) fn check_service(st: &AppState, service_id: &str) -> Result<(), ApiError> {
    if service_id == st.config.service.id {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "service_id {service_id:?} is not a service of this broker."
        )))
    }
}

pub(super) fn check_plan<'a>(st: &'a AppState, plan_id: &str) -> Result<&'a PlanConfig, ApiError> {
    st.plan(plan_id).ok_or_else(|| {
        ApiError::bad_request(format!(
            "plan_id {plan_id:?} is not a plan of this service."
        ))
    })
}

/// Validates OSB `parameters`: only `node-count`, an integer from 1 to 5.
pub(super) fn parse_parameters(v: Option<&Value>) -> Result<Option<Parameters>, ApiError> {
    let m = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(m)) => m,
        Some(_) => {
            return Err(ApiError::invalid_parameters(
                "parameters must be a JSON object.",
            ))
        }
    };
    let mut p = Parameters::default();
    for (k, v) in m {
        match k.as_str() {
            "node-count" => {
                let n = v.as_u64().filter(|n| (1..=MAX_NODES as u64).contains(n));
                match n {
                    Some(n) => p.node_count = Some(n as u8),
                    None => {
                        return Err(ApiError::invalid_parameters(format!(
                            "node-count must be an integer from 1 to {MAX_NODES}, not {v}."
                        )))
                    }
                }
            }
            other => {
                return Err(ApiError::invalid_parameters(format!(
                    "Unknown parameter {other:?}: the only parameter is node-count (an integer from 1 to {MAX_NODES})."
                )))
            }
        }
    }
    Ok(Some(p))
}

pub(super) fn gone() -> Response {
    (StatusCode::GONE, Json(json!({}))).into_response()
}

pub(super) fn accepted(operation: &str) -> Response {
    (
        StatusCode::ACCEPTED,
        Json(json!({ "operation": operation })),
    )
        .into_response()
}

pub(super) fn ok_empty() -> Response {
    (StatusCode::OK, Json(json!({}))).into_response()
}
