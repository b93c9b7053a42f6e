//! What the instance page's action forms do, in Chromium, through their confirmation step:
//! a backup taken from the page is listed on it with the node that took it (the leader), and a switchover from the page changes the
//! roles the page shows (and PostgreSQL reports).
//!
//! On an instance of its own (two nodes, provisioned here through the broker's OSB API): the
//! pages' tests look at the fixture's instances meanwhile, and a switchover would change the
//! roles they compare.

use std::time::Duration;

use serde_json::{json, Value};
use testkit::broker::browser::Browser;
use testkit::broker::cells::{local_sql, wait_for};

use super::{fixture, Fixture, PLAN, SERVICE};

const ID: &str = "dash-actions";

/// Provisions `ID` (two nodes) through the OSB API and waits until it is ready.
async fn provision(f: &Fixture) {
    let (s, b) = f
        .osb(
            reqwest::Method::PUT,
            &format!("/v2/service_instances/{ID}?accepts_incomplete=true"),
            Some(json!({
                "service_id": SERVICE, "plan_id": PLAN,
                "organization_guid": "org-1", "space_guid": "space-1",
                "context": { "platform": "cloudfoundry", "instance_name": "actions" },
                "parameters": { "node-count": 2 },
            })),
        )
        .await;
    assert_eq!(s, 202, "{b}\n{}", f.log_tail(40));
    let op = b["operation"].as_str().unwrap().to_string();
    wait_for(
        "the actions' instance provisioned",
        Duration::from_secs(240),
        || async {
            let (_, b) = f
                .osb(
                    reqwest::Method::GET,
                    &format!("/v2/service_instances/{ID}/last_operation?operation={op}"),
                    None,
                )
                .await;
            match b["state"].as_str() {
                Some("succeeded") => Some(()),
                Some("failed") => panic!("provision failed: {b}\n{}", f.log_tail(60)),
                _ => None,
            }
        },
        || f.log_tail(60),
    )
    .await;
}

/// The `data-` attribute `attr` of every element matching `css`.
async fn data(b: &Browser, css: &str, attr: &str) -> Vec<String> {
    let v = b
        .js(
            "return [...document.querySelectorAll(arguments[0])].map(e => e.dataset[arguments[1]] || '');",
            vec![json!(css), json!(attr)],
        )
        .await;
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap_or_default().to_string())
        .collect()
}

/// Submits the action form `form` (after `fields`), then confirms on the confirmation page;
/// back on the instance page.
async fn act(b: &Browser, form: &str, fields: &[(&str, &str)], question: &str) {
    if !fields.is_empty() {
        b.fill(form, fields).await;
    }
    b.click(&format!("{form} button[type=submit]")).await;
    let asked = b
        .wait_for("#confirm")
        .await
        .text()
        .await
        .unwrap_or_default();
    assert!(asked.contains(question), "{asked}");
    b.click("#confirm button[type=submit]").await;
    b.wait_for("#history").await;
}

/// Reloads the page until the newest operation (the history's first row) is of `kind`, asked
/// by the operator, and no longer in progress; its row's text.
async fn newest_operation(b: &Browser, kind: &str) -> String {
    let row = b
        .wait_text("#history tbody tr", Duration::from_secs(180), |t| {
            t.starts_with(&format!("{kind} (operator)")) && !t.contains("in progress")
        })
        .await;
    if !row.contains("succeeded") {
        b.fail(format!("the {kind} did not succeed: {row}")).await;
    }
    row
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_and_switchover_from_the_instance_page() {
    let f = fixture();
    provision(f).await;
    let b = f
        .browser("backup_and_switchover_from_the_instance_page")
        .await;
    f.login(&b).await;
    let page = format!("{}/dashboard/instances/{ID}", f.base);
    b.goto(&page).await;
    b.wait_text("#nodes tbody", Duration::from_secs(60), |t| {
        t.contains("leader") && t.contains("replica")
    })
    .await;
    // The first backup (the provision's) is listed before ours.
    b.wait_text("#backups tbody", Duration::from_secs(60), |t| {
        !t.contains("No completed backup")
    })
    .await;
    let before = data(&b, "#backups tbody tr[data-backup]", "backup").await;

    // --- A backup from the page: confirmed, succeeded, listed. ---
    act(
        &b,
        "#action-backup",
        &[],
        "Take a base backup of actions now?",
    )
    .await;
    let row = newest_operation(&b, "backup").await;
    let name = row
        .rsplit(": ")
        .next()
        .expect("the description ends with the backup's name")
        .trim()
        .to_string();
    assert!(name.starts_with("base_"), "{row}");
    b.wait_text("#backups tbody", Duration::from_secs(60), |t| {
        t.contains(&name)
    })
    .await;
    let after = data(&b, "#backups tbody tr[data-backup]", "backup").await;
    assert_eq!(after.len(), before.len() + 1, "{before:?} -> {after:?}");
    // Taken on the leader, which the page names.
    let leader = data(&b, "#nodes tbody tr[data-role=leader]", "node").await;
    // (The listing may come a moment before the backup log names the node.)
    let took = b
        .wait_text(
            &format!("#backups tbody tr[data-backup=\"{name}\"] td:last-child"),
            Duration::from_secs(30),
            |t| t != "–",
        )
        .await;
    assert_eq!(vec![took], leader);
    b.screenshot("after-backup").await;

    // --- A switchover to the replica the page offers. ---
    let replica = data(&b, "#nodes tbody tr[data-role=replica]", "node").await;
    let [replica] = replica.as_slice() else {
        b.fail(format!("one replica expected: {replica:?}")).await;
    };
    act(
        &b,
        "#action-switchover",
        &[("candidate", replica.as_str())],
        &format!("Switch actions over to {replica}?"),
    )
    .await;
    newest_operation(&b, "switchover").await;
    // The page shows the roles swapped once the sampler saw them.
    b.wait_text(
        &format!("#nodes tbody tr[data-node=\"{replica}\"] td.role"),
        Duration::from_secs(60),
        |t| t == "leader",
    )
    .await;
    b.wait_text(
        &format!("#nodes tbody tr[data-node=\"{}\"] td.role", leader[0]),
        Duration::from_secs(60),
        |t| t == "replica",
    )
    .await;
    // As PostgreSQL says.
    let nodes: Value = b
        .js(
            "return [...document.querySelectorAll('#nodes tbody tr')].map(r => [r.dataset.cell, Number(r.dataset.port), r.dataset.role]);",
            vec![],
        )
        .await;
    for n in nodes.as_array().unwrap() {
        let (cell, port, role) = (
            n[0].as_str().unwrap(),
            n[1].as_u64().unwrap() as u16,
            n[2].as_str().unwrap(),
        );
        let recovery = local_sql(f.cell(cell), port, "SELECT pg_is_in_recovery()").unwrap();
        assert_eq!(
            (role, recovery.trim()),
            (role, if role == "leader" { "f" } else { "t" }),
            "node on {cell}:{port}"
        );
    }
    b.screenshot("after-switchover").await;
}
