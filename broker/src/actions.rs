//! Dashboard actions: a backup now, a switchover to a chosen replica, a new node count.
//!
//! Why operations: each is recorded like the platform's own operations (the instance's one
//! current [`OperationRecord`], the previous one going to its history), so that two never
//! run at once, a restarted broker's worker carries an action on, and the dashboard shows
//! them in the operation history with who asked. A backup and a switchover are kinds of
//! their own ([`OperationKind::Backup`], [`OperationKind::Switchover`]) that never change
//! the instance's state or plan (it stays `ready`), and that the platform never sees:
//! `last_operation` without an id keeps answering for the platform's newest operation, and
//! the history always keeps that one. A node count is exactly the update `cf update-service
//! -c '{"node-count":N}'` makes (`api::start_update`, the PATCH's own code).
//!
//! Refusals are [`ActionError`]s whose `Display` is a sentence for the person who clicked;
//! internal errors go to the log.

use serde_json::json;
use tracing::{info, warn};

use crate::api::{parse_parameters, start_update, AppState, Phase, UpdateStart};
use crate::error::ApiError;
use crate::state::{
    until_swapped, InstanceState, OperationKind, OperationRecord, OperationRequest, OperationState,
    Round, StoreError,
};

/// What the dashboard asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// A base backup on the leader now (then retention, as scheduled backups).
    Backup,
    /// A Patroni switchover to `candidate` (a node name of the instance).
    Switchover {
        /// The replica that is to lead.
        candidate: String,
    },
    /// Change the number of nodes (1 to 5): an update.
    NodeCount(u8),
}

/// Why an action was refused. `Display` is a sentence for the dashboard's user, without
/// internals (those are logged).
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    /// No such instance (or it was deleted).
    #[error("There is no such database instance.")]
    NotFound,
    /// Another operation (the platform's or an action) is in progress.
    #[error("{0} is in progress on this instance; try again when it has finished.")]
    Busy(String),
    /// The instance is not `ready` (provisioning, updating, failed, ...).
    #[error("The instance is {0}; actions are possible once it is ready.")]
    NotReady(&'static str),
    /// The switchover's candidate is not a node of the instance.
    #[error("{candidate:?} is not a node of this instance (its nodes: {nodes}).")]
    UnknownCandidate {
        /// The name asked for.
        candidate: String,
        /// The instance's nodes, comma-separated.
        nodes: String,
    },
    /// The node count is outside what the plan allows.
    #[error("{0}")]
    NodeCount(String),
    /// The instance already has that node count.
    #[error("The instance already has {0} node(s).")]
    Unchanged(u8),
    /// Refused for another reason the update gives (its sentence).
    #[error("{0}")]
    Refused(String),
    /// The state store failed (details in the log).
    #[error("The broker cannot record the action now; try again in a moment.")]
    Unavailable,
}

impl From<StoreError> for ActionError {
    fn from(e: StoreError) -> ActionError {
        warn!("dashboard action: {e}");
        ActionError::Unavailable
    }
}

impl From<ApiError> for ActionError {
    fn from(e: ApiError) -> ActionError {
        match e.error {
            "ConcurrencyError" => ActionError::Busy(
                e.description
                    .split(" is in progress")
                    .next()
                    .filter(|s| s.len() < e.description.len())
                    .unwrap_or("Another operation")
                    .to_string(),
            ),
            "NotFound" => ActionError::NotFound,
            "InvalidParameters" => ActionError::NodeCount(e.description),
            _ if e.status.is_server_error() => ActionError::Unavailable,
            _ => ActionError::Refused(e.description),
        }
    }
}

fn state_word(s: InstanceState) -> &'static str {
    match s {
        InstanceState::Provisioning => "being provisioned",
        InstanceState::Ready => "ready",
        InstanceState::Updating => "being updated",
        InstanceState::Deprovisioning => "being deprovisioned",
        InstanceState::Failed => "failed",
        InstanceState::Deleted => "deleted",
    }
}

/// Records `action` on instance `instance_id` as an operation for the worker, asked for by
/// `requested_by` (the dashboard says who: `operator` or `user`), and returns it. Refused
/// while another operation is in progress or the instance is not ready.
pub async fn request(
    state: &AppState,
    instance_id: &str,
    action: Action,
    requested_by: &str,
) -> Result<OperationRecord, ActionError> {
    let (kind, candidate) = match action {
        Action::NodeCount(n) => return node_count(state, instance_id, n, requested_by).await,
        Action::Backup => (OperationKind::Backup, None),
        Action::Switchover { candidate } => (OperationKind::Switchover, Some(candidate)),
    };
    let candidate = &candidate;
    let recorded = until_swapped((), |()| async move {
        let (inst, op) = state.store.instance_and_operation(instance_id).await?;
        let Some(inst) = inst.filter(|i| i.value.state != InstanceState::Deleted) else {
            return Err(ActionError::NotFound);
        };
        let i = &inst.value;
        if let Some(o) = op
            .as_ref()
            .filter(|o| o.value.state == OperationState::InProgress)
        {
            return Err(ActionError::Busy(capitalized(o.value.kind.noun())));
        }
        if i.state != InstanceState::Ready {
            return Err(ActionError::NotReady(state_word(i.state)));
        }
        if let Some(c) = candidate {
            if !i.nodes.iter().any(|n| &n.name == c) {
                return Err(ActionError::UnknownCandidate {
                    candidate: c.clone(),
                    nodes: i
                        .nodes
                        .iter()
                        .map(|n| n.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
        }
        let description = match (kind, candidate) {
            (OperationKind::Switchover, Some(c)) => switchover_accepted(c),
            _ => "Backup accepted; waiting for the worker.".to_string(),
        };
        let mut new_op = OperationRecord::new(
            instance_id,
            kind,
            // The instance's own plan: an action changes none of it.
            OperationRequest {
                plan_id: i.plan_id.clone(),
                parameters: i.parameters,
                node_count: i.node_count,
            },
            description,
            op.as_ref().map(|o| &o.value),
        );
        new_op.requested_by = Some(requested_by.to_string());
        new_op.candidate = candidate.clone();
        // The instance record is written back unchanged: the compare on it is what makes
        // the decision (ready, no operation in progress) stand.
        if state.store.replace(&inst, i, op.as_ref(), &new_op).await? {
            return Ok(Round::Done(new_op));
        }
        Ok::<_, ActionError>(Round::Lost(()))
    })
    .await?
    .ok_or(ActionError::Busy("Another request".into()))?;
    info!(instance = %instance_id, operation = %recorded.id, kind = ?recorded.kind,
          candidate = ?recorded.candidate, requested_by, "dashboard action accepted");
    state.wake_worker();
    Ok(recorded)
}

/// The node count: the update `cf update-service -c '{"node-count":N}'` makes.
async fn node_count(
    state: &AppState,
    instance_id: &str,
    n: u8,
    requested_by: &str,
) -> Result<OperationRecord, ActionError> {
    let (params, _) = parse_parameters(Some(&json!({ "node-count": n })), Phase::Update)?;
    // Refused like any action while something runs or the instance is not ready (the
    // update's own checks say the same in the platform's words).
    let (inst, op) = state.store.instance_and_operation(instance_id).await?;
    let Some(inst) = inst.filter(|i| i.value.state != InstanceState::Deleted) else {
        return Err(ActionError::NotFound);
    };
    if let Some(o) = op
        .as_ref()
        .filter(|o| o.value.state == OperationState::InProgress)
    {
        return Err(ActionError::Busy(capitalized(o.value.kind.noun())));
    }
    if inst.value.state != InstanceState::Ready {
        return Err(ActionError::NotReady(state_word(inst.value.state)));
    }
    // The PATCH would record `node-count` as asked even when the plan gives as many nodes;
    // a button that changes nothing is refused instead.
    if inst.value.node_count == n {
        return Err(ActionError::Unchanged(n));
    }
    match start_update(state, instance_id, None, params, true, Some(requested_by)).await? {
        UpdateStart::Accepted(op) => Ok(*op),
        UpdateStart::Unchanged => Err(ActionError::Unchanged(n)),
    }
}

/// A switchover's description from its acceptance until a worker asks Patroni for it.
pub(crate) fn switchover_accepted(candidate: &str) -> String {
    format!("Switchover to {candidate} accepted; waiting for the worker.")
}

fn capitalized(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}
