//! Basic auth and the `X-Broker-API-Version` header, checked in front of every route.
//!
//! The configured credentials are kept as a digest and compared in constant time, so
//! neither the password nor its length leaks through timing.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use sha2::{Digest, Sha256};

use super::{AppState, API_VERSION, MIN_MINOR};
use crate::error::ApiError;

pub(super) fn credential_digest(user: &str, password: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update((user.len() as u64).to_be_bytes());
    h.update(user.as_bytes());
    h.update(password.as_bytes());
    h.finalize().into()
}

/// Basic auth (401) and the API version header (400 missing, 412 unsupported).
pub(super) async fn guard(State(st): State<AppState>, req: Request, next: Next) -> Response {
    if !authorized(&st, req.headers()) {
        return ApiError::unauthorized().into_response();
    }
    let Some(version) = req.headers().get("x-broker-api-version") else {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "MissingApiVersion",
            format!("The X-Broker-API-Version header is required (this broker implements {API_VERSION})."),
        )
        .into_response();
    };
    let parsed = version.to_str().ok().and_then(|v| {
        let (major, minor) = v.trim().split_once('.')?;
        Some((major.parse::<u32>().ok()?, minor.parse::<u32>().ok()?))
    });
    match parsed {
        None => ApiError::new(
            StatusCode::BAD_REQUEST,
            "MissingApiVersion",
            format!("X-Broker-API-Version must be MAJOR.MINOR, e.g. {API_VERSION}."),
        )
        .into_response(),
        Some((2, minor)) if minor >= MIN_MINOR => next.run(req).await,
        Some((major, minor)) => ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            "UnsupportedApiVersion",
            format!(
                "Open Service Broker API {major}.{minor} is not supported: use 2.{MIN_MINOR} to {API_VERSION}."
            ),
        )
        .into_response(),
    }
}

pub(super) fn authorized(st: &AppState, headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some(encoded) = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))
    else {
        return false;
    };
    let Ok(decoded) = B64.decode(encoded.trim()) else {
        return false;
    };
    let Ok(text) = String::from_utf8(decoded) else {
        return false;
    };
    let Some((user, password)) = text.split_once(':') else {
        return false;
    };
    st.credentials_match(user, password)
}

impl AppState {
    /// Whether `user` and `password` are the broker's credentials (the OSB API's basic auth,
    /// the dashboard's operator login).
    pub(crate) fn credentials_match(&self, user: &str, password: &str) -> bool {
        // Compare digests in constant time: no early exit on the first differing byte.
        let given = credential_digest(user, password);
        crate::secrets::constant_time_eq(&given, self.auth.as_slice())
    }
}
