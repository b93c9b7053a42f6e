//! Clones end to end (design §2.5, §2.6, §6.2, §6.3): the OSB API records a provision with
//! `clone-from`/`clone-at`, a [`walarchive_broker::Worker`] builds it on real cell agents
//! (Patroni's custom bootstrap restoring the source's archive), and the clone is checked
//! through its own binding: exactly the rows the target asked for, none of the source's
//! credentials, and the source's repository only read.
//!
//! One test, in sequence, over one source provisioned through the API (two nodes, archiving
//! every second at `wal_segsize_mb = 1`, switched over midway): clones by name at a time
//! chosen in a pause of the writes (the worker replaced while it restores), by instance id at
//! the latest point with two nodes (the replica restored from the clone's own backup), at an
//! LSN, at a restore point, and just before and just after the promotion (the timeline path),
//! each deprovisioned once checked and its own repository verified with `wal-verify`; a clone
//! whose source's archive loses a segment after its target was resolved, which fails with the
//! missing-WAL reason and leaves nothing running; a clone of the source once deleted, holding
//! its last commit; the name reused (by name the live instance, by the old id the deleted one);
//! and one clone on S3 (s3s-fs) through a second broker.
use testkit::broker as common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use serde_json::{json, Value};

use common::broker::BrokerToml;
use common::cells::{connect, local_sql, primary_as, wait_for, walarchive, Cell};
use common::osb::Api;
use common::rig::Rig;
use common::s3::s3;
use walarchive_broker::cell::NodeStatus;
use walarchive_broker::state::InstanceRecord;

/// Every object of the repository under `dir`: (size, BLAKE3 of the bytes) by key.
fn listing(dir: &Path) -> BTreeMap<String, (u64, String)> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, (u64, String)>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else if let Ok(bytes) = std::fs::read(&p) {
                let key = p.strip_prefix(root).unwrap().display().to_string();
                out.insert(
                    key,
                    (
                        bytes.len() as u64,
                        blake3::hash(&bytes).to_hex().to_string(),
                    ),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// The local directory of a `file://` repository.
fn repo_dir(url: &str) -> PathBuf {
    PathBuf::from(url.strip_prefix("file://").expect("a file:// repository"))
}

/// The source's writer: numbered rows, one every 20 ms.
struct Writer {
    next: i32,
}

impl Writer {
    /// Writes the next `n` rows through `db`: the last one's number.
    async fn write(&mut self, db: &tokio_postgres::Client, n: i32) -> i32 {
        let (from, to) = (self.next, self.next + n - 1);
        self.next += n;
        for k in from..=to {
            db.execute("insert into t values ($1)", &[&k])
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        to
    }
}

/// A pause of the writes, 2 s, and the server's time in its middle (RFC 3339, UTC).
async fn pause(db: &tokio_postgres::Client) -> String {
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let at: String = db
        .query_one(
            "select to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    at
}

struct Ctx<'a> {
    c: Api,
    cells: &'a [Cell],
    root: PathBuf,
    bin: PathBuf,
    /// The walarchive configuration (S3 credentials) of the broker's repositories, if any.
    walarchive_config: Option<PathBuf>,
}

impl Ctx<'_> {
    fn diag(&self) -> impl Fn() -> String + '_ {
        move || {
            self.cells
                .iter()
                .map(|c| format!("--- cell {} ---\n{}\n", c.name, c.log_tail(20)))
                .collect::<String>()
                + &common::cells::tail(&self.root.join("haproxy").join("haproxy.log"), 10)
        }
    }

    async fn record(&self, id: &str) -> InstanceRecord {
        self.c.store.instance(id).await.unwrap().unwrap().value
    }

    /// PUTs instance `id` named `name` with `parameters`: the 202's body.
    async fn provision(&self, id: &str, name: &str, parameters: Value) -> Value {
        let (s, b) = self
            .c
            .call(
                Method::PUT,
                &format!("/v2/service_instances/{id}?accepts_incomplete=true"),
                Some(json!({
                    "service_id": self.c.service, "plan_id": self.c.plan,
                    "organization_guid": "org", "space_guid": "space",
                    "context": {"platform": "test", "instance_name": name,
                                "organization_guid": "org", "space_guid": "space"},
                    "parameters": parameters,
                })),
            )
            .await;
        assert_eq!(s, StatusCode::ACCEPTED, "provision {id}: {b}");
        b
    }

    /// Clones `from` at `at` as instance `id` (one node) and waits for it: the descriptions
    /// seen and the final one.
    async fn clone_ok(&self, id: &str, from: &str, at: Option<Value>) -> (Vec<String>, String) {
        self.clone_nodes(id, from, at, 1).await
    }

    /// [`Ctx::clone_ok`] with `nodes` nodes.
    async fn clone_nodes(
        &self,
        id: &str,
        from: &str,
        at: Option<Value>,
        nodes: u8,
    ) -> (Vec<String>, String) {
        let mut p = json!({"node-count": nodes, "clone-from": from});
        if let Some(at) = at {
            p["clone-at"] = at;
        }
        let b = self.provision(id, id, p).await;
        let op = b["operation"].as_str().unwrap().to_string();
        let (seen, s, b) = self
            .c
            .wait_op(id, &op, Duration::from_secs(180), &self.diag())
            .await;
        assert_eq!(
            (s, b["state"].as_str()),
            (StatusCode::OK, Some("succeeded")),
            "{id}: {b}\n{}",
            self.diag()()
        );
        (seen, b["description"].as_str().unwrap().to_string())
    }

    /// The rows of `t` through a new binding of `id`: (count, max id).
    async fn rows(&self, id: &str) -> (i64, i32) {
        let uri = self.c.bind(id, &format!("{id}-reader")).await;
        let db = wait_for(
            "the clone's binding connects",
            Duration::from_secs(20),
            || primary_as(uri.clone()),
            self.diag(),
        )
        .await;
        let r = db
            .query_one("select count(*), coalesce(max(id), 0) from t", &[])
            .await
            .unwrap();
        (r.get(0), r.get(1))
    }

    /// Checks the clone `id`'s own repository with `wal-verify` (its WAL continuous from its
    /// first backup, with the history of every ancestor timeline: R4), then deprovisions it.
    async fn verified_deprovision(&self, id: &str) {
        let repo = self.record(id).await.repository;
        // The clone's newest WAL archived first (archive_timeout = 1 s).
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut args: Vec<&str> = Vec::new();
        if let Some(c) = &self.walarchive_config {
            args.extend(["--config", c.to_str().unwrap()]);
        }
        args.extend(["--repo", &repo, "wal-verify"]);
        if let Err(e) = walarchive(&self.bin, &args) {
            panic!("wal-verify of {id}'s repository: {e}");
        }
        self.deprovision(id).await;
    }

    async fn deprovision(&self, id: &str) {
        let op = self.c.deprovision(id).await;
        let (_, s, b) = self
            .c
            .wait_op(id, &op, Duration::from_secs(60), &self.diag())
            .await;
        assert_eq!(s, StatusCode::GONE, "deprovision {id}: {b}");
    }

    /// The cell and PostgreSQL port of `inst`'s first node.
    fn first_node<'b>(&'b self, inst: &InstanceRecord) -> (&'b Cell, u16) {
        let n = &inst.nodes[0];
        let cell = self.cells.iter().find(|c| c.name == n.cell).unwrap();
        (cell, n.pg_port)
    }

    /// The binding roles on `id`'s first node other than its own readers'.
    async fn source_roles(&self, id: &str) -> String {
        let inst = self.record(id).await;
        let (cell, port) = self.first_node(&inst);
        local_sql(
            cell,
            port,
            "select coalesce(string_agg(rolname, ','), '') from pg_roles where rolname ~ '^[bh]_' and rolname !~ 'reader$'",
        )
        .unwrap()
    }

    /// The leader of instance `id` as its cells report it: its cell and status.
    async fn leader(&self, id: &str) -> Option<(&Cell, NodeStatus)> {
        for c in self.cells {
            for n in c.client().nodes().await.ok()? {
                if n.instance_id == id && n.is_leader() {
                    return Some((c, n));
                }
            }
        }
        None
    }

    /// A Patroni switchover of instance `id` (2 nodes) through its leader's REST API: the
    /// new leader's name once it runs as the primary.
    async fn switchover(&self, id: &str) -> String {
        let (cell, leader) = self.leader(id).await.expect("a leader");
        let mut replica = None;
        for c in self.cells {
            for n in c.client().nodes().await.unwrap() {
                if n.instance_id == id && n.name != leader.name {
                    replica = Some(n.name);
                }
            }
        }
        let replica = replica.expect("a replica");
        let node: Value = serde_json::from_slice(
            &std::fs::read(cell.data_root.join(&leader.name).join("node.json")).unwrap(),
        )
        .unwrap();
        let password = node["restapi_password"].as_str().unwrap().to_string();
        let api = format!("http://127.0.0.1:{}/switchover", leader.ports.api_port);
        let http = reqwest::Client::new();
        // Patroni refuses a switchover to a replica it does not deem healthy yet: retried.
        wait_for(
            "Patroni accepts the switchover",
            Duration::from_secs(30),
            || async {
                let r = http
                    .post(&api)
                    .basic_auth(walarchive_broker::patroni::RESTAPI_USER, Some(&password))
                    .header("Content-Type", "application/json")
                    .body(json!({"leader": leader.name, "candidate": replica}).to_string())
                    .send()
                    .await
                    .ok()?;
                if r.status().is_success() {
                    Some(())
                } else {
                    eprintln!(
                        "switchover: {} {}",
                        r.status(),
                        r.text().await.unwrap_or_default()
                    );
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    None
                }
            },
            self.diag(),
        )
        .await;
        wait_for(
            "the new leader runs",
            Duration::from_secs(30),
            || async {
                let (_, n) = self.leader(id).await?;
                (n.name == replica).then_some(())
            },
            self.diag(),
        )
        .await;
        replica
    }

    /// The nodes of instance `id` on every cell.
    async fn nodes_on_cells(&self, id: &str) -> Vec<String> {
        let mut out = Vec::new();
        for c in self.cells {
            for n in c.client().nodes().await.expect("cell answers") {
                if n.instance_id == id {
                    out.push(n.name);
                }
            }
        }
        out
    }
}

/// `uri` (a binding's) with its port replaced by `port`.
fn at_port(uri: &str, port: u16) -> String {
    let mut u = url::Url::parse(uri).unwrap();
    u.set_port(Some(port)).unwrap();
    u.to_string()
}

/// Asserts that `uri` cannot log in (password refused, or no such role).
async fn refused(uri: &str, what: &str) {
    match connect(uri).await {
        Ok(_) => panic!("{what}: the source's credentials opened the clone"),
        Err(e) => {
            let code = e.as_db_error().map(|d| d.code().code().to_string());
            assert!(
                matches!(code.as_deref(), Some("28P01" | "28000")),
                "{what}: {e:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clones_of_a_live_instance() {
    tokio::time::timeout(Duration::from_secs(420), scenario())
        .await
        .expect("the scenario finishes within 7 minutes");
}

async fn scenario() {
    let t0 = Instant::now();
    let rig = Rig::start("clones", &["a", "b"]).await;
    let (root, bin, cells) = (&rig.root, &rig.bin, &rig.cells);
    let mut t = rig.toml();
    t.worker = ("2s", "5m");
    let prefix = rig.prefix();
    let text = t
        .render(&prefix)
        .replace("archive_timeout = \"60s\"", "archive_timeout = \"1s\"");
    assert!(text.contains("archive_timeout = \"1s\""));
    let ctx = Ctx {
        c: Api::new(&text, &t.service, &t.plan),
        cells,
        root: root.clone(),
        bin: bin.clone(),
        walarchive_config: None,
    };
    let c = &ctx.c;
    let mut worker = c.spawn_worker();

    // --- The source: two nodes, a binding, rows written in steps. ---
    let b = ctx
        .provision("src-1", "old-db", json!({"node-count": 2}))
        .await;
    let op = b["operation"].as_str().unwrap().to_string();
    c.wait_succeeded("src-1", &op, Duration::from_secs(120), &ctx.diag())
        .await;
    let src = ctx.record("src-1").await;
    let src_dir = repo_dir(&src.repository);
    let src_uri = c.bind("src-1", "src-app").await;
    let connect_source = || {
        wait_for(
            "writes through the source's router",
            Duration::from_secs(30),
            || primary_as(src_uri.clone()),
            ctx.diag(),
        )
    };
    let mut db = connect_source().await;
    db.batch_execute("create table t (id int primary key)")
        .await
        .unwrap();
    let mut w = Writer { next: 1 };
    // Rows 1..=k, a pause with T in its middle, then more.
    let k = w.write(&db, 20).await;
    let at_time = pause(&db).await;
    w.write(&db, 20).await;
    // An LSN after row m, and the segment holding it (on timeline 1), for the hole below.
    let m = w.write(&db, 10).await;
    let at_lsn: String = db
        .query_one("select pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    let hole: String = db
        .query_one(&format!("select pg_walfile_name('{at_lsn}')"), &[])
        .await
        .unwrap()
        .get(0);
    w.write(&db, 10).await;
    // A restore point after row r (created by the superuser: the binding may not).
    let r = w.write(&db, 10).await;
    let (src_cell, src_leader) = ctx.leader("src-1").await.expect("a leader");
    local_sql(
        src_cell,
        src_leader.ports.pg_port,
        "select pg_create_restore_point('before-migration')",
    )
    .unwrap();
    // A switchover midway (a timeline switch in the archive): T just before the promotion
    // (row f the last on timeline 1) and just after it (row g the first on timeline 2).
    let f = w.write(&db, 10).await;
    let before_failover = pause(&db).await;
    let promoted = ctx.switchover("src-1").await;
    db = connect_source().await;
    let g = w.write(&db, 1).await;
    let after_failover = pause(&db).await;
    let last = w.write(&db, 10).await;
    // Everything archived (archive_timeout = 1 s).
    tokio::time::sleep(Duration::from_secs(4)).await;
    eprintln!(
        "source written at {:.1} s: k={k} at {at_time}, m={m} at {at_lsn}, r={r}, \
         f={f} at {before_failover}, {promoted} promoted, g={g} at {after_failover}, last={last}",
        t0.elapsed().as_secs_f64()
    );
    let source_before = listing(&src_dir);

    // --- By name, at a time in a pause of the writes; the broker's worker goes away once the
    // first node is put (the restore goes on without it), and another one finishes. ---
    let b = ctx
        .provision(
            "clone-time",
            "clone-time",
            json!({"node-count": 1, "clone-from": "old-db", "clone-at": at_time}),
        )
        .await;
    let op = b["operation"].as_str().unwrap().to_string();
    wait_for(
        "the clone's first node put on its cell",
        Duration::from_secs(30),
        || async {
            let i = ctx.record("clone-time").await;
            (i.nodes.first()?.pg_port != 0).then_some(())
        },
        ctx.diag(),
    )
    .await;
    worker.abort();
    let _ = worker.await;
    worker = c.spawn_worker();
    let (seen, s, b) = c
        .wait_op("clone-time", &op, Duration::from_secs(180), &ctx.diag())
        .await;
    assert_eq!(
        (s, b["state"].as_str()),
        (StatusCode::OK, Some("succeeded")),
        "{b}"
    );
    let done = b["description"].as_str().unwrap().to_string();
    assert_eq!(
        ctx.nodes_on_cells("clone-time").await.len(),
        1,
        "one set of nodes"
    );
    eprintln!("clone at a time: {:.1} s", t0.elapsed().as_secs_f64());
    assert!(
        done.starts_with("The clone of old-db at ") && done.contains("is ready (1 node)"),
        "{done}"
    );
    assert!(
        seen.iter().any(|d| d.contains("old-db")),
        "no description names the source: {seen:?}"
    );
    assert_eq!(ctx.rows("clone-time").await, (k as i64, k));
    // The source's credentials open neither the clone's route nor its node.
    let clone = ctx.record("clone-time").await;
    refused(&at_port(&src_uri, clone.port), "the clone's router port").await;
    refused(
        &at_port(&src_uri, clone.nodes[0].pg_port),
        "the clone's node",
    )
    .await;
    assert_eq!(ctx.source_roles("clone-time").await, "");
    let restore = clone.restore.clone().unwrap();
    assert!(
        restore.roles_removed && restore.reached.is_some(),
        "{restore:?}"
    );
    ctx.verified_deprovision("clone-time").await;

    // --- By instance id, the latest point. ---
    // --- By instance id, the latest point, two nodes: the replica is restored from the
    // clone's own first backup. ---
    let (seen, done) = ctx.clone_nodes("clone-latest", "src-1", None, 2).await;
    assert!(
        done.contains("at the latest archived point") && done.contains("is ready (2 nodes)"),
        "{done}"
    );
    assert!(
        seen.iter()
            .any(|d| d.starts_with("clone promoted; ") && d.contains("replica")),
        "{seen:?}"
    );
    assert_eq!(ctx.rows("clone-latest").await, (last as i64, last));
    let clone = ctx.record("clone-latest").await;
    let backups = walarchive(bin, &["--repo", &clone.repository, "backup-list"]).unwrap();
    assert!(
        backups.contains("base_"),
        "the clone has no backup of its own: {backups}"
    );
    ctx.verified_deprovision("clone-latest").await;

    // --- At an LSN. ---
    ctx.clone_ok("clone-lsn", "old-db", Some(json!(at_lsn)))
        .await;
    assert_eq!(ctx.rows("clone-lsn").await, (m as i64, m));
    ctx.verified_deprovision("clone-lsn").await;

    // --- At a restore point. ---
    ctx.clone_ok(
        "clone-rp",
        "old-db",
        Some(json!({"restore-point": "before-migration"})),
    )
    .await;
    assert_eq!(ctx.rows("clone-rp").await, (r as i64, r));
    ctx.verified_deprovision("clone-rp").await;

    // --- Across the source's switchover: just before the promotion (timeline 1) and just
    // after it (the first row of timeline 2 in, the next one out). ---
    ctx.clone_ok("clone-before", "old-db", Some(json!(before_failover)))
        .await;
    assert_eq!(ctx.rows("clone-before").await, (f as i64, f));
    ctx.verified_deprovision("clone-before").await;
    ctx.clone_ok("clone-after", "old-db", Some(json!(after_failover)))
        .await;
    assert_eq!(ctx.rows("clone-after").await, (g as i64, g));
    ctx.verified_deprovision("clone-after").await;
    eprintln!("six clones at {:.1} s", t0.elapsed().as_secs_f64());

    // --- The source's repository was only read (§6.3): every object unchanged, and the
    // new ones are the source's own WAL (timelines 1 and 2), never a clone's history or
    // partial. ---
    let source_after = listing(&src_dir);
    for (k, v) in &source_before {
        assert_eq!(
            source_after.get(k),
            Some(v),
            "{k} changed in the source's repository"
        );
    }
    for k in source_after
        .keys()
        .filter(|k| !source_before.contains_key(*k))
    {
        let file = k.rsplit('/').next().unwrap();
        assert!(
            (file.starts_with("00000001") || file.starts_with("00000002"))
                && !file.contains(".history")
                && !file.contains(".partial"),
            "a clone wrote {k} into its source's repository"
        );
    }

    // --- A clone whose source's archive loses a segment after its target was resolved (at
    // the 202): the segment holding the LSN target above, after the source's base backup and
    // before its latest point (the window the API read, at most 30 s old, reaches beyond it).
    let removed: Vec<PathBuf> = listing(&src_dir)
        .into_keys()
        .filter(|k| k.rsplit('/').next().unwrap().starts_with(hole.as_str()))
        .map(|k| src_dir.join(k))
        .collect();
    assert_eq!(removed.len(), 1, "{hole}: {removed:?}");
    let b = ctx
        .provision(
            "clone-hole",
            "clone-hole",
            json!({"node-count": 1, "clone-from": "old-db"}),
        )
        .await;
    let op = b["operation"].as_str().unwrap().to_string();
    let resolved = ctx.record("clone-hole").await.restore.unwrap().resolved;
    assert!(resolved.is_some(), "no target resolved at the 202");
    let kept = std::fs::read(&removed[0]).unwrap();
    std::fs::remove_file(&removed[0]).unwrap();
    let (_, s, b) = c
        .wait_op("clone-hole", &op, Duration::from_secs(180), &ctx.diag())
        .await;
    assert_eq!(
        (s, b["state"].as_str()),
        (StatusCode::OK, Some("failed")),
        "{b}"
    );
    let why = b["description"].as_str().unwrap();
    assert!(
        why.starts_with("The archive of old-db ends before the clone's target: ")
            && why.ends_with("The clone's nodes were removed; deprovision this instance."),
        "{why}"
    );
    let inst = ctx.record("clone-hole").await;
    assert!(inst.nodes.is_empty(), "{:?}", inst.nodes);
    assert_eq!(ctx.nodes_on_cells("clone-hole").await, Vec::<String>::new());
    let patroni = format!(
        "{}{}/",
        ctx.c.state.config.patroni_namespace(),
        inst.scope()
    );
    assert!(
        c.store
            .etcd()
            .get_prefix(patroni.as_bytes())
            .await
            .unwrap()
            .is_empty(),
        "Patroni's keys of the failed clone are left"
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", inst.port)).is_err(),
        "the failed clone is routed"
    );
    // No restart loop: nothing of it comes back.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(ctx.nodes_on_cells("clone-hole").await, Vec::<String>::new());
    ctx.deprovision("clone-hole").await;
    std::fs::write(&removed[0], kept).unwrap();

    // --- A deleted source, by name: its last commit before the deprovision is there. ---
    let gone = w.write(&db, 5).await;
    ctx.deprovision("src-1").await;
    let (_, done) = ctx.clone_ok("clone-deleted", "old-db", None).await;
    assert!(done.starts_with("The clone of old-db at "), "{done}");
    assert_eq!(ctx.rows("clone-deleted").await, (gone as i64, gone));
    // The source's binding is gone with it, its role too from the clone.
    assert_eq!(ctx.source_roles("clone-deleted").await, "");
    ctx.verified_deprovision("clone-deleted").await;

    // --- The name reused: another instance named old-db. By name, the live one; by the old
    // id, the deleted one (its last commit, not the new instance's row). ---
    let b = ctx
        .provision("src-2", "old-db", json!({"node-count": 1}))
        .await;
    let op = b["operation"].as_str().unwrap().to_string();
    c.wait_succeeded("src-2", &op, Duration::from_secs(120), &ctx.diag())
        .await;
    let uri = c.bind("src-2", "src2-app").await;
    let db2 = wait_for(
        "writes through the second old-db's router",
        Duration::from_secs(30),
        || primary_as(uri.clone()),
        ctx.diag(),
    )
    .await;
    db2.batch_execute("create table t (id int primary key); insert into t values (1000)")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    ctx.clone_ok("clone-reused", "old-db", None).await;
    let of = ctx.record("clone-reused").await.restore.unwrap().source;
    assert_eq!((of.instance_id.as_str(), of.deleted_at), ("src-2", None));
    assert_eq!(ctx.rows("clone-reused").await, (1, 1000));
    ctx.verified_deprovision("clone-reused").await;
    ctx.clone_ok("clone-old-id", "src-1", None).await;
    let of = ctx.record("clone-old-id").await.restore.unwrap().source;
    assert!(
        of.instance_id == "src-1" && of.deleted_at.is_some(),
        "{of:?}"
    );
    assert_eq!(ctx.rows("clone-old-id").await, (gone as i64, gone));
    ctx.verified_deprovision("clone-old-id").await;
    ctx.deprovision("src-2").await;
    worker.abort();

    // --- One clone end to end on S3 (s3s-fs): another broker, archiving into a bucket, on the
    // same cells (its instance ids differ). ---
    let s3 = s3();
    let bucket = s3.fresh_bucket();
    let s3_config = root.join("walarchive-s3.toml");
    s3.walarchive_config(&s3_config);
    let s3_base = format!("s3://{bucket}/inst");
    let mut t = BrokerToml::new(&root.join("broker-s3"), &s3_base, bin);
    t.cells = cells.iter().zip(["za", "zb"]).collect();
    t.worker = ("2s", "5m");
    t.walarchive_config = Some(s3_config.clone());
    let prefix = rig.prefix();
    let text = t
        .render(&prefix)
        .replace("archive_timeout = \"60s\"", "archive_timeout = \"1s\"");
    let ctx = Ctx {
        c: Api::new(&text, &t.service, &t.plan),
        cells,
        root: root.clone(),
        bin: bin.clone(),
        walarchive_config: Some(s3_config),
    };
    let worker = ctx.c.spawn_worker();
    let b = ctx
        .provision("s3-src", "s3-db", json!({"node-count": 1}))
        .await;
    let op = b["operation"].as_str().unwrap().to_string();
    ctx.c
        .wait_succeeded("s3-src", &op, Duration::from_secs(120), &ctx.diag())
        .await;
    assert!(ctx.record("s3-src").await.repository.starts_with("s3://"));
    let uri = ctx.c.bind("s3-src", "s3-app").await;
    let db = wait_for(
        "writes through the S3 source's router",
        Duration::from_secs(30),
        || primary_as(uri.clone()),
        ctx.diag(),
    )
    .await;
    db.batch_execute("create table t (id int primary key)")
        .await
        .unwrap();
    let n = Writer { next: 1 }.write(&db, 5).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, done) = ctx.clone_ok("s3-clone", "s3-db", None).await;
    assert!(done.starts_with("The clone of s3-db at "), "{done}");
    assert_eq!(ctx.rows("s3-clone").await, (n as i64, n));
    assert!(ctx.record("s3-clone").await.repository.starts_with("s3://"));
    ctx.verified_deprovision("s3-clone").await;
    ctx.deprovision("s3-src").await;
    worker.abort();
    eprintln!("done at {:.1} s", t0.elapsed().as_secs_f64());
}
