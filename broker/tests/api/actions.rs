//! The dashboard's actions (`walarchive_broker::actions::request`) against the API's own
//! records in a real etcd, the worker played through the store: when they are refused, that
//! a backup or a switchover never changes the instance's state or plan, that the platform's
//! `last_operation` keeps answering for its own operations however many actions follow, that
//! the node count is the platform's update, and that a deprovision cancels an action.

use axum::http::{Method, StatusCode};
use serde_json::json;
use walarchive_broker::actions::{request, Action, ActionError};
use walarchive_broker::state::{
    InstanceState, NodePlacement, OperationKind, OperationState, HISTORY,
};

use super::{ctx, provision_body, PLAN2, SERVICE};

fn switchover(to: &str) -> Action {
    Action::Switchover {
        candidate: to.into(),
    }
}

#[tokio::test]
async fn actions_are_operations_the_platform_does_not_see() {
    let c = ctx();
    let id = "act-1";
    let r = c.provision(id, provision_body(PLAN2, None), true).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let provision = r.body["operation"].as_str().unwrap().to_string();
    let e = request(&c.state, id, Action::Backup, "operator")
        .await
        .unwrap_err();
    assert!(matches!(e, ActionError::Busy(_)), "{e:?}");
    assert_eq!(
        e.to_string(),
        "A provision is in progress on this instance; try again when it has finished."
    );
    c.finish(id, true, "ready").await;
    c.store
        .update_instance(id, |i| {
            i.nodes = ["n0", "n1"]
                .iter()
                .map(|n| NodePlacement {
                    name: n.to_string(),
                    cell: "a".into(),
                    zone: "z".into(),
                    pg_port: 1,
                    api_port: 2,
                })
                .collect();
            Ok(())
        })
        .await
        .unwrap();
    let before = c.store.instance(id).await.unwrap().unwrap().value;
    assert!(matches!(
        request(&c.state, "nosuch", Action::Backup, "operator").await,
        Err(ActionError::NotFound)
    ));
    let e = request(&c.state, id, switchover("n9"), "operator")
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "\"n9\" is not a node of this instance (its nodes: n0, n1)."
    );

    // A backup: in progress, the instance untouched; everything else refused meanwhile.
    let backup = request(&c.state, id, Action::Backup, "operator")
        .await
        .unwrap();
    assert_eq!(
        (backup.kind, backup.requested_by.as_deref()),
        (OperationKind::Backup, Some("operator"))
    );
    let inst = c.store.instance(id).await.unwrap().unwrap().value;
    assert_eq!(
        (inst.state, &inst.plan_id, inst.node_count),
        (InstanceState::Ready, &before.plan_id, before.node_count)
    );
    for action in [Action::Backup, switchover("n1"), Action::NodeCount(3)] {
        let e = request(&c.state, id, action, "user").await.unwrap_err();
        assert!(matches!(e, ActionError::Busy(_)), "{e:?}");
    }
    let r = c
        .call(
            Method::PATCH,
            &format!("/v2/service_instances/{id}?accepts_incomplete=true"),
            Some(json!({"service_id": SERVICE, "parameters": {"node-count": 3}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert_eq!(r.body["error"], "ConcurrencyError");
    // The platform sees its provision (with its id or without one), not the backup.
    for op in [Some(provision.as_str()), None] {
        let r = c.last_op(id, op).await;
        assert_eq!(
            (
                r.status,
                r.body["state"].as_str(),
                r.body["description"].as_str()
            ),
            (StatusCode::OK, Some("succeeded"), Some("ready")),
            "{op:?}"
        );
    }
    c.finish(id, true, "Base backup taken on n0: base_1").await;
    let inst = c.store.instance(id).await.unwrap().unwrap().value;
    assert_eq!(inst.state, InstanceState::Ready);

    // The node count is the platform's update, made on the dashboard.
    let e = request(&c.state, id, Action::NodeCount(0), "user")
        .await
        .unwrap_err();
    assert!(matches!(e, ActionError::NodeCount(_)), "{e:?}");
    assert!(matches!(
        request(&c.state, id, Action::NodeCount(2), "user").await,
        Err(ActionError::Unchanged(2))
    ));
    let grow = request(&c.state, id, Action::NodeCount(3), "user")
        .await
        .unwrap();
    assert_eq!(
        (
            grow.kind,
            grow.request.node_count,
            grow.requested_by.as_deref()
        ),
        (OperationKind::Update, 3, Some("user"))
    );
    let inst = c.store.instance(id).await.unwrap().unwrap().value;
    assert_eq!(inst.state, InstanceState::Updating);
    let e = request(&c.state, id, Action::Backup, "user")
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "An update is in progress on this instance; try again when it has finished."
    );
    c.finish(id, true, "3 nodes").await;
    assert_eq!(
        c.store
            .instance(id)
            .await
            .unwrap()
            .unwrap()
            .value
            .node_count,
        3
    );

    // More actions than the history holds: the platform's newest operation (the update)
    // stays in it, the provision falls out like any other.
    for _ in 0..HISTORY + 2 {
        request(&c.state, id, switchover("n1"), "operator")
            .await
            .unwrap();
        c.finish(id, true, "Switched over: n1 is the leader.").await;
    }
    let op = c.store.operation(id).await.unwrap().unwrap().value;
    assert_eq!(op.history.len(), HISTORY);
    let r = c.last_op(id, Some(&grow.id)).await;
    assert_eq!(
        (r.status, r.body["state"].as_str()),
        (StatusCode::OK, Some("succeeded")),
        "{}",
        r.body
    );
    let r = c.last_op(id, None).await;
    assert_eq!(r.body["description"], "3 nodes", "{}", r.body);
    assert!(op
        .history
        .iter()
        .all(|h| h.started_at.is_some() && h.finished_at.is_some()));

    // A deprovision cancels an action in progress.
    let backup = request(&c.state, id, Action::Backup, "operator")
        .await
        .unwrap();
    let r = c.deprovision(id, true).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let op = c.store.operation(id).await.unwrap().unwrap().value;
    let cancelled = op.find(&backup.id).unwrap();
    assert_eq!(
        (cancelled.state, cancelled.description.as_str()),
        (
            OperationState::Failed,
            "A backup was cancelled by a deprovision request."
        )
    );
    assert!(cancelled.finished_at.is_some());
    let e = request(&c.state, id, Action::Backup, "operator")
        .await
        .unwrap_err();
    assert!(matches!(e, ActionError::Busy(_)), "{e:?}");
}
