//! The broker's whole HTTP surface on its one address: the OSB API and `GET /metrics`
//! ([`crate::api::routes`], basic auth) and the dashboard ([`crate::dashboard::routes`], its
//! own sessions). Composed here so that neither knows the other.

use axum::Router;

use crate::api::AppState;

/// Every route `serve` answers.
pub fn app(state: AppState) -> Router {
    crate::api::routes(state.clone()).merge(crate::dashboard::routes(state))
}
