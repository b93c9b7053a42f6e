//! The self-test's Open Service Broker client: the broker's own API as a platform reaches
//! it (`listen`, the broker's CA, the platform's credentials), so that a misconfigured
//! certificate, password or route fails the self-test as it would fail the platform.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::SELFTEST_ORG;
use crate::config::BrokerConfig;
use crate::secrets::Secret;
use crate::state::Credentials;

/// The OSB API version the self-test speaks.
const OSB_VERSION: &str = "2.17";

/// A platform's view of the broker.
pub(super) struct Api {
    http: reqwest::Client,
    base: String,
    username: String,
    password: Secret,
    service_id: String,
    plan_id: String,
}

/// Where a client on this machine reaches `listen`: an unspecified address (all interfaces)
/// is reached on the loopback interface of its family.
fn reachable(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(a) if a.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(a) if a.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

impl Api {
    /// A client of the API `config` serves, with the first plan of its service.
    pub(super) fn new(config: &BrokerConfig) -> Result<Api, String> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(60));
        let scheme = match &config.tls {
            Some(files) => {
                let pem = std::fs::read(&files.ca_file)
                    .map_err(|e| format!("cannot read {}: {e}", files.ca_file.display()))?;
                let cas = reqwest::Certificate::from_pem_bundle(&pem)
                    .map_err(|e| format!("{}: {e}", files.ca_file.display()))?;
                builder = builder.tls_certs_only(cas);
                "https"
            }
            None => "http",
        };
        let http = builder
            .build()
            .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
        let plan = config
            .service
            .plans
            .first()
            .ok_or("the service has no plan")?;
        Ok(Api {
            http,
            base: format!("{scheme}://{}", reachable(config.listen)),
            username: config.credentials.username.clone(),
            password: config.credentials.password.clone(),
            service_id: config.service.id.clone(),
            plan_id: plan.id.clone(),
        })
    }

    /// The API's address.
    pub(super) fn base(&self) -> &str {
        &self.base
    }

    /// The plan the self-test provisions.
    pub(super) fn plan_id(&self) -> &str {
        &self.plan_id
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), String> {
        let url = format!("{}{path}", self.base);
        let mut req = self
            .http
            .request(method.clone(), &url)
            .basic_auth(&self.username, Some(self.password.expose()))
            .header("X-Broker-API-Version", OSB_VERSION);
        if let Some(b) = body {
            req = req
                .header("Content-Type", "application/json")
                .body(b.to_string());
        }
        // The full chain (a TLS error is the interesting part of "error sending request").
        let resp = req.send().await.map_err(|e| {
            let mut text = format!("{method} {url}: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text.push_str(&format!(": {s}"));
                source = s.source();
            }
            text
        })?;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, v))
    }

    fn expect(what: &str, ok: &[u16], (status, body): (u16, Value)) -> Result<Value, String> {
        if ok.contains(&status) {
            Ok(body)
        } else {
            let detail = body["description"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| body.to_string());
            Err(format!("{what}: HTTP {status}: {detail}"))
        }
    }

    /// `GET /v2/catalog`.
    pub(super) async fn catalog(&self) -> Result<Value, String> {
        let r = self.send(reqwest::Method::GET, "/v2/catalog", None).await?;
        Self::expect("GET /v2/catalog", &[200], r)
    }

    /// Provisions `id` in the self-test's organization and space with `parameters`; the
    /// operation to poll.
    pub(super) async fn provision(&self, id: &str, parameters: Value) -> Result<String, String> {
        let body = json!({
            "service_id": self.service_id,
            "plan_id": self.plan_id,
            "organization_guid": SELFTEST_ORG,
            "space_guid": SELFTEST_ORG,
            "context": {
                "platform": "walarchive-selftest",
                "organization_guid": SELFTEST_ORG,
                "space_guid": SELFTEST_ORG,
                "instance_name": id,
            },
            "parameters": parameters,
        });
        let r = self
            .send(
                reqwest::Method::PUT,
                &format!("/v2/service_instances/{id}?accepts_incomplete=true"),
                Some(body),
            )
            .await?;
        let b = Self::expect("provision", &[200, 201, 202], r)?;
        Ok(b["operation"].as_str().unwrap_or_default().to_string())
    }

    /// Deprovisions `id`: `None` when it does not exist (410), else the operation to poll.
    pub(super) async fn deprovision(&self, id: &str) -> Result<Option<String>, String> {
        let path = format!(
            "/v2/service_instances/{id}?accepts_incomplete=true&service_id={}&plan_id={}",
            self.service_id, self.plan_id
        );
        let (status, body) = self.send(reqwest::Method::DELETE, &path, None).await?;
        if status == 410 {
            return Ok(None);
        }
        let b = Self::expect("deprovision", &[200, 202], (status, body))?;
        Ok(Some(
            b["operation"].as_str().unwrap_or_default().to_string(),
        ))
    }

    /// Polls `last_operation` until the operation ends: `Ok` when it succeeded (or, `gone_ok`,
    /// when the instance is gone), else the operation's description.
    pub(super) async fn wait(
        &self,
        id: &str,
        operation: &str,
        timeout: Duration,
        gone_ok: bool,
    ) -> Result<(), String> {
        let start = Instant::now();
        let mut path = format!("/v2/service_instances/{id}/last_operation");
        if !operation.is_empty() {
            path.push_str(&format!("?operation={operation}"));
        }
        let mut last = String::new();
        loop {
            let (status, body) = self.send(reqwest::Method::GET, &path, None).await?;
            if status == 410 && gone_ok {
                return Ok(());
            }
            let body = Self::expect("last_operation", &[200], (status, body))?;
            last = body["description"].as_str().unwrap_or(&last).to_string();
            match body["state"].as_str() {
                Some("succeeded") => return Ok(()),
                Some("failed") => return Err(format!("the operation failed: {last}")),
                _ => {}
            }
            if start.elapsed() > timeout {
                return Err(format!(
                    "the operation did not finish within {} s (last: {last})",
                    timeout.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    /// Creates binding `binding` of `id`.
    pub(super) async fn bind(&self, id: &str, binding: &str) -> Result<Credentials, String> {
        let r = self
            .send(
                reqwest::Method::PUT,
                &format!("/v2/service_instances/{id}/service_bindings/{binding}"),
                Some(json!({ "service_id": self.service_id, "plan_id": self.plan_id })),
            )
            .await?;
        let body = Self::expect("bind", &[200, 201], r)?;
        serde_json::from_value(body["credentials"].clone())
            .map_err(|e| format!("bind: unexpected credentials: {e}"))
    }
}
