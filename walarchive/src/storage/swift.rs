//! OpenStack Swift backend: an `object_store::ObjectStore` over Swift's object API.
//!
//! object_store has no Swift backend, and Swift's S3 emulation (s3api) is optional, often
//! disabled, and speaks neither Keystone nor Swift's own large objects. So this module talks
//! Swift's native API with reqwest (the HTTP client object_store itself uses, same version
//! and TLS stack), and the rest of walarchive uses it like any other store.
//!
//! What it does, and why:
//!
//! - **Never overwrite**: `PutMode::Create` is `If-None-Match: *`, which Swift's object
//!   server checks atomically; its 412 becomes `AlreadyExists`, which the repository turns
//!   into a comparison with the stored object.
//! - **Integrity in transit**: every object PUT carries the MD5 of its body as `ETag`, so
//!   Swift refuses (422) a body damaged on the way, and the ETag of the answer is checked
//!   too. Static Large Object manifests list each segment's MD5 and size, which Swift
//!   checks against the stored segments, and the manifest's ETag (the MD5 of the segments'
//!   MD5s) is checked as well.
//! - **Large objects**: a put larger than the segment size (1 GiB by default, under Swift's
//!   5 GiB single-object limit; `swift_segment_size` lowers it) is stored as a Static Large
//!   Object: segments under `.walarchive-segments/<key>/<upload>/` in the same container,
//!   then a manifest at the key (`?multipart-manifest=put`, conditional like any put).
//!   Listings hide that prefix; deleting an SLO deletes its segments
//!   (`?multipart-manifest=delete`). Segments of an upload that failed are deleted; those
//!   of a killed process stay hidden under the prefix.
//! - **Listing** pages with `marker` (`format=json`, `prefix`, `delimiter`), so containers
//!   of any size list completely.
//! - **Auth** ([`auth`]): TempAuth, Keystone v3 (password, application credential), or a
//!   pre-issued token. A token refused with 401 is renewed once and the request retried;
//!   a token about to expire is renewed before use.
//! - **Errors** become object_store's variants (404 → `NotFound`, 412 → `AlreadyExists` or
//!   `Precondition`, 401/403 → `Unauthenticated`/`PermissionDenied`); others are
//!   `Generic` around a [`SwiftError`] that says whether retrying can help, which
//!   [`crate::storage`]'s classification asks. Tokens and passwords never enter a message,
//!   a `Debug` output or a log line.

pub mod auth;

use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, NaiveDateTime, Utc};
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use md5::{Digest, Md5};
use object_store::path::Path;
use object_store::{
    Attribute, AttributeValue, Attributes, CopyMode, CopyOptions, GetOptions, GetRange, GetResult,
    GetResultPayload, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMode,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, UploadPart,
};
use reqwest::header::HeaderMap;
use reqwest::{Client, Method, RequestBuilder, Response, StatusCode};
use serde::Deserialize;

use auth::{AuthConfig, Session};

/// The store name in object_store errors.
pub const STORE: &str = "Swift";
/// Where the segments of Static Large Objects go, inside the container.
pub const SEGMENTS_PREFIX: &str = ".walarchive-segments";
/// Default size above which a put becomes a Static Large Object (and its segment size).
pub const DEFAULT_SEGMENT_SIZE: u64 = 1 << 30;
/// Default number of names asked for per listing request (Swift's default maximum).
pub const DEFAULT_LIST_PAGE_SIZE: usize = 10_000;
/// A token expiring within this margin is renewed before use.
const EXPIRY_MARGIN: Duration = Duration::from_secs(60);

/// A Swift failure. [`SwiftError::is_transient`] tells the retry helper whether to retry.
#[derive(Debug, thiserror::Error)]
pub enum SwiftError {
    /// The settings do not name a usable way to authenticate.
    #[error("Swift configuration: {0}")]
    Config(String),
    /// The auth service refused the credentials.
    #[error("{0}")]
    AuthRefused(String),
    /// Keystone's service catalog has no (or no single) suitable object-store endpoint.
    #[error("{0}")]
    Catalog(String),
    /// An answer walarchive cannot use (a missing header, malformed JSON).
    #[error("{0}")]
    Protocol(String),
    /// The request did not get an answer (connection refused or reset, timeout).
    #[error("{0}")]
    Transport(String),
    /// An HTTP status other than the expected ones.
    #[error("{what} {url}: Server returned non-2xx status code: {status} {reason}{detail}")]
    Status {
        /// The operation.
        what: String,
        /// The URL (no secrets: tokens travel in headers).
        url: String,
        /// The status code.
        status: u16,
        /// Its reason phrase.
        reason: String,
        /// More detail, starting with a separator, or empty.
        detail: String,
    },
    /// The object stored differs from the one sent (ETag mismatch).
    #[error("{0}")]
    Checksum(String),
}

impl SwiftError {
    /// Whether retrying may help: transport failures, checksum mismatches (a body damaged in
    /// transit), 5xx, 408, 429 and 422 (Swift's answer to an ETag mismatch).
    pub fn is_transient(&self) -> bool {
        match self {
            SwiftError::Transport(_) | SwiftError::Checksum(_) => true,
            SwiftError::Status { status, .. } => {
                *status >= 500 || matches!(status, 408 | 422 | 429 | 498 | 499)
            }
            SwiftError::Config(_)
            | SwiftError::AuthRefused(_)
            | SwiftError::Catalog(_)
            | SwiftError::Protocol(_) => false,
        }
    }

    fn transport(what: &str, e: reqwest::Error) -> Self {
        let mut msg = format!("{what} failed: {e}");
        let mut cur = std::error::Error::source(&e);
        while let Some(s) = cur {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            cur = s.source();
        }
        SwiftError::Transport(msg)
    }

    fn status(what: &str, url: &str, status: StatusCode, detail: &str) -> Self {
        let detail = match status.as_u16() {
            422 if detail.is_empty() => {
                " (the ETag did not match: the body was damaged in transit)".to_string()
            }
            413 if detail.is_empty() => {
                " (the object is larger than the cluster's max_file_size: lower swift_segment_size)"
                    .to_string()
            }
            _ if detail.is_empty() => String::new(),
            _ => format!(": {detail}"),
        };
        SwiftError::Status {
            what: what.to_string(),
            url: url.to_string(),
            status: status.as_u16(),
            reason: status.canonical_reason().unwrap_or("").to_string(),
            detail,
        }
    }
}

fn generic(e: SwiftError) -> object_store::Error {
    object_store::Error::Generic {
        store: STORE,
        source: Box::new(e),
    }
}

/// Maps a failure about `path` to object_store's variants.
fn os_err(path: &str, e: SwiftError) -> object_store::Error {
    let path = path.to_string();
    match &e {
        SwiftError::AuthRefused(_) => object_store::Error::Unauthenticated {
            path,
            source: Box::new(e),
        },
        SwiftError::Status { status: 401, .. } => object_store::Error::Unauthenticated {
            path,
            source: Box::new(e),
        },
        SwiftError::Status { status: 403, .. } => object_store::Error::PermissionDenied {
            path,
            source: Box::new(e),
        },
        SwiftError::Status { status: 404, .. } => object_store::Error::NotFound {
            path,
            source: Box::new(e),
        },
        _ => generic(e),
    }
}

/// Percent-encodes everything but unreserved characters (and `/` when `keep_slash`).
fn encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'.' | b'_' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_string())
}

fn unquote(etag: &str) -> &str {
    etag.trim().trim_matches('"')
}

/// MD5 in lower-case hex, off the async threads for large bodies.
async fn md5_hex(data: Bytes) -> String {
    if data.len() < (1 << 20) {
        return hex::encode(Md5::digest(&data));
    }
    match tokio::task::spawn_blocking(move || hex::encode(Md5::digest(&data))).await {
        Ok(h) => h,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

fn payload_bytes(payload: PutPayload) -> Bytes {
    let mut chunks: Vec<Bytes> = payload.into_iter().collect();
    match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop().expect("one chunk"),
        _ => Bytes::from(chunks.concat()),
    }
}

/// Headers for object_store attributes Swift can store.
fn attribute_headers(attributes: &Attributes) -> object_store::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for (k, v) in attributes {
        let name = match k {
            Attribute::ContentType => "Content-Type".to_string(),
            Attribute::ContentEncoding => "Content-Encoding".to_string(),
            Attribute::ContentDisposition => "Content-Disposition".to_string(),
            Attribute::ContentLanguage => "Content-Language".to_string(),
            Attribute::CacheControl => "Cache-Control".to_string(),
            Attribute::Metadata(m) => format!("X-Object-Meta-{m}"),
            other => {
                return Err(object_store::Error::NotSupported {
                    source: format!("the Swift backend cannot store the {other:?} attribute")
                        .into(),
                })
            }
        };
        out.push((name, v.as_ref().to_string()));
    }
    if !out.iter().any(|(k, _)| k == "Content-Type") {
        out.push(("Content-Type".into(), "application/octet-stream".into()));
    }
    Ok(out)
}

fn attributes_from(headers: &HeaderMap) -> Attributes {
    let mut a = Attributes::new();
    for (attr, name) in [
        (Attribute::ContentType, "content-type"),
        (Attribute::ContentEncoding, "content-encoding"),
        (Attribute::ContentDisposition, "content-disposition"),
        (Attribute::ContentLanguage, "content-language"),
        (Attribute::CacheControl, "cache-control"),
    ] {
        if let Some(v) = header_str(headers, name) {
            a.insert(attr, AttributeValue::from(v));
        }
    }
    for (k, v) in headers {
        if let Some(m) = k.as_str().strip_prefix("x-object-meta-") {
            if let Ok(v) = v.to_str() {
                a.insert(
                    Attribute::Metadata(m.to_string().into()),
                    AttributeValue::from(v.to_string()),
                );
            }
        }
    }
    a
}

fn last_modified(headers: &HeaderMap) -> DateTime<Utc> {
    header_str(headers, "last-modified")
        .and_then(|s| DateTime::parse_from_rfc2822(&s).ok())
        .map(|d| d.with_timezone(&Utc))
        .or_else(|| {
            header_str(headers, "x-timestamp")
                .and_then(|s| s.parse::<f64>().ok())
                .and_then(|t| DateTime::from_timestamp_millis((t * 1000.0) as i64))
        })
        .unwrap_or_else(Utc::now)
}

fn http_date(t: &DateTime<Utc>) -> String {
    t.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

/// One segment of a Static Large Object, as its manifest lists it.
#[derive(Clone, Debug)]
struct Segment {
    key: String,
    etag: String,
    size: u64,
}

/// One entry of a JSON container listing.
#[derive(Deserialize)]
struct ListEntry {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    subdir: Option<String>,
    #[serde(default)]
    bytes: u64,
    #[serde(default)]
    hash: Option<String>,
    #[serde(default)]
    last_modified: Option<String>,
    #[serde(default)]
    slo_etag: Option<String>,
}

impl ListEntry {
    fn marker(&self) -> Option<&str> {
        self.name.as_deref().or(self.subdir.as_deref())
    }
}

/// Where the next listing page starts: after the last entry of `page`, until a page comes
/// back empty. A short page is not the end: the cluster's `container_listing_limit` may be
/// lower than the page size asked for, and stopping early would hide objects.
fn next_marker(page: &[ListEntry], current: &str) -> Option<String> {
    page.last()
        .and_then(|e| e.marker())
        .filter(|m| *m > current)
        .map(str::to_string)
}

fn hidden(name: &str) -> bool {
    name.strip_prefix(SEGMENTS_PREFIX)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

fn meta_from_entry(e: &ListEntry) -> Option<ObjectMeta> {
    let name = e.name.as_deref()?;
    let location = match Path::parse(name) {
        Ok(p) => p,
        Err(err) => {
            tracing::debug!("skipping Swift object {name:?}: {err}");
            return None;
        }
    };
    let last_modified = e
        .last_modified
        .as_deref()
        .and_then(|s| NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f").ok())
        .map(|n| n.and_utc())
        .unwrap_or_else(Utc::now);
    Some(ObjectMeta {
        location,
        last_modified,
        size: e.bytes,
        e_tag: e.slo_etag.clone().or_else(|| e.hash.clone()),
        version: None,
    })
}

/// The listing prefix for object_store's segment-wise prefix semantics (`a/b` lists
/// `a/b/...`, not `a/bc`).
fn list_prefix(prefix: Option<&Path>) -> String {
    match prefix.map(|p| p.as_ref()) {
        None | Some("") => String::new(),
        Some(p) => format!("{p}/"),
    }
}

struct Inner {
    client: Client,
    container: String,
    auth: AuthConfig,
    session: tokio::sync::Mutex<Option<Arc<Session>>>,
    segment_size: u64,
    list_page_size: usize,
    uploads: AtomicU64,
}

/// An OpenStack Swift container as an object store.
#[derive(Clone)]
pub struct SwiftStore {
    inner: Arc<Inner>,
}

impl fmt::Debug for SwiftStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let method = match &self.inner.auth.method {
            None => "pre-issued token",
            Some(auth::AuthMethod::TempAuth { .. }) => "TempAuth",
            Some(auth::AuthMethod::Keystone(_)) => "Keystone v3",
        };
        f.debug_struct("SwiftStore")
            .field("container", &self.inner.container)
            .field("auth", &method)
            .field("segment_size", &self.inner.segment_size)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for SwiftStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Swift(container {})", self.inner.container)
    }
}

impl SwiftStore {
    /// A store for `container`, authenticating as `auth` says; every HTTP request is bounded
    /// by `timeout` (connecting by `connect_timeout`).
    pub fn new(
        container: &str,
        auth: AuthConfig,
        timeout: Duration,
        connect_timeout: Duration,
    ) -> Result<Self, SwiftError> {
        if container.is_empty() || container.contains('/') {
            return Err(SwiftError::Config(format!(
                "invalid container name {container:?}"
            )));
        }
        let client = Client::builder()
            .timeout(timeout)
            .connect_timeout(connect_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| SwiftError::Config(format!("cannot build the HTTP client: {e}")))?;
        let session = auth.preissued.clone().map(Arc::new);
        Ok(SwiftStore {
            inner: Arc::new(Inner {
                client,
                container: container.to_string(),
                auth,
                session: tokio::sync::Mutex::new(session),
                segment_size: DEFAULT_SEGMENT_SIZE,
                list_page_size: DEFAULT_LIST_PAGE_SIZE,
                uploads: AtomicU64::new(0),
            }),
        })
    }

    /// A store for `container` from settings read through `get` (`OS_AUTH_URL` → value; see
    /// [`AuthConfig::from_settings`]), plus `SWIFT_SEGMENT_SIZE` (bytes).
    pub fn from_settings(
        container: &str,
        get: &dyn Fn(&str) -> Option<String>,
        timeout: Duration,
        connect_timeout: Duration,
    ) -> Result<Self, SwiftError> {
        let auth = AuthConfig::from_settings(get)?;
        let mut store = SwiftStore::new(container, auth, timeout, connect_timeout)?;
        if let Some(s) = get("SWIFT_SEGMENT_SIZE").filter(|s| !s.trim().is_empty()) {
            let n = s
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| {
                    SwiftError::Config(format!(
                        "SWIFT_SEGMENT_SIZE={s:?} is not a positive number of bytes"
                    ))
                })?;
            store = store.with_segment_size(n);
        }
        Ok(store)
    }

    /// Puts larger than `bytes` become Static Large Objects with segments of `bytes`.
    pub fn with_segment_size(self, bytes: u64) -> Self {
        self.reconfigure(|i| i.segment_size = bytes.max(1))
    }

    /// Names asked for per listing request (Swift caps it at its `container_listing_limit`).
    pub fn with_list_page_size(self, names: usize) -> Self {
        self.reconfigure(|i| i.list_page_size = names.max(1))
    }

    fn reconfigure(self, f: impl FnOnce(&mut Inner)) -> Self {
        let inner = match Arc::try_unwrap(self.inner) {
            Ok(i) => i,
            Err(shared) => Inner {
                client: shared.client.clone(),
                container: shared.container.clone(),
                auth: shared.auth.clone(),
                session: tokio::sync::Mutex::new(shared.auth.preissued.clone().map(Arc::new)),
                segment_size: shared.segment_size,
                list_page_size: shared.list_page_size,
                uploads: AtomicU64::new(0),
            },
        };
        let mut inner = inner;
        f(&mut inner);
        SwiftStore {
            inner: Arc::new(inner),
        }
    }

    /// The container.
    pub fn container(&self) -> &str {
        &self.inner.container
    }

    async fn session(&self) -> Result<Arc<Session>, SwiftError> {
        let mut guard = self.inner.session.lock().await;
        let method = self.inner.auth.method.as_ref();
        if let Some(s) = guard.as_ref() {
            if method.is_none() || !s.expires_within(EXPIRY_MARGIN) {
                return Ok(s.clone());
            }
        }
        let method = method
            .ok_or_else(|| SwiftError::Config("no pre-issued token and no credentials".into()))?;
        let mut s = method.authenticate(&self.inner.client).await?;
        if let Some(u) = &self.inner.auth.storage_url_override {
            s.storage_url = u.clone();
        }
        tracing::debug!("authenticated to Swift; storage URL {}", s.storage_url);
        let s = Arc::new(s);
        *guard = Some(s.clone());
        Ok(s)
    }

    async fn invalidate(&self, refused: &Arc<Session>) {
        let mut guard = self.inner.session.lock().await;
        if guard.as_ref().is_some_and(|s| Arc::ptr_eq(s, refused)) {
            *guard = None;
        }
    }

    /// The URL of `key` in the container (the container itself when `key` is empty).
    fn url(&self, session: &Session, key: &str, query: &[(&str, &str)]) -> String {
        let mut u = format!(
            "{}/{}",
            session.storage_url.trim_end_matches('/'),
            encode(&self.inner.container, false)
        );
        if !key.is_empty() {
            u.push('/');
            u.push_str(&encode(key, true));
        }
        for (i, (k, v)) in query.iter().enumerate() {
            u.push(if i == 0 { '?' } else { '&' });
            u.push_str(&encode(k, false));
            u.push('=');
            u.push_str(&encode(v, false));
        }
        u
    }

    /// Sends a request built by `build` (from the session's storage URL and token); on 401,
    /// when credentials allow, authenticates again and sends it once more. Returns the
    /// response and the URL it went to.
    async fn send(
        &self,
        method: Method,
        key: &str,
        query: &[(&str, &str)],
        build: &(dyn Fn(RequestBuilder) -> RequestBuilder + Send + Sync),
    ) -> Result<(Response, String), SwiftError> {
        let mut renewed = false;
        loop {
            let session = self.session().await?;
            let url = self.url(&session, key, query);
            let req = self
                .inner
                .client
                .request(method.clone(), &url)
                .header("X-Auth-Token", session.token.header_value()?);
            let resp = build(req)
                .send()
                .await
                .map_err(|e| SwiftError::transport(&format!("{method} {url}"), e))?;
            if resp.status() == StatusCode::UNAUTHORIZED
                && !renewed
                && self.inner.auth.method.is_some()
            {
                tracing::debug!("Swift refused the token (401): authenticating again");
                self.invalidate(&session).await;
                renewed = true;
                continue;
            }
            if resp.status() == StatusCode::UNAUTHORIZED {
                let why = if self.inner.auth.method.is_none() {
                    " (the pre-issued OS_AUTH_TOKEN was refused: expired or revoked?)"
                } else {
                    " (a fresh token was refused too)"
                };
                return Err(SwiftError::status(
                    method.as_str(),
                    &url,
                    resp.status(),
                    why.trim_start_matches(' '),
                ));
            }
            return Ok((resp, url));
        }
    }

    /// PUTs one plain object with its MD5 as ETag; `create` adds `If-None-Match: *`.
    async fn put_object(
        &self,
        key: &str,
        data: Bytes,
        create: bool,
        headers: &[(String, String)],
        query: &[(&str, &str)],
    ) -> object_store::Result<(String, Option<String>)> {
        let md5 = md5_hex(data.clone()).await;
        let md5_ref = md5.as_str();
        let build = |r: RequestBuilder| {
            // Explicit: an empty body would otherwise go without Content-Length, which
            // Swift refuses (411).
            let mut r = r
                .header("ETag", md5_ref)
                .header("Content-Length", data.len().to_string())
                .body(data.clone());
            for (k, v) in headers {
                r = r.header(k.as_str(), v.as_str());
            }
            if create {
                r = r.header("If-None-Match", "*");
            }
            r
        };
        let (resp, url) = self
            .send(Method::PUT, key, query, &build)
            .await
            .map_err(|e| os_err(key, e))?;
        let status = resp.status();
        if status == StatusCode::PRECONDITION_FAILED && create {
            return Err(object_store::Error::AlreadyExists {
                path: key.to_string(),
                source: "Swift answered 412 to If-None-Match: *".into(),
            });
        }
        if status == StatusCode::NOT_FOUND {
            return Err(object_store::Error::NotFound {
                path: key.to_string(),
                source: Box::new(SwiftError::status(
                    "PUT",
                    &url,
                    status,
                    &format!("container {:?} does not exist", self.inner.container),
                )),
            });
        }
        if !status.is_success() {
            return Err(os_err(key, SwiftError::status("PUT", &url, status, "")));
        }
        let etag = header_str(resp.headers(), "etag");
        if let Some(got) = &etag {
            if !unquote(got).eq_ignore_ascii_case(&md5) {
                return Err(generic(SwiftError::Checksum(format!(
                    "PUT {url}: Swift stored ETag {got}, but the body sent has MD5 {md5}"
                ))));
            }
        }
        Ok((md5, etag))
    }

    fn segment_key(&self, key: &str, upload: &str, index: usize) -> String {
        format!("{SEGMENTS_PREFIX}/{key}/{upload}/{index:08}")
    }

    fn new_upload_id(&self) -> String {
        let n = self.inner.uploads.fetch_add(1, Ordering::Relaxed);
        let now = Utc::now();
        format!(
            "{}-{}-{n}",
            now.format("%Y%m%dT%H%M%S%.9fZ"),
            std::process::id()
        )
    }

    /// Writes the manifest of a Static Large Object over `segments`.
    async fn put_manifest(
        &self,
        key: &str,
        segments: &[Segment],
        create: bool,
        headers: &[(String, String)],
    ) -> object_store::Result<PutResult> {
        let manifest: Vec<serde_json::Value> = segments
            .iter()
            .map(|s| {
                serde_json::json!({
                    "path": format!("/{}/{}", self.inner.container, s.key),
                    "etag": s.etag,
                    "size_bytes": s.size,
                })
            })
            .collect();
        let body = Bytes::from(serde_json::to_vec(&manifest).expect("JSON serializes"));
        let concatenated: String = segments.iter().map(|s| s.etag.as_str()).collect();
        let expected = hex::encode(Md5::digest(concatenated.as_bytes()));
        let build = |r: RequestBuilder| {
            let mut r = r.body(body.clone());
            for (k, v) in headers {
                r = r.header(k.as_str(), v.as_str());
            }
            if create {
                r = r.header("If-None-Match", "*");
            }
            r
        };
        let (resp, url) = self
            .send(Method::PUT, key, &[("multipart-manifest", "put")], &build)
            .await
            .map_err(|e| os_err(key, e))?;
        let status = resp.status();
        if status == StatusCode::PRECONDITION_FAILED && create {
            return Err(object_store::Error::AlreadyExists {
                path: key.to_string(),
                source: "Swift answered 412 to If-None-Match: *".into(),
            });
        }
        if !status.is_success() {
            let detail = resp.text().await.unwrap_or_default();
            let detail: String = detail.trim().chars().take(300).collect();
            return Err(os_err(
                key,
                SwiftError::status("PUT manifest", &url, status, &detail),
            ));
        }
        let etag = header_str(resp.headers(), "etag");
        if let Some(got) = &etag {
            if !unquote(got).eq_ignore_ascii_case(&expected) {
                return Err(generic(SwiftError::Checksum(format!(
                    "PUT manifest {url}: Swift answered ETag {got}, expected {expected} from the segments"
                ))));
            }
        }
        Ok(PutResult {
            e_tag: etag,
            version: None,
            extensions: Default::default(),
        })
    }

    /// Best-effort removal of segments (after a failed or refused upload).
    async fn delete_segments(&self, keys: Vec<String>) {
        for key in keys {
            if let Err(e) = self.send(Method::DELETE, &key, &[], &|r| r).await {
                tracing::debug!("could not delete Swift segment {key}: {e}");
            }
        }
    }

    async fn put_large(
        &self,
        key: &str,
        data: Bytes,
        create: bool,
        headers: &[(String, String)],
    ) -> object_store::Result<PutResult> {
        let upload = self.new_upload_id();
        let size = self.inner.segment_size as usize;
        let chunks: Vec<(usize, Bytes)> = (0..data.len())
            .step_by(size)
            .map(|start| data.slice(start..(start + size).min(data.len())))
            .enumerate()
            .collect();
        let keys: Vec<String> = (0..chunks.len())
            .map(|i| self.segment_key(key, &upload, i))
            .collect();
        let uploaded: object_store::Result<Vec<Segment>> = stream::iter(chunks)
            .map(|(i, chunk)| {
                let seg_key = keys[i].clone();
                async move {
                    let len = chunk.len() as u64;
                    let (md5, _) = self.put_object(&seg_key, chunk, false, &[], &[]).await?;
                    Ok(Segment {
                        key: seg_key,
                        etag: md5,
                        size: len,
                    })
                }
            })
            .buffered(2)
            .try_collect()
            .await;
        let result = match uploaded {
            Ok(segments) => self.put_manifest(key, &segments, create, headers).await,
            Err(e) => Err(e),
        };
        if result.is_err() {
            self.delete_segments(keys).await;
        }
        result
    }

    async fn delete_one(&self, location: &Path) -> object_store::Result<()> {
        let key = location.as_ref();
        let (head, url) = self
            .send(Method::HEAD, key, &[], &|r| r)
            .await
            .map_err(|e| os_err(key, e))?;
        if !head.status().is_success() {
            return Err(os_err(
                key,
                SwiftError::status("HEAD", &url, head.status(), ""),
            ));
        }
        let slo = header_str(head.headers(), "x-static-large-object")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        if slo {
            let (resp, url) = self
                .send(
                    Method::DELETE,
                    key,
                    &[("multipart-manifest", "delete")],
                    &|r| r.header("Accept", "application/json"),
                )
                .await
                .map_err(|e| os_err(key, e))?;
            let status = resp.status();
            if !status.is_success() {
                return Err(os_err(key, SwiftError::status("DELETE", &url, status, "")));
            }
            #[derive(Deserialize)]
            struct BulkAnswer {
                #[serde(rename = "Response Status")]
                status: String,
                #[serde(rename = "Errors", default)]
                errors: Vec<serde_json::Value>,
            }
            let body = resp
                .bytes()
                .await
                .map_err(|e| generic(SwiftError::transport("DELETE", e)))?;
            if let Ok(answer) = serde_json::from_slice::<BulkAnswer>(&body) {
                let code: u16 = answer
                    .status
                    .split_whitespace()
                    .next()
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(500);
                if !(200..300).contains(&code) || !answer.errors.is_empty() {
                    let code = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY);
                    let detail: String = serde_json::to_string(&answer.errors)
                        .unwrap_or_default()
                        .chars()
                        .take(300)
                        .collect();
                    return Err(os_err(
                        key,
                        SwiftError::status("DELETE", &url, code, &detail),
                    ));
                }
            }
            return Ok(());
        }
        let (resp, url) = self
            .send(Method::DELETE, key, &[], &|r| r)
            .await
            .map_err(|e| os_err(key, e))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(os_err(
                key,
                SwiftError::status("DELETE", &url, resp.status(), ""),
            ))
        }
    }

    /// One page of the container listing after `marker`.
    async fn list_page(
        &self,
        prefix: &str,
        delimiter: bool,
        marker: &str,
    ) -> object_store::Result<Vec<ListEntry>> {
        let limit = self.inner.list_page_size.to_string();
        let mut query: Vec<(&str, &str)> = vec![("format", "json"), ("limit", &limit)];
        if !prefix.is_empty() {
            query.push(("prefix", prefix));
        }
        if delimiter {
            query.push(("delimiter", "/"));
        }
        if !marker.is_empty() {
            query.push(("marker", marker));
        }
        let (resp, url) = self
            .send(Method::GET, "", &query, &|r| {
                r.header("Accept", "application/json")
            })
            .await
            .map_err(|e| os_err(prefix, e))?;
        let status = resp.status();
        if status == StatusCode::NO_CONTENT {
            return Ok(Vec::new());
        }
        if status == StatusCode::NOT_FOUND {
            // A missing container is a configuration problem, not a missing object.
            return Err(generic(SwiftError::status(
                "GET",
                &url,
                status,
                &format!("container {:?} does not exist", self.inner.container),
            )));
        }
        if !status.is_success() {
            return Err(os_err(prefix, SwiftError::status("GET", &url, status, "")));
        }
        let body = resp
            .bytes()
            .await
            .map_err(|e| generic(SwiftError::transport(&format!("GET {url}"), e)))?;
        if body.is_empty() {
            return Ok(Vec::new());
        }
        serde_json::from_slice(&body).map_err(|e| {
            generic(SwiftError::Protocol(format!(
                "GET {url}: the container listing is not valid JSON: {e}"
            )))
        })
    }
}

#[async_trait]
impl ObjectStore for SwiftStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let create = match opts.mode {
            PutMode::Overwrite => false,
            PutMode::Create => true,
            PutMode::Update(_) => {
                return Err(object_store::Error::NotImplemented {
                    operation: "put_opts with PutMode::Update (Swift has no conditional replace)"
                        .into(),
                    implementer: "SwiftStore".into(),
                })
            }
        };
        let headers = attribute_headers(&opts.attributes)?;
        let data = payload_bytes(payload);
        let key = location.as_ref();
        if data.len() as u64 > self.inner.segment_size {
            return self.put_large(key, data, create, &headers).await;
        }
        let (_, etag) = self.put_object(key, data, create, &headers, &[]).await?;
        Ok(PutResult {
            e_tag: etag,
            version: None,
            extensions: Default::default(),
        })
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let headers = attribute_headers(&opts.attributes)?;
        Ok(Box::new(SwiftUpload {
            store: self.clone(),
            key: location.as_ref().to_string(),
            upload: self.new_upload_id(),
            headers,
            parts: Arc::new(StdMutex::new(Vec::new())),
        }))
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        if options.version.is_some() {
            return Err(object_store::Error::NotImplemented {
                operation: "get_opts with a version".into(),
                implementer: "SwiftStore".into(),
            });
        }
        let key = location.as_ref();
        let method = if options.head {
            Method::HEAD
        } else {
            Method::GET
        };
        let range = options.range.clone();
        let build = |mut r: RequestBuilder| {
            if let Some(range) = &range {
                let value = match range {
                    GetRange::Bounded(b) => {
                        format!("bytes={}-{}", b.start, b.end.saturating_sub(1))
                    }
                    GetRange::Offset(o) => format!("bytes={o}-"),
                    GetRange::Suffix(n) => format!("bytes=-{n}"),
                };
                r = r.header("Range", value);
            }
            if let Some(v) = &options.if_match {
                r = r.header("If-Match", v.as_str());
            }
            if let Some(v) = &options.if_none_match {
                r = r.header("If-None-Match", v.as_str());
            }
            if let Some(t) = &options.if_modified_since {
                r = r.header("If-Modified-Since", http_date(t));
            }
            if let Some(t) = &options.if_unmodified_since {
                r = r.header("If-Unmodified-Since", http_date(t));
            }
            r
        };
        let (resp, url) = self
            .send(method.clone(), key, &[], &build)
            .await
            .map_err(|e| os_err(key, e))?;
        let status = resp.status();
        match status {
            StatusCode::NOT_MODIFIED => {
                return Err(object_store::Error::NotModified {
                    path: key.to_string(),
                    source: "Swift answered 304".into(),
                })
            }
            StatusCode::PRECONDITION_FAILED => {
                return Err(object_store::Error::Precondition {
                    path: key.to_string(),
                    source: "Swift answered 412".into(),
                })
            }
            s if !s.is_success() => {
                return Err(os_err(
                    key,
                    SwiftError::status(method.as_str(), &url, s, ""),
                ))
            }
            _ => {}
        }
        let headers = resp.headers().clone();
        let length: u64 = header_str(&headers, "content-length")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let (size, range): (u64, Range<u64>) = if status == StatusCode::PARTIAL_CONTENT {
            let cr = header_str(&headers, "content-range").unwrap_or_default();
            let parsed = cr.strip_prefix("bytes ").and_then(|rest| {
                let (span, total) = rest.split_once('/')?;
                let (a, b) = span.split_once('-')?;
                Some((
                    total.parse::<u64>().ok()?,
                    a.parse::<u64>().ok()?..b.parse::<u64>().ok()? + 1,
                ))
            });
            parsed.ok_or_else(|| {
                generic(SwiftError::Protocol(format!(
                    "GET {url}: 206 without a usable Content-Range ({cr:?})"
                )))
            })?
        } else {
            (length, 0..length)
        };
        let meta = ObjectMeta {
            location: location.clone(),
            last_modified: last_modified(&headers),
            size,
            e_tag: header_str(&headers, "etag"),
            version: None,
        };
        let payload = if options.head {
            stream::empty().boxed()
        } else {
            let what = format!("GET {url}");
            resp.bytes_stream()
                .map_err(move |e| generic(SwiftError::transport(&what, e)))
                .boxed()
        };
        Ok(GetResult {
            payload: GetResultPayload::Stream(payload),
            meta,
            range,
            attributes: attributes_from(&headers),
            extensions: Default::default(),
        })
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let this = self.clone();
        locations
            .map(move |location| {
                let this = this.clone();
                async move {
                    let location = location?;
                    this.delete_one(&location).await?;
                    Ok(location)
                }
            })
            .buffered(4)
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let this = self.clone();
        let prefix = list_prefix(prefix);
        stream::try_unfold(Some(String::new()), move |marker| {
            let this = this.clone();
            let prefix = prefix.clone();
            async move {
                let Some(marker) = marker else {
                    return Ok::<_, object_store::Error>(None);
                };
                let page = this.list_page(&prefix, false, &marker).await?;
                let next = next_marker(&page, &marker);
                let metas: Vec<object_store::Result<ObjectMeta>> = page
                    .iter()
                    .filter(|e| e.name.as_deref().is_some_and(|n| !hidden(n)))
                    .filter_map(meta_from_entry)
                    .map(Ok)
                    .collect();
                Ok(Some((stream::iter(metas), next)))
            }
        })
        .try_flatten()
        .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        let prefix = list_prefix(prefix);
        let mut marker = String::new();
        let mut common_prefixes = Vec::new();
        let mut objects = Vec::new();
        loop {
            let page = self.list_page(&prefix, true, &marker).await?;
            for e in &page {
                if let Some(dir) = &e.subdir {
                    if hidden(dir) || dir.as_str() <= marker.as_str() {
                        continue;
                    }
                    match Path::parse(dir.trim_end_matches('/')) {
                        Ok(p) => common_prefixes.push(p),
                        Err(err) => tracing::debug!("skipping Swift prefix {dir:?}: {err}"),
                    }
                } else if e.name.as_deref().is_some_and(|n| !hidden(n)) {
                    objects.extend(meta_from_entry(e));
                }
            }
            match next_marker(&page, &marker) {
                Some(m) => marker = m,
                None => break,
            }
        }
        Ok(ListResult {
            common_prefixes,
            objects,
            extensions: Default::default(),
        })
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        if options.mode == CopyMode::Create {
            // Swift applies If-None-Match to the copy's source, not its destination: read
            // the source and create the destination with a conditional put instead.
            let source = self.get_opts(from, GetOptions::default()).await?;
            let attributes = source.attributes.clone();
            let data = source.bytes().await?;
            let opts = PutOptions {
                mode: PutMode::Create,
                attributes,
                ..Default::default()
            };
            return self.put_opts(to, data.into(), opts).await.map(|_| ());
        }
        let source = format!(
            "/{}/{}",
            encode(&self.inner.container, false),
            encode(from.as_ref(), true)
        );
        let key = to.as_ref();
        let build = |r: RequestBuilder| {
            r.header("X-Copy-From", source.as_str())
                .header("Content-Length", "0")
        };
        let (resp, url) = self
            .send(Method::PUT, key, &[], &build)
            .await
            .map_err(|e| os_err(key, e))?;
        match resp.status() {
            s if s.is_success() => Ok(()),
            s => Err(os_err(
                from.as_ref(),
                SwiftError::status("COPY", &url, s, ""),
            )),
        }
    }
}

/// A multipart upload: each part is a segment, `complete` writes the SLO manifest.
struct SwiftUpload {
    store: SwiftStore,
    key: String,
    upload: String,
    headers: Vec<(String, String)>,
    parts: Arc<StdMutex<Vec<Option<Segment>>>>,
}

impl fmt::Debug for SwiftUpload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SwiftUpload")
            .field("key", &self.key)
            .field("upload", &self.upload)
            .finish_non_exhaustive()
    }
}

impl SwiftUpload {
    fn segment_keys(&self) -> Vec<String> {
        let n = self.parts.lock().unwrap_or_else(|e| e.into_inner()).len();
        (0..n)
            .map(|i| self.store.segment_key(&self.key, &self.upload, i))
            .collect()
    }
}

#[async_trait]
impl MultipartUpload for SwiftUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let index = {
            let mut parts = self.parts.lock().unwrap_or_else(|e| e.into_inner());
            parts.push(None);
            parts.len() - 1
        };
        let store = self.store.clone();
        let parts = self.parts.clone();
        let seg_key = store.segment_key(&self.key, &self.upload, index);
        Box::pin(async move {
            let data = payload_bytes(data);
            let size = data.len() as u64;
            let (md5, _) = store.put_object(&seg_key, data, false, &[], &[]).await?;
            parts.lock().unwrap_or_else(|e| e.into_inner())[index] = Some(Segment {
                key: seg_key,
                etag: md5,
                size,
            });
            Ok(())
        })
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        let parts: Option<Vec<Segment>> = self
            .parts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect();
        let parts = parts.ok_or_else(|| {
            generic(SwiftError::Protocol(
                "complete() called before every part finished uploading".into(),
            ))
        })?;
        if parts.is_empty() {
            let (_, etag) = self
                .store
                .put_object(&self.key, Bytes::new(), false, &self.headers, &[])
                .await?;
            return Ok(PutResult {
                e_tag: etag,
                version: None,
                extensions: Default::default(),
            });
        }
        self.store
            .put_manifest(&self.key, &parts, false, &self.headers)
            .await
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.store.delete_segments(self.segment_keys()).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_keys() {
        assert_eq!(encode("a b/c%d", true), "a%20b/c%25d");
        assert_eq!(encode("a/b", false), "a%2Fb");
        assert_eq!(
            encode("wal/00000001/x.partial", true),
            "wal/00000001/x.partial"
        );
    }

    #[test]
    fn pages_until_an_empty_page() {
        let page = |names: &[&str]| -> Vec<ListEntry> {
            names
                .iter()
                .map(|n| ListEntry {
                    name: (!n.ends_with('/')).then(|| n.to_string()),
                    subdir: n.ends_with('/').then(|| n.to_string()),
                    bytes: 0,
                    hash: None,
                    last_modified: None,
                    slo_etag: None,
                })
                .collect()
        };
        // A short page is not the end (the cluster may cap the page size)...
        assert_eq!(next_marker(&page(&["a", "b/"]), ""), Some("b/".into()));
        // ...an empty page is, and so is a marker that does not advance.
        assert_eq!(next_marker(&page(&[]), "b/"), None);
        assert_eq!(next_marker(&page(&["b/"]), "b/"), None);
    }

    #[test]
    fn hides_segments() {
        assert!(hidden(".walarchive-segments/x/1"));
        assert!(hidden(".walarchive-segments/"));
        assert!(!hidden(".walarchive-segmentsx"));
        assert!(!hidden("db/wal"));
    }

    #[test]
    fn list_prefix_is_segment_wise() {
        assert_eq!(list_prefix(None), "");
        assert_eq!(list_prefix(Some(&Path::from("a/b"))), "a/b/");
    }

    #[test]
    fn transient_statuses() {
        let s = |code: u16| {
            SwiftError::status(
                "GET",
                "http://x/v1/A/c/o",
                StatusCode::from_u16(code).unwrap(),
                "",
            )
        };
        assert!(s(503).is_transient());
        assert!(s(422).is_transient());
        assert!(s(429).is_transient());
        assert!(!s(400).is_transient());
        assert!(!s(413).is_transient());
        assert!(s(500).to_string().contains("status code: 500"));
    }

    #[test]
    fn parses_listing_entries() {
        let body = br#"[{"subdir": "a/"}, {"bytes": 5, "hash": "8996", "name": "big", "content_type": "x", "last_modified": "2026-11-30T06:21:52.109540", "slo_etag": "\"3707\""}]"#;
        let entries: Vec<ListEntry> = serde_json::from_slice(body).unwrap();
        assert_eq!(entries[0].marker(), Some("a/"));
        let m = meta_from_entry(&entries[1]).unwrap();
        assert_eq!((m.location.as_ref(), m.size), ("big", 5));
        assert_eq!(m.e_tag.as_deref(), Some("\"3707\""));
        assert_eq!(m.last_modified.timestamp(), 1796019712);
    }
}
