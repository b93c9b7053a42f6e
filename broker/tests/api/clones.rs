//! Provisions with `clone-from`: every refusal before the `202` (with nothing written to
//! etcd), the identical answer for an instance of another organization whether it exists or
//! not, which incarnation a name or an id designates, and the `202`'s `metadata` (the worker
//! building clones is tested in `broker/tests/clones.rs`). Sources' archives are real repositories on a local
//! directory; the one with a completed base backup is made by a plain PostgreSQL archiving
//! into it, and copied where another source needs one.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use base64::Engine as _;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use super::{basic, ctx_with, provision_body, Ctx, PASSWORD, PLAN1, PLAN2, SERVICE};
use walarchive_broker::state::{
    InstanceContext, InstanceRecord, InstanceState, OperationKind, OperationRecord,
    OperationRequest, Parameters, ResolvedTarget, TargetSpec, Timestamp,
};

/// The source archive every test copies: what PostgreSQL said while writing it.
pub(super) struct Fixture {
    _dir: testkit::TestDir,
    /// The repository's directory.
    path: PathBuf,
    /// `backup-push --json` of its one base backup.
    pub(super) backup: Value,
    /// The commit time of rows 1..=ROWS (`pg_xact_commit_timestamp`), as PostgreSQL gave it.
    commits: Vec<chrono::DateTime<chrono::Utc>>,
    /// `pg_current_wal_insert_lsn()` after each row's commit.
    lsn_after: Vec<String>,
    /// What `pg_create_restore_point('before')` returned (after row 4).
    before: String,
    /// `walarchive restorable-window --json` of the repository (the core's reading).
    pub(super) window: Value,
}

const ROWS: usize = 6;

/// A repository with a completed base backup, then rows 1..=6 committed one transaction
/// each, a restore point `before` after row 4, and everything archived; made once per test
/// binary by a plain PostgreSQL (commit timestamps on, no autovacuum: nothing commits after
/// row 6).
pub(super) fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = testkit::TestDir::new_postgres("walarchive-clone-src-");
        let repo = testkit::Repo {
            url: format!("file://{}/repo", dir.path().display()),
            env: vec![],
            dir: None,
        };
        let pg = repo.start_primary(testkit::PgOptions {
            extra_conf: "track_commit_timestamp = on\nautovacuum = off\n".into(),
            ..Default::default()
        });
        pg.psql("CREATE TABLE t AS SELECT 1 AS x; CREATE TABLE seq (n int)");
        let backup = repo.backup_push(&pg, &[]);
        let mut lsn_after = Vec::new();
        let mut before = String::new();
        for n in 1..=ROWS {
            pg.psql(&format!("INSERT INTO seq VALUES ({n})"));
            lsn_after.push(pg.psql("SELECT pg_current_wal_insert_lsn()"));
            if n == 4 {
                before = pg.psql("SELECT pg_create_restore_point('before')");
            }
        }
        let commits = pg
            .psql(
                "SELECT to_char(pg_xact_commit_timestamp(xmin) AT TIME ZONE 'UTC', \
                 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') FROM seq ORDER BY n",
            )
            .lines()
            .map(|l| chrono::DateTime::parse_from_rfc3339(l).unwrap().to_utc())
            .collect::<Vec<_>>();
        assert_eq!(commits.len(), ROWS);
        let end = pg.psql("SELECT pg_switch_wal()");
        let last = pg.psql(&format!("SELECT pg_walfile_name('{end}')"));
        pg.wait_archived(&last, Duration::from_secs(120));
        pg.stop();
        let out = repo.run(&["restorable-window", "--json"]);
        let window = serde_json::from_slice(&testkit::assert_success(&out).stdout).unwrap();
        let path = dir.path().join("repo");
        Fixture {
            _dir: dir,
            path,
            backup,
            commits,
            lsn_after,
            before,
            window,
        }
    })
}

/// A repository with a completed base backup, made once per test binary: its directory.
fn archive_with_backup() -> &'static Path {
    &fixture().path
}

/// An LSN's value.
fn lsn(s: &str) -> u64 {
    let (hi, lo) = s.split_once('/').unwrap();
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

/// A base directory for repositories, and puts a copy of the archive with a backup at
/// `<base>/<name>`.
pub(super) struct Archives {
    dir: testkit::TestDir,
}

impl Archives {
    pub(super) fn new() -> Archives {
        Archives {
            dir: testkit::TestDir::new_postgres("walarchive-clone-base-"),
        }
    }

    pub(super) fn base(&self) -> String {
        format!("file://{}", self.dir.path().display())
    }

    /// The instance (plain) id `name`'s repository gets a completed base backup.
    pub(super) fn with_backup(&self, name: &str) {
        let out = std::process::Command::new("cp")
            .arg("-a")
            .arg(archive_with_backup())
            .arg(self.dir.path().join(name))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
}

fn body_in(org: &str, space: &str, name: &str, parameters: Option<Value>) -> Value {
    let mut b = provision_body(PLAN1, parameters);
    b["organization_guid"] = json!(org);
    b["space_guid"] = json!(space);
    b["context"]["organization_guid"] = json!(org);
    b["context"]["space_guid"] = json!(space);
    b["context"]["instance_name"] = json!(name);
    b
}

pub(super) fn named(name: &str, parameters: Option<Value>) -> Value {
    body_in("org-1", "space-1", name, parameters)
}

fn clone_of(from: &str, at: Option<Value>) -> Value {
    let mut p = json!({ "clone-from": from });
    if let Some(at) = at {
        p["clone-at"] = at;
    }
    named("the-clone", Some(p))
}

impl Ctx {
    /// Every key under the broker's prefix with its value and revision.
    async fn etcd_state(&self) -> Vec<(String, Vec<u8>, i64)> {
        self.store
            .etcd()
            .get_prefix(self.store.prefix().as_bytes())
            .await
            .unwrap()
            .into_iter()
            .map(|kv| (kv.key_str(), kv.value.clone(), kv.mod_revision))
            .collect()
    }

    /// Provisions `id` with `body` and plays the worker until it is ready.
    pub(super) async fn ready(&self, id: &str, body: Value) {
        let r = self.provision(id, body, true).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
        self.finish(id, true, "ready").await;
    }

    /// [`Ctx::ready`], then deprovisions it.
    pub(super) async fn deleted(&self, id: &str, body: Value) {
        self.ready(id, body).await;
        assert_eq!(
            self.deprovision(id, true).await.status,
            StatusCode::ACCEPTED
        );
        self.finish(id, true, "deleted").await;
    }

    /// A provision's status and body bytes, as sent, with an Originating-Identity header
    /// for `user` if given.
    async fn provision_bytes(
        &self,
        id: &str,
        body: &Value,
        user: Option<&str>,
    ) -> (StatusCode, Vec<u8>) {
        let mut b = Request::builder()
            .method(Method::PUT)
            .uri(format!(
                "/v2/service_instances/{id}?accepts_incomplete=true"
            ))
            .header(header::AUTHORIZATION, basic("platform", PASSWORD))
            .header("X-Broker-API-Version", "2.17");
        if let Some(u) = user {
            let v = base64::engine::general_purpose::STANDARD
                .encode(json!({ "user_id": u }).to_string());
            b = b.header(
                "X-Broker-API-Originating-Identity",
                format!("cloudfoundry {v}"),
            );
        }
        let resp = self
            .app
            .clone()
            .oneshot(b.body(Body::from(body.to_string())).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        (status, bytes)
    }

    /// Asserts that provisioning `id` with `body` is refused with a 400 `InvalidParameters`
    /// saying `description`, and that nothing changed in etcd.
    async fn refused(&self, id: &str, body: Value, description: &str) {
        let before = self.etcd_state().await;
        let r = self.provision(id, body.clone(), true).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.body);
        assert_eq!(r.body["error"], "InvalidParameters", "{body}");
        assert_eq!(r.body["description"], description, "{body}");
        assert_eq!(self.etcd_state().await, before, "{body}: etcd changed");
    }
}

#[tokio::test]
async fn clone_refusals_change_nothing() {
    let a = Archives::new();
    let c = ctx_with(&a.base(), "");
    a.with_backup("src");
    c.ready("src", named("old-db", None)).await;
    c.ready("nobackup", named("empty-db", None)).await;
    let r = c.provision("busy", named("busy-db", None), true).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    c.deleted("gone", named("gone-db", None)).await;
    c.ready("twin-1", named("twin", None)).await;
    c.ready("twin-2", named("twin", None)).await;
    // "src-alias" is the name of one instance and the id of another.
    c.ready("src-alias", named("x-db", None)).await;
    c.ready("other", named("src-alias", None)).await;
    // An instance of another service (written as an older broker's catalog could have).
    let now = Timestamp::now();
    let alien = InstanceRecord {
        id: "alien".into(),
        service_id: "another-service".into(),
        plan_id: "p".into(),
        parameters: Parameters::default(),
        node_count: 1,
        context: InstanceContext {
            organization_guid: "org-1".into(),
            space_guid: "space-1".into(),
            instance_name: Some("alien-db".into()),
            platform: None,
            raw: Value::Null,
        },
        port: 0,
        read_only_port: None,
        path_name: Some("alien".into()),
        repository: format!("{}/alien", a.base()),
        incarnation: 1,
        previous: vec![],
        last_backup_at: None,
        state: InstanceState::Ready,
        nodes: vec![],
        created_at: now,
        updated_at: now,
        deleted_at: None,
        restore: None,
        purging: None,
        purged: None,
        final_lsn: None,
        dashboard_generation: 0,
        postgresql_major: None,
    };
    let op = OperationRecord::new(
        "alien",
        OperationKind::Provision,
        OperationRequest {
            plan_id: "p".into(),
            parameters: Parameters::default(),
            node_count: 1,
        },
        "x",
        None,
    );
    c.store
        .create_instance(alien, op, 40005..=40009)
        .await
        .unwrap();

    let at_msg = |v: &str| {
        format!("clone-at must be an RFC 3339 time with a zone (2026-12-07T10:15:00Z), an LSN (0/3000060) or {{\"restore-point\": \"NAME\"}}, not {v}.")
    };
    let cases: Vec<(Value, String)> = vec![
        (
            named("n", Some(json!({ "clone-from": 42 }))),
            "clone-from must be the name or instance id of a service instance, not 42.".into(),
        ),
        (clone_of("old-db", Some(json!("yesterday"))), at_msg("\"yesterday\"")),
        (
            named("n", Some(json!({ "clone-at": "0/3000060" }))),
            "clone-at needs clone-from.".into(),
        ),
        (
            named("n", Some(json!({ "clone-from": "old-db", "node-count": 9 }))),
            "node-count must be an integer from 1 to 5, not 9.".into(),
        ),
        (
            clone_of("no-such-db", None),
            "clone-from \"no-such-db\": no such instance in this space (by name) or organization (by id).".into(),
        ),
        (
            clone_of("twin", None),
            "clone-from \"twin\" names 2 existing instances in this space (ids twin-1, twin-2); give the instance id.".into(),
        ),
        (
            clone_of("src-alias", None),
            "clone-from \"src-alias\" is the name of instance other in this space and the id of another instance; give the id of the one to copy.".into(),
        ),
        (
            clone_of("alien-db", None),
            "clone-from \"alien-db\" is an instance of another service; a clone must be of the same service.".into(),
        ),
        (
            clone_of("busy-db", None),
            "busy-db is still being created; clone it once its creation has succeeded.".into(),
        ),
        (
            clone_of("empty-db", None),
            "empty-db has no completed base backup yet; it can be cloned once its first backup is taken.".into(),
        ),
        (
            clone_of("gone-db", None),
            "gone-db never completed a base backup; it cannot be cloned.".into(),
        ),
        (
            clone_of("old-db", Some(json!("2999-01-01T00:00:00+01:00"))),
            "clone-at 2998-12-31T23:00:00Z is in the future (the broker's clock says ".into(),
        ),
    ];
    for (body, description) in cases {
        if description.ends_with("says ") {
            // The clock's reading is not known in advance: check the start, then nothing changed.
            let before = c.etcd_state().await;
            let r = c.provision("new", body.clone(), true).await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
            assert_eq!(r.body["error"], "InvalidParameters");
            let d = r.body["description"].as_str().unwrap();
            assert!(d.starts_with(&description) && d.ends_with("Z)."), "{d}");
            assert_eq!(c.etcd_state().await, before);
            continue;
        }
        c.refused("new", body, &description).await;
    }
    // Updates never take clone parameters.
    let before = c.etcd_state().await;
    let r = c
        .call(
            Method::PATCH,
            "/v2/service_instances/src?accepts_incomplete=true",
            Some(json!({ "service_id": SERVICE, "parameters": { "clone-from": "old-db" } })),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert_eq!(
        r.body["description"],
        "clone-from and clone-at are accepted at creation only."
    );
    assert_eq!(c.etcd_state().await, before);
    // The same source, refused above only for what was asked, is accepted.
    let r = c.provision("new", clone_of("old-db", None), true).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
}

/// An instance id of another organization gives, byte for byte, the answer an id that
/// exists nowhere gives, unless the platform user may clone across organizations.
#[tokio::test]
async fn another_organizations_instances_are_not_seen() {
    let a = Archives::new();
    let c = ctx_with(
        &a.base(),
        "[clones]\ncross_organization_users = [\"u-admin\"]\n",
    );
    a.with_backup("foreign");
    let body = |from: &str| named("the-clone", Some(json!({ "clone-from": from })));
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).unwrap();
    // The id before it exists anywhere, then once it exists in another organization.
    let (s1, unknown) = c
        .provision_bytes("new", &body("foreign"), Some("u-1"))
        .await;
    c.ready("foreign", body_in("org-2", "space-9", "their-db", None))
        .await;
    let before = c.etcd_state().await;
    let (s2, foreign) = c
        .provision_bytes("new", &body("foreign"), Some("u-1"))
        .await;
    assert_eq!((s1, s2), (StatusCode::BAD_REQUEST, StatusCode::BAD_REQUEST));
    assert_eq!(text(&foreign), text(&unknown));
    assert_eq!(
        text(&unknown),
        r#"{"description":"clone-from \"foreign\": no such instance in this space (by name) or organization (by id).","error":"InvalidParameters"}"#
    );
    // By its name in its own space: not found in this space either.
    let (_, by_name) = c.provision_bytes("new", &body("their-db"), None).await;
    assert!(
        text(&by_name).contains("no such instance"),
        "{}",
        text(&by_name)
    );
    assert_eq!(c.etcd_state().await, before);
    // A user the operator allowed may clone it by id.
    let (s, ok) = c
        .provision_bytes("new", &body("foreign"), Some("u-admin"))
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{}", text(&ok));
}

/// A name designates the live instance of that name, else the newest deleted one; an id
/// designates the id's newest incarnation; the 202 says which, and the first description.
#[tokio::test]
async fn the_incarnation_a_name_or_an_id_designates() {
    let a = Archives::new();
    let c = ctx_with(&a.base(), "");
    for repo in ["gen1", "gen2", "gen3", "re", "re.2"] {
        a.with_backup(repo);
    }
    c.deleted("gen1", named("reused", None)).await;
    c.deleted("gen2", named("reused", None)).await;
    let clone_of_reused = |at: Option<Value>| clone_of("reused", at);
    let at_lsn = fixture().lsn_after[1].as_str();
    // Both deleted: the newer.
    let r = c
        .provision("c1", clone_of_reused(Some(json!(at_lsn))), true)
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let gen2 = c.store.instance("gen2").await.unwrap().unwrap().value;
    let of = &r.body["metadata"]["attributes"]["clone_of"];
    assert_eq!(of["instance_id"], "gen2", "{of}");
    assert_eq!(of["incarnation"], 1);
    assert_eq!(of["name"], "reused");
    assert_eq!(of["at"]["lsn"], at_lsn);
    let said = chrono::DateTime::parse_from_rfc3339(of["deleted_at"].as_str().unwrap()).unwrap();
    assert_eq!(said, gen2.deleted_at.unwrap().0);
    let first = c.last_op("c1", None).await;
    let d = first.body["description"].as_str().unwrap();
    assert!(
        d.starts_with("Clone of reused (instance gen2, deleted 20")
            && d.ends_with(&format!(") at LSN {at_lsn} accepted.")),
        "{d}"
    );
    // The record keeps the request as sent, and the source it resolved to.
    let rec = c.store.instance("c1").await.unwrap().unwrap().value;
    let restore = rec.restore.unwrap();
    assert_eq!(restore.source.repository, format!("{}/gen2", a.base()));
    assert_eq!(
        serde_json::to_value(restore.requested.unwrap()).unwrap(),
        json!({ "clone-from": "reused", "clone-at": at_lsn })
    );
    // A live one of that name wins over the deleted ones.
    c.ready("gen3", named("reused", None)).await;
    let r = c.provision("c2", clone_of_reused(None), true).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let of = &r.body["metadata"]["attributes"]["clone_of"];
    assert_eq!(
        (&of["instance_id"], &of["deleted_at"]),
        (&json!("gen3"), &Value::Null)
    );
    assert_eq!(
        c.last_op("c2", None).await.body["description"],
        "Clone of reused (instance gen3) at the latest archived point accepted."
    );

    // An id re-provisioned under another name: by id its newest incarnation, by its old name
    // the earlier one, in its own repository.
    c.deleted("re", named("first-name", None)).await;
    c.ready("re", named("second-name", None)).await;
    let r = c.provision("c3", clone_of("re", None), true).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let of = &r.body["metadata"]["attributes"]["clone_of"];
    assert_eq!(
        (&of["instance_id"], &of["incarnation"]),
        (&json!("re"), &json!(2))
    );
    let r = c
        .provision(
            "c4",
            clone_of("first-name", Some(json!({ "restore-point": "before" }))),
            true,
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let of = &r.body["metadata"]["attributes"]["clone_of"];
    assert_eq!(
        (&of["instance_id"], &of["incarnation"]),
        (&json!("re"), &json!(1))
    );
    assert!(of["deleted_at"].is_string(), "{of}");
    assert_eq!(of["at"]["restore_point"], "before");
    let rec = c.store.instance("c4").await.unwrap().unwrap().value;
    assert_eq!(
        rec.restore.unwrap().source.repository,
        format!("{}/re", a.base())
    );
}

/// A re-sent identical clone provision gets the same 202 (with its metadata); a different
/// one a 409; once provisioned, GET returns the parameters as sent.
#[tokio::test]
async fn a_clone_provision_is_idempotent_and_retrievable() {
    let a = Archives::new();
    let c = ctx_with(&a.base(), "");
    a.with_backup("src");
    c.ready("src", named("old-db", None)).await;
    // Between rows 2 and 3: the clone holds row 2, committed at `commits[1]`.
    let f = fixture();
    let at = f.commits[1] + (f.commits[2] - f.commits[1]) / 2;
    let at = at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let params = json!({ "clone-from": "old-db", "clone-at": at, "node-count": 2 });
    let body = named("the-clone", Some(params.clone()));
    let r1 = c.provision("c", body.clone(), true).await;
    assert_eq!(r1.status, StatusCode::ACCEPTED, "{}", r1.body);
    let r2 = c.provision("c", body.clone(), true).await;
    assert_eq!(r2.status, StatusCode::ACCEPTED, "{}", r2.body);
    assert_eq!(r1.body, r2.body);
    assert_eq!(
        r1.body["metadata"]["attributes"]["clone_of"]["at"]["time"],
        api_time(f.commits[1])
    );
    let mut other = body.clone();
    other["parameters"]["clone-at"] = json!(api_time(f.commits[1]));
    assert_eq!(
        c.provision("c", other, true).await.status,
        StatusCode::CONFLICT
    );
    let mut plain = body.clone();
    plain["parameters"] = json!({ "node-count": 2 });
    assert_eq!(
        c.provision("c", plain, true).await.status,
        StatusCode::CONFLICT
    );
    c.finish("c", true, "ready").await;
    let r = c.call(Method::GET, "/v2/service_instances/c", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // As sent, and the major it runs: its source's (provisioned with the default, 18).
    let mut shown = params.clone();
    shown["postgresql-version"] = json!("18");
    assert_eq!(r.body["parameters"], shown);
    // An ha plan may clone a single source.
    let r = c
        .provision(
            "c-ha",
            {
                let mut b = provision_body(PLAN2, Some(json!({ "clone-from": "src" })));
                b["context"]["instance_name"] = json!("ha-clone");
                b
            },
            true,
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
}

/// Every file under `dir` (relative path) with its bytes.
fn files(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut std::collections::BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// The API's form of a time: RFC 3339 UTC to the millisecond, without trailing zeros.
fn api_time(t: chrono::DateTime<chrono::Utc>) -> String {
    let s = t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let (whole, frac) = s.strip_suffix('Z').unwrap().split_once('.').unwrap();
    let frac = frac.trim_end_matches('0');
    if frac.is_empty() {
        format!("{whole}Z")
    } else {
        format!("{whole}.{frac}Z")
    }
}

/// Design §3: once `keep_deleted` has passed, the worker deletes every object of a deleted
/// incarnation's archive but its descriptor and records the purge on the incarnation and its
/// catalog entry; the live incarnation of the same id and a neighbour whose name extends the
/// purged one's are untouched; a clone still restoring from an archive holds its purge off
/// (while new clones of it are refused); afterwards a clone by name or by id is refused with
/// the purge's date.
#[tokio::test]
async fn deleted_archives_are_purged_after_keep_deleted() {
    use walarchive::repo::DESCRIPTOR_KEY;
    use walarchive_broker::state::ClaimKind;
    let a = Archives::new();
    let c = super::ctx_with_repository(
        &a.base(),
        "keep_deleted = \"1s\"\nkeep_deleted_minimum = \"1s\"",
        &format!(
            "walarchive = \"{}\"\n[worker]\npoll_interval = \"1s\"",
            testkit::walarchive_bin().display()
        ),
    );
    for repo in ["gone", "old", "old.2", "old2"] {
        a.with_backup(repo);
    }
    let dir = |r: &str| a.dir.path().join(r);
    c.deleted("gone", named("gone-db", None)).await;
    c.deleted("old", named("first-name", None)).await;
    c.ready("old", named("second-name", None)).await;
    c.ready("old2", named("neighbour", None)).await;
    // A clone of gone-db that another broker's worker is restoring.
    let r = c.provision("cl", clone_of("gone-db", None), true).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    assert!(c
        .store
        .claim(
            "cl",
            ClaimKind::Operations,
            "another-broker",
            Duration::from_secs(300)
        )
        .await
        .unwrap());
    let before: Vec<_> = ["gone", "old", "old.2", "old2"]
        .iter()
        .map(|r| files(&dir(r)))
        .collect();
    let only_descriptor = |f: &std::collections::BTreeMap<String, Vec<u8>>| {
        f.keys().map(String::as_str).collect::<Vec<_>>() == [DESCRIPTOR_KEY]
    };
    let counts = |f: &std::collections::BTreeMap<String, Vec<u8>>| {
        let objects: Vec<_> = f.iter().filter(|(k, _)| *k != DESCRIPTOR_KEY).collect();
        (
            objects.len() as u64,
            objects.iter().map(|(_, v)| v.len() as u64).sum::<u64>(),
        )
    };
    assert!(counts(&before[0]).0 > 1 && counts(&before[1]).0 > 1);

    let worker = walarchive_broker::Worker::new(
        c.state.config.clone(),
        c.store.clone(),
        c.state.provisioner.clone(),
    )
    .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(worker.run(async move {
        let _ = stopped.await;
    }));
    let record = |id: &'static str| {
        let store = c.store.clone();
        async move { store.instance(id).await.unwrap().unwrap().value }
    };
    // Incarnation 1 of "old" goes (in the same sweep, after "gone" was marked and held).
    let mut old = record("old").await;
    for _ in 0..300 {
        if old.previous[0].purged.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        old = record("old").await;
    }
    let old_purge = old.previous[0]
        .purged
        .clone()
        .expect("old incarnation purged");
    assert_eq!((old_purge.objects, old_purge.bytes), counts(&before[1]));
    assert!(
        only_descriptor(&files(&dir("old"))),
        "{:?}",
        files(&dir("old")).keys()
    );
    assert_eq!(old.previous[0].purging, None);
    assert_eq!((old.purging.as_ref(), old.purged.as_ref()), (None, None));

    // "gone" is held off by the restore, marked: its objects stay, new clones are refused.
    let gone = record("gone").await;
    let since = gone.purging.expect("marked purging");
    assert_eq!(gone.purged, None);
    assert_eq!(files(&dir("gone")), before[0]);
    let r = c.provision("c2", clone_of("gone-db", None), true).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert_eq!(
        r.body["description"],
        format!(
            "The archive of gone-db is being purged (since {}); it can no longer be cloned.",
            api_time(since.0)
        )
    );
    assert!(c.store.instance("c2").await.unwrap().is_none());

    // The restore ends (here: fails); the purge goes ahead.
    c.finish("cl", false, "failed").await;
    let mut gone = record("gone").await;
    for _ in 0..300 {
        if gone.purged.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        gone = record("gone").await;
    }
    let _ = stop.send(());
    run.await.unwrap();
    let purge = gone.purged.clone().expect("gone purged");
    assert_eq!((purge.objects, purge.bytes), counts(&before[0]));
    assert_eq!(gone.purging, None);
    assert!(only_descriptor(&files(&dir("gone"))));
    assert_eq!(
        files(&dir("gone"))[DESCRIPTOR_KEY],
        before[0][DESCRIPTOR_KEY]
    );
    // Their catalog entries say so too; the live incarnation and the neighbour are untouched.
    let entry = |name: &'static str| {
        let store = c.store.clone();
        async move {
            let mut v = store.find_by_name("org-1", "space-1", name).await.unwrap();
            assert_eq!(v.len(), 1, "{name}: {v:?}");
            v.remove(0)
        }
    };
    assert_eq!(entry("gone-db").await.purged, Some(purge.clone()));
    assert_eq!(entry("first-name").await.purged, Some(old_purge.clone()));
    assert_eq!(entry("second-name").await.purged, None);
    assert_eq!(entry("neighbour").await.purged, None);
    assert_eq!(files(&dir("old.2")), before[2]);
    assert_eq!(files(&dir("old2")), before[3]);
    let old = record("old").await;
    assert_eq!((old.purging, old.purged), (None, None));
    let old2 = record("old2").await;
    assert_eq!(
        (old2.purging, old2.purged, old2.previous.len()),
        (None, None, 0)
    );

    // The 400 names the date, by name and by id.
    let said = |named: &str, p: &walarchive_broker::state::Purge, deleted: Timestamp| {
        let secs = (p.at.0 - deleted.0).num_seconds();
        assert!((0..60).contains(&secs), "{secs}");
        format!(
            "The archive of {named} was purged on {} ({secs} second{} after its deletion); it can no longer be cloned.",
            api_time(p.at.0),
            if secs == 1 { "" } else { "s" }
        )
    };
    let gone_deleted = gone.deleted_at.unwrap();
    c.refused(
        "c3",
        clone_of("gone-db", None),
        &said("gone-db", &purge, gone_deleted),
    )
    .await;
    c.refused(
        "c3",
        clone_of("gone", None),
        &said("gone", &purge, gone_deleted),
    )
    .await;
    let old_deleted = old.previous[0].deleted_at.unwrap();
    c.refused(
        "c3",
        clone_of("first-name", None),
        &said("first-name", &old_purge, old_deleted),
    )
    .await;
}

impl Ctx {
    /// Provisions `id` with `body`, which must be accepted: the 202's `clone_of` and what the
    /// record keeps as resolved.
    async fn resolved(&self, id: &str, body: Value) -> (Value, ResolvedTarget) {
        let r = self.provision(id, body, true).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
        let rec = self.store.instance(id).await.unwrap().unwrap().value;
        let resolved = rec.restore.unwrap().resolved.expect("resolved");
        (
            r.body["metadata"]["attributes"]["clone_of"].clone(),
            resolved,
        )
    }
}

/// A time as the records keep it (to the millisecond).
fn ms(t: chrono::DateTime<chrono::Utc>) -> Timestamp {
    use chrono::SubsecRound;
    Timestamp(t.trunc_subsecs(3))
}

/// A time a little before now, to the millisecond (as a platform would send it).
fn just_now() -> String {
    api_time(chrono::Utc::now() - chrono::Duration::milliseconds(20))
}

/// Design §2.2: before the 202, `clone-at` is resolved in the source's archive to what
/// PostgreSQL stops at exactly, stored in `restore.resolved` (what the worker's restore pass
/// reads) and said in the 202's `clone_of`: a time stays a time (the clone holds the rows
/// committed up to it), an LSN and a restore point become an LSN, the latest point is pinned
/// to the last archived record's LSN, and a time after the last commit of a *deleted* source
/// (whose archive is final) is its latest point.
#[tokio::test]
async fn clone_at_resolves_in_the_archive() {
    let a = Archives::new();
    let c = ctx_with(&a.base(), "");
    a.with_backup("src");
    a.with_backup("dead");
    c.ready("src", named("old-db", None)).await;
    c.deleted("dead", named("dead-db", None)).await;
    let f = fixture();
    let backup = f.backup["name"].as_str().unwrap();
    let latest = f.window["latest"]["lsn"].as_str().unwrap();

    // A time between rows 3 and 4.
    let t = f.commits[2] + (f.commits[3] - f.commits[2]) / 2;
    let ts = t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let (of, r) = c
        .resolved("c-time", clone_of("old-db", Some(json!(ts))))
        .await;
    assert_eq!(r.backup, backup);
    assert_eq!(r.timeline, None);
    assert_eq!(r.target, TargetSpec::Time(ts.clone()));
    assert_eq!(r.expect_time, Some(ms(f.commits[2])));
    let e = lsn(&r.expect_lsn);
    assert!(
        lsn(&f.lsn_after[2]) <= e && e < lsn(&f.lsn_after[3]),
        "{r:?} {:?}",
        f.lsn_after
    );
    assert_eq!(
        of["at"],
        json!({ "lsn": r.expect_lsn, "time": api_time(f.commits[2]) })
    );
    assert_eq!(of["backup"], backup);

    // An LSN: itself.
    let l = &f.lsn_after[1];
    let (of, r) = c
        .resolved("c-lsn", clone_of("old-db", Some(json!(l))))
        .await;
    assert_eq!(r.backup, backup);
    let TargetSpec::Lsn(target) = &r.target else {
        panic!("{r:?}")
    };
    assert_eq!((lsn(target), lsn(&r.expect_lsn)), (lsn(l), lsn(l)));
    assert_eq!(r.expect_time, None);
    assert_eq!(of["at"]["lsn"], r.expect_lsn);

    // A restore point: the LSN of its record, between row 4's commit and what
    // pg_create_restore_point returned (the record's end), with its creation time.
    let (of, r) = c
        .resolved(
            "c-rp",
            clone_of("old-db", Some(json!({ "restore-point": "before" }))),
        )
        .await;
    let TargetSpec::Lsn(target) = &r.target else {
        panic!("{r:?}")
    };
    let at = lsn(target);
    assert!(
        lsn(&f.lsn_after[3]) <= at && at < lsn(&f.before),
        "{r:?} {:?} {}",
        f.lsn_after,
        f.before
    );
    assert_eq!(lsn(&r.expect_lsn), at);
    let rp_time = r.expect_time.expect("a restore point's time").0;
    assert!(
        ms(f.commits[3]).0 <= rp_time && rp_time <= f.commits[4],
        "{r:?}"
    );
    assert_eq!(of["at"]["restore_point"], "before");
    assert_eq!(of["at"]["time"], api_time(rp_time));

    // The latest point: pinned to the last archived record, holding row 6.
    let (of, r) = c.resolved("c-latest", clone_of("old-db", None)).await;
    assert_eq!(r.target, TargetSpec::Lsn(latest.to_string()));
    assert_eq!(r.expect_lsn, latest);
    assert_eq!(r.expect_time, Some(ms(f.commits[ROWS - 1])));
    assert_eq!(
        of["at"],
        json!({ "lsn": latest, "time": api_time(f.commits[ROWS - 1]) })
    );

    // After the last commit of a deleted source: its latest point.
    let (_, r) = c
        .resolved("c-dead", clone_of("dead-db", Some(json!(just_now()))))
        .await;
    assert_eq!(r.target, TargetSpec::Lsn(latest.to_string()));
    assert_eq!(r.expect_time, Some(ms(f.commits[ROWS - 1])));
}

/// Design §2.2's rows for targets the archive cannot give: each a 400 saying what the archive
/// holds, with nothing written; an archive that cannot be read (a damaged segment), a 503.
#[tokio::test]
async fn targets_outside_the_window_are_refused() {
    let a = Archives::new();
    let c = ctx_with(&a.base(), "");
    a.with_backup("src");
    a.with_backup("broken");
    c.ready("src", named("old-db", None)).await;
    c.ready("broken", named("broken-db", None)).await;
    let f = fixture();
    let stop_time = api_time(
        walarchive::manifest::parse_time(f.backup["stop_time"].as_str().unwrap()).unwrap(),
    );
    let stop_lsn = f.backup["stop_lsn"].as_str().unwrap();
    let latest = f.window["latest"]["lsn"].as_str().unwrap();
    let last = api_time(f.commits[ROWS - 1]);
    let timeout = c.state.config.archive_timeout.0.as_secs();
    let earliest =
        format!("the earliest restorable point of old-db, {stop_time} (the end of its oldest base backup, LSN {stop_lsn})");
    let now = just_now();
    let cases = [
        (
            json!("2020-01-01T00:00:00Z"),
            format!("clone-at 2020-01-01T00:00:00Z is before {earliest}."),
        ),
        (json!("0/100"), format!("clone-at 0/100 is before {earliest}.")),
        (
            json!(now),
            format!("clone-at {now} is after the latest restorable point of old-db, {last} (LSN {latest}): later WAL is not archived yet; retry after archive_timeout ({timeout} s), or omit clone-at for the latest point."),
        ),
        (
            json!("FF/0"),
            format!("clone-at FF/0 is past the end of the archived WAL of old-db ({latest})."),
        ),
        (
            json!({ "restore-point": "nope" }),
            format!("The archive of old-db has no restore point named \"nope\" (its restorable window is {stop_time} to {last})."),
        ),
    ];
    for (at, description) in cases {
        c.refused("new", clone_of("old-db", Some(at)), &description)
            .await;
    }
    // The newest segment of broken-db's archive, damaged: the window cannot be read.
    let newest = files(&a.dir.path().join("broken"))
        .into_keys()
        .filter(|k| k.contains("00000001000000"))
        .max()
        .unwrap();
    let path = a.dir.path().join("broken").join(&newest);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    let before = c.etcd_state().await;
    let r = c.provision("new", clone_of("broken-db", None), true).await;
    assert_eq!(
        r.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{newest}: {}",
        r.body
    );
    assert_eq!(
        r.body["description"],
        "The archive of broken-db could not be read in time to check clone-at; retry in a minute."
    );
    assert_eq!(c.etcd_state().await, before);
}

/// `GET /v2/service_instances/:id` says the instance's restorable window (design §2.2):
/// from its backup's end to its last archived commit, as the core computes them, reused
/// for 30 s; without an archive, why not.
#[tokio::test]
async fn fetch_says_the_restorable_window() {
    let a = Archives::new();
    let c = ctx_with(&a.base(), "");
    a.with_backup("src");
    c.ready("src", named("old-db", None)).await;
    c.ready("empty", named("empty-db", None)).await;
    let f = fixture();
    let r = c.call(Method::GET, "/v2/service_instances/src", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let w = &r.body["metadata"]["attributes"]["restorable_window"];
    let stop_time =
        walarchive::manifest::parse_time(f.backup["stop_time"].as_str().unwrap()).unwrap();
    assert_eq!(
        w["earliest"],
        json!({ "lsn": f.backup["stop_lsn"], "time": api_time(stop_time) }),
        "{w}"
    );
    assert_eq!(
        w["latest"],
        json!({ "lsn": f.window["latest"]["lsn"], "time": api_time(f.commits[ROWS - 1]) }),
        "{w}"
    );
    let computed_at = w["computed_at"].as_str().unwrap().to_string();
    assert!(chrono::DateTime::parse_from_rfc3339(&computed_at).is_ok());
    assert!(r.body["metadata"]["attributes"]
        .get("restorable_window_error")
        .is_none());
    // Within 30 s the same computation answers.
    let again = c.call(Method::GET, "/v2/service_instances/src", None).await;
    assert_eq!(
        again.body["metadata"]["attributes"]["restorable_window"]["computed_at"],
        computed_at.as_str()
    );
    let r = c
        .call(Method::GET, "/v2/service_instances/empty", None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        r.body["metadata"]["attributes"],
        json!({ "restorable_window_error": "The archive has no completed base backup yet." })
    );
}
