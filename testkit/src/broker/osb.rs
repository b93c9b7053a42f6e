//! The broker's OSB API in the test process (axum `oneshot`), driven as a platform does.
//!
//! Why in-process: the URL goes to the router exactly as written here, so a test can send ids
//! that an HTTP client would normalise (`%2E%2E`) or that no platform should send; the real
//! `serve` process over TLS is tested in serve.rs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use base64::Engine as _;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;
use walarchive_broker::cell::CellBinder;
use walarchive_broker::{app, AppState, BrokerConfig, EtcdClient, Store, Worker};

/// The platform's credentials in every test configuration.
pub const USER: &str = "platform";
/// Its password.
pub const PASSWORD: &str = "platform-pw";

/// One broker's API and store, over the etcd its configuration names.
pub struct Api {
    /// The OSB router.
    pub app: Router,
    /// Its state (configuration, the worker's wake-up).
    pub state: AppState,
    /// The records.
    pub store: Store,
    /// The service id requests name.
    pub service: String,
    /// The plan id requests name.
    pub plan: String,
}

impl Api {
    /// The API of a broker configured by `text` (binding through its cells), offering
    /// `service` with `plan`.
    pub fn new(text: &str, service: &str, plan: &str) -> Api {
        let config = BrokerConfig::parse(text, "test").expect("configuration");
        let store = Store::new(
            EtcdClient::from_config(&config.etcd).unwrap(),
            config.etcd.prefix.clone(),
            config.keyring(),
        );
        let binder = Arc::new(CellBinder::from_config(&config).expect("the cells' clients"));
        let mut state = AppState::new(config, store.clone(), binder.clone());
        state.cell_majors = Some(binder);
        Api {
            app: app(state.clone()),
            state,
            store,
            service: service.into(),
            plan: plan.into(),
        }
    }

    /// A provisioning worker for this broker, running until aborted.
    pub fn spawn_worker(&self) -> tokio::task::JoinHandle<()> {
        let w = Worker::new(
            self.state.config.clone(),
            self.store.clone(),
            self.state.provisioner.clone(),
        )
        .expect("worker");
        tokio::spawn(w.run(std::future::pending()))
    }

    /// `method uri` with `body`: the status and the JSON body (`Null` when there is none).
    pub async fn call(
        &self,
        method: Method,
        uri: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let auth = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
        );
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, auth)
            .header("X-Broker-API-Version", "2.17")
            .header(header::CONTENT_TYPE, "application/json")
            .body(match body {
                Some(b) => Body::from(b.to_string()),
                None => Body::empty(),
            })
            .unwrap();
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// Provisions `id` (as written in the URL, percent-encoded) with `nodes` nodes; the
    /// operation id.
    pub async fn provision(&self, id: &str, nodes: u8) -> String {
        let (s, b) = self.provision_with(id, json!({"node-count": nodes})).await;
        assert_eq!(s, StatusCode::ACCEPTED, "provision {id}: {b}");
        b["operation"].as_str().unwrap().to_string()
    }

    /// `PUT` of instance `id` (also its name) with `parameters`, whatever the answer: its
    /// status and body.
    pub async fn provision_with(&self, id: &str, parameters: Value) -> (StatusCode, Value) {
        self.call(
            Method::PUT,
            &format!("/v2/service_instances/{id}?accepts_incomplete=true"),
            Some(json!({
                "service_id": self.service, "plan_id": self.plan,
                "organization_guid": "org", "space_guid": "space",
                "context": {"platform": "test", "instance_name": id},
                "parameters": parameters,
            })),
        )
        .await
    }

    /// Changes the node count of `id`; the operation id.
    pub async fn update(&self, id: &str, nodes: u8) -> String {
        let (s, b) = self
            .call(
                Method::PATCH,
                &format!("/v2/service_instances/{id}?accepts_incomplete=true"),
                Some(json!({"service_id": self.service, "parameters": {"node-count": nodes}})),
            )
            .await;
        assert_eq!(s, StatusCode::ACCEPTED, "update {id}: {b}");
        b["operation"].as_str().unwrap().to_string()
    }

    /// Binds `binding` to `id`: the credentials' URI.
    pub async fn bind(&self, id: &str, binding: &str) -> String {
        let (s, b) = self
            .call(
                Method::PUT,
                &format!("/v2/service_instances/{id}/service_bindings/{binding}"),
                Some(json!({"service_id": self.service, "plan_id": self.plan})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "bind {id}: {b}");
        b["credentials"]["uri"].as_str().unwrap().to_string()
    }

    /// Deprovisions `id`; the operation id.
    pub async fn deprovision(&self, id: &str) -> String {
        let (s, b) = self
            .call(
                Method::DELETE,
                &format!(
                    "/v2/service_instances/{id}?accepts_incomplete=true&service_id={}&plan_id={}",
                    self.service, self.plan
                ),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::ACCEPTED, "deprovision {id}: {b}");
        b["operation"].as_str().unwrap().to_string()
    }

    /// Polls last_operation until it is no longer in progress; the descriptions seen and
    /// the final (status, body).
    pub async fn wait_op(
        &self,
        id: &str,
        op: &str,
        timeout: Duration,
        diag: &dyn Fn() -> String,
    ) -> (Vec<String>, StatusCode, Value) {
        let start = Instant::now();
        let mut seen = Vec::new();
        loop {
            let (s, b) = self
                .call(
                    Method::GET,
                    &format!("/v2/service_instances/{id}/last_operation?operation={op}"),
                    None,
                )
                .await;
            if s == StatusCode::OK && b["state"] == "in progress" {
                let d = b["description"].as_str().unwrap_or_default().to_string();
                if seen.last() != Some(&d) {
                    eprintln!("  {id}: {d}");
                    seen.push(d);
                }
            } else {
                eprintln!(
                    "{id} operation done in {:.1} s: {s} {b}",
                    start.elapsed().as_secs_f64()
                );
                return (seen, s, b);
            }
            assert!(
                start.elapsed() < timeout,
                "operation {op} of {id} timed out\n{}",
                diag()
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// [`Api::wait_op`], asserting that the operation succeeded.
    pub async fn wait_succeeded(
        &self,
        id: &str,
        op: &str,
        timeout: Duration,
        diag: &dyn Fn() -> String,
    ) -> Vec<String> {
        let (seen, s, b) = self.wait_op(id, op, timeout, diag).await;
        assert_eq!(
            (s, b["state"].as_str()),
            (StatusCode::OK, Some("succeeded")),
            "{id}: {b}\n{}",
            diag()
        );
        seen
    }
}
