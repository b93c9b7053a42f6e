//! The Open Service Broker API (2.12 to 2.17) over the broker's [`Store`].
//!
//! Why the API only records: provisioning a cluster takes minutes, longer than any platform
//! waits for an HTTP answer, so every instance operation is asynchronous. A handler validates
//! the request, decides against the records it read (idempotent re-sends, conflicts,
//! concurrency), writes its decision by compare-and-swap and answers `202` with the
//! operation id; the worker, woken through [`AppState::provisioner`], does the work and
//! reports through [`Store::set_progress`] and [`Store::finish_operation`]. Losing a CAS race
//! means "decide again from a fresh read", never "overwrite".
//!
//! Bindings are synchronous (creating a role is quick): the record goes to `creating` by
//! create-if-absent before the [`Binder`] runs, so two concurrent requests for one binding
//! cannot both create it.
//!
//! Every answer that is not a success is an [`ApiError`] (`{"error", "description"}`), except
//! `410 Gone`, whose body is `{}`.
//!
//! The rooms: `auth` (basic auth and the API version header, in front of every route),
//! `request` (the extractors whose rejections are [`ApiError`]s, and the checks the
//! handlers share), `catalog`, `instances` (provision, update, deprovision, last_operation),
//! `clone` (the checks of a provision with `clone-from`, before its `202`), `bindings`, and
//! `metrics` (`GET /metrics`, with its own authentication, and the count of OSB answers).

mod auth;
mod bindings;
mod catalog;
mod clone;
mod instances;
mod metrics;
mod request;

pub(crate) use instances::{start_update, UpdateStart};
pub(crate) use request::{parse_parameters, Phase};

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::http::StatusCode;
use axum::middleware;
use axum::routing::get;
use axum::Router;
use tokio::sync::Notify;

use crate::config::{BrokerConfig, PlanConfig};
use crate::error::ApiError;
use crate::state::{Credentials, InstanceRecord, Store};

/// Lowest supported `X-Broker-API-Version` minor (with major 2).
pub const MIN_MINOR: u32 = 12;
/// Highest OSB version implemented (newer 2.x minors are accepted: they are additive).
pub const API_VERSION: &str = "2.17";
/// A boxed future (the [`Binder`] methods' return type).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A failure of the [`Binder`]. Its text is logged, never sent to the platform.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct BindError {
    /// What failed.
    pub message: String,
    /// The underlying error.
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl BindError {
    /// A failure described by `message`.
    pub fn new(message: impl Into<String>) -> BindError {
        BindError {
            message: message.into(),
            source: None,
        }
    }
}

/// Creates and removes the credentials of bindings (a PostgreSQL role per binding, reached
/// through the router port). Both methods must be idempotent: a binding whose creation
/// failed or was interrupted is bound again or unbound.
pub trait Binder: Send + Sync + 'static {
    /// Creates (or re-creates) the credentials of `binding_id` on `instance`.
    fn bind<'a>(
        &'a self,
        instance: &'a InstanceRecord,
        binding_id: &'a str,
    ) -> BoxFuture<'a, Result<Credentials, BindError>>;

    /// Removes the credentials of `binding_id` (success when they do not exist).
    fn unbind<'a>(
        &'a self,
        instance: &'a InstanceRecord,
        binding_id: &'a str,
    ) -> BoxFuture<'a, Result<(), BindError>>;
}

/// A [`Binder`] that refuses every binding (until the real one is configured).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoBinder;

impl Binder for NoBinder {
    fn bind<'a>(
        &'a self,
        _instance: &'a InstanceRecord,
        _binding_id: &'a str,
    ) -> BoxFuture<'a, Result<Credentials, BindError>> {
        Box::pin(async { Err(BindError::new("no binder is configured")) })
    }

    fn unbind<'a>(
        &'a self,
        _instance: &'a InstanceRecord,
        _binding_id: &'a str,
    ) -> BoxFuture<'a, Result<(), BindError>> {
        Box::pin(async { Ok(()) })
    }
}

/// Which PostgreSQL majors the broker's cells run (implemented by
/// [`crate::cell::CellBinder`]): a provision is refused before its `202` when too few cells
/// run its major for its nodes.
pub trait CellMajors: Send + Sync + 'static {
    /// Every configured cell by name: its majors, or why it did not say.
    fn cell_majors(&self) -> BoxFuture<'_, Vec<CellMajorsAnswer>>;
}

/// One cell's answer to [`CellMajors::cell_majors`]: its name, and its majors or why it did
/// not say.
pub type CellMajorsAnswer = (String, Result<Vec<u32>, String>);

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The configuration.
    pub config: Arc<BrokerConfig>,
    /// The records.
    pub store: Store,
    /// Creates binding credentials.
    pub binder: Arc<dyn Binder>,
    /// Notified (`notify_one`) whenever an operation is recorded: the worker waits on it
    /// (and also polls [`Store::operations_in_progress`], since other broker processes
    /// record operations too).
    pub provisioner: Arc<Notify>,
    /// Notified (`notify_one`) with [`AppState::provisioner`]: the state backup
    /// ([`crate::statebackup`]) waits on it (and also polls).
    pub state_changed: Arc<Notify>,
    /// The restorable windows of the archives clones and `GET` read, kept a short while.
    pub windows: Arc<crate::windows::Windows>,
    /// Reads a running clone source's leader LSN (none: clones of running sources resolve
    /// without it).
    pub leader_wal: Option<Arc<dyn crate::windows::LeaderWal>>,
    /// The cells' majors (none: provisions are not checked against them; the worker's
    /// placement still is).
    pub cell_majors: Option<Arc<dyn CellMajors>>,
    /// The sampler's results (none in unit tests and when sampling is off).
    pub stats: Option<crate::stats::Stats>,
    auth: Arc<[u8; 32]>,
}

impl AppState {
    /// The state of an API serving `config` over `store`.
    pub fn new(config: BrokerConfig, store: Store, binder: Arc<dyn Binder>) -> AppState {
        let auth = Arc::new(auth::credential_digest(
            &config.credentials.username,
            config.credentials.password.expose(),
        ));
        AppState {
            config: Arc::new(config),
            store,
            binder,
            provisioner: Arc::new(Notify::new()),
            state_changed: Arc::new(Notify::new()),
            windows: Arc::default(),
            leader_wal: None,
            cell_majors: None,
            stats: None,
            auth,
        }
    }

    fn plan(&self, plan_id: &str) -> Option<&PlanConfig> {
        self.config.plan(plan_id)
    }

    pub(crate) fn wake_worker(&self) {
        self.provisioner.notify_one();
        self.state_changed.notify_one();
    }
}

/// The OSB routes (every route requires basic auth and `X-Broker-API-Version`, and so does
/// every other path outside `/dashboard` and `/metrics`: the fallback is behind the guard
/// too; its answers are counted for `/metrics`) and `GET /metrics` (basic auth only).
pub fn routes(state: AppState) -> Router {
    let osb = Router::new()
        .route("/v2/catalog", get(catalog::catalog))
        .route(
            "/v2/service_instances/{instance_id}",
            get(instances::fetch_instance)
                .put(instances::provision)
                .patch(instances::update)
                .delete(instances::deprovision),
        )
        .route(
            "/v2/service_instances/{instance_id}/last_operation",
            get(instances::last_operation),
        )
        .route(
            "/v2/service_instances/{instance_id}/service_bindings/{binding_id}",
            get(bindings::fetch_binding)
                .put(bindings::bind)
                .delete(bindings::unbind),
        )
        .fallback(|| async { ApiError::not_found("No such endpoint.") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "This endpoint does not support this method.",
            )
        })
        .layer(middleware::from_fn_with_state(state.clone(), auth::guard))
        .layer(middleware::from_fn(metrics::count));
    osb.merge(metrics::routes()).with_state(state)
}
