//! The real `walarchive-broker serve` process, started from a configuration file.
//!
//! The broker's binary is named by the caller: only the broker's own tests know its path
//! (`env!("CARGO_BIN_EXE_walarchive-broker")`).

use std::future::Future;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::cells::wait_for;
use super::etcd::pki;
use super::osb::{PASSWORD, USER};

/// `broker serve --config config` as a child that dies with the test (PDEATHSIG), logging at
/// debug level to `log` (appended to, so that restarts share one log), with `env` set too.
pub fn spawn_serve(broker: &str, config: &Path, log: &Path, env: &[(&str, &str)]) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut cmd = Command::new(broker);
    cmd.arg("serve").arg("--config").arg(config);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.env("RUST_LOG", "info,walarchive_broker=debug")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    walarchive_broker::process::die_with_parent(&mut cmd);
    cmd.spawn().expect("start walarchive-broker serve")
}

/// [`spawn_serve`], then waits up to 20 s (as `what`) until `answers` says the broker
/// answers.
pub async fn serve_answering<F, Fut>(
    broker: &str,
    config: &Path,
    log: &Path,
    env: &[(&str, &str)],
    what: &str,
    answers: F,
    diag: impl Fn() -> String,
) -> Child
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<()>>,
{
    let child = spawn_serve(broker, config, log, env);
    wait_for(what, Duration::from_secs(20), answers, diag).await;
    child
}

/// An HTTP client builder that trusts the tests' CA only, as a platform configured with it
/// would: for the real `serve`'s API over TLS.
pub fn trusting_tests_ca() -> reqwest::ClientBuilder {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(pki().ca_file()).unwrap()).unwrap();
    reqwest::Client::builder().tls_certs_only([ca])
}

/// An OSB request to the broker at `base` over real HTTP, as the platform (its user and
/// password, API version 2.17, a JSON body when given): the status and the body as JSON
/// (`null` when it is not JSON).
pub async fn osb_call(
    client: &reqwest::Client,
    base: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Result<(u16, Value), reqwest::Error> {
    let mut req = client
        .request(method, format!("{base}{path}"))
        .basic_auth(USER, Some(PASSWORD))
        .header("X-Broker-API-Version", "2.17");
    if let Some(b) = body {
        req = req
            .header("Content-Type", "application/json")
            .body(b.to_string());
    }
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    let text = resp.text().await?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}
