//! What a platform and an application do against the single-machine system: a small Open
//! Service Broker client ([`Osb`]), a write through a binding's credentials
//! ([`write_probe`]) and `--demo`. Used by `dev`, the end-to-end test and the benchmark.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{Dev, DevError, OSB_VERSION, PLAN_HA, SERVICE_ID};
use crate::secrets::Secret;
use crate::state::Credentials;

/// A small Open Service Broker client (what a platform does, as curl would).
#[derive(Clone)]
pub struct Osb {
    pub(super) http: reqwest::Client,
    pub(super) base: String,
    pub(super) username: String,
    pub(super) password: Secret,
}

impl std::fmt::Debug for Osb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Osb")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl Osb {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), DevError> {
        let url = format!("{}{path}", self.base);
        let mut req = self
            .http
            .request(method, &url)
            .basic_auth(&self.username, Some(self.password.expose()))
            .header("X-Broker-API-Version", OSB_VERSION);
        if let Some(b) = body {
            req = req
                .header("Content-Type", "application/json")
                .body(b.to_string());
        }
        let resp = req
            .send()
            .await
            .map_err(|e| DevError::Failed(format!("{url}: {e}")))?;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, v))
    }

    fn expect(what: &str, ok: &[u16], (status, body): (u16, Value)) -> Result<Value, DevError> {
        if ok.contains(&status) {
            Ok(body)
        } else {
            Err(DevError::Failed(format!("{what}: HTTP {status}: {body}")))
        }
    }

    /// `GET path`, expecting 200.
    pub async fn get(&self, path: &str) -> Result<Value, DevError> {
        Self::expect(
            path,
            &[200],
            self.send(reqwest::Method::GET, path, None).await?,
        )
    }

    /// Provisions `instance_id` with `plan_id` (asynchronously; 202 or 200).
    pub async fn provision(&self, instance_id: &str, plan_id: &str) -> Result<(), DevError> {
        self.provision_with(instance_id, plan_id, json!({}))
            .await
            .map(|_| ())
    }

    /// [`Osb::provision`] with `parameters` (`clone-from`, ...): the answer's body (a
    /// clone's 202 says in `metadata` what it copies). The instance's name is its id.
    pub async fn provision_with(
        &self,
        instance_id: &str,
        plan_id: &str,
        parameters: Value,
    ) -> Result<Value, DevError> {
        let body = json!({
            "service_id": SERVICE_ID,
            "plan_id": plan_id,
            "organization_guid": "dev-org",
            "space_guid": "dev-space",
            "context": { "platform": "dev", "instance_name": instance_id },
            "parameters": parameters,
        });
        let r = self
            .send(
                reqwest::Method::PUT,
                &format!("/v2/service_instances/{instance_id}?accepts_incomplete=true"),
                Some(body),
            )
            .await?;
        Self::expect("provision", &[200, 201, 202], r)
    }

    /// Deprovisions `instance_id` (asynchronously).
    pub async fn deprovision(&self, instance_id: &str, plan_id: &str) -> Result<(), DevError> {
        let r = self
            .send(
                reqwest::Method::DELETE,
                &format!(
                    "/v2/service_instances/{instance_id}?accepts_incomplete=true&service_id={SERVICE_ID}&plan_id={plan_id}"
                ),
                None,
            )
            .await?;
        Self::expect("deprovision", &[200, 202, 410], r).map(|_| ())
    }

    /// Polls `last_operation` every second until the operation ends; `progress` sees each
    /// new description. `Ok(true)` when it succeeded (or the instance is gone after a
    /// deprovision).
    pub async fn wait_operation(
        &self,
        instance_id: &str,
        timeout: Duration,
        mut progress: impl FnMut(&str),
    ) -> Result<bool, DevError> {
        let start = Instant::now();
        let mut last = String::new();
        loop {
            let (status, body) = self
                .send(
                    reqwest::Method::GET,
                    &format!("/v2/service_instances/{instance_id}/last_operation"),
                    None,
                )
                .await?;
            if status == 410 {
                return Ok(true);
            }
            let body = Self::expect("last_operation", &[200], (status, body))?;
            let desc = body["description"].as_str().unwrap_or("").to_string();
            if desc != last {
                progress(&desc);
                last = desc;
            }
            match body["state"].as_str() {
                Some("succeeded") => return Ok(true),
                Some("failed") => return Ok(false),
                _ => {}
            }
            if start.elapsed() > timeout {
                return Err(DevError::Failed(format!(
                    "the operation on {instance_id} did not finish within {timeout:?}"
                )));
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Creates binding `binding_id` of `instance_id`.
    pub async fn bind(
        &self,
        instance_id: &str,
        binding_id: &str,
        plan_id: &str,
    ) -> Result<Credentials, DevError> {
        let r = self
            .send(
                reqwest::Method::PUT,
                &format!("/v2/service_instances/{instance_id}/service_bindings/{binding_id}"),
                Some(json!({ "service_id": SERVICE_ID, "plan_id": plan_id })),
            )
            .await?;
        let body = Self::expect("bind", &[200, 201], r)?;
        serde_json::from_value(body["credentials"].clone())
            .map_err(|e| DevError::Failed(format!("bind: unexpected credentials: {e}")))
    }
}

/// Connects with `uri` (a binding's credentials) and writes a row; the server's port.
pub async fn write_probe(uri: &str, timeout: Duration) -> Result<i32, DevError> {
    let mut cfg: tokio_postgres::Config = uri
        .parse()
        .map_err(|e| DevError::Failed(format!("invalid URI: {e}")))?;
    cfg.connect_timeout(timeout);
    let fail = |e: tokio_postgres::Error| DevError::Failed(format!("PostgreSQL: {e}"));
    let (client, conn) = tokio::time::timeout(timeout, cfg.connect(tokio_postgres::NoTls))
        .await
        .map_err(|_| DevError::Failed("connection timed out".into()))?
        .map_err(fail)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let work = async {
        client
            .batch_execute(
                "create table if not exists walarchive_probe (at timestamptz default now()); \
                 insert into walarchive_probe default values",
            )
            .await
            .map_err(fail)?;
        let port: i32 = client
            .query_one("select current_setting('port')::int", &[])
            .await
            .map_err(fail)?
            .get(0);
        Ok(port)
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| DevError::Failed("the write timed out".into()))?
}

/// `--demo`: provisions a two-node instance through the OSB API, binds it, checks the
/// credentials and prints a psql command.
pub async fn demo(dev: &Dev) -> Result<Credentials, DevError> {
    let osb = dev.osb();
    let instance = "demo";
    println!("\n== provisioning instance {instance:?} (plan ha, 2 nodes) through the OSB API");
    println!(
        "   PUT {}/v2/service_instances/{instance}?accepts_incomplete=true",
        dev.broker_url
    );
    let start = Instant::now();
    osb.provision(instance, PLAN_HA).await?;
    let ok = osb
        .wait_operation(instance, Duration::from_secs(900), |d| {
            println!("   [{:>5.1} s] {d}", start.elapsed().as_secs_f64());
        })
        .await?;
    if !ok {
        return Err(DevError::Failed(format!(
            "provisioning failed; see {}/broker.log",
            dev.dir.display()
        )));
    }
    println!("   provisioned in {:.1} s", start.elapsed().as_secs_f64());
    println!("\n== binding (a PostgreSQL role of its own)");
    let creds = osb.bind(instance, "demo-app", PLAN_HA).await?;
    let start = Instant::now();
    loop {
        match write_probe(&creds.uri, Duration::from_secs(5)).await {
            Ok(_) => break,
            Err(e) if start.elapsed() > Duration::from_secs(60) => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
    println!(
        "   role {} on database {} at {}:{} (wrote a row into walarchive_probe)",
        creds.username, creds.name, creds.hostname, creds.port
    );
    println!("\nConnect with:\n");
    println!("psql \"{}\"", creds.uri);
    if let Some(ro) = &creds.read_only_uri {
        println!("\nRead-only, on a replica (the primary while none is healthy):\n");
        println!("psql \"{ro}\"");
    }
    if let Some(mh) = &creds.uri_multihost {
        println!("\nThe nodes directly (the client finds the primary):\n");
        println!("psql \"{mh}\"");
    }
    println!("\nCtrl-C stops everything.");
    Ok(creds)
}
