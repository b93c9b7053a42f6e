//! Error answers of the OSB API.
//!
//! Why a single type: the OSB specification gives every failure a status code and a body
//! `{"error": "<CamelCaseWord>", "description": "<user-facing text>"}`, and some words
//! (`AsyncRequired`, `ConcurrencyError`) are mandated. Handlers return [`ApiError`] and never
//! build bodies themselves, so that internal detail (etcd endpoints, I/O errors) cannot reach
//! the platform's users: internal failures are logged with `tracing` and answered with a
//! generic description.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tracing::error;

use crate::state::StoreError;

/// An error answer: status, OSB error word and user-facing description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// The OSB `error` word.
    pub error: &'static str,
    /// The user-facing `description`.
    pub description: String,
}

impl ApiError {
    /// Any status and error word.
    pub fn new(status: StatusCode, error: &'static str, description: impl Into<String>) -> Self {
        ApiError {
            status,
            error,
            description: description.into(),
        }
    }

    /// 400: malformed request or missing mandatory data.
    pub fn bad_request(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", description)
    }

    /// 400: `parameters` that the broker does not accept.
    pub fn invalid_parameters(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "InvalidParameters", description)
    }

    /// 401 (with `WWW-Authenticate`, added by [`IntoResponse`]).
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "The broker requires HTTP basic authentication with the configured credentials.",
        )
    }

    /// 404.
    pub fn not_found(description: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NotFound", description)
    }

    /// 409: same id, different attributes.
    pub fn conflict(description: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "Conflict", description)
    }

    /// 422 `AsyncRequired`.
    pub fn async_required() -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "AsyncRequired",
            "This service plan requires client support for asynchronous service operations (accepts_incomplete=true).",
        )
    }

    /// 422 `ConcurrencyError`.
    pub fn concurrency(description: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "ConcurrencyError",
            description,
        )
    }

    /// 422 with another error word (a change that is not supported in this state).
    pub fn unprocessable(error: &'static str, description: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, error, description)
    }

    /// 500 after logging `detail` (which is not sent).
    pub fn internal(detail: &dyn std::fmt::Display) -> Self {
        error!(error = %detail, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "The broker failed internally; the operator can find the details in its log.",
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        if e.is_transient() {
            error!(error = %e, "broker state store unavailable");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "The broker's state store is temporarily unavailable; retry later.",
            )
        } else {
            ApiError::internal(&e)
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": self.error, "description": self.description });
        let mut resp = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"walarchive-broker\", charset=\"UTF-8\""),
            );
        }
        resp
    }
}
