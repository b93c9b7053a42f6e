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

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, RawQuery, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::config::{BrokerConfig, PlanConfig, MAX_NODES};
use crate::error::ApiError;
use crate::state::{
    until_swapped, BindingRecord, BindingState, CreateInstance, Credentials, InstanceContext,
    InstanceRecord, InstanceState, OperationKind, OperationRecord, OperationRequest,
    OperationState, Parameters, Round, Store, Timestamp, Versioned,
};

/// Lowest supported `X-Broker-API-Version` minor (with major 2).
pub const MIN_MINOR: u32 = 12;
/// Highest OSB version implemented (newer 2.x minors are accepted: they are additive).
pub const API_VERSION: &str = "2.17";

/// A binding left `creating` or `deleting` longer than this (its request died with its
/// broker process) may be taken over by a new request.
const BINDING_STALE: Duration = Duration::from_secs(300);

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
    auth: Arc<[u8; 32]>,
}

impl AppState {
    /// The state of an API serving `config` over `store`.
    pub fn new(config: BrokerConfig, store: Store, binder: Arc<dyn Binder>) -> AppState {
        let auth = Arc::new(credential_digest(
            &config.credentials.username,
            config.credentials.password.expose(),
        ));
        AppState {
            config: Arc::new(config),
            store,
            binder,
            provisioner: Arc::new(Notify::new()),
            auth,
        }
    }

    fn plan(&self, plan_id: &str) -> Option<&PlanConfig> {
        self.config.plan(plan_id)
    }

    fn wake_worker(&self) {
        self.provisioner.notify_one();
    }
}

fn credential_digest(user: &str, password: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update((user.len() as u64).to_be_bytes());
    h.update(user.as_bytes());
    h.update(password.as_bytes());
    h.finalize().into()
}

/// The OSB router: every route requires basic auth and `X-Broker-API-Version`.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/v2/catalog", get(catalog))
        .route(
            "/v2/service_instances/{instance_id}",
            get(fetch_instance)
                .put(provision)
                .patch(update)
                .delete(deprovision),
        )
        .route(
            "/v2/service_instances/{instance_id}/last_operation",
            get(last_operation),
        )
        .route(
            "/v2/service_instances/{instance_id}/service_bindings/{binding_id}",
            get(fetch_binding).put(bind).delete(unbind),
        )
        .fallback(|| async { ApiError::not_found("No such endpoint.") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "This endpoint does not support this method.",
            )
        })
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// Basic auth (401) and the API version header (400 missing, 412 unsupported).
async fn guard(State(st): State<AppState>, req: Request, next: Next) -> Response {
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

fn authorized(st: &AppState, headers: &HeaderMap) -> bool {
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
    // Compare digests in constant time: no early exit on the first differing byte.
    let given = credential_digest(user, password);
    crate::secrets::constant_time_eq(&given, st.auth.as_slice())
}

// ---------------------------------------------------------------------------------------
// Request parsing
// ---------------------------------------------------------------------------------------

fn query_pairs(q: &Option<String>) -> Vec<(String, String)> {
    q.as_deref()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default()
}

fn query_get<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// A query parameter DELETE requests must carry (`service_id`, `plan_id`), not empty.
fn required_query<'a>(pairs: &'a [(String, String)], name: &str) -> Result<&'a str, ApiError> {
    query_get(pairs, name)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::bad_request(format!("The {name} query parameter is required.")))
}

fn accepts_incomplete(pairs: &[(String, String)]) -> bool {
    query_get(pairs, "accepts_incomplete") == Some("true")
}

/// Checks an id from the URL or body: see [`crate::names::check_id`] (anything else is
/// mapped to safe names wherever it is used outside the broker's records).
fn validate_id(id: &str, what: &'static str) -> Result<(), ApiError> {
    crate::names::check_id(id, what).map_err(|e| ApiError::bad_request(format!("{e}.")))
}

/// The instance id of the URL, percent-decoded and checked (400 in the OSB shape when it is
/// not UTF-8, empty, too long or holds control characters).
struct InstanceId(String);

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
struct BindingIds(String, String);

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
struct JsonBody<T>(T);

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

/// The body of a provision (`PUT /v2/service_instances/:id`).
#[derive(Deserialize)]
struct ProvisionRequest {
    service_id: Option<String>,
    plan_id: Option<String>,
    organization_guid: Option<String>,
    space_guid: Option<String>,
    context: Option<Map<String, Value>>,
    /// Checked by [`parse_parameters`] (400 `InvalidParameters`, not `BadRequest`).
    parameters: Option<Value>,
}

/// The body of an update (`PATCH /v2/service_instances/:id`).
#[derive(Deserialize)]
struct UpdateRequest {
    service_id: Option<String>,
    plan_id: Option<String>,
    /// Checked by [`parse_parameters`].
    parameters: Option<Value>,
}

/// The body of a binding (`PUT .../service_bindings/:binding_id`).
#[derive(Deserialize)]
struct BindRequest {
    service_id: Option<String>,
    plan_id: Option<String>,
    app_guid: Option<String>,
    /// Recorded as sent (it tells a re-sent request from a conflicting one).
    bind_resource: Option<Value>,
    /// Bindings accept none (400 `InvalidParameters` otherwise).
    parameters: Option<Value>,
}

/// A string field: `Ok(None)` when absent or null, 400 when empty.
fn opt_str(v: Option<String>, field: &str) -> Result<Option<String>, ApiError> {
    match v {
        Some(s) if s.is_empty() => Err(ApiError::bad_request(format!(
            "{field} must be a non-empty string."
        ))),
        v => Ok(v),
    }
}

fn req_str(v: Option<String>, field: &str) -> Result<String, ApiError> {
    opt_str(v, field)?.ok_or_else(|| ApiError::bad_request(format!("{field} is required.")))
}

fn check_service(st: &AppState, service_id: &str) -> Result<(), ApiError> {
    if service_id == st.config.service.id {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "service_id {service_id:?} is not a service of this broker."
        )))
    }
}

fn check_plan<'a>(st: &'a AppState, plan_id: &str) -> Result<&'a PlanConfig, ApiError> {
    st.plan(plan_id).ok_or_else(|| {
        ApiError::bad_request(format!(
            "plan_id {plan_id:?} is not a plan of this service."
        ))
    })
}

/// Validates OSB `parameters`: only `node-count`, an integer from 1 to 5.
fn parse_parameters(v: Option<&Value>) -> Result<Option<Parameters>, ApiError> {
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

fn gone() -> Response {
    (StatusCode::GONE, Json(json!({}))).into_response()
}

fn accepted(operation: &str) -> Response {
    (
        StatusCode::ACCEPTED,
        Json(json!({ "operation": operation })),
    )
        .into_response()
}

fn ok_empty() -> Response {
    (StatusCode::OK, Json(json!({}))).into_response()
}

// ---------------------------------------------------------------------------------------
// Catalog
// ---------------------------------------------------------------------------------------

fn node_count_schema() -> Value {
    json!({
        "parameters": {
            "$schema": "http://json-schema.org/draft-04/schema#",
            "type": "object",
            "additionalProperties": false,
            "properties": {
                "node-count": {
                    "description": "Number of PostgreSQL nodes (the plan's default when omitted).",
                    "type": "integer",
                    "minimum": 1,
                    "maximum": MAX_NODES
                }
            }
        }
    })
}

async fn catalog(State(st): State<AppState>) -> Response {
    let s = &st.config.service;
    let plans: Vec<Value> = s
        .plans
        .iter()
        .map(|p| {
            json!({
                "id": p.id,
                "name": p.name,
                "description": p.description,
                "free": p.free,
                "metadata": { "nodeCount": p.node_count },
                "schemas": {
                    "service_instance": {
                        "create": node_count_schema(),
                        "update": node_count_schema(),
                    }
                }
            })
        })
        .collect();
    Json(json!({
        "services": [{
            "id": s.id,
            "name": s.name,
            "description": s.description,
            "tags": s.tags,
            "bindable": s.bindable,
            "instances_retrievable": s.instances_retrievable,
            "bindings_retrievable": s.bindings_retrievable,
            "allow_context_updates": false,
            "plan_updateable": s.plan_updateable,
            "plans": plans,
        }]
    }))
    .into_response()
}

// ---------------------------------------------------------------------------------------
// Instances
// ---------------------------------------------------------------------------------------

async fn provision(
    State(st): State<AppState>,
    InstanceId(instance_id): InstanceId,
    RawQuery(q): RawQuery,
    JsonBody(body): JsonBody<ProvisionRequest>,
) -> Result<Response, ApiError> {
    let q = query_pairs(&q);
    let service_id = req_str(body.service_id, "service_id")?;
    let plan_id = req_str(body.plan_id, "plan_id")?;
    let org = req_str(body.organization_guid, "organization_guid")?;
    let space = req_str(body.space_guid, "space_guid")?;
    check_service(&st, &service_id)?;
    let plan = check_plan(&st, &plan_id)?;
    let context = body.context.map_or(Value::Null, Value::Object);
    let parameters = parse_parameters(body.parameters.as_ref())?.unwrap_or_default();
    let node_count = parameters.node_count.unwrap_or(plan.node_count);

    let path_name = crate::names::path_name(&instance_id);
    // Each round is a future of its own: it borrows what the rounds share.
    let (st, q, instance_id, service_id, plan_id, org, space, context, path_name) = (
        &st,
        &q,
        &instance_id,
        &service_id,
        &plan_id,
        &org,
        &space,
        &context,
        &path_name,
    );
    until_swapped((), |()| async move {
        let (inst, op) = st.store.instance_and_operation(instance_id).await?;
        // A deleted id is provisioned again as a new incarnation (see `state`).
        let previous = inst
            .as_ref()
            .filter(|i| i.value.state == InstanceState::Deleted)
            .cloned();
        if let Some(inst) = inst.filter(|i| i.value.state != InstanceState::Deleted) {
            let i = &inst.value;
            let same = i.service_id == *service_id
                && i.plan_id == *plan_id
                && i.parameters == parameters
                && i.context.organization_guid == *org
                && i.context.space_guid == *space;
            if !same {
                return Err(ApiError::conflict(
                    "An instance with this id already exists with different attributes.",
                ));
            }
            return match i.state {
                InstanceState::Provisioning => match op {
                    Some(op) if op.value.kind == OperationKind::Provision => {
                        Ok(accepted(&op.value.id))
                    }
                    _ => Err(ApiError::concurrency(
                        "Another operation for this service instance is in progress.",
                    )),
                },
                InstanceState::Ready | InstanceState::Updating => Ok(ok_empty()),
                InstanceState::Deprovisioning => Err(ApiError::concurrency(
                    "This service instance is being deprovisioned.",
                )),
                InstanceState::Failed | InstanceState::Deleted => Err(ApiError::unprocessable(
                    "InstanceNotUsable",
                    "This service instance failed; deprovision it.",
                )),
            }
            .map(Round::Done);
        }
        if !accepts_incomplete(q) {
            return Err(ApiError::async_required());
        }
        let now = Timestamp::now();
        let (incarnation, previous_repositories) = match &previous {
            Some(p) => {
                let mut repos = p.value.previous_repositories.clone();
                repos.push(p.value.repository.clone());
                (p.value.incarnation + 1, repos)
            }
            None => (1, Vec::new()),
        };
        let ctx_str = |k: &str| context.get(k).and_then(Value::as_str).map(str::to_string);
        let record = InstanceRecord {
            id: instance_id.clone(),
            service_id: service_id.clone(),
            plan_id: plan_id.clone(),
            parameters,
            node_count,
            context: InstanceContext {
                organization_guid: org.clone(),
                space_guid: space.clone(),
                instance_name: ctx_str("instance_name"),
                platform: ctx_str("platform"),
                raw: context.clone(),
            },
            port: 0,
            path_name: Some(path_name.clone()),
            repository: st.config.repository.for_incarnation(path_name, incarnation),
            incarnation,
            previous_repositories,
            last_backup_at: None,
            state: InstanceState::Provisioning,
            nodes: Vec::new(),
            created_at: now,
            updated_at: now,
            deleted_at: None,
        };
        let operation = OperationRecord::new(
            instance_id,
            OperationKind::Provision,
            OperationRequest {
                plan_id: plan_id.clone(),
                parameters,
                node_count,
            },
            "Provisioning accepted; waiting for the provisioning worker.",
            previous.as_ref().and(op.as_ref()).map(|o| &o.value),
        );
        let range = st.config.router.port_min..=st.config.router.port_max;
        let created = match &previous {
            None => st.store.create_instance(record, operation, range).await,
            Some(p) => {
                st.store
                    .reincarnate_instance(record, operation, range, p, op.as_ref())
                    .await
            }
        };
        match created {
            Ok(CreateInstance::Created {
                operation,
                instance,
            }) => {
                info!(instance = %instance_id, operation = %operation.value.id,
                      port = instance.value.port, node_count,
                      incarnation = instance.value.incarnation, "provision accepted");
                st.wake_worker();
                return Ok(Round::Done(accepted(&operation.value.id)));
            }
            // Created or deleted meanwhile: decide again.
            Ok(CreateInstance::Exists) => {}
            Err(crate::state::StoreError::NoFreePort { min, max }) => {
                warn!(min, max, "no free router port");
                return Err(ApiError::unprocessable(
                    "CapacityExhausted",
                    "The broker has no capacity left for new instances; contact the operator.",
                ));
            }
            Err(e) => return Err(e.into()),
        }
        Ok::<_, ApiError>(Round::Lost(()))
    })
    .await?
    .ok_or_else(|| ApiError::concurrency("Concurrent requests for this service instance; retry."))
}

async fn update(
    State(st): State<AppState>,
    InstanceId(instance_id): InstanceId,
    RawQuery(q): RawQuery,
    JsonBody(body): JsonBody<UpdateRequest>,
) -> Result<Response, ApiError> {
    let q = query_pairs(&q);
    let service_id = req_str(body.service_id, "service_id")?;
    check_service(&st, &service_id)?;
    let new_plan = opt_str(body.plan_id, "plan_id")?;
    if let Some(p) = &new_plan {
        check_plan(&st, p)?;
    }
    let new_params = parse_parameters(body.parameters.as_ref())?;

    let (st, q, instance_id, new_plan) = (&st, &q, &instance_id, &new_plan);
    until_swapped((), |()| async move {
        let (inst, op) = st.store.instance_and_operation(instance_id).await?;
        let Some(inst) = inst.filter(|i| i.value.state != InstanceState::Deleted) else {
            return Err(ApiError::not_found("No such service instance."));
        };
        let i = &inst.value;
        let plan_id = new_plan.clone().unwrap_or_else(|| i.plan_id.clone());
        if plan_id != i.plan_id && !st.config.service.plan_updateable {
            return Err(ApiError::unprocessable(
                "PlanChangeNotSupported",
                "This service does not support plan changes.",
            ));
        }
        let plan = check_plan(st, &plan_id)?;
        let mut parameters = i.parameters;
        if let Some(p) = new_params {
            if p.node_count.is_some() {
                parameters.node_count = p.node_count;
            }
        }
        let target = OperationRequest {
            plan_id: plan_id.clone(),
            parameters,
            node_count: parameters.node_count.unwrap_or(plan.node_count),
        };
        match i.state {
            InstanceState::Updating => {
                return match op {
                    Some(op)
                        if op.value.kind == OperationKind::Update
                            && op.value.state == OperationState::InProgress
                            && op.value.request == target =>
                    {
                        Ok(accepted(&op.value.id))
                    }
                    _ => Err(ApiError::concurrency(
                        "Another update of this service instance is in progress.",
                    )),
                }
                .map(Round::Done);
            }
            InstanceState::Provisioning | InstanceState::Deprovisioning => {
                return Err(ApiError::concurrency(
                    "Another operation for this service instance is in progress.",
                ))
            }
            InstanceState::Failed | InstanceState::Deleted => {
                return Err(ApiError::unprocessable(
                    "InstanceNotUsable",
                    "This service instance failed and cannot be updated; deprovision it.",
                ))
            }
            InstanceState::Ready => {}
        }
        if target.plan_id == i.plan_id
            && target.parameters == i.parameters
            && target.node_count == i.node_count
        {
            return Ok(Round::Done(ok_empty()));
        }
        if !accepts_incomplete(q) {
            return Err(ApiError::async_required());
        }
        let new_op = OperationRecord::new(
            instance_id,
            OperationKind::Update,
            target.clone(),
            "Update accepted; waiting for the provisioning worker.",
            op.as_ref().map(|o| &o.value),
        );
        let mut ni = i.clone();
        ni.state = InstanceState::Updating;
        ni.updated_at = Timestamp::now();
        if st.store.replace(&inst, &ni, op.as_ref(), &new_op).await? {
            info!(instance = %instance_id, operation = %new_op.id, plan = %target.plan_id,
                  node_count = target.node_count, "update accepted");
            st.wake_worker();
            return Ok(Round::Done(accepted(&new_op.id)));
        }
        Ok::<_, ApiError>(Round::Lost(()))
    })
    .await?
    .ok_or_else(|| ApiError::concurrency("Concurrent requests for this service instance; retry."))
}

async fn deprovision(
    State(st): State<AppState>,
    InstanceId(instance_id): InstanceId,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let q = query_pairs(&q);
    let service_id = required_query(&q, "service_id")?;
    let plan_id = required_query(&q, "plan_id")?;
    check_service(&st, service_id)?;
    check_plan(&st, plan_id)?;

    let (st, q, instance_id) = (&st, &q, &instance_id);
    until_swapped((), |()| async move {
        let (inst, op) = st.store.instance_and_operation(instance_id).await?;
        let Some(inst) = inst.filter(|i| i.value.state != InstanceState::Deleted) else {
            return Ok(Round::Done(gone()));
        };
        let i = &inst.value;
        let mut interrupted = None;
        match i.state {
            InstanceState::Deprovisioning => {
                if let Some(op) = op.filter(|o| o.value.kind == OperationKind::Deprovision) {
                    if !accepts_incomplete(q) {
                        return Err(ApiError::async_required());
                    }
                    return Ok(Round::Done(accepted(&op.value.id)));
                }
                return Err(ApiError::concurrency(
                    "Another operation for this service instance is in progress.",
                ));
            }
            InstanceState::Updating => {
                return Err(ApiError::concurrency(
                    "This service instance is being updated; retry when the update is finished.",
                ))
            }
            InstanceState::Provisioning => {
                interrupted = op
                    .as_ref()
                    .filter(|o| {
                        o.value.kind == OperationKind::Provision
                            && o.value.state == OperationState::InProgress
                    })
                    .map(|o| o.value.id.clone());
            }
            InstanceState::Ready | InstanceState::Failed | InstanceState::Deleted => {}
        }
        if !accepts_incomplete(q) {
            return Err(ApiError::async_required());
        }
        // A provision in progress is halted: it ends as failed in the history, and the
        // worker sees `interrupted` and cleans up what it had created.
        let previous = op.as_ref().map(|o| {
            let mut p = o.value.clone();
            if interrupted.is_some() {
                p.state = OperationState::Failed;
                p.description = "Provisioning was cancelled by a deprovision request.".into();
            }
            p
        });
        let mut new_op = OperationRecord::new(
            instance_id,
            OperationKind::Deprovision,
            OperationRequest {
                plan_id: i.plan_id.clone(),
                parameters: i.parameters,
                node_count: i.node_count,
            },
            "Deprovisioning accepted; waiting for the provisioning worker.",
            previous.as_ref(),
        );
        new_op.interrupted = interrupted.clone();
        let mut ni = i.clone();
        ni.state = InstanceState::Deprovisioning;
        ni.updated_at = Timestamp::now();
        if st.store.replace(&inst, &ni, op.as_ref(), &new_op).await? {
            info!(instance = %instance_id, operation = %new_op.id,
                  interrupted = ?interrupted, "deprovision accepted");
            st.wake_worker();
            return Ok(Round::Done(accepted(&new_op.id)));
        }
        Ok::<_, ApiError>(Round::Lost(()))
    })
    .await?
    .ok_or_else(|| ApiError::concurrency("Concurrent requests for this service instance; retry."))
}

async fn last_operation(
    State(st): State<AppState>,
    InstanceId(instance_id): InstanceId,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let q = query_pairs(&q);
    let (inst, op) = st.store.instance_and_operation(&instance_id).await?;
    let (Some(_), Some(op)) = (inst, op) else {
        return Err(ApiError::not_found("No such service instance."));
    };
    let op = op.value;
    let summary = match query_get(&q, "operation") {
        Some(id) => op.find(id).ok_or_else(|| {
            ApiError::bad_request(format!(
                "Operation {id:?} is not an operation of this service instance."
            ))
        })?,
        None => op.summary(),
    };
    if summary.kind == OperationKind::Deprovision && summary.state == OperationState::Succeeded {
        return Ok(gone());
    }
    let mut body = json!({ "state": summary.state, "description": summary.description });
    if summary.id == op.id && summary.state == OperationState::Failed {
        if let Some(usable) = op.instance_usable {
            body["instance_usable"] = usable.into();
        }
    }
    Ok(Json(body).into_response())
}

async fn fetch_instance(
    State(st): State<AppState>,
    InstanceId(instance_id): InstanceId,
) -> Result<Response, ApiError> {
    if !st.config.service.instances_retrievable {
        return Err(ApiError::not_found("Instances are not retrievable."));
    }
    let (inst, op) = st.store.instance_and_operation(&instance_id).await?;
    let Some(inst) = inst else {
        return Err(ApiError::not_found("No such service instance."));
    };
    let i = inst.value;
    let never_provisioned = i.state == InstanceState::Failed
        && op
            .as_ref()
            .is_some_and(|o| o.value.kind == OperationKind::Provision);
    match i.state {
        InstanceState::Provisioning | InstanceState::Deleted => {
            Err(ApiError::not_found("No such service instance (yet)."))
        }
        _ if never_provisioned => Err(ApiError::not_found("The provisioning failed.")),
        InstanceState::Updating => Err(ApiError::concurrency(
            "This service instance is being updated.",
        )),
        _ => Ok(Json(json!({
            "service_id": i.service_id,
            "plan_id": i.plan_id,
            "parameters": i.parameters,
        }))
        .into_response()),
    }
}

// ---------------------------------------------------------------------------------------
// Bindings
// ---------------------------------------------------------------------------------------

fn stale(b: &BindingRecord) -> bool {
    let age = chrono::Utc::now() - b.updated_at.0;
    age.to_std().is_ok_and(|a| a > BINDING_STALE)
}

async fn bind(
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

async fn unbind(
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

async fn fetch_binding(
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
