//! The OSB API (`walarchive_broker::app`) driven in-process with tower's `oneshot`, against a
//! real etcd. The worker is simulated through the `Store` (progress, success, failure), and
//! bindings use a recording `Binder` (the real one needs PostgreSQL). Clones, whose
//! validation reads real repositories, are in `clones.rs`.

use testkit::broker as common;

mod actions;
mod admin;
mod clones;
mod dashboard;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use base64::Engine as _;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use common::etcd::etcd;
use walarchive_broker::api::BoxFuture;
use walarchive_broker::state::{
    Credentials, InstanceRecord, InstanceState, OperationKind, OperationState, Outcome,
};
use walarchive_broker::{app, AppState, BindError, Binder, BrokerConfig, EtcdClient, Store};

const SERVICE: &str = "svc-1";
const PLAN1: &str = "plan-single";
const PLAN2: &str = "plan-ha";
const PASSWORD: &str = "pl@tform:secret";

/// Records bind/unbind calls; fails when `fail` is set.
#[derive(Default)]
struct RecordingBinder {
    calls: Mutex<Vec<String>>,
    fail: AtomicBool,
}

impl Binder for RecordingBinder {
    fn bind<'a>(
        &'a self,
        instance: &'a InstanceRecord,
        binding_id: &'a str,
    ) -> BoxFuture<'a, Result<Credentials, BindError>> {
        Box::pin(async move {
            self.calls
                .lock()
                .unwrap()
                .push(format!("bind {}/{binding_id}", instance.id));
            if self.fail.load(Ordering::SeqCst) {
                return Err(BindError::new(
                    "connection to 10.9.8.7:5432 refused (internal detail)",
                ));
            }
            let user = format!("u_{binding_id}");
            let pw = format!("pw-{binding_id}");
            Ok(Credentials {
                uri: format!(
                    "postgresql://{user}:{pw}@router.test:{}/postgres",
                    instance.port
                ),
                jdbc_url: format!(
                    "jdbc:postgresql://router.test:{}/postgres?user={user}&password={pw}",
                    instance.port
                ),
                hostname: "router.test".into(),
                port: instance.port,
                name: "postgres".into(),
                username: user,
                password: pw,
                read_only_uri: None,
                read_only_port: None,
                uri_multihost: None,
                jdbc_url_multihost: None,
            })
        })
    }

    fn unbind<'a>(
        &'a self,
        instance: &'a InstanceRecord,
        binding_id: &'a str,
    ) -> BoxFuture<'a, Result<(), BindError>> {
        Box::pin(async move {
            self.calls
                .lock()
                .unwrap()
                .push(format!("unbind {}/{binding_id}", instance.id));
            Ok(())
        })
    }
}

struct Ctx {
    app: Router,
    state: AppState,
    store: Store,
    binder: Arc<RecordingBinder>,
    _dir: tempfile::TempDir,
}

fn config_text(
    password_file: &str,
    prefix: &str,
    base: &str,
    repository_extra: &str,
    extra: &str,
) -> String {
    format!(
        r#"
listen = "127.0.0.1:0"
[secrets]
key_file = "{password_file}.key"
[credentials]
username = "platform"
password_file = "{password_file}"
[service]
id = "{SERVICE}"
name = "walarchive-postgresql"
description = "HA PostgreSQL"
tags = ["postgresql"]
[[service.plans]]
id = "{PLAN1}"
name = "single"
description = "one node"
node_count = 1
[[service.plans]]
id = "{PLAN2}"
name = "ha"
description = "two nodes"
node_count = 2
[repository]
base = "{base}"
{repository_extra}
[etcd]
{etcd}prefix = "{prefix}"
[router]
host = "router.test"
port_min = 40000
port_max = 40009
haproxy_config = "{router_dir}/haproxy.cfg"
outlive_broker = false
[nodes]
etcd_ca_file = "{ca}"
{extra}
"#,
        etcd = etcd().config_lines(),
        ca = common::etcd::pki().ca_file().display(),
        router_dir = std::path::Path::new(password_file)
            .parent()
            .unwrap()
            .display(),
    )
}

fn ctx() -> Ctx {
    ctx_with("s3://bucket/instances/", "")
}

/// A context whose instances' repositories are under `base`, with `extra` configuration
/// (tables) at the end.
fn ctx_with(base: &str, extra: &str) -> Ctx {
    ctx_with_repository(base, "", extra)
}

/// [`ctx_with`], with `repository_extra` settings in the `[repository]` table.
fn ctx_with_repository(base: &str, repository_extra: &str, extra: &str) -> Ctx {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("password");
    std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    std::fs::write(
        dir.path().join("password.key"),
        walarchive_broker::secrets::Keyring::generate_key(),
    )
    .unwrap();
    let prefix = format!("/broker{}", etcd().fresh_prefix());
    let text = config_text(
        &pw.display().to_string(),
        &prefix,
        base,
        repository_extra,
        extra,
    );
    // The same configuration as a file, for the broker's binary (`Ctx::config_file`).
    std::fs::write(dir.path().join("broker.toml"), &text).unwrap();
    let config = BrokerConfig::parse(&text, "test").expect("test configuration");
    let client = EtcdClient::from_config(&config.etcd).unwrap();
    let store = Store::new(client, prefix, config.keyring());
    let binder = Arc::new(RecordingBinder::default());
    let state = AppState::new(config, store.clone(), binder.clone());
    Ctx {
        app: app(state.clone()),
        state,
        store,
        binder,
        _dir: dir,
    }
}

fn basic(user: &str, pw: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"))
    )
}

struct Resp {
    status: StatusCode,
    body: Value,
    headers: axum::http::HeaderMap,
}

impl Ctx {
    /// The context's configuration as a file, for `walarchive-broker --config`.
    fn config_file(&self) -> std::path::PathBuf {
        self._dir.path().join("broker.toml")
    }

    async fn raw(&self, req: Request<Body>) -> Resp {
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| panic!("non-JSON body: {}", String::from_utf8_lossy(&bytes)))
        };
        // Every error answer follows the OSB error shape (410's body is `{}`).
        if !status.is_success() && status != StatusCode::GONE {
            assert!(
                body["error"].as_str().is_some_and(|e| !e.is_empty())
                    && body["description"].as_str().is_some_and(|d| !d.is_empty()),
                "{status}: {body}"
            );
        }
        Resp {
            status,
            body,
            headers,
        }
    }

    async fn call(&self, method: Method, uri: &str, body: Option<Value>) -> Resp {
        let mut b = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, basic("platform", PASSWORD))
            .header("X-Broker-API-Version", "2.17");
        if body.is_some() {
            b = b.header(header::CONTENT_TYPE, "application/json");
        }
        let body = body.map_or(Body::empty(), |v| Body::from(v.to_string()));
        self.raw(b.body(body).unwrap()).await
    }

    async fn provision(&self, id: &str, body: Value, accepts_incomplete: bool) -> Resp {
        let q = if accepts_incomplete {
            "?accepts_incomplete=true"
        } else {
            ""
        };
        self.call(
            Method::PUT,
            &format!("/v2/service_instances/{id}{q}"),
            Some(body),
        )
        .await
    }

    async fn last_op(&self, id: &str, op: Option<&str>) -> Resp {
        let q = op.map_or(String::new(), |o| format!("&operation={o}"));
        self.call(
            Method::GET,
            &format!(
                "/v2/service_instances/{id}/last_operation?service_id={SERVICE}&plan_id={PLAN1}{q}"
            ),
            None,
        )
        .await
    }

    async fn deprovision(&self, id: &str, accepts_incomplete: bool) -> Resp {
        let a = if accepts_incomplete {
            "&accepts_incomplete=true"
        } else {
            ""
        };
        self.call(
            Method::DELETE,
            &format!("/v2/service_instances/{id}?service_id={SERVICE}&plan_id={PLAN1}{a}"),
            None,
        )
        .await
    }

    /// Plays the worker: finishes the instance's current operation.
    async fn finish(&self, id: &str, succeeded: bool, description: &str) {
        let op = self.store.operation(id).await.unwrap().unwrap().value;
        self.store
            .finish_operation(
                id,
                &op.id,
                Outcome {
                    succeeded,
                    description: description.into(),
                    instance_usable: None,
                },
            )
            .await
            .unwrap();
    }

    /// Provisions `id` and plays the worker until it is ready.
    async fn ready_instance(&self, id: &str) {
        let r = self.provision(id, provision_body(PLAN1, None), true).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
        self.finish(id, true, "ready").await;
    }
}

fn provision_body(plan: &str, parameters: Option<Value>) -> Value {
    let mut b = json!({
        "service_id": SERVICE,
        "plan_id": plan,
        "organization_guid": "org-1",
        "space_guid": "space-1",
        "context": { "platform": "cloudfoundry", "organization_guid": "org-1",
                     "space_guid": "space-1", "instance_name": "orders-db" },
    });
    if let Some(p) = parameters {
        b["parameters"] = p;
    }
    b
}

#[tokio::test]
async fn authentication_and_api_version() {
    let c = ctx();
    let req = |auth: Option<String>, version: Option<&str>| {
        let mut b = Request::builder().uri("/v2/catalog");
        if let Some(a) = auth {
            b = b.header(header::AUTHORIZATION, a);
        }
        if let Some(v) = version {
            b = b.header("X-Broker-API-Version", v);
        }
        b.body(Body::empty()).unwrap()
    };
    let good = || Some(basic("platform", PASSWORD));
    for auth in [
        None,
        Some(basic("platform", "wrong")),
        Some(basic("other", PASSWORD)),
        Some("Bearer abc".to_string()),
        Some("Basic !!!".to_string()),
    ] {
        let r = c.raw(req(auth.clone(), Some("2.17"))).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{auth:?}");
        assert!(r.headers[header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .starts_with("Basic "));
    }
    // Authentication is checked on every route, even before the version.
    let r = c
        .raw(
            Request::builder()
                .method(Method::DELETE)
                .uri("/v2/service_instances/x?service_id=a&plan_id=b")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    let r = c.raw(req(good(), None)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.body["description"]
        .as_str()
        .unwrap()
        .contains("X-Broker-API-Version"));
    let r = c.raw(req(good(), Some("banana"))).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    for v in ["1.0", "3.0", "2.11", "2.0"] {
        let r = c.raw(req(good(), Some(v))).await;
        assert_eq!(r.status, StatusCode::PRECONDITION_FAILED, "{v}");
    }
    for v in ["2.12", "2.14", "2.16", "2.17"] {
        let r = c.raw(req(good(), Some(v))).await;
        assert_eq!(r.status, StatusCode::OK, "{v}");
    }
    // Unknown routes answer in the OSB error shape too.
    let r = c.call(Method::GET, "/v2/nothing", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn catalog_lists_the_service_and_its_plans() {
    let c = ctx();
    let r = c.call(Method::GET, "/v2/catalog", None).await;
    assert_eq!(r.status, StatusCode::OK);
    let services = r.body["services"].as_array().unwrap();
    assert_eq!(services.len(), 1);
    let s = &services[0];
    assert_eq!(s["id"], SERVICE);
    assert_eq!(s["name"], "walarchive-postgresql");
    assert_eq!(s["bindable"], true);
    assert_eq!(s["instances_retrievable"], true);
    assert_eq!(s["bindings_retrievable"], true);
    assert_eq!(s["plan_updateable"], true);
    let plans = s["plans"].as_array().unwrap();
    assert_eq!(
        plans.iter().map(|p| p["id"].clone()).collect::<Vec<_>>(),
        vec![json!(PLAN1), json!(PLAN2)]
    );
    assert_eq!(plans[1]["metadata"]["nodeCount"], 2);
    let schema = &plans[0]["schemas"]["service_instance"]["create"]["parameters"];
    assert_eq!(schema["properties"]["node-count"]["maximum"], 5);
    assert!(schema["$schema"].as_str().unwrap().contains("draft-04"));
    // Clones at creation only.
    assert_eq!(schema["properties"]["clone-from"]["type"], "string");
    let at = schema["properties"]["clone-at"]["oneOf"]
        .as_array()
        .unwrap();
    assert_eq!(at[0]["format"], "date-time");
    assert_eq!(at[2]["required"], json!(["restore-point"]));
    let update = &plans[0]["schemas"]["service_instance"]["update"]["parameters"];
    assert_eq!(
        update["properties"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["node-count"]
    );
}

#[tokio::test]
async fn provisioning_is_asynchronous_and_idempotent() {
    let c = ctx();
    let body = provision_body(PLAN2, Some(json!({ "node-count": 3 })));

    let r = c.provision("inst-1", body.clone(), false).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["error"], "AsyncRequired");
    assert!(c.store.instance("inst-1").await.unwrap().is_none());

    let r = c.provision("inst-1", body.clone(), true).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let op = r.body["operation"].as_str().unwrap().to_string();
    // Issue 18: the instance's dashboard link (dashboard.rs checks what it opens).
    let link = r.body["dashboard_url"].as_str().unwrap().to_string();
    assert!(link.starts_with("http://127.0.0.1:0/dashboard/open/inst-1/"));

    let rec = c.store.instance("inst-1").await.unwrap().unwrap().value;
    assert_eq!(rec.state, InstanceState::Provisioning);
    assert_eq!(rec.node_count, 3);
    assert_eq!(rec.parameters.node_count, Some(3));
    assert_eq!(rec.repository, "s3://bucket/instances/inst-1");
    assert!((40000..=40009).contains(&rec.port));
    assert_eq!(rec.context.instance_name.as_deref(), Some("orders-db"));
    assert_eq!(
        c.store.port_owner(rec.port).await.unwrap().as_deref(),
        Some("inst-1")
    );
    let queued = c.store.operations_in_progress().await.unwrap();
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].value.id, op);
    assert_eq!(queued[0].value.kind, OperationKind::Provision);
    assert_eq!(queued[0].value.request.node_count, 3);
    // The worker was woken (a permit is stored for it).
    tokio::time::timeout(Duration::from_secs(1), c.state.provisioner.notified())
        .await
        .expect("the worker is notified");

    // Re-sent identical request while provisioning: 202 with the same operation.
    let r = c.provision("inst-1", body.clone(), true).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(r.body["operation"], op.as_str());
    // Different attributes: 409.
    for other in [
        provision_body(PLAN1, Some(json!({ "node-count": 3 }))),
        provision_body(PLAN2, Some(json!({ "node-count": 2 }))),
        provision_body(PLAN2, None),
    ] {
        let r = c.provision("inst-1", other, true).await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    }

    // last_operation follows the worker.
    let r = c.last_op("inst-1", Some(&op)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["state"], "in progress");
    c.store
        .set_progress("inst-1", &op, "Starting node 2 of 3")
        .await
        .unwrap();
    let r = c.last_op("inst-1", Some(&op)).await;
    assert_eq!(r.body["state"], "in progress");
    assert_eq!(r.body["description"], "Starting node 2 of 3");
    // Not retrievable while provisioning.
    let r = c
        .call(Method::GET, "/v2/service_instances/inst-1", None)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    c.finish("inst-1", true, "Cluster ready").await;
    let r = c.last_op("inst-1", Some(&op)).await;
    assert_eq!(r.body["state"], "succeeded");
    assert_eq!(r.body["description"], "Cluster ready");
    let r = c.last_op("inst-1", None).await;
    assert_eq!(r.body["state"], "succeeded");

    // Identical request once provisioned: 200 (even without accepts_incomplete).
    let r = c.provision("inst-1", body.clone(), true).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = c.provision("inst-1", body.clone(), false).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);

    let r = c
        .call(Method::GET, "/v2/service_instances/inst-1", None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let mut body = r.body;
    assert_eq!(
        body.as_object_mut().unwrap().remove("dashboard_url"),
        Some(json!(link))
    );
    // Its archive (an S3 bucket nobody serves here) cannot be read: the window is replaced
    // by why (clones.rs reads real ones). It runs the default major, 18, not sent.
    assert_eq!(
        body,
        json!({ "service_id": SERVICE, "plan_id": PLAN2,
                "parameters": { "node-count": 3, "postgresql-version": "18" },
                "metadata": { "attributes": { "restorable_window_error":
                    "The archive could not be read within 5 s; retry later." } } })
    );

    let r = c.last_op("inst-1", Some("no-such-operation")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = c.last_op("never-provisioned", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = c
        .call(Method::GET, "/v2/service_instances/never-provisioned", None)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn concurrent_identical_provisions_create_one_instance() {
    let c = ctx();
    let c = Arc::new(c);
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move {
                let r = c.provision("same", provision_body(PLAN1, None), true).await;
                (r.status, r.body["operation"].as_str().map(str::to_string))
            })
        })
        .collect();
    let mut ops = Vec::new();
    for t in tasks {
        let (status, op) = t.await.unwrap();
        assert_eq!(status, StatusCode::ACCEPTED);
        ops.push(op.unwrap());
    }
    ops.dedup();
    assert_eq!(ops.len(), 1, "one operation: {ops:?}");
    // Different ids get different ports.
    let r = c
        .provision("other", provision_body(PLAN1, None), true)
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let a = c.store.instance("same").await.unwrap().unwrap().value.port;
    let b = c.store.instance("other").await.unwrap().unwrap().value.port;
    assert_ne!(a, b);
}

#[tokio::test]
async fn bad_requests_change_nothing() {
    let c = ctx();
    let cases: Vec<(Value, &str)> = vec![
        (
            provision_body(PLAN1, Some(json!({ "node-count": 0 }))),
            "InvalidParameters",
        ),
        (
            provision_body(PLAN1, Some(json!({ "node-count": 6 }))),
            "InvalidParameters",
        ),
        (
            provision_body(PLAN1, Some(json!({ "node-count": "2" }))),
            "InvalidParameters",
        ),
        (
            provision_body(PLAN1, Some(json!({ "node-count": 2.5 }))),
            "InvalidParameters",
        ),
        (
            provision_body(PLAN1, Some(json!({ "nodes": 2 }))),
            "InvalidParameters",
        ),
        (provision_body(PLAN1, Some(json!([2]))), "InvalidParameters"),
        (provision_body("no-such-plan", None), "BadRequest"),
        (
            {
                let mut b = provision_body(PLAN1, None);
                b["service_id"] = json!("no-such-service");
                b
            },
            "BadRequest",
        ),
        (
            {
                let mut b = provision_body(PLAN1, None);
                b.as_object_mut().unwrap().remove("organization_guid");
                b
            },
            "BadRequest",
        ),
        (
            {
                let mut b = provision_body(PLAN1, None);
                b["space_guid"] = json!("");
                b
            },
            "BadRequest",
        ),
    ];
    for (body, error) in cases {
        let r = c.provision("bad", body.clone(), true).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.body);
        assert_eq!(r.body["error"], error, "{body}");
        assert!(!r.body["description"].as_str().unwrap().is_empty());
    }
    let r = c
        .call(
            Method::PUT,
            "/v2/service_instances/bad?accepts_incomplete=true",
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = c
        .raw(
            Request::builder()
                .method(Method::PUT)
                .uri("/v2/service_instances/bad?accepts_incomplete=true")
                .header(header::AUTHORIZATION, basic("platform", PASSWORD))
                .header("X-Broker-API-Version", "2.17")
                .body(Body::from("{not json"))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    // Ids that cannot be used: not UTF-8, control characters (log lines), too long.
    let long = "x".repeat(256);
    for (id, message) in [
        ("%FF", "The ids in the URL must be percent-encoded UTF-8."),
        ("a%0Ab", "instance_id must not contain control characters."),
        ("nul%00", "instance_id must not contain control characters."),
        (long.as_str(), "instance_id must be at most 255 bytes long."),
    ] {
        let r = c.provision(id, provision_body(PLAN1, None), true).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{id}: {}", r.body);
        assert_eq!(r.body["error"], "BadRequest", "{id}");
        assert_eq!(r.body["description"], message, "{id}");
    }
    let r = c
        .call(
            Method::PUT,
            "/v2/service_instances/ok/service_bindings/b%0A1",
            Some(json!({"service_id": SERVICE, "plan_id": PLAN1})),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert_eq!(
        r.body["description"],
        "binding_id must not contain control characters."
    );
    assert!(c.store.instances().await.unwrap().is_empty());
    assert!(c.store.operations_in_progress().await.unwrap().is_empty());

    // Valid parameters at the limits are accepted.
    for (id, n) in [("n1", 1), ("n5", 5)] {
        let r = c
            .provision(
                id,
                provision_body(PLAN1, Some(json!({ "node-count": n }))),
                true,
            )
            .await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    }
}

/// Ids are the platform's: any of them gets a repository of its own under the base, named
/// safely (`.` is not the base, `..` not above it, `a/b` not inside `a`, and `x.2` is not the
/// second incarnation of `x`).
#[tokio::test]
async fn hostile_ids_get_repositories_of_their_own() {
    let c = ctx();
    let base = "s3://bucket/instances";
    let cases = [
        ("%2E", ".", "__2E"),
        ("%2E%2E", "..", "__2E_2E"),
        ("%252e%252e", "%2e%2e", "__252e_252e"),
        ("wal", "wal", "wal"),
        ("a%2Fb", "a/b", "_a_2Fb"),
        ("a", "a", "a"),
        ("%E6%95%B0-%C3%BC", "数-ü", "__E6_95_B0-_C3_BC"),
        ("x.2", "x.2", "_x_2E2"),
        ("x", "x", "x"),
    ];
    let mut repos = std::collections::HashSet::new();
    for (in_url, id, name) in cases {
        let r = c.provision(in_url, provision_body(PLAN1, None), true).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{id}: {}", r.body);
        let i = c.store.instance(id).await.unwrap().expect(id).value;
        assert_eq!(i.repository, format!("{base}/{name}"), "{id}");
        assert_eq!(i.path_name.as_deref(), Some(name), "{id}");
        assert!(repos.insert(i.repository), "{id}");
    }
    // The second incarnation of `x` is `x.2`'s neighbour, not `x.2`'s repository.
    c.finish("x", true, "ready").await;
    assert_eq!(c.deprovision("x", true).await.status, StatusCode::ACCEPTED);
    c.finish("x", true, "deleted").await;
    let r = c.provision("x", provision_body(PLAN1, None), true).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let i = c.store.instance("x").await.unwrap().unwrap().value;
    assert_eq!(
        (i.incarnation, i.repository.as_str()),
        (2, "s3://bucket/instances/x.2")
    );
    assert!(repos.insert(i.repository));
    // A 255-byte id that escapes too long is hashed.
    let long = format!("L.{}", "x".repeat(253));
    let r = c.provision(&long, provision_body(PLAN1, None), true).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let i = c.store.instance(&long).await.unwrap().unwrap().value;
    let name = i.repository.strip_prefix("s3://bucket/instances/").unwrap();
    assert!(name.starts_with("__sha256-") && name.len() == 49, "{name}");
    // The platform reads them back under the ids it chose.
    let r = c.last_op("a%2Fb", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}

#[tokio::test]
async fn updates_and_concurrency_errors() {
    let c = ctx();
    c.ready_instance("upd").await;
    let patch = |body: Value, accepts: bool| {
        let q = if accepts {
            "?accepts_incomplete=true"
        } else {
            ""
        };
        let c = &c;
        async move {
            c.call(
                Method::PATCH,
                &format!("/v2/service_instances/upd{q}"),
                Some(body),
            )
            .await
        }
    };
    let before = c.store.instance("upd").await.unwrap().unwrap();

    // Bad parameters: 400 and nothing changes.
    for p in [json!({ "node-count": 9 }), json!({ "size": "xl" })] {
        let r = patch(json!({ "service_id": SERVICE, "parameters": p }), true).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
    }
    let r = patch(json!({ "plan_id": PLAN2 }), true).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "service_id is required");
    let r = patch(json!({ "service_id": SERVICE, "plan_id": "nope" }), true).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    // No change: 200 {}.
    let r = patch(json!({ "service_id": SERVICE, "plan_id": PLAN1 }), false).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, json!({}));
    assert_eq!(c.store.instance("upd").await.unwrap().unwrap(), before);

    let change = json!({ "service_id": SERVICE, "plan_id": PLAN2,
                         "previous_values": { "plan_id": PLAN1 } });
    let r = patch(change.clone(), false).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["error"], "AsyncRequired");
    let r = patch(change.clone(), true).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let op = r.body["operation"].as_str().unwrap().to_string();
    // Re-sent: same operation. Another update or a delete meanwhile: ConcurrencyError.
    let r = patch(change.clone(), true).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(r.body["operation"], op.as_str());
    let r = patch(
        json!({ "service_id": SERVICE, "parameters": { "node-count": 4 } }),
        true,
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["error"], "ConcurrencyError");
    let r = c.deprovision("upd", true).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["error"], "ConcurrencyError");
    let r = c.call(Method::GET, "/v2/service_instances/upd", None).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["error"], "ConcurrencyError");
    // The plan changes only when the worker succeeds.
    let rec = c.store.instance("upd").await.unwrap().unwrap().value;
    assert_eq!(rec.state, InstanceState::Updating);
    assert_eq!(rec.plan_id, PLAN1);
    c.finish("upd", true, "Now two nodes").await;
    let rec = c.store.instance("upd").await.unwrap().unwrap().value;
    assert_eq!(
        (rec.state, rec.plan_id.as_str(), rec.node_count),
        (InstanceState::Ready, PLAN2, 2)
    );
    let r = c.last_op("upd", Some(&op)).await;
    assert_eq!(r.body["state"], "succeeded");

    // A failed update: the instance keeps its settings and stays usable.
    let r = patch(
        json!({ "service_id": SERVICE, "parameters": { "node-count": 3 } }),
        true,
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let op2 = r.body["operation"].as_str().unwrap().to_string();
    c.finish("upd", false, "No cell left in a third zone").await;
    let r = c.last_op("upd", Some(&op2)).await;
    assert_eq!(r.body["state"], "failed");
    assert_eq!(r.body["description"], "No cell left in a third zone");
    let rec = c.store.instance("upd").await.unwrap().unwrap().value;
    assert_eq!((rec.state, rec.node_count), (InstanceState::Ready, 2));
    // The earlier operation is still known.
    let r = c.last_op("upd", Some(&op)).await;
    assert_eq!(r.body["state"], "succeeded");

    let r = c
        .call(
            Method::PATCH,
            "/v2/service_instances/unknown?accepts_incomplete=true",
            Some(json!({ "service_id": SERVICE, "plan_id": PLAN2 })),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn deprovisioning_and_orphan_mitigation() {
    let c = ctx();
    // Unknown instance: 410 {}.
    let r = c.deprovision("ghost", true).await;
    assert_eq!(r.status, StatusCode::GONE);
    assert_eq!(r.body, json!({}));
    // service_id and plan_id are required.
    let r = c
        .call(
            Method::DELETE,
            "/v2/service_instances/ghost?accepts_incomplete=true&plan_id=x",
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    // DELETE while provisioning: accepted, the provision is halted and recorded so.
    let r = c.provision("dep", provision_body(PLAN1, None), true).await;
    let prov = r.body["operation"].as_str().unwrap().to_string();
    let port = c.store.instance("dep").await.unwrap().unwrap().value.port;
    let r = c.deprovision("dep", false).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["error"], "AsyncRequired");
    let r = c.deprovision("dep", true).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let dep = r.body["operation"].as_str().unwrap().to_string();
    assert_ne!(dep, prov);
    let op = c.store.operation("dep").await.unwrap().unwrap().value;
    assert_eq!(op.kind, OperationKind::Deprovision);
    assert_eq!(op.interrupted.as_deref(), Some(prov.as_str()));
    assert_eq!(
        c.store.instance("dep").await.unwrap().unwrap().value.state,
        InstanceState::Deprovisioning
    );
    // The worker's provision is superseded.
    assert!(matches!(
        c.store
            .set_progress("dep", &prov, "still provisioning")
            .await,
        Err(walarchive_broker::StoreError::Superseded { .. })
    ));
    let r = c.last_op("dep", Some(&prov)).await;
    assert_eq!(r.body["state"], "failed");
    let r = c.last_op("dep", Some(&dep)).await;
    assert_eq!(r.body["state"], "in progress");
    // Re-sent DELETE: same operation; PUT and PATCH meanwhile: ConcurrencyError.
    let r = c.deprovision("dep", true).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(r.body["operation"], dep.as_str());
    let r = c.provision("dep", provision_body(PLAN1, None), true).await;
    assert_eq!(r.body["error"], "ConcurrencyError");
    let r = c
        .call(
            Method::PATCH,
            "/v2/service_instances/dep?accepts_incomplete=true",
            Some(json!({ "service_id": SERVICE, "plan_id": PLAN2 })),
        )
        .await;
    assert_eq!(r.body["error"], "ConcurrencyError");

    c.finish("dep", true, "Deleted").await;
    let r = c.last_op("dep", Some(&dep)).await;
    assert_eq!(r.status, StatusCode::GONE);
    let r = c.deprovision("dep", true).await;
    assert_eq!(r.status, StatusCode::GONE);
    assert_eq!(c.store.port_owner(port).await.unwrap(), None);
    // The deleted incarnation is still found by name, with its repository.
    let found = c
        .store
        .find_by_name("org-1", "space-1", "orders-db")
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    assert!(found[0].deleted);
    assert_eq!(found[0].incarnation, 1);
    assert_eq!(found[0].repository, "s3://bucket/instances/dep");
    let r = c.call(Method::GET, "/v2/service_instances/dep", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // The id can be provisioned again: a new incarnation with its own repository (the old
    // archive is kept), whose history follows the old operations.
    let r = c.provision("dep", provision_body(PLAN1, None), false).await;
    assert_eq!(r.body["error"], "AsyncRequired");
    let r = c.provision("dep", provision_body(PLAN1, None), true).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let prov2 = r.body["operation"].as_str().unwrap().to_string();
    let rec = c.store.instance("dep").await.unwrap().unwrap().value;
    assert_eq!(rec.state, InstanceState::Provisioning);
    assert_eq!(rec.incarnation, 2);
    assert_eq!(rec.repository, "s3://bucket/instances/dep.2");
    assert_eq!(
        rec.previous
            .iter()
            .map(|i| (i.n, i.repository.as_str()))
            .collect::<Vec<_>>(),
        [(1, "s3://bucket/instances/dep")]
    );
    assert_eq!(rec.deleted_at, None);
    assert_eq!(
        c.store.port_owner(rec.port).await.unwrap().as_deref(),
        Some("dep")
    );
    let op = c.store.operation("dep").await.unwrap().unwrap().value;
    assert_eq!(op.id, prov2);
    assert!(op.find(&dep).is_some());
    // Re-sent: the same operation.
    let r = c.provision("dep", provision_body(PLAN1, None), true).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(r.body["operation"], prov2.as_str());
    let found = c
        .store
        .find_by_name("org-1", "space-1", "orders-db")
        .await
        .unwrap();
    assert_eq!(found.len(), 2);
    assert!(found[0].deleted && !found[1].deleted);
    assert_eq!(found[1].repository, "s3://bucket/instances/dep.2");
    // Its deprovision marks only its own catalog entry deleted.
    c.finish("dep", true, "ready").await;
    let r = c.deprovision("dep", true).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    c.finish("dep", true, "Deleted").await;
    let found = c
        .store
        .find_by_name("org-1", "space-1", "orders-db")
        .await
        .unwrap();
    assert!(found.iter().all(|e| e.deleted), "{found:?}");
    let r = c.provision("dep", provision_body(PLAN1, None), true).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let rec = c.store.instance("dep").await.unwrap().unwrap().value;
    assert_eq!(rec.repository, "s3://bucket/instances/dep.3");
    let r = c.call(Method::GET, "/v2/service_instances/dep", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // A failed provision: last_operation says failed; DELETE cleans up.
    let r = c
        .provision("broken", provision_body(PLAN1, None), true)
        .await;
    let prov = r.body["operation"].as_str().unwrap().to_string();
    c.finish("broken", false, "No cell available").await;
    let r = c.last_op("broken", Some(&prov)).await;
    assert_eq!(r.body["state"], "failed");
    assert_eq!(r.body["description"], "No cell available");
    let r = c
        .call(Method::GET, "/v2/service_instances/broken", None)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = c.deprovision("broken", true).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let op = c.store.operation("broken").await.unwrap().unwrap().value;
    assert_eq!(op.interrupted, None);
    assert_eq!(op.state, OperationState::InProgress);
    // A failed deprovision can be retried.
    c.finish("broken", false, "Cell unreachable").await;
    let r = c.last_op("broken", None).await;
    assert_eq!(r.body["state"], "failed");
    let r = c.deprovision("broken", true).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn bindings() {
    let c = ctx();
    let bind_uri =
        |iid: &str, bid: &str| format!("/v2/service_instances/{iid}/service_bindings/{bid}");
    let bind_body = |app: &str| {
        json!({ "service_id": SERVICE, "plan_id": PLAN1,
                                        "bind_resource": { "app_guid": app } })
    };
    let unbind_uri = |iid: &str, bid: &str| {
        format!(
            "/v2/service_instances/{iid}/service_bindings/{bid}?service_id={SERVICE}&plan_id={PLAN1}"
        )
    };

    let r = c
        .call(Method::PUT, &bind_uri("nope", "b1"), Some(bind_body("app")))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // Not ready yet: ConcurrencyError.
    let r = c.provision("bnd", provision_body(PLAN1, None), true).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let r = c
        .call(Method::PUT, &bind_uri("bnd", "b1"), Some(bind_body("app")))
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["error"], "ConcurrencyError");
    c.finish("bnd", true, "ready").await;
    let port = c.store.instance("bnd").await.unwrap().unwrap().value.port;

    // Parameters are refused; service/plan must be the instance's.
    let mut with_params = bind_body("app");
    with_params["parameters"] = json!({ "role": "admin" });
    let r = c
        .call(Method::PUT, &bind_uri("bnd", "b1"), Some(with_params))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let mut other_plan = bind_body("app");
    other_plan["plan_id"] = json!(PLAN2);
    let r = c
        .call(Method::PUT, &bind_uri("bnd", "b1"), Some(other_plan))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(c.store.binding("bnd", "b1").await.unwrap().is_none());

    let r = c
        .call(Method::PUT, &bind_uri("bnd", "b1"), Some(bind_body("app")))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let creds = r.body["credentials"].clone();
    assert_eq!(creds["hostname"], "router.test");
    assert_eq!(creds["port"], port);
    assert_eq!(creds["username"], "u_b1");
    for k in ["uri", "jdbcUrl", "name", "password"] {
        assert!(creds[k].is_string(), "{k}");
    }
    // Identical: 200 with the same credentials; different: 409.
    let r = c
        .call(Method::PUT, &bind_uri("bnd", "b1"), Some(bind_body("app")))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["credentials"], creds);
    let r = c
        .call(
            Method::PUT,
            &bind_uri("bnd", "b1"),
            Some(bind_body("other-app")),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let r = c.call(Method::GET, &bind_uri("bnd", "b1"), None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["credentials"], creds);
    assert_eq!(
        c.binder.calls.lock().unwrap().as_slice(),
        ["bind bnd/b1".to_string()]
    );

    // A failing binder: 500 without internal detail; the binding does not exist.
    c.binder.fail.store(true, Ordering::SeqCst);
    let r = c
        .call(Method::PUT, &bind_uri("bnd", "b2"), Some(bind_body("app")))
        .await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(!r.body.to_string().contains("10.9.8.7"), "{}", r.body);
    let r = c.call(Method::GET, &bind_uri("bnd", "b2"), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // Retried once the binder works again.
    c.binder.fail.store(false, Ordering::SeqCst);
    let r = c
        .call(Method::PUT, &bind_uri("bnd", "b2"), Some(bind_body("app")))
        .await;
    assert_eq!(r.status, StatusCode::CREATED);

    // Unbind: query parameters required; 200 {}; then 410.
    let r = c
        .call(
            Method::DELETE,
            "/v2/service_instances/bnd/service_bindings/b1",
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = c.call(Method::DELETE, &unbind_uri("bnd", "b1"), None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, json!({}));
    assert!(c
        .binder
        .calls
        .lock()
        .unwrap()
        .contains(&"unbind bnd/b1".to_string()));
    let r = c.call(Method::DELETE, &unbind_uri("bnd", "b1"), None).await;
    assert_eq!(r.status, StatusCode::GONE);
    assert_eq!(r.body, json!({}));
    let r = c.call(Method::GET, &bind_uri("bnd", "b1"), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = c
        .call(Method::DELETE, &unbind_uri("bnd", "never"), None)
        .await;
    assert_eq!(r.status, StatusCode::GONE);
    assert_eq!(c.store.bindings("bnd").await.unwrap().len(), 1);
}
