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
use crate::state::{CloneAt, CloneParameters, Parameters};

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

/// Which request `parameters` come with: the clone parameters are accepted at creation only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// A provision.
    Provision,
    /// An update.
    Update,
}

/// The longest restore point name PostgreSQL keeps (`rp_name[MAXFNAMELEN]`, NUL included).
const MAX_RESTORE_POINT: usize = 63;

/// Validates OSB `parameters`: `node-count` (an integer from 1 to 5), and at creation
/// `clone-from` (a name or instance id) with an optional `clone-at` (a time with a zone, an
/// LSN or `{"restore-point": NAME}`). Every refusal is a 400 `InvalidParameters`.
pub(crate) fn parse_parameters(
    v: Option<&Value>,
    phase: Phase,
) -> Result<(Parameters, Option<CloneParameters>), ApiError> {
    let m = match v {
        None | Some(Value::Null) => return Ok((Parameters::default(), None)),
        Some(Value::Object(m)) => m,
        Some(_) => {
            return Err(ApiError::invalid_parameters(
                "parameters must be a JSON object.",
            ))
        }
    };
    let mut p = Parameters::default();
    let (mut clone_from, mut clone_at) = (None, None);
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
            "postgresql-version" => {
                let major =
                    crate::pgmajor::parse_parameter(v).map_err(ApiError::invalid_parameters)?;
                p.postgresql_version = Some(major);
            }
            "clone-from" | "clone-at" if phase == Phase::Update => {
                return Err(ApiError::invalid_parameters(
                    "clone-from and clone-at are accepted at creation only.",
                ))
            }
            "clone-from" => clone_from = Some(parse_clone_from(v)?),
            "clone-at" => clone_at = Some(parse_clone_at(v)?),
            other => {
                return Err(ApiError::invalid_parameters(format!(
                    "Unknown parameter {other:?}: the parameters are node-count (an integer from 1 to {MAX_NODES}), postgresql-version (the PostgreSQL major: {}), and at creation clone-from (the name or instance id of the instance to copy) and clone-at (when).",
                    crate::pgmajor::supported_list()
                )))
            }
        }
    }
    let clone = match (clone_from, clone_at) {
        (None, None) => None,
        (None, Some(_)) => return Err(ApiError::invalid_parameters("clone-at needs clone-from.")),
        (Some(clone_from), clone_at) => Some(CloneParameters {
            clone_from,
            clone_at,
        }),
    };
    Ok((p, clone))
}

/// `clone-from`: a non-empty string of at most 255 bytes without control characters (what
/// names and ids may be).
fn parse_clone_from(v: &Value) -> Result<String, ApiError> {
    match v.as_str() {
        Some(s) if crate::names::check_id(s, "clone-from").is_ok() => Ok(s.to_string()),
        _ => Err(ApiError::invalid_parameters(format!(
            "clone-from must be the name or instance id of a service instance, not {v}."
        ))),
    }
}

/// `clone-at`: an RFC 3339 time with a zone, an LSN, or `{"restore-point": NAME}` (1 to 63
/// bytes, as PostgreSQL keeps them). Stored as sent.
fn parse_clone_at(v: &Value) -> Result<CloneAt, ApiError> {
    let bad = || {
        ApiError::invalid_parameters(format!(
            "clone-at must be an RFC 3339 time with a zone (2026-12-07T10:15:00Z), an LSN (0/3000060) or {{\"restore-point\": \"NAME\"}}, not {v}."
        ))
    };
    let at: CloneAt = serde_json::from_value(v.clone()).map_err(|_| bad())?;
    let ok = match &at {
        CloneAt::Lsn(s) => s.parse::<walarchive::Lsn>().is_ok(),
        CloneAt::Time(s) => chrono::DateTime::parse_from_rfc3339(s).is_ok(),
        CloneAt::RestorePoint(n) => {
            (1..=MAX_RESTORE_POINT).contains(&n.len()) && !n.chars().any(char::is_control)
        }
    };
    if ok {
        Ok(at)
    } else {
        Err(bad())
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(v: Value, phase: Phase) -> String {
        let e = parse_parameters(Some(&v), phase).unwrap_err();
        assert_eq!(e.error, "InvalidParameters", "{v}");
        e.description
    }

    #[test]
    fn clone_parameters_are_parsed_as_sent() {
        let ok = |v: Value| parse_parameters(Some(&v), Phase::Provision).unwrap();
        assert_eq!(ok(json!({})), (Parameters::default(), None));
        let (p, c) = ok(json!({"node-count": 2, "clone-from": "old-db"}));
        assert_eq!(p.node_count, Some(2));
        assert_eq!(
            c,
            Some(CloneParameters {
                clone_from: "old-db".into(),
                clone_at: None
            })
        );
        for (at, want) in [
            (
                json!("2026-12-07T10:15:00+01:00"),
                CloneAt::Time("2026-12-07T10:15:00+01:00".into()),
            ),
            (json!("0/3000060"), CloneAt::Lsn("0/3000060".into())),
            (json!("AB/cd"), CloneAt::Lsn("AB/cd".into())),
            (
                json!({"restore-point": "before-migration"}),
                CloneAt::RestorePoint("before-migration".into()),
            ),
        ] {
            let (_, c) = ok(json!({"clone-from": "5f1c", "clone-at": at}));
            assert_eq!(c.unwrap().clone_at, Some(want), "{at}");
        }
    }

    #[test]
    fn every_refusal_says_what_is_accepted() {
        let at_msg = |v: &str| {
            format!("clone-at must be an RFC 3339 time with a zone (2026-12-07T10:15:00Z), an LSN (0/3000060) or {{\"restore-point\": \"NAME\"}}, not {v}.")
        };
        for (v, want) in [
            (
                json!({"clone-from": 42}),
                "clone-from must be the name or instance id of a service instance, not 42."
                    .to_string(),
            ),
            (
                json!({"clone-from": ""}),
                "clone-from must be the name or instance id of a service instance, not \"\"."
                    .to_string(),
            ),
            (
                json!({"clone-from": "a\nb"}),
                "clone-from must be the name or instance id of a service instance, not \"a\\nb\"."
                    .to_string(),
            ),
            (
                json!({"clone-from": "x", "clone-at": "yesterday"}),
                at_msg("\"yesterday\""),
            ),
            (
                json!({"clone-from": "x", "clone-at": "2026-12-07T10:15:00"}),
                at_msg("\"2026-12-07T10:15:00\""),
            ),
            (
                json!({"clone-from": "x", "clone-at": "123456789/0"}),
                at_msg("\"123456789/0\""),
            ),
            (json!({"clone-from": "x", "clone-at": 5}), at_msg("5")),
            (
                json!({"clone-from": "x", "clone-at": {"restore-point": ""}}),
                at_msg("{\"restore-point\":\"\"}"),
            ),
            (
                json!({"clone-from": "x", "clone-at": {"restore-point": "r".repeat(64)}}),
                at_msg(&format!("{{\"restore-point\":\"{}\"}}", "r".repeat(64))),
            ),
            (
                json!({"clone-from": "x", "clone-at": {"restore-point": "a", "b": 1}}),
                at_msg("{\"b\":1,\"restore-point\":\"a\"}"),
            ),
            (
                json!({"clone-at": "0/1"}),
                "clone-at needs clone-from.".to_string(),
            ),
            (
                json!({"node-count": 9}),
                "node-count must be an integer from 1 to 5, not 9.".to_string(),
            ),
        ] {
            assert_eq!(refusal(v.clone(), Phase::Provision), want, "{v}");
        }
        let unknown = refusal(json!({"clone_from": "x"}), Phase::Provision);
        for name in ["\"clone_from\"", "node-count", "clone-from", "clone-at"] {
            assert!(unknown.contains(name), "{unknown}");
        }
        for v in [
            json!({"clone-from": "x"}),
            json!({"clone-at": "0/1"}),
            json!({"node-count": 2, "clone-from": "x", "clone-at": "0/1"}),
        ] {
            assert_eq!(
                refusal(v.clone(), Phase::Update),
                "clone-from and clone-at are accepted at creation only.",
                "{v}"
            );
        }
        assert_eq!(
            parse_parameters(Some(&json!({"node-count": 3})), Phase::Update)
                .unwrap()
                .0
                .node_count,
            Some(3)
        );
    }
}
