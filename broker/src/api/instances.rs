//! Instances: provision, update and deprovision record an operation for the worker and
//! answer `202`; last_operation and fetch read the records. A provision with `clone-from`
//! is validated by `clone` first (nothing is recorded when it is refused). A fetch also says
//! the instance's restorable window (what `clone-at` may name).

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tracing::{info, warn};

use super::clone::{self, CloneRequest};
use super::request::{
    accepted, accepts_incomplete, check_plan, check_service, gone, ok_empty, opt_str,
    parse_parameters, query_get, query_pairs, req_str, required_query, InstanceId, JsonBody, Phase,
};
use super::AppState;
use crate::error::ApiError;
use crate::state::{
    until_swapped, CreateInstance, Incarnation, InstanceContext, InstanceRecord, InstanceState,
    OperationKind, OperationRecord, OperationRequest, OperationState, Parameters, Round, Timestamp,
};

/// The body of a provision (`PUT /v2/service_instances/:id`).
#[derive(Deserialize)]
pub(super) struct ProvisionRequest {
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
pub(super) struct UpdateRequest {
    service_id: Option<String>,
    plan_id: Option<String>,
    /// Checked by [`parse_parameters`].
    parameters: Option<Value>,
}

/// The `202` of a provision: the operation, the instance's `dashboard_url`, and for a clone
/// what it copies (OSB 2.16 `metadata`).
fn provision_accepted(st: &AppState, operation: &str, record: &InstanceRecord) -> Response {
    let mut body = json!({
        "operation": operation,
        "dashboard_url": crate::links::dashboard_url(&st.config, record),
    });
    if let Some(r) = &record.restore {
        body["metadata"] = json!({ "attributes": { "clone_of": clone::clone_of(r) } });
    }
    (StatusCode::ACCEPTED, Json(body)).into_response()
}

pub(super) async fn provision(
    State(st): State<AppState>,
    InstanceId(instance_id): InstanceId,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
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
    let (parameters, clone) = parse_parameters(body.parameters.as_ref(), Phase::Provision)?;
    let node_count = parameters.node_count.unwrap_or(plan.node_count);
    let user = clone::originating_user(&headers);

    let path_name = crate::names::path_name(&instance_id);
    // Each round is a future of its own: it borrows what the rounds share.
    let (st, q, instance_id, service_id, plan_id, org, space, context, path_name, clone, user) = (
        &st,
        &q,
        &instance_id,
        &service_id,
        &plan_id,
        &org,
        &space,
        &context,
        &path_name,
        &clone,
        &user,
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
                && i.context.space_guid == *space
                && i.restore.as_ref().and_then(|r| r.requested.as_ref()) == clone.as_ref();
            if !same {
                return Err(ApiError::conflict(
                    "An instance with this id already exists with different attributes.",
                ));
            }
            return match i.state {
                InstanceState::Provisioning => match op {
                    Some(op) if op.value.kind == OperationKind::Provision => {
                        Ok(provision_accepted(st, &op.value.id, i))
                    }
                    _ => Err(ApiError::concurrency(
                        "Another operation for this service instance is in progress.",
                    )),
                },
                InstanceState::Ready | InstanceState::Updating => Ok(Json(json!({
                    "dashboard_url": crate::links::dashboard_url(&st.config, i),
                }))
                .into_response()),
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
        // Validated in every round: a lost round may mean that the source changed.
        let validated = match clone {
            Some(params) => Some(
                clone::validate(
                    st,
                    &CloneRequest {
                        org,
                        space,
                        service_id,
                        params,
                        user: user.clone(),
                        major: parameters.postgresql_version,
                    },
                )
                .await?,
            ),
            None => None,
        };
        // A clone runs its source's major; anything else what was asked, else the newest.
        let major = match &validated {
            Some(v) => v.major,
            None => parameters
                .postgresql_version
                .unwrap_or(crate::pgmajor::NEWEST),
        };
        check_cells_have(st, major, node_count).await?;
        let now = Timestamp::now();
        let (incarnation, earlier) = match &previous {
            Some(p) => {
                let mut earlier = p.value.previous.clone();
                earlier.push(Incarnation {
                    n: p.value.incarnation,
                    repository: p.value.repository.clone(),
                    created_at: Some(p.value.created_at),
                    deleted_at: p.value.deleted_at,
                    purging: p.value.purging,
                    purged: p.value.purged.clone(),
                    postgresql_major: p.value.postgresql_major,
                });
                (p.value.incarnation + 1, earlier)
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
            read_only_port: None,
            path_name: Some(path_name.clone()),
            repository: st.config.repository.for_incarnation(path_name, incarnation),
            incarnation,
            previous: earlier,
            last_backup_at: None,
            state: InstanceState::Provisioning,
            nodes: Vec::new(),
            created_at: now,
            updated_at: now,
            deleted_at: None,
            restore: validated.as_ref().map(|v| v.restore.clone()),
            purging: None,
            purged: None,
            final_lsn: None,
            dashboard_generation: 0,
            postgresql_major: Some(major),
        };
        let description = match &record.restore {
            Some(r) => clone::accepted_description(r),
            None => "Provisioning accepted; waiting for the provisioning worker.".into(),
        };
        let operation = OperationRecord::new(
            instance_id,
            OperationKind::Provision,
            OperationRequest {
                plan_id: plan_id.clone(),
                parameters,
                node_count,
            },
            description,
            previous.as_ref().and(op.as_ref()).map(|o| &o.value),
        );
        let range = st.config.router.port_min..=st.config.router.port_max;
        let created = st
            .store
            .create_guarded(
                record,
                operation,
                range,
                previous.as_ref().map(|p| (p, op.as_ref())),
                validated
                    .as_ref()
                    .map(|v| (v.source_revision.0.as_str(), v.source_revision.1)),
            )
            .await;
        match created {
            Ok(CreateInstance::Created {
                operation,
                instance,
            }) => {
                info!(instance = %instance_id, operation = %operation.value.id,
                      port = instance.value.port, node_count,
                      incarnation = instance.value.incarnation,
                      clone_of = ?instance.value.restore.as_ref().map(|r| &r.source.instance_id),
                      "provision accepted");
                st.wake_worker();
                return Ok(Round::Done(provision_accepted(
                    st,
                    &operation.value.id,
                    &instance.value,
                )));
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

/// Refuses a provision of `major` when fewer cells run it than its `nodes` need (and enough
/// cells are configured: too few cells at all fail in the worker, as before): a 400 when
/// every cell answered, a 503 when the cells that did not could have made up the difference.
async fn check_cells_have(st: &AppState, major: u32, nodes: u8) -> Result<(), ApiError> {
    let Some(cells) = &st.cell_majors else {
        return Ok(());
    };
    let answers = cells.cell_majors().await;
    let with: Vec<&str> = answers
        .iter()
        .filter(|(_, m)| m.as_ref().is_ok_and(|m| m.contains(&major)))
        .map(|(n, _)| n.as_str())
        .collect();
    let silent: Vec<&str> = answers
        .iter()
        .filter(|(_, m)| m.is_err())
        .map(|(n, _)| n.as_str())
        .collect();
    let need = usize::from(nodes);
    // Too few cells at all is the worker's to say (its placement fails with the reason, as
    // it always did); refused here is only what the major makes impossible.
    if with.len() >= need || answers.len() < need {
        return Ok(());
    }
    let mut offered: Vec<u32> = answers
        .iter()
        .filter_map(|(_, m)| m.as_ref().ok())
        .flatten()
        .copied()
        .collect();
    offered.sort_unstable();
    offered.dedup();
    let offered = offered
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    if with.len() + silent.len() >= need {
        warn!(major, cells = ?silent, "cells did not say which PostgreSQL majors they run");
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            format!(
                "Cannot check now that enough cells run PostgreSQL {major} ({} of the {need} needed do; {} did not answer); retry in a minute.",
                with.len(),
                silent.len()
            ),
        ));
    }
    Err(ApiError::invalid_parameters(if with.is_empty() {
        format!(
            "No cell of this broker runs PostgreSQL {major} (they run {offered}); choose another postgresql-version or ask the operator to add PostgreSQL {major} to the cells."
        )
    } else {
        format!(
            "{need} node(s) need {need} cells running PostgreSQL {major}, and only {} do ({}); choose fewer nodes or another postgresql-version (the cells run {offered}).",
            with.len(),
            with.join(", ")
        )
    }))
}

pub(super) async fn update(
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
    let (new_params, _) = parse_parameters(body.parameters.as_ref(), Phase::Update)?;
    Ok(
        match start_update(
            &st,
            &instance_id,
            new_plan,
            new_params,
            accepts_incomplete(&q),
            None,
        )
        .await?
        {
            UpdateStart::Accepted(op) => accepted(&op.id),
            UpdateStart::Unchanged => ok_empty(),
        },
    )
}

/// What [`start_update`] did.
#[derive(Debug)]
pub(crate) enum UpdateStart {
    /// An update operation is recorded (or the same one was in progress already).
    Accepted(Box<OperationRecord>),
    /// The instance already has that plan, those parameters and that node count.
    Unchanged,
}

/// The decision of an update (`PATCH`), for the OSB handler and for the dashboard's node
/// count (`crate::actions`), which is the same update: the target plan and parameters
/// (`new_params` already checked by `parse_parameters`), refused while another operation (a
/// dashboard action too) is in progress or when the instance is not usable, recorded for the
/// worker otherwise. `requested_by` names who asked on the dashboard (none: the platform).
pub(crate) async fn start_update(
    st: &AppState,
    instance_id: &str,
    new_plan: Option<String>,
    new_params: Parameters,
    incomplete_ok: bool,
    requested_by: Option<&str>,
) -> Result<UpdateStart, ApiError> {
    let new_plan = &new_plan;
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
        if let Some(m) = new_params.postgresql_version.filter(|m| *m != i.major()) {
            return Err(ApiError::invalid_parameters(format!(
                "This instance runs PostgreSQL {}; postgresql-version cannot change to {m}: the broker does not upgrade an instance's major in place. To move to PostgreSQL {m}, create a new instance with postgresql-version {m} and move the data into it (pg_dump and pg_restore, or logical replication), then switch the applications' bindings.",
                i.major()
            )));
        }
        let mut parameters = i.parameters;
        if new_params.node_count.is_some() {
            parameters.node_count = new_params.node_count;
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
                        Ok(UpdateStart::Accepted(Box::new(op.value)))
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
        // A dashboard action (backup, switchover) leaves the instance ready while it runs.
        if let Some(o) = op.as_ref().filter(|o| o.value.state == OperationState::InProgress) {
            return Err(ApiError::concurrency(format!(
                "{} of this service instance is in progress; retry when it is finished.",
                capitalized(o.value.kind.noun())
            )));
        }
        if target.plan_id == i.plan_id
            && target.parameters == i.parameters
            && target.node_count == i.node_count
        {
            return Ok(Round::Done(UpdateStart::Unchanged));
        }
        if !incomplete_ok {
            return Err(ApiError::async_required());
        }
        let mut new_op = OperationRecord::new(
            instance_id,
            OperationKind::Update,
            target.clone(),
            "Update accepted; waiting for the provisioning worker.",
            op.as_ref().map(|o| &o.value),
        );
        new_op.requested_by = requested_by.map(str::to_string);
        let mut ni = i.clone();
        ni.state = InstanceState::Updating;
        ni.updated_at = Timestamp::now();
        if st.store.replace(&inst, &ni, op.as_ref(), &new_op).await? {
            info!(instance = %instance_id, operation = %new_op.id, plan = %target.plan_id,
                  node_count = target.node_count, requested_by, "update accepted");
            st.wake_worker();
            return Ok(Round::Done(UpdateStart::Accepted(Box::new(new_op))));
        }
        Ok::<_, ApiError>(Round::Lost(()))
    })
    .await?
    .ok_or_else(|| ApiError::concurrency("Concurrent requests for this service instance; retry."))
}

/// "A backup" from "a backup".
fn capitalized(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

pub(super) async fn deprovision(
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
        // A dashboard action in progress (the instance stays ready meanwhile) is cancelled
        // like a provision: it ends as failed in the history, and its worker task stops at
        // its next step (the nodes it works on are removed).
        let cancelled_action = op.as_ref().is_some_and(|o| {
            !o.value.kind.is_platform() && o.value.state == OperationState::InProgress
        });
        // A provision in progress is halted: it ends as failed in the history, and the
        // worker sees `interrupted` and cleans up what it had created.
        let previous = op.as_ref().map(|o| {
            let mut p = o.value.clone();
            if interrupted.is_some() {
                p.state = OperationState::Failed;
                p.description = "Provisioning was cancelled by a deprovision request.".into();
            }
            if cancelled_action {
                p.state = OperationState::Failed;
                p.description = format!(
                    "{} was cancelled by a deprovision request.",
                    capitalized(p.kind.noun())
                );
                p.finished_at = Some(Timestamp::now());
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

pub(super) async fn last_operation(
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
        // Without an id: the platform's newest operation, not a dashboard action it never
        // started (those replace the current record but not the platform's view).
        None => op.last_platform().unwrap_or_else(|| op.summary()),
    };
    if summary.kind == OperationKind::Deprovision && summary.state == OperationState::Succeeded {
        return Ok(gone());
    }
    let mut body = json!({ "state": summary.state, "description": summary.description });
    // A failed update's `instance_usable` is on the current record only.
    if summary.id == op.id && summary.state == OperationState::Failed {
        if let Some(usable) = op.instance_usable {
            body["instance_usable"] = usable.into();
        }
    }
    Ok(Json(body).into_response())
}

pub(super) async fn fetch_instance(
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
        _ => {
            let attributes = restorable_window(&st, &i).await;
            Ok(Json(json!({
                "service_id": i.service_id,
                "plan_id": i.plan_id,
                "parameters": provisioned_parameters(&i),
                "dashboard_url": crate::links::dashboard_url(&st.config, &i),
                "metadata": { "attributes": attributes },
            }))
            .into_response())
        }
    }
}

/// How long `GET` waits for an archive's window before answering without it.
const WINDOW_BUDGET: std::time::Duration = std::time::Duration::from_secs(5);

/// `restorable_window: {earliest, latest, computed_at}` of the instance's archive (from the
/// cache of [`crate::windows`], at most 30 s old), or `restorable_window_error` saying why it
/// is not there: what a user needs to pick a `clone-at`.
async fn restorable_window(st: &AppState, i: &InstanceRecord) -> Value {
    let point = |p: &walarchive::window::Point| json!({ "lsn": p.lsn.to_string(), "time": p.time.map(clone::time_text) });
    match st
        .windows
        .get(&st.config, &i.repository, false, WINDOW_BUDGET)
        .await
    {
        Ok(c) => json!({ "restorable_window": {
            "earliest": point(&c.window.earliest),
            "latest": point(&c.window.latest),
            "computed_at": clone::time_text(c.computed_at),
        }}),
        Err(crate::windows::WindowError::NoBackup) => json!({
            "restorable_window_error": "The archive has no completed base backup yet."
        }),
        Err(crate::windows::WindowError::Unreadable(detail)) => {
            warn!(instance = %i.id, repository = %i.repository,
                  "cannot read an instance's restorable window: {detail}");
            json!({ "restorable_window_error": format!(
                "The archive could not be read within {} s; retry later.",
                WINDOW_BUDGET.as_secs()
            ) })
        }
    }
}

/// The parameters of an instance as provisioned (and updated): `node-count`, the
/// `postgresql-version` it runs (as the catalog's string, also when it was not sent: the
/// default, a clone's source's, 15 for instances recorded before majors), and for a clone
/// `clone-from` and `clone-at` as sent.
fn provisioned_parameters(i: &InstanceRecord) -> Value {
    let mut v = serde_json::to_value(i.parameters).expect("JSON");
    if let Value::Object(m) = &mut v {
        m.insert("postgresql-version".into(), i.major().to_string().into());
    }
    if let (Value::Object(m), Some(requested)) = (
        &mut v,
        i.restore.as_ref().and_then(|r| r.requested.as_ref()),
    ) {
        if let Value::Object(c) = serde_json::to_value(requested).expect("JSON") {
            m.extend(c);
        }
    }
    v
}
