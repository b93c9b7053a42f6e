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
//! `instance` (one instance's page), `forms` (its actions, confirmed, CSRF-checked), `assets` (the stylesheet, the chart code and uPlot,
//! compiled in).

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
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::api::AppState;
use crate::config::BrokerConfig;
use crate::state::InstanceRecord;

pub use auth::link_token;

/// What stays unescaped in a path segment: letters, digits and `-._~`.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `id` as one path segment.
fn segment(id: &str) -> String {
    utf8_percent_encode(id, SEGMENT).to_string()
}

/// The path of instance `id`'s page.
pub(crate) fn instance_path(id: &str) -> String {
    format!("/dashboard/instances/{}", segment(id))
}

/// The broker's URL as browsers reach it: `[dashboard] url`, else `http(s)://<listen>`.
pub fn base_url(config: &BrokerConfig) -> String {
    match &config.dashboard.url {
        Some(u) => u.trim_end_matches('/').to_string(),
        None => {
            let scheme = if config.tls.is_some() {
                "https"
            } else {
                "http"
            };
            format!("{scheme}://{}", config.listen)
        }
    }
}

/// The link that opens `record`'s page (and only it): its `dashboard_url`. Holds the
/// instance's current link token; `dashboard-link --rotate` replaces it.
pub fn dashboard_url(config: &BrokerConfig, record: &InstanceRecord) -> String {
    format!(
        "{}/dashboard/open/{}/{}",
        base_url(config),
        segment(&record.id),
        link_token(&config.keyring(), record)
    )
}

/// `walarchive-broker dashboard-link`: instance `id`'s current link, or with `rotate` a new
/// one (the generation incremented by compare-and-swap: the old link and every session it
/// opened stop working at once). `None`: no such live instance.
pub async fn link(
    config: &BrokerConfig,
    store: &crate::state::Store,
    id: &str,
    rotate: bool,
) -> Result<Option<String>, crate::state::StoreError> {
    let record = match store.instance(id).await? {
        Some(r) if r.value.state != crate::state::InstanceState::Deleted => r.value,
        _ => return Ok(None),
    };
    let record = if rotate {
        let r = store
            .update_instance(id, |i| {
                i.dashboard_generation += 1;
                Ok(())
            })
            .await?;
        tracing::info!(instance = %id, generation = r.dashboard_generation, "dashboard link rotated");
        r
    } else {
        record
    };
    Ok(Some(dashboard_url(config, &record)))
}

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
