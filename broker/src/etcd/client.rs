//! The connection to etcd: endpoints and TLS, failover between endpoints (see the parent
//! module's docs for which requests may be repeated), authentication tokens, and the
//! classification of HTTP failures into [`EtcdError`]s.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Value};
use tracing::{debug, warn};
use url::Url;

use super::error::EtcdError;
use super::types::KeyValue;
use super::wire::{RawAuth, RawKv};
use crate::secrets::Secret;

/// An etcd v3 client over the JSON gateway, with failover between endpoints. Cheap to clone.
#[derive(Clone)]
pub struct EtcdClient {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    http: reqwest::Client,
    endpoints: Vec<Url>,
    preferred: AtomicUsize,
    timeout: Duration,
    /// User and password, when etcd's authentication is on.
    credentials: Option<(String, Secret)>,
    /// The token of each endpoint (tokens are issued by a member), once authenticated.
    pub(super) tokens: std::sync::Mutex<Vec<Option<Secret>>>,
}

impl std::fmt::Debug for EtcdClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdClient")
            .field(
                "endpoints",
                &self
                    .inner
                    .endpoints
                    .iter()
                    .map(Url::as_str)
                    .collect::<Vec<_>>(),
            )
            .field("timeout", &self.inner.timeout)
            .finish()
    }
}

/// How a client reaches etcd besides its endpoints. `Debug` hides the password.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// User name and password, when etcd's authentication is on.
    pub credentials: Option<(String, Secret)>,
    /// Time limit of one request.
    pub timeout: Duration,
    /// CA of etcd's server certificate (`https://` endpoints): the only one trusted.
    pub ca_file: Option<std::path::PathBuf>,
    /// Client certificate and key, for an etcd that requires one.
    pub identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

impl EtcdOptions {
    /// Plain options: `timeout`, nothing else.
    pub fn new(timeout: Duration) -> EtcdOptions {
        EtcdOptions {
            credentials: None,
            timeout,
            ca_file: None,
            identity: None,
        }
    }
}

impl EtcdClient {
    /// A client for the etcd of the broker's configuration.
    pub fn from_config(config: &crate::config::EtcdConfig) -> Result<EtcdClient, EtcdError> {
        let mut opts = EtcdOptions::new(config.timeout.0);
        opts.ca_file = config.ca_file.clone();
        if let (Some(c), Some(k)) = (&config.cert_file, &config.key_file) {
            opts.identity = Some((c.clone(), k.clone()));
        }
        if let Some(user) = &config.username {
            opts.credentials = Some((user.clone(), config.password.clone()));
        }
        EtcdClient::with_options(&config.endpoints, opts)
    }

    /// A client for `endpoints` (e.g. `http://127.0.0.1:2379`), each request bounded by
    /// `timeout`. Endpoints are tried in order; the last one that answered is tried first.
    pub fn new(endpoints: &[String], timeout: Duration) -> Result<EtcdClient, EtcdError> {
        EtcdClient::with_options(endpoints, EtcdOptions::new(timeout))
    }

    /// A client for `endpoints` with `opts` (TLS).
    pub fn with_options(endpoints: &[String], opts: EtcdOptions) -> Result<EtcdClient, EtcdError> {
        let timeout = opts.timeout;
        if endpoints.is_empty() {
            return Err(EtcdError::NoEndpoints);
        }
        let mut urls = Vec::with_capacity(endpoints.len());
        for e in endpoints {
            let url = Url::parse(e).map_err(|err| EtcdError::InvalidEndpoint {
                endpoint: e.clone(),
                reason: err.to_string(),
            })?;
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                return Err(EtcdError::InvalidEndpoint {
                    endpoint: e.clone(),
                    reason: "expected http://HOST:PORT or https://HOST:PORT".into(),
                });
            }
            urls.push(url);
        }
        let mut http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(3)));
        if let Some(ca) = &opts.ca_file {
            let pem =
                std::fs::read(ca).map_err(|e| EtcdError::Tls(format!("{}: {e}", ca.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| EtcdError::Tls(format!("{}: {e}", ca.display())))?;
            http = http.tls_certs_only(certs);
        }
        if let Some((cert, key)) = &opts.identity {
            let mut pem = std::fs::read(cert)
                .map_err(|e| EtcdError::Tls(format!("{}: {e}", cert.display())))?;
            pem.push(b'\n');
            pem.extend(
                std::fs::read(key)
                    .map_err(|e| EtcdError::Tls(format!("{}: {e}", key.display())))?,
            );
            let id = reqwest::Identity::from_pem(&pem)
                .map_err(|e| EtcdError::Tls(format!("{}: {e}", cert.display())))?;
            http = http.identity(id);
        }
        let http = http.build().map_err(EtcdError::Client)?;
        let tokens = std::sync::Mutex::new(vec![None; urls.len()]);
        Ok(EtcdClient {
            inner: Arc::new(Inner {
                http,
                endpoints: urls,
                preferred: AtomicUsize::new(0),
                timeout,
                credentials: opts.credentials,
                tokens,
            }),
        })
    }

    /// Sends `body` to `path` on one endpoint after the other, starting with the preferred
    /// one. `repeatable`: the request may be repeated after an ambiguous failure.
    pub(super) async fn call(
        &self,
        path: &str,
        body: &Value,
        repeatable: bool,
    ) -> Result<Vec<u8>, EtcdError> {
        let n = self.inner.endpoints.len();
        let start = self.inner.preferred.load(Ordering::Relaxed) % n;
        let mut last = None;
        for i in 0..n {
            let idx = (start + i) % n;
            match self.call_one(idx, path, body).await {
                Ok(v) => {
                    if idx != start {
                        self.inner.preferred.store(idx, Ordering::Relaxed);
                    }
                    return Ok(v);
                }
                Err(e) if e.is_transient() && (repeatable || e.not_sent()) => {
                    if n > 1 {
                        warn!(error = %e, "etcd endpoint failed; trying the next one");
                    }
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("at least one endpoint"))
    }

    /// One request to endpoint `idx`, authenticated when credentials are configured: with
    /// the endpoint's token, obtained first if there is none, and obtained again once if
    /// etcd says it is no longer valid (it expires after `--auth-token-ttl` idle seconds, and
    /// with a restart). etcd checks the token before anything else, so the request was not
    /// applied and can be sent again.
    async fn call_one(&self, idx: usize, path: &str, body: &Value) -> Result<Vec<u8>, EtcdError> {
        let Some((user, password)) = &self.inner.credentials else {
            return self.post(idx, path, body, None).await;
        };
        for attempt in 0..2 {
            let token = self.inner.tokens.lock().expect("tokens lock")[idx].clone();
            let token = match token {
                Some(t) => t,
                None => {
                    let answer = self
                        .post(
                            idx,
                            "/v3/auth/authenticate",
                            &json!({ "name": user, "password": password.expose() }),
                            None,
                        )
                        .await?;
                    let raw: RawAuth = self.parse(&answer)?;
                    let t = Secret::new(raw.token);
                    self.inner.tokens.lock().expect("tokens lock")[idx] = Some(t.clone());
                    t
                }
            };
            match self.post(idx, path, body, Some(&token)).await {
                Err(EtcdError::Rejected { status: 401, .. }) if attempt == 0 => {
                    debug!("etcd token no longer valid; authenticating again");
                    self.inner.tokens.lock().expect("tokens lock")[idx] = None;
                }
                other => return other,
            }
        }
        unreachable!("the second attempt returns")
    }

    async fn post(
        &self,
        idx: usize,
        path: &str,
        body: &Value,
        token: Option<&Secret>,
    ) -> Result<Vec<u8>, EtcdError> {
        let base = &self.inner.endpoints[idx];
        let endpoint = base.as_str().trim_end_matches('/').to_string();
        let url = format!("{endpoint}{path}");
        debug!(%url, "etcd request");
        let classify = |e: reqwest::Error, endpoint: &str| {
            if e.is_timeout() {
                EtcdError::Timeout {
                    endpoint: endpoint.to_string(),
                    timeout: self.inner.timeout,
                }
            } else if e.is_connect() {
                EtcdError::Connect {
                    endpoint: endpoint.to_string(),
                    source: e,
                }
            } else {
                EtcdError::Transport {
                    endpoint: endpoint.to_string(),
                    source: e,
                }
            }
        };
        let mut req = self
            .inner
            .http
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(body).expect("JSON"));
        if let Some(t) = token {
            req = req.header(reqwest::header::AUTHORIZATION, t.expose());
        }
        let resp = req.send().await.map_err(|e| classify(e, &endpoint))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| classify(e, &endpoint))?;
        if status.is_success() {
            return Ok(bytes.to_vec());
        }
        let message = serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|v| {
                v.get("message")
                    .or_else(|| v.get("error"))
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).chars().take(200).collect());
        if status.is_server_error() || status.as_u16() == 429 {
            Err(EtcdError::Unavailable {
                endpoint,
                status: status.as_u16(),
                message,
            })
        } else {
            Err(EtcdError::Rejected {
                endpoint,
                status: status.as_u16(),
                message,
            })
        }
    }

    pub(super) fn parse<T: serde::de::DeserializeOwned>(
        &self,
        bytes: &[u8],
    ) -> Result<T, EtcdError> {
        serde_json::from_slice(bytes).map_err(|e| self.protocol(e.to_string()))
    }

    pub(super) fn protocol(&self, detail: String) -> EtcdError {
        let idx = self.inner.preferred.load(Ordering::Relaxed) % self.inner.endpoints.len();
        EtcdError::Protocol {
            endpoint: self.inner.endpoints[idx].to_string(),
            detail,
        }
    }

    pub(super) fn decode_kv(&self, raw: RawKv) -> Result<KeyValue, EtcdError> {
        let key = B64
            .decode(raw.key.as_bytes())
            .map_err(|e| self.protocol(format!("key is not base64: {e}")))?;
        let value = B64
            .decode(raw.value.as_bytes())
            .map_err(|e| self.protocol(format!("value is not base64: {e}")))?;
        Ok(KeyValue {
            key,
            value,
            create_revision: raw.create_revision,
            mod_revision: raw.mod_revision,
            version: raw.version,
            lease: raw.lease,
        })
    }
}
