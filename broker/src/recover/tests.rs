use super::*;
use crate::state::{NodePlacement, OperationSummary};

fn instance(state: &str) -> InstanceRecord {
    serde_json::from_str(&format!(
        r#"{{"id":"i-1","service_id":"s","plan_id":"p","parameters":{{"node-count":2}},
        "node_count":2,"context":{{"organization_guid":"o","space_guid":"sp","instance_name":"db","raw":null}},
        "port":40001,"repository":"file:///r/i-1.2","incarnation":2,"state":"{state}","nodes":[],
        "created_at":"2026-12-01T09:00:00.000Z","updated_at":"2026-12-01T09:00:00.000Z"}}"#
    ))
    .unwrap()
}

fn with_nodes(mut i: InstanceRecord) -> InstanceRecord {
    for (n, cell) in [("i-1-a", "z1"), ("i-1-b", "z2")] {
        i.nodes.push(NodePlacement {
            name: n.into(),
            cell: cell.into(),
            zone: cell.into(),
            pg_port: 20001,
            api_port: 20002,
        });
    }
    i
}

fn operation(kind: OperationKind, state: OperationState) -> OperationRecord {
    let mut op = OperationRecord::new(
        "i-1",
        kind,
        OperationRequest {
            plan_id: "p2".into(),
            parameters: Default::default(),
            node_count: 3,
        },
        "working",
        None,
    );
    op.state = state;
    op
}

#[test]
fn a_live_instance_provisions_again_from_its_own_repository() {
    let now = Timestamp::now();
    let before = with_nodes(instance("ready"));
    let op = operation(OperationKind::Provision, OperationState::Succeeded);
    let (action, after, new_op) = recovered(before.clone(), Some(op.clone()), now);
    assert_eq!(action, Action::Recover);
    assert!(after.nodes.is_empty(), "nodes cleared");
    assert_eq!(after.state, InstanceState::Provisioning);
    assert_eq!(after.port, before.port);
    assert_eq!(after.updated_at, now);
    let r = after.restore.as_ref().unwrap();
    assert_eq!(r.kind, RestoreKind::Recover);
    assert_eq!(
        r.source,
        SourceRef {
            instance_id: "i-1".into(),
            incarnation: 2,
            name: Some("db".into()),
            repository: "file:///r/i-1.2".into(),
            deleted_at: None,
        }
    );
    assert_eq!((r.requested.as_ref(), r.resolved.as_ref()), (None, None));
    let new_op = new_op.unwrap();
    assert_ne!(new_op.id, op.id);
    assert_eq!(new_op.kind, OperationKind::Provision);
    assert_eq!(new_op.state, OperationState::InProgress);
    assert_eq!(new_op.description, RECOVERING);
    // The instance's own plan, not the last operation's.
    assert_eq!(
        (new_op.request.plan_id.as_str(), new_op.request.node_count),
        ("p", 2)
    );
    assert_eq!(new_op.history.last(), Some(&op.summary()));
}

#[test]
fn an_update_in_progress_ends_failed_in_the_history() {
    let now = Timestamp::now();
    let op = operation(OperationKind::Update, OperationState::InProgress);
    let (action, after, new_op) =
        recovered(with_nodes(instance("updating")), Some(op.clone()), now);
    assert_eq!(action, Action::Recover);
    assert_eq!(after.state, InstanceState::Provisioning);
    let new_op = new_op.unwrap();
    assert_eq!(
        new_op.find(&op.id),
        Some(OperationSummary {
            id: op.id.clone(),
            kind: OperationKind::Update,
            state: OperationState::Failed,
            description: UPDATE_INTERRUPTED.into(),
            started_at: Some(op.started_at),
            finished_at: Some(now),
            requested_by: None,
        })
    );
}

#[test]
fn a_dashboard_action_in_progress_ends_failed_in_the_history() {
    let now = Timestamp::now();
    let mut op = operation(OperationKind::Backup, OperationState::InProgress);
    op.requested_by = Some("operator".into());
    let (action, after, new_op) = recovered(with_nodes(instance("ready")), Some(op.clone()), now);
    assert_eq!(action, Action::Recover);
    assert_eq!(after.state, InstanceState::Provisioning);
    let new_op = new_op.unwrap();
    let ended = new_op.find(&op.id).unwrap();
    assert_eq!(
        (ended.state, ended.description.as_str(), ended.finished_at),
        (OperationState::Failed, ACTION_INTERRUPTED, Some(now))
    );
    assert_eq!(ended.requested_by.as_deref(), Some("operator"));
    assert_eq!(new_op.instance_usable, None);
}

#[test]
fn operations_in_progress_keep_their_ids_and_start_again() {
    let now = Timestamp::now();
    for (state, kind, action, description) in [
        (
            "provisioning",
            OperationKind::Provision,
            Action::ProvisionAgain,
            PROVISION_AGAIN,
        ),
        (
            "deprovisioning",
            OperationKind::Deprovision,
            Action::DeprovisionAgain,
            DEPROVISION_AGAIN,
        ),
    ] {
        let op = operation(kind, OperationState::InProgress);
        let (a, after, new_op) = recovered(with_nodes(instance(state)), Some(op.clone()), now);
        assert_eq!(a, action);
        assert!(after.nodes.is_empty());
        assert_eq!(after.restore, None, "no recovery of its own");
        let new_op = new_op.unwrap();
        assert_eq!((new_op.id.as_str(), new_op.kind), (op.id.as_str(), kind));
        assert_eq!(new_op.state, OperationState::InProgress);
        assert_eq!(new_op.description, description);
    }
}

#[test]
fn tombstones_and_failed_instances_stay_as_they_were() {
    let now = Timestamp::now();
    for (state, action) in [
        ("deleted", Action::KeepDeleted),
        ("failed", Action::KeepFailed),
    ] {
        let before = instance(state);
        let op = operation(OperationKind::Deprovision, OperationState::Failed);
        let (a, after, new_op) = recovered(before.clone(), Some(op.clone()), now);
        assert_eq!(a, action);
        assert_eq!(after, before, "unchanged, so written byte for byte");
        assert_eq!(new_op, Some(op));
    }
    // A failed instance that had nodes loses them, and nothing else.
    let (_, after, _) = recovered(with_nodes(instance("failed")), None, now);
    assert_eq!(after.state, InstanceState::Failed);
    assert!(after.nodes.is_empty());
}
