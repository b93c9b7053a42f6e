//! `walarchive-broker restorable-window` through the real binary, over the API's own state
//! in a real etcd and real repositories (the clones' fixture: a plain PostgreSQL 15 archived
//! into one): by id and by name, a name reused after a deprovision, an id re-provisioned
//! whose first archive was purged, the JSON shape, an unknown instance, and no secret in
//! what it prints.

use std::process::{Command, Output};

use serde_json::{json, Value};
use testkit::broker::audit;
use walarchive_broker::state::{Purge, Timestamp};

use super::clones::{fixture, named, Archives};
use super::{Ctx, PASSWORD};

impl Ctx {
    /// `walarchive-broker restorable-window --config <this context's> ARGS`.
    fn restorable_window(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_walarchive-broker"))
            .arg("restorable-window")
            .arg("--config")
            .arg(self.config_file())
            .args(args)
            .output()
            .unwrap()
    }

    fn restorable_window_json(&self, args: &[&str]) -> Value {
        let mut with = args.to_vec();
        with.push("--json");
        let out = self.restorable_window(&with);
        assert!(out.status.success(), "{args:?}: {out:?}");
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

#[tokio::test]
async fn restorable_window_lists_every_incarnation() {
    let a = Archives::new();
    let c = super::ctx_with(&a.base(), "");
    let f = fixture();
    for repo in ["src", "gen1", "re"] {
        a.with_backup(repo);
    }
    c.ready("src", named("old-db", None)).await;
    // A name reused after a deprovision: the deleted one has an archive, the new one none yet.
    c.deleted("gen1", named("reused", None)).await;
    c.ready("gen2", named("reused", None)).await;
    // An id re-provisioned, its first archive purged since.
    c.deleted("re", named("first-name", None)).await;
    c.ready("re", named("second-name", None)).await;
    let purged_at = Timestamp::now();
    c.store
        .update_instance("re", |r| {
            r.previous[0].purged = Some(Purge {
                at: purged_at,
                objects: 12,
                bytes: 3456,
            });
            Ok(())
        })
        .await
        .unwrap();

    // By id: the one incarnation, its window as the core reads it.
    let listed = c.restorable_window_json(&["src"]);
    let earliest_lsn = f.backup["stop_lsn"].as_str().unwrap();
    let latest_lsn = f.window["latest"]["lsn"].as_str().unwrap();
    let rows = listed.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{listed}");
    let src = &rows[0];
    assert_eq!(
        (
            &src["instance_id"],
            &src["incarnation"],
            &src["name"],
            &src["state"]
        ),
        (&json!("src"), &json!(1), &json!("old-db"), &json!("ready")),
        "{src}"
    );
    assert_eq!(src["repository"], format!("{}/src", a.base()));
    let w = &src["window"];
    assert_eq!(w["earliest"]["lsn"], earliest_lsn, "{w}");
    assert_eq!(w["earliest"]["timeline"], 1, "{w}");
    assert_eq!(w["latest"]["lsn"], latest_lsn, "{w}");
    assert_eq!(w["latest"]["time"], f.window["latest"]["time"], "{w}");
    assert_eq!(w["backups"], 1, "{w}");
    assert!(w["computed_at"].is_string(), "{w}");
    assert!(src.get("deleted_at").is_none() && src.get("note").is_none());

    // The table: a header and one line, with the same points.
    let out = c.restorable_window(&["src"]);
    assert!(out.status.success(), "{out:?}");
    let table = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "{table}");
    assert!(lines[0].starts_with("INSTANCE"), "{table}");
    assert!(
        lines[1].starts_with("src ")
            && lines[1].contains(&format!("{earliest_lsn} (timeline 1"))
            && lines[1].contains(&format!("{latest_lsn} (timeline 1")),
        "{table}"
    );

    // By name: the deleted instance of that name and the live one, oldest first.
    let listed = c.restorable_window_json(&["--org", "org-1", "--space", "space-1", "reused"]);
    let rows = listed.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{listed}");
    assert_eq!(
        (&rows[0]["instance_id"], &rows[0]["state"]),
        (&json!("gen1"), &json!("deleted")),
        "{listed}"
    );
    assert!(rows[0]["deleted_at"].is_string(), "{listed}");
    assert_eq!(rows[0]["window"]["latest"]["lsn"], latest_lsn, "{listed}");
    assert_eq!(
        (&rows[1]["instance_id"], &rows[1]["state"], &rows[1]["note"]),
        (
            &json!("gen2"),
            &json!("ready"),
            &json!("no completed base backup: nothing to restore")
        ),
        "{listed}"
    );
    assert!(rows[1].get("window").is_none(), "{listed}");
    let out = c.restorable_window(&["--org", "org-1", "--space", "space-1", "reused"]);
    let table = String::from_utf8(out.stdout).unwrap();
    assert_eq!(table.lines().count(), 3, "{table}");

    // By id, an id re-provisioned: the purged first incarnation says so, the second is live.
    let listed = c.restorable_window_json(&["re"]);
    let rows = listed.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{listed}");
    assert_eq!(
        (&rows[0]["incarnation"], &rows[0]["state"]),
        (&json!(1), &json!("purged"))
    );
    assert_eq!(rows[0]["repository"], format!("{}/re", a.base()));
    assert_eq!(rows[0]["purged"]["objects"], 12, "{listed}");
    assert!(
        rows[0]["note"].as_str().unwrap().starts_with("purged "),
        "{listed}"
    );
    assert!(rows[0].get("window").is_none(), "{listed}");
    assert_eq!(
        (&rows[1]["incarnation"], &rows[1]["state"], &rows[1]["name"]),
        (&json!(2), &json!("ready"), &json!("second-name"))
    );
    assert_eq!(rows[1]["repository"], format!("{}/re.2", a.base()));
    // And by its first name, the purged incarnation only.
    let listed = c.restorable_window_json(&["--org", "org-1", "--space", "space-1", "first-name"]);
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["state"], "purged", "{listed}");

    // Unknown: exit 1, one line; another space's name is unknown too.
    let mut outputs = Vec::new();
    for args in [
        &["nope"][..],
        &["--org", "org-1", "--space", "space-2", "reused"],
    ] {
        let out = c.restorable_window(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        assert!(out.stdout.is_empty(), "{out:?}");
        let err = String::from_utf8(out.stderr.clone()).unwrap();
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with("walarchive-broker: error: no instance "),
            "{err}"
        );
        outputs.push(out);
    }

    // No secret in anything it printed: the platform's password, the state's sealing key.
    let key = std::fs::read_to_string(c.config_file().with_file_name("password.key")).unwrap();
    let secrets: audit::Secrets = vec![
        ("platform password".into(), PASSWORD.into()),
        ("sealing key".into(), key.trim().into()),
    ];
    let mut texts = Vec::new();
    for args in [&["src"][..], &["re", "--json"]] {
        let out = c.restorable_window(args);
        texts.push((format!("{args:?} stdout"), out.stdout));
        texts.push((format!("{args:?} stderr"), out.stderr));
    }
    for out in outputs {
        texts.push(("an unknown instance's stderr".into(), out.stderr));
    }
    let texts: Vec<(String, String)> = texts
        .into_iter()
        .map(|(n, b)| (n, String::from_utf8(b).unwrap()))
        .collect();
    let found = audit::findings(
        texts.iter().map(|(n, t)| (n.clone(), t.as_str())),
        &secrets,
        |_, _| false,
    );
    assert!(found.is_empty(), "{found:?}");
}
