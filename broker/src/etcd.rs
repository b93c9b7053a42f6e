//! A small etcd v3 client over etcd's JSON gRPC gateway (`POST /v3/kv/...`).
//!
//! Why the gateway and not gRPC: Patroni's own etcd3 DCS talks to the same gateway, so the
//! broker needs nothing that the clusters it provisions do not already depend on, and a plain
//! HTTP client (reqwest, already in the tree) is enough: no protobuf code generation, no tonic.
//!
//! Why failover is careful: a request that never reached a server (connection refused) can be
//! sent to the next endpoint whatever it is. A request that may have been applied (a timeout
//! or a 5xx after sending) is only repeated elsewhere when repeating it cannot change its
//! outcome: reads, plain puts and deletes. A transaction with comparisons is not repeated,
//! since a second attempt would fail its comparison against its own first write and report a
//! lost race that was in fact won; the caller gets a transient error and re-reads instead.
//!
//! The gateway's JSON follows the proto3 mapping: keys and values are base64, 64-bit integers
//! are strings, and zero values (an empty list, `false`, `0`) are left out.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};
use tracing::{debug, warn};
use url::Url;

use crate::patroni::Secret;

/// How many keys one page of [`EtcdClient::get_prefix`] asks for.
const PAGE: i64 = 500;

/// Errors of the etcd client. [`EtcdError::is_transient`] tells which ones may go away by
/// themselves (retry later) and which ones will not (a bug or a misconfiguration).
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// No endpoint was configured.
    #[error("no etcd endpoint is configured")]
    NoEndpoints,
    /// An endpoint URL cannot be used.
    #[error("invalid etcd endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint {
        /// The endpoint as configured.
        endpoint: String,
        /// Why it is invalid.
        reason: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the etcd HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    /// A TLS file (CA, client certificate or key) cannot be used.
    #[error("etcd TLS: {0}")]
    Tls(String),
    /// The connection could not be established: the request was never sent.
    #[error("cannot connect to etcd at {endpoint}: {source}")]
    Connect {
        /// The endpoint tried.
        endpoint: String,
        /// The underlying error.
        #[source]
        source: reqwest::Error,
    },
    /// No complete answer within the timeout; the request may or may not have been applied.
    #[error("etcd at {endpoint} did not answer within {timeout:?}")]
    Timeout {
        /// The endpoint tried.
        endpoint: String,
        /// The configured request timeout.
        timeout: Duration,
    },
    /// The connection failed after the request was sent; it may or may not have been applied.
    #[error("etcd at {endpoint}: {source}")]
    Transport {
        /// The endpoint tried.
        endpoint: String,
        /// The underlying error.
        #[source]
        source: reqwest::Error,
    },
    /// A server-side failure (HTTP 5xx or 429: no leader, overloaded, request timed out).
    #[error("etcd at {endpoint} failed with HTTP {status}: {message}")]
    Unavailable {
        /// The endpoint tried.
        endpoint: String,
        /// The HTTP status.
        status: u16,
        /// etcd's message.
        message: String,
    },
    /// etcd refused the request (HTTP 4xx other than 429): retrying will not help.
    #[error("etcd at {endpoint} refused the request with HTTP {status}: {message}")]
    Rejected {
        /// The endpoint tried.
        endpoint: String,
        /// The HTTP status.
        status: u16,
        /// etcd's message.
        message: String,
    },
    /// The answer could not be understood.
    #[error("unexpected answer from etcd at {endpoint}: {detail}")]
    Protocol {
        /// The endpoint tried.
        endpoint: String,
        /// What was wrong with it.
        detail: String,
    },
}

impl EtcdError {
    /// True when the error may go away by itself: connection failures, timeouts and 5xx.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            EtcdError::Connect { .. }
                | EtcdError::Timeout { .. }
                | EtcdError::Transport { .. }
                | EtcdError::Unavailable { .. }
        )
    }

    /// True when the request certainly did not reach a server (safe to send anywhere else).
    fn not_sent(&self) -> bool {
        matches!(self, EtcdError::Connect { .. })
    }
}

/// A user for [`EtcdClient::enable_auth`].
#[derive(Debug, Clone, Copy)]
pub struct EtcdUser<'a> {
    /// Its name (also its role's).
    pub name: &'a str,
    /// Its password.
    pub password: &'a Secret,
    /// The key prefixes its role reads and writes.
    pub prefixes: &'a [&'a str],
}

/// One key with its value and revisions, as etcd stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: Vec<u8>,
    /// The value.
    pub value: Vec<u8>,
    /// Revision of the key's creation (since its last deletion).
    pub create_revision: i64,
    /// Revision of the key's last modification: the token for compare-and-swap.
    pub mod_revision: i64,
    /// Number of modifications since creation (1 after creation).
    pub version: i64,
    /// The lease the key is attached to (0: none).
    pub lease: i64,
}

impl KeyValue {
    /// The key as UTF-8 (lossy).
    pub fn key_str(&self) -> String {
        String::from_utf8_lossy(&self.key).into_owned()
    }
}

/// What a [`Compare`] looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompareTarget {
    /// The create revision (0 when the key does not exist).
    CreateRevision(i64),
    /// The mod revision (0 when the key does not exist).
    ModRevision(i64),
    /// The version (0 when the key does not exist).
    Version(i64),
    /// The value.
    Value(Vec<u8>),
}

/// The comparison operator of a [`Compare`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    /// `==`
    Equal,
    /// `!=`
    NotEqual,
    /// `>`
    Greater,
    /// `<`
    Less,
}

/// One condition of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    /// The key compared.
    pub key: Vec<u8>,
    /// The operator.
    pub op: CompareOp,
    /// What is compared, and with which value.
    pub target: CompareTarget,
}

impl Compare {
    /// The key does not exist.
    pub fn absent(key: impl Into<Vec<u8>>) -> Compare {
        Compare {
            key: key.into(),
            op: CompareOp::Equal,
            target: CompareTarget::CreateRevision(0),
        }
    }

    /// The key's mod revision is `rev` (0: the key does not exist).
    pub fn mod_revision(key: impl Into<Vec<u8>>, rev: i64) -> Compare {
        Compare {
            key: key.into(),
            op: CompareOp::Equal,
            target: CompareTarget::ModRevision(rev),
        }
    }

    /// The key's value is `value`.
    pub fn value(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Compare {
        Compare {
            key: key.into(),
            op: CompareOp::Equal,
            target: CompareTarget::Value(value.into()),
        }
    }

    fn to_json(&self) -> Value {
        let result = match self.op {
            CompareOp::Equal => "EQUAL",
            CompareOp::NotEqual => "NOT_EQUAL",
            CompareOp::Greater => "GREATER",
            CompareOp::Less => "LESS",
        };
        let mut v = json!({ "key": B64.encode(&self.key), "result": result });
        let m = v.as_object_mut().expect("object");
        match &self.target {
            CompareTarget::CreateRevision(r) => {
                m.insert("target".into(), "CREATE".into());
                m.insert("create_revision".into(), r.to_string().into());
            }
            CompareTarget::ModRevision(r) => {
                m.insert("target".into(), "MOD".into());
                m.insert("mod_revision".into(), r.to_string().into());
            }
            CompareTarget::Version(r) => {
                m.insert("target".into(), "VERSION".into());
                m.insert("version".into(), r.to_string().into());
            }
            CompareTarget::Value(val) => {
                m.insert("target".into(), "VALUE".into());
                m.insert("value".into(), B64.encode(val).into());
            }
        }
        v
    }
}

/// One operation of a transaction branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOp {
    /// Read one key.
    Get(Vec<u8>),
    /// Write one key (lease 0: none).
    Put {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
        /// The lease to attach (0: none).
        lease: i64,
    },
    /// Delete one key.
    Delete(Vec<u8>),
    /// Delete every key that starts with the prefix.
    DeletePrefix(Vec<u8>),
}

impl TxnOp {
    /// A put without lease.
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> TxnOp {
        TxnOp::Put {
            key: key.into(),
            value: value.into(),
            lease: 0,
        }
    }

    /// A delete of one key.
    pub fn delete(key: impl Into<Vec<u8>>) -> TxnOp {
        TxnOp::Delete(key.into())
    }

    /// A read of one key.
    pub fn get(key: impl Into<Vec<u8>>) -> TxnOp {
        TxnOp::Get(key.into())
    }

    fn to_json(&self) -> Value {
        match self {
            TxnOp::Get(k) => json!({ "request_range": { "key": B64.encode(k) } }),
            TxnOp::Put { key, value, lease } => {
                let mut put = json!({ "key": B64.encode(key), "value": B64.encode(value) });
                if *lease != 0 {
                    put["lease"] = lease.to_string().into();
                }
                json!({ "request_put": put })
            }
            TxnOp::Delete(k) => json!({ "request_delete_range": { "key": B64.encode(k) } }),
            TxnOp::DeletePrefix(p) => json!({ "request_delete_range": {
                "key": B64.encode(p), "range_end": B64.encode(prefix_end(p)) } }),
        }
    }
}

/// The answer to one [`TxnOp`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOpResponse {
    /// Answer to [`TxnOp::Get`]: the key, if it exists.
    Get(Option<KeyValue>),
    /// Answer to [`TxnOp::Put`].
    Put,
    /// Answer to a delete: how many keys were deleted.
    Delete(i64),
}

/// The outcome of [`EtcdClient::txn`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnResponse {
    /// True when every comparison held (the `success` branch ran).
    pub succeeded: bool,
    /// The store's revision after the transaction.
    pub revision: i64,
    /// One answer per operation of the branch that ran.
    pub responses: Vec<TxnOpResponse>,
}

/// The outcome of a create-if-absent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateOutcome {
    /// The key was created at this revision.
    Created(i64),
    /// The key already exists (as returned).
    Exists(KeyValue),
}

/// The outcome of a compare-and-swap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CasOutcome {
    /// The value was replaced; the key's new mod revision.
    Swapped(i64),
    /// The key changed (or vanished) since the expected revision: its current state.
    Conflict(Option<KeyValue>),
}

/// An etcd v3 client over the JSON gateway, with failover between endpoints. Cheap to clone.
#[derive(Clone)]
pub struct EtcdClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    endpoints: Vec<Url>,
    preferred: AtomicUsize,
    timeout: Duration,
    /// User and password, when etcd's authentication is on.
    credentials: Option<(String, Secret)>,
    /// The token of each endpoint (tokens are issued by a member), once authenticated.
    tokens: std::sync::Mutex<Vec<Option<Secret>>>,
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

/// The raw JSON shape of a key-value pair.
#[derive(Deserialize)]
struct RawKv {
    #[serde(default)]
    key: String,
    #[serde(default)]
    value: String,
    #[serde(default, deserialize_with = "de_i64")]
    create_revision: i64,
    #[serde(default, deserialize_with = "de_i64")]
    mod_revision: i64,
    #[serde(default, deserialize_with = "de_i64")]
    version: i64,
    #[serde(default, deserialize_with = "de_i64")]
    lease: i64,
}

#[derive(Deserialize, Default)]
struct RawHeader {
    #[serde(default, deserialize_with = "de_i64")]
    revision: i64,
}

#[derive(Deserialize)]
struct RawRange {
    #[serde(default)]
    header: RawHeader,
    #[serde(default)]
    kvs: Vec<RawKv>,
    #[serde(default)]
    more: bool,
}

#[derive(Deserialize)]
struct RawPut {
    #[serde(default)]
    header: RawHeader,
}

#[derive(Deserialize)]
struct RawDelete {
    #[serde(default, deserialize_with = "de_i64")]
    deleted: i64,
}

#[derive(Deserialize)]
struct RawTxn {
    #[serde(default)]
    header: RawHeader,
    #[serde(default)]
    succeeded: bool,
    #[serde(default)]
    responses: Vec<RawOpResponse>,
}

#[derive(Deserialize)]
struct RawOpResponse {
    response_range: Option<RawRange>,
    response_put: Option<Value>,
    response_delete_range: Option<RawDelete>,
}

#[derive(Deserialize)]
struct RawAuth {
    #[serde(default)]
    token: String,
}

#[derive(Deserialize)]
struct RawLease {
    #[serde(rename = "ID", default, deserialize_with = "de_i64")]
    id: i64,
}

/// Accepts a proto3-JSON int64: a string, or (leniently) a number.
fn de_i64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum N {
        S(String),
        I(i64),
    }
    match N::deserialize(d)? {
        N::S(s) => s.parse().map_err(serde::de::Error::custom),
        N::I(i) => Ok(i),
    }
}

/// The end of the key range of all keys starting with `prefix` (etcd's `range_end`).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte was 0xff (or the prefix is empty): "\0" means "to the end of the keyspace".
    vec![0]
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
            opts.credentials = Some((user.clone(), Secret::new(config.password.expose())));
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
    async fn call(&self, path: &str, body: &Value, repeatable: bool) -> Result<Vec<u8>, EtcdError> {
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

    fn parse<T: serde::de::DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, EtcdError> {
        serde_json::from_slice(bytes).map_err(|e| self.protocol(e.to_string()))
    }

    fn protocol(&self, detail: String) -> EtcdError {
        let idx = self.inner.preferred.load(Ordering::Relaxed) % self.inner.endpoints.len();
        EtcdError::Protocol {
            endpoint: self.inner.endpoints[idx].to_string(),
            detail,
        }
    }

    fn decode_kv(&self, raw: RawKv) -> Result<KeyValue, EtcdError> {
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

    /// Reads one key.
    pub async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, EtcdError> {
        let body = json!({ "key": B64.encode(key) });
        let raw: RawRange = self.parse(&self.call("/v3/kv/range", &body, true).await?)?;
        raw.kvs
            .into_iter()
            .next()
            .map(|kv| self.decode_kv(kv))
            .transpose()
    }

    /// Reads every key that starts with `prefix`, in key order, in pages of 500 keys read at
    /// one revision (a consistent snapshot however many pages it takes).
    pub async fn get_prefix(&self, prefix: &[u8]) -> Result<Vec<KeyValue>, EtcdError> {
        self.get_prefix_limit(prefix, 0).await
    }

    /// Like [`EtcdClient::get_prefix`], but at most `limit` keys (0: no limit).
    pub async fn get_prefix_limit(
        &self,
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<KeyValue>, EtcdError> {
        let end = prefix_end(prefix);
        let mut out = Vec::new();
        let mut from = prefix.to_vec();
        let mut revision = 0i64;
        loop {
            let page = match limit {
                0 => PAGE,
                l => PAGE.min((l - out.len()) as i64),
            };
            let mut body = json!({
                "key": B64.encode(&from),
                "range_end": B64.encode(&end),
                "limit": page.to_string(),
            });
            if revision != 0 {
                body["revision"] = revision.to_string().into();
            }
            let raw: RawRange = self.parse(&self.call("/v3/kv/range", &body, true).await?)?;
            if revision == 0 {
                revision = raw.header.revision;
            }
            let more = raw.more;
            for kv in raw.kvs {
                out.push(self.decode_kv(kv)?);
            }
            if !more || (limit != 0 && out.len() >= limit) {
                return Ok(out);
            }
            let Some(last) = out.last() else {
                return Ok(out);
            };
            from = last.key.clone();
            from.push(0);
        }
    }

    /// Writes one key unconditionally; returns the store's new revision.
    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<i64, EtcdError> {
        self.put_with_lease(key, value, 0).await
    }

    /// Writes one key attached to `lease` (0: none); returns the store's new revision.
    pub async fn put_with_lease(
        &self,
        key: &[u8],
        value: &[u8],
        lease: i64,
    ) -> Result<i64, EtcdError> {
        let mut body = json!({ "key": B64.encode(key), "value": B64.encode(value) });
        if lease != 0 {
            body["lease"] = lease.to_string().into();
        }
        let raw: RawPut = self.parse(&self.call("/v3/kv/put", &body, true).await?)?;
        Ok(raw.header.revision)
    }

    /// Deletes one key; true when it existed.
    pub async fn delete(&self, key: &[u8]) -> Result<bool, EtcdError> {
        let body = json!({ "key": B64.encode(key) });
        let raw: RawDelete = self.parse(&self.call("/v3/kv/deleterange", &body, true).await?)?;
        Ok(raw.deleted > 0)
    }

    /// Deletes every key that starts with `prefix`; returns how many there were.
    pub async fn delete_prefix(&self, prefix: &[u8]) -> Result<i64, EtcdError> {
        let body =
            json!({ "key": B64.encode(prefix), "range_end": B64.encode(prefix_end(prefix)) });
        let raw: RawDelete = self.parse(&self.call("/v3/kv/deleterange", &body, true).await?)?;
        Ok(raw.deleted)
    }

    /// Runs a transaction: if every comparison holds, `success` runs, otherwise `failure`.
    /// Not repeated on another endpoint after an ambiguous failure (see the module docs).
    pub async fn txn(
        &self,
        compare: &[Compare],
        success: &[TxnOp],
        failure: &[TxnOp],
    ) -> Result<TxnResponse, EtcdError> {
        let body = json!({
            "compare": compare.iter().map(Compare::to_json).collect::<Vec<_>>(),
            "success": success.iter().map(TxnOp::to_json).collect::<Vec<_>>(),
            "failure": failure.iter().map(TxnOp::to_json).collect::<Vec<_>>(),
        });
        let repeatable = compare.is_empty()
            && success
                .iter()
                .chain(failure)
                .all(|op| matches!(op, TxnOp::Get(_)));
        let raw: RawTxn = self.parse(&self.call("/v3/kv/txn", &body, repeatable).await?)?;
        let branch = if raw.succeeded { success } else { failure };
        if raw.responses.len() != branch.len() {
            return Err(self.protocol(format!(
                "transaction returned {} answers for {} operations",
                raw.responses.len(),
                branch.len()
            )));
        }
        let mut responses = Vec::with_capacity(branch.len());
        for (op, r) in branch.iter().zip(raw.responses) {
            responses.push(match op {
                TxnOp::Get(_) => TxnOpResponse::Get(
                    r.response_range
                        .and_then(|rr| rr.kvs.into_iter().next())
                        .map(|kv| self.decode_kv(kv))
                        .transpose()?,
                ),
                TxnOp::Put { .. } => {
                    let _ = r.response_put;
                    TxnOpResponse::Put
                }
                TxnOp::Delete(_) | TxnOp::DeletePrefix(_) => {
                    TxnOpResponse::Delete(r.response_delete_range.map_or(0, |d| d.deleted))
                }
            });
        }
        Ok(TxnResponse {
            succeeded: raw.succeeded,
            revision: raw.header.revision,
            responses,
        })
    }

    /// Reads several keys atomically (at one revision).
    pub async fn get_many(&self, keys: &[&[u8]]) -> Result<Vec<Option<KeyValue>>, EtcdError> {
        let ops: Vec<TxnOp> = keys.iter().map(|k| TxnOp::get(*k)).collect();
        let r = self.txn(&[], &ops, &[]).await?;
        Ok(r.responses
            .into_iter()
            .map(|r| match r {
                TxnOpResponse::Get(kv) => kv,
                _ => None,
            })
            .collect())
    }

    /// Creates `key` with `value` unless it exists.
    pub async fn create(&self, key: &[u8], value: &[u8]) -> Result<CreateOutcome, EtcdError> {
        let r = self
            .txn(
                &[Compare::absent(key)],
                &[TxnOp::put(key, value)],
                &[TxnOp::get(key)],
            )
            .await?;
        if r.succeeded {
            return Ok(CreateOutcome::Created(r.revision));
        }
        match r.responses.into_iter().next() {
            Some(TxnOpResponse::Get(Some(kv))) => Ok(CreateOutcome::Exists(kv)),
            // Deleted between the comparison and the read cannot happen inside one
            // transaction; report it as a protocol error rather than guess.
            _ => Err(self.protocol("create failed but the key is absent".into())),
        }
    }

    /// Replaces `key`'s value if its mod revision is still `expected` (0: the key must not
    /// exist, i.e. create-if-absent).
    pub async fn compare_and_swap(
        &self,
        key: &[u8],
        value: &[u8],
        expected: i64,
    ) -> Result<CasOutcome, EtcdError> {
        let r = self
            .txn(
                &[Compare::mod_revision(key, expected)],
                &[TxnOp::put(key, value)],
                &[TxnOp::get(key)],
            )
            .await?;
        if r.succeeded {
            return Ok(CasOutcome::Swapped(r.revision));
        }
        match r.responses.into_iter().next() {
            Some(TxnOpResponse::Get(kv)) => Ok(CasOutcome::Conflict(kv)),
            _ => Ok(CasOutcome::Conflict(None)),
        }
    }

    /// Deletes `key` if its mod revision is still `expected`; true when deleted.
    pub async fn delete_if_revision(&self, key: &[u8], expected: i64) -> Result<bool, EtcdError> {
        let r = self
            .txn(
                &[Compare::mod_revision(key, expected)],
                &[TxnOp::delete(key)],
                &[],
            )
            .await?;
        Ok(r.succeeded)
    }

    /// Sets up etcd's authentication and turns it on: the user `root` (with `root_password`
    /// and the root role), then each of `users` with a role of the same name that reads and
    /// writes its key prefixes. What an operator does with `etcdctl user add`, `role
    /// grant-permission --prefix` and `auth enable`; used by the single-machine mode and the
    /// tests, on an etcd whose authentication is still off (this client has no credentials).
    pub async fn enable_auth(
        &self,
        root_password: &Secret,
        users: &[EtcdUser<'_>],
    ) -> Result<(), EtcdError> {
        let add =
            |name: &str, password: &Secret| json!({ "name": name, "password": password.expose() });
        self.call("/v3/auth/user/add", &add("root", root_password), false)
            .await?;
        self.call(
            "/v3/auth/user/grant",
            &json!({ "user": "root", "role": "root" }),
            false,
        )
        .await?;
        for u in users {
            self.call("/v3/auth/user/add", &add(u.name, u.password), false)
                .await?;
            self.call("/v3/auth/role/add", &json!({ "name": u.name }), false)
                .await?;
            for p in u.prefixes {
                let perm = json!({
                    "permType": "READWRITE",
                    "key": B64.encode(p.as_bytes()),
                    "range_end": B64.encode(prefix_end(p.as_bytes())),
                });
                self.call(
                    "/v3/auth/role/grant",
                    &json!({ "name": u.name, "perm": perm }),
                    false,
                )
                .await?;
            }
            self.call(
                "/v3/auth/user/grant",
                &json!({ "user": u.name, "role": u.name }),
                false,
            )
            .await?;
        }
        self.call("/v3/auth/enable", &json!({}), false).await?;
        Ok(())
    }

    /// Grants a lease of `ttl` seconds; returns its id.
    pub async fn grant_lease(&self, ttl: i64) -> Result<i64, EtcdError> {
        let body = json!({ "TTL": ttl.to_string() });
        let raw: RawLease = self.parse(&self.call("/v3/lease/grant", &body, true).await?)?;
        Ok(raw.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_etcd::etcd;

    fn client() -> EtcdClient {
        etcd().client()
    }

    #[test]
    fn prefix_end_increments_the_last_byte() {
        assert_eq!(prefix_end(b"/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }

    #[tokio::test]
    async fn put_get_delete_and_prefix_pagination() {
        let c = client();
        let p = etcd().fresh_prefix();
        assert_eq!(c.get(format!("{p}/x").as_bytes()).await.unwrap(), None);
        c.put(format!("{p}/x").as_bytes(), b"1").await.unwrap();
        let kv = c.get(format!("{p}/x").as_bytes()).await.unwrap().unwrap();
        assert_eq!(kv.value, b"1");
        assert_eq!(kv.version, 1);
        assert!(kv.mod_revision > 0);
        // More keys than one page: get_prefix must follow `more`.
        for i in 0..(PAGE as usize + 20) {
            c.put(format!("{p}/many/{i:04}").as_bytes(), b"v")
                .await
                .unwrap();
        }
        let all = c.get_prefix(format!("{p}/many/").as_bytes()).await.unwrap();
        assert_eq!(all.len(), PAGE as usize + 20);
        assert!(all.windows(2).all(|w| w[0].key < w[1].key));
        let some = c
            .get_prefix_limit(format!("{p}/many/").as_bytes(), 7)
            .await
            .unwrap();
        assert_eq!(some.len(), 7);
        assert!(c.delete(format!("{p}/x").as_bytes()).await.unwrap());
        assert!(!c.delete(format!("{p}/x").as_bytes()).await.unwrap());
        assert_eq!(
            c.delete_prefix(format!("{p}/many/").as_bytes())
                .await
                .unwrap(),
            PAGE + 20
        );
        let lease = c.grant_lease(30).await.unwrap();
        assert_ne!(lease, 0);
        c.put_with_lease(format!("{p}/leased").as_bytes(), b"l", lease)
            .await
            .unwrap();
        let kv = c
            .get(format!("{p}/leased").as_bytes())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(kv.lease, lease);
    }

    #[tokio::test]
    async fn create_cas_and_delete_if_revision() {
        let c = client();
        let key = format!("{}/k", etcd().fresh_prefix());
        let k = key.as_bytes();
        let CreateOutcome::Created(rev) = c.create(k, b"a").await.unwrap() else {
            panic!("not created")
        };
        match c.create(k, b"b").await.unwrap() {
            CreateOutcome::Exists(kv) => {
                assert_eq!(kv.value, b"a");
                assert_eq!(kv.mod_revision, rev);
            }
            other => panic!("{other:?}"),
        }
        let CasOutcome::Swapped(rev2) = c.compare_and_swap(k, b"c", rev).await.unwrap() else {
            panic!("not swapped")
        };
        match c.compare_and_swap(k, b"d", rev).await.unwrap() {
            CasOutcome::Conflict(Some(kv)) => assert_eq!(kv.value, b"c"),
            other => panic!("{other:?}"),
        }
        assert!(!c.delete_if_revision(k, rev).await.unwrap());
        assert!(c.delete_if_revision(k, rev2).await.unwrap());
        assert_eq!(c.get(k).await.unwrap(), None);
        // CAS with 0 = create-if-absent.
        assert!(matches!(
            c.compare_and_swap(k, b"e", 0).await.unwrap(),
            CasOutcome::Swapped(_)
        ));
    }

    #[tokio::test]
    async fn concurrent_creates_of_one_key_have_one_winner() {
        let c = client();
        let key = format!("{}/port/30000", etcd().fresh_prefix());
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let c = c.clone();
                let key = key.clone();
                tokio::spawn(async move {
                    matches!(
                        c.create(key.as_bytes(), format!("instance-{i}").as_bytes())
                            .await
                            .unwrap(),
                        CreateOutcome::Created(_)
                    )
                })
            })
            .collect();
        let mut winners = 0;
        for t in tasks {
            winners += t.await.unwrap() as usize;
        }
        assert_eq!(winners, 1);
    }

    #[tokio::test]
    async fn authentication_is_required_limited_and_renewed() {
        let p = etcd().fresh_prefix();
        let key = format!("{p}/k");
        let c = client();
        c.put(key.as_bytes(), b"v").await.unwrap();
        // A client certificate alone (no user) is not enough, nor a wrong password.
        let mut anonymous = etcd().options();
        anonymous.credentials = None;
        let e = EtcdClient::with_options(&[etcd().endpoint()], anonymous)
            .unwrap()
            .get(key.as_bytes())
            .await
            .unwrap_err();
        assert!(matches!(e, EtcdError::Rejected { .. }), "{e:?}");
        let mut wrong = etcd().options();
        wrong.credentials = Some(("broker".into(), Secret::new("not-the-password")));
        let e = EtcdClient::with_options(&[etcd().endpoint()], wrong)
            .unwrap()
            .get(key.as_bytes())
            .await
            .unwrap_err();
        assert!(matches!(e, EtcdError::Rejected { .. }), "{e:?}");
        assert!(!e.to_string().contains("not-the-password"), "{e}");
        // The broker's role reaches its prefixes only.
        let e = c.get(b"/elsewhere/k").await.unwrap_err();
        assert!(
            matches!(e, EtcdError::Rejected { ref message, .. } if message.contains("permission denied")),
            "{e:?}"
        );
        // A token that is no longer valid (expired, or etcd restarted) is replaced.
        for t in c.inner.tokens.lock().unwrap().iter_mut() {
            *t = Some(Secret::new("expired.token.1234"));
        }
        assert_eq!(c.get(key.as_bytes()).await.unwrap().unwrap().value, b"v");
        // Nothing of the token or the password in Debug.
        let dbg = format!("{c:?} {:?}", etcd().options());
        assert!(!dbg.contains(etcd().broker_password.expose()), "{dbg}");
    }

    #[tokio::test]
    async fn failover_skips_a_dead_endpoint_and_errors_are_classified() {
        // A port nobody listens on: connection refused, never sent, so failover is safe.
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", l.local_addr().unwrap())
        };
        let c =
            EtcdClient::with_options(&[dead.clone(), etcd().endpoint()], etcd().options()).unwrap();
        let key = format!("{}/f", etcd().fresh_prefix());
        // A transaction with comparisons is failed over too, as the first attempt was not sent.
        assert!(matches!(
            c.create(key.as_bytes(), b"1").await.unwrap(),
            CreateOutcome::Created(_)
        ));
        assert_eq!(c.get(key.as_bytes()).await.unwrap().unwrap().value, b"1");

        let only_dead = EtcdClient::with_options(&[dead], etcd().options()).unwrap();
        let e = only_dead.get(b"x").await.unwrap_err();
        assert!(e.is_transient(), "{e}");
        assert!(matches!(e, EtcdError::Connect { .. }), "{e:?}");

        // An empty key is refused by etcd: permanent.
        let e = client().get(b"").await.unwrap_err();
        assert!(!e.is_transient(), "{e:?}");
        assert!(
            matches!(e, EtcdError::Rejected { status: 400, .. }),
            "{e:?}"
        );

        assert!(matches!(
            EtcdClient::new(&[], Duration::from_secs(1)),
            Err(EtcdError::NoEndpoints)
        ));
        assert!(matches!(
            EtcdClient::new(&["ftp://x".into()], Duration::from_secs(1)),
            Err(EtcdError::InvalidEndpoint { .. })
        ));
    }
}
