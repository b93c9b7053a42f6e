//! The HTTP side of `/metrics` ([`crate::metrics`] writes the text): `GET /metrics` behind the
//! operator's basic auth (the broker's own credentials; no `X-Broker-API-Version`, which
//! Prometheus does not send), and the layer that counts the OSB API's answers by status.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tracing::warn;

use super::AppState;
use crate::error::ApiError;

/// `GET /metrics`, with its own authentication (it is not behind the OSB guard).
pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics))
}

async fn metrics(State(st): State<AppState>, headers: HeaderMap) -> Response {
    if !super::auth::authorized(&st, &headers) {
        let mut r = ApiError::unauthorized().into_response();
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Basic realm=\"walarchive-broker\""),
        );
        return r;
    }
    let instances = match st.store.instances().await {
        Ok(v) => v.into_iter().map(|v| v.value).collect::<Vec<_>>(),
        Err(e) => {
            warn!("/metrics cannot read the instances: {e}");
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "Unavailable",
                "The broker's state could not be read; retry later.",
            )
            .into_response();
        }
    };
    let text = crate::metrics::render(&st.config.service.plans, st.stats.as_ref(), &instances);
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response()
}

/// Counts every answer of the routes it wraps by status (`walarchive_broker_api_requests`).
pub(super) async fn count(req: Request, next: Next) -> Response {
    let r = next.run(req).await;
    crate::metrics::api_request(r.status().as_u16());
    r
}
