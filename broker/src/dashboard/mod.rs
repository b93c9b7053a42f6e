//! The web dashboard under `/dashboard/`: what a database's user and the broker's operator
//! look at every day, served by `walarchive-broker serve` beside the OSB API.
//!
//! Why server-rendered pages: they work without JavaScript (only the charts need it), on a
//! phone, behind any proxy, and without a build step; the numbers come from the sampler
//! ([`crate::stats::Stats`]) and the records, never from a request to a cell on the spot.
//!
//! The rooms: `auth` (the operator's login, per-instance links, signed session cookies, CSRF
//! tokens, and the guard in front of every route), `render` (layout, escaping, numbers for
//! people), `health` (red/amber/green), `overview` (all instances and cells, operator only),
//! `instance` (one instance's page), `forms` (its actions, confirmed, CSRF-checked), `assets`
//! (the stylesheet, the chart code and uPlot, compiled in). The links themselves
//! (`dashboard_url`, their tokens, rotation) are [`crate::links`], which the OSB API hands
//! out; [`crate::http`] puts the dashboard beside the OSB API.

mod assets;
mod auth;
mod forms;
mod health;
mod instance;
mod overview;
mod render;

use axum::middleware;
use axum::response::Redirect;
use axum::routing::{get, MethodRouter};
use axum::Router;

use crate::api::AppState;
pub(crate) use crate::links::instance_path;

/// Every route of the dashboard, `(path, handlers)`: [`routes`] builds the router from it and
/// the tests walk it, so a new route is tested without a session as soon as it exists.
pub fn table() -> Vec<(&'static str, MethodRouter<AppState>)> {
    vec![
        ("/dashboard", get(|| async { Redirect::to("/dashboard/") })),
        ("/dashboard/", get(overview::overview)),
        ("/dashboard/login", get(auth::login_page).post(auth::login)),
        ("/dashboard/logout", axum::routing::post(auth::logout)),
        ("/dashboard/open/{id}/{token}", get(auth::open_link)),
        ("/dashboard/assets/{file}", get(assets::asset)),
        ("/dashboard/instances/{id}", get(instance::instance)),
        (
            "/dashboard/instances/{id}/actions/{action}",
            axum::routing::post(forms::act),
        ),
        (
            "/dashboard/{*rest}",
            get(|| async {
                render::error_page(
                    axum::http::StatusCode::NOT_FOUND,
                    "Not found",
                    "There is no such page.",
                )
            }),
        ),
    ]
}

/// The paths of [`table`] (for tests).
pub fn paths() -> Vec<&'static str> {
    table().into_iter().map(|(p, _)| p).collect()
}

/// The dashboard's router: [`table`], every route behind the session guard.
pub fn routes(state: AppState) -> Router {
    let mut r = Router::new();
    for (path, handlers) in table() {
        r = r.route(path, handlers);
    }
    r.layer(middleware::from_fn_with_state(state.clone(), auth::guard))
        .with_state(state)
}
