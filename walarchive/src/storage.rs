//! Storage backends behind object_store's `ObjectStore` trait, and error classification.
//!
//! Every backend is opened from a repository URL into an `Arc<dyn ObjectStore>` plus a key
//! prefix, so the engine never knows which store it talks to: a new backend is one more
//! arm in [`open`]. object_store has no OpenStack Swift backend, so [`swift`]
//! implements its `ObjectStore` trait over Swift's native API. Two things are decided here
//! for all of them:
//!
//! - Durability: the local-directory backend fsyncs files and directories before a put
//!   returns, so `wal-push` exiting 0 means the segment survives a power loss. The cloud
//!   stores acknowledge a PUT only once it is durable.
//! - Retries: object_store's internal retry loop is disabled and each request is bounded by
//!   a timeout, so the single helper in [`crate::retry`] decides what is retried and for how
//!   long. Errors are classified here into permanent and transient.
//!
//! Credentials never pass through this module's error messages: URL query strings (which
//! may carry SAS tokens or signatures) are redacted from every message.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ClientOptions, ObjectStore, RetryConfig};

use crate::retry::{RetryPolicy, Retryable};

mod keys;
pub mod owned;
pub mod swift;
pub mod unreliable;

/// The object_store crate, for code that drives a store directly (tests, tools).
pub use object_store;

/// A storage failure, classified for the retry helper.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The object does not exist.
    #[error("object not found")]
    NotFound,
    /// A create-only put found an existing object.
    #[error("object already exists")]
    AlreadyExists,
    /// Credentials were refused (401/403).
    #[error("access denied (check the credentials and their permissions): {0}")]
    AccessDenied(String),
    /// A failure retrying cannot fix (bad request, unsupported operation, invalid path).
    #[error("{0}")]
    Permanent(String),
    /// A failure that may pass (5xx, connection reset, throttling).
    #[error("{0}")]
    Transient(String),
    /// One attempt exceeded its time limit.
    #[error("request timed out after {0:?}")]
    Timeout(Duration),
    /// Transient failures outlasted the retry bound.
    #[error("gave up after {attempts} attempts: {last}")]
    GaveUp {
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last: Box<StorageError>,
    },
}

impl Retryable for StorageError {
    fn is_permanent(&self) -> bool {
        StorageError::is_permanent(self)
    }

    fn timed_out(limit: Duration) -> Self {
        StorageError::Timeout(limit)
    }

    fn gave_up(attempts: u32, last: Self) -> Self {
        StorageError::GaveUp {
            attempts,
            last: Box::new(last),
        }
    }
}

impl StorageError {
    /// Whether retrying cannot help.
    pub fn is_permanent(&self) -> bool {
        match self {
            StorageError::NotFound
            | StorageError::AlreadyExists
            | StorageError::AccessDenied(_)
            | StorageError::Permanent(_)
            | StorageError::GaveUp { .. } => true,
            StorageError::Transient(_) | StorageError::Timeout(_) => false,
        }
    }

    /// Whether this is "the object does not exist".
    pub fn is_not_found(&self) -> bool {
        matches!(self, StorageError::NotFound)
    }
}

impl From<object_store::Error> for StorageError {
    fn from(e: object_store::Error) -> Self {
        use object_store::Error as E;
        let msg = redact(&e.to_string());
        match e {
            E::NotFound { .. } => StorageError::NotFound,
            E::AlreadyExists { .. } => StorageError::AlreadyExists,
            E::PermissionDenied { .. } | E::Unauthenticated { .. } => {
                StorageError::AccessDenied(msg)
            }
            E::Precondition { .. }
            | E::NotModified { .. }
            | E::NotSupported { .. }
            | E::NotImplemented { .. }
            | E::InvalidPath { .. }
            | E::UnknownConfigurationKey { .. } => StorageError::Permanent(msg),
            E::Generic { ref source, .. } => match source_class(source.as_ref()) {
                Some(Class::Transient) => StorageError::Transient(msg),
                Some(Class::Permanent) => StorageError::Permanent(msg),
                None => classify_by_status(msg),
            },
            _ => classify_by_status(msg),
        }
    }
}

enum Class {
    Transient,
    Permanent,
}

/// Classifies by the first telling error in the chain: connection-level HTTP failures
/// (connect, reset, timeout, truncated body) are transient; local I/O errors are transient
/// (a full disk may be freed) except those no retry can change (permissions, read-only).
fn source_class(e: &(dyn std::error::Error + 'static)) -> Option<Class> {
    use std::io::ErrorKind as K;
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(s) = err.downcast_ref::<swift::SwiftError>() {
            return Some(if s.is_transient() {
                Class::Transient
            } else {
                Class::Permanent
            });
        }
        if err.is::<object_store::client::HttpError>() {
            return Some(Class::Transient);
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(match io.kind() {
                K::PermissionDenied
                | K::ReadOnlyFilesystem
                | K::InvalidInput
                | K::NotADirectory => Class::Permanent,
                _ => Class::Transient,
            });
        }
        cur = err.source();
    }
    None
}

/// object_store keeps the HTTP status of generic failures private; its message carries it
/// as "status code: NNN". 4xx (but 408 and 429) is permanent; everything else is transient.
fn classify_by_status(msg: String) -> StorageError {
    let status = msg
        .split("status code: ")
        .nth(1)
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse::<u16>().ok());
    match status {
        Some(s) if (400..500).contains(&s) && s != 408 && s != 429 => StorageError::Permanent(msg),
        // Not Implemented: the store lacks the feature (a conditional put, say); no retry
        // will change that.
        Some(501) => StorageError::Permanent(msg),
        _ => StorageError::Transient(msg),
    }
}

/// Removes credentials from the URLs in a message: query strings (signatures, SAS tokens)
/// and user info (`http://user:password@host/`, an endpoint with credentials in it).
pub fn redact(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(start) = rest.find("http") {
        let (before, url_on) = rest.split_at(start);
        out.push_str(before);
        let end = url_on
            .find(|c: char| c.is_whitespace())
            .unwrap_or(url_on.len());
        out.push_str(&redact_url(&url_on[..end]));
        rest = &url_on[end..];
    }
    out.push_str(rest);
    out
}

/// A URL (or something meant as one) as it may be shown: without user info (everything
/// before the `@` of the authority, e.g. `s3://KEYID:SECRET@bucket/x` becomes
/// `s3://<redacted>@bucket/x`), query string or fragment. Works on text that does not parse
/// as a URL too, since that is when it is quoted in an error.
pub fn redact_url(url: &str) -> String {
    let (base, tail) = match url.find(['?', '#']) {
        Some(i) => (&url[..i], "?<redacted>"),
        None => (url, ""),
    };
    let (scheme, rest) = match base.find("://") {
        Some(i)
            if i > 0
                && base[..i]
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b)) =>
        {
            base.split_at(i + 3)
        }
        // No authority marker: whatever comes before an `@` in the first path segment may
        // be credentials (`s3:KEY:SECRET@bucket`), the would-be scheme included.
        _ => ("", base),
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}<redacted>{}{tail}", &rest[at..]),
        None => format!("{base}{tail}"),
    }
}

/// What the stores take from the process environment: credentials and endpoints by their
/// providers' names (`AWS_*`, `AZURE_*`, `GOOGLE_*`, `IDENTITY_ENDPOINT`, `SERVICE_ACCOUNT`,
/// OpenStack's `OS_*`), and the fault-injection hook ([`unreliable::ENV`]). The binary reads
/// its environment into this and passes it down: the libraries never read the environment,
/// so what a store is opened with is explicit (and a test can give it exactly). Values may be
/// secrets: `Debug` shows the names only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct StorageEnv {
    vars: BTreeMap<String, String>,
    faults: Option<std::ffi::OsString>,
}

impl StorageEnv {
    /// The variables `vars` (name, value), and the fault plan `faults` (the value of
    /// [`unreliable::ENV`], if set).
    pub fn new(
        vars: impl IntoIterator<Item = (String, String)>,
        faults: Option<std::ffi::OsString>,
    ) -> Self {
        StorageEnv {
            vars: vars.into_iter().collect(),
            faults,
        }
    }

    /// The value of variable `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    /// Every variable, by name.
    pub fn vars(&self) -> impl Iterator<Item = (&str, &str)> {
        self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The variables whose names start with `prefix`, named in lower case (object_store's
    /// configuration keys).
    fn with_prefix<'a>(
        &'a self,
        prefix: &'static str,
    ) -> impl Iterator<Item = (String, String)> + 'a {
        self.vars
            .iter()
            .filter(move |(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
    }
}

impl fmt::Debug for StorageEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StorageEnv")
            .field("vars", &self.vars.keys().collect::<Vec<_>>())
            .field("faults", &self.faults.is_some())
            .finish()
    }
}

/// Extra backend options (object_store configuration keys such as `aws_endpoint`) from the
/// configuration file. Values may be secrets, so `Debug` shows only the keys.
#[derive(Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct StorageOptions(pub BTreeMap<String, String>);

impl fmt::Debug for StorageOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.keys().map(|k| (k, "<redacted>")))
            .finish()
    }
}

pub use keys::UnknownKey;

/// Which backend a repository URL names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Amazon S3 and S3-compatible stores (`s3://`).
    S3,
    /// Azure Blob Storage (`az://`, `azure://`).
    Azure,
    /// A local (or mounted) directory (`file://`).
    Local,
    /// OpenStack Swift (`swift://`).
    Swift,
    /// Google Cloud Storage (`gs://`).
    Gcs,
}

impl Backend {
    /// The backend's name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Backend::S3 => "S3 (s3://)",
            Backend::Azure => "Azure (az://)",
            Backend::Local => "local directory (file://)",
            Backend::Swift => "Swift (swift://)",
            Backend::Gcs => "Google Cloud Storage (gs://)",
        }
    }
}

/// A repository URL that cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Not a URL, or one without the required parts.
    #[error("invalid repository URL {url:?}: {reason}")]
    BadUrl {
        /// The URL as given, redacted ([`redact_url`]).
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// A scheme walarchive has no backend for.
    #[error("unsupported repository URL scheme {scheme:?} in {url:?} (supported: s3://, az://, azure://, gs://, swift://, file://)")]
    UnknownScheme {
        /// The scheme.
        scheme: String,
        /// The URL.
        url: String,
    },
    /// A `[storage]` key of another backend than the URL's.
    #[error("{0}")]
    ForeignKey(String),
    /// The backend refused its configuration.
    #[error("cannot configure the {backend:?} backend: {reason}")]
    Backend {
        /// Backend.
        backend: Backend,
        /// object_store's message.
        reason: String,
    },
}

/// An opened repository location.
#[derive(Debug, Clone)]
pub struct Location {
    /// The store.
    pub store: Arc<dyn ObjectStore>,
    /// Key prefix inside the store (may be empty).
    pub prefix: Path,
    /// Which backend.
    pub backend: Backend,
}

/// Opens `url` with credentials from the environment `env`, then `options` (which win).
pub fn open(
    url: &str,
    options: &StorageOptions,
    env: &StorageEnv,
    policy: &RetryPolicy,
) -> Result<Location, OpenError> {
    // The URL is quoted in every error about it, and it may hold credentials (a key pair as
    // user info, a signature in a query string): only its redacted form is ever shown, and a
    // URL that needed redacting is refused before anything else looks at it.
    let shown = redact_url(url);
    let bad = |reason: &str| OpenError::BadUrl {
        url: shown.clone(),
        reason: reason.to_string(),
    };
    if shown != url {
        return Err(bad(if url.contains(['?', '#']) {
            "query strings and fragments are not allowed (put credentials in the environment)"
        } else {
            "credentials in the URL are not allowed (put them in the environment)"
        }));
    }
    let parsed = url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(bad(
            "query strings and fragments are not allowed (put credentials in the environment)",
        ));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(bad(
            "credentials in the URL are not allowed (put them in the environment)",
        ));
    }
    let scheme = parsed.scheme().to_ascii_lowercase();
    let backend = match scheme.as_str() {
        "s3" | "s3a" => Some(Backend::S3),
        "az" | "azure" | "abfs" => Some(Backend::Azure),
        "gs" => Some(Backend::Gcs),
        "swift" => Some(Backend::Swift),
        "file" => Some(Backend::Local),
        _ => None,
    };
    if let Some(b) = backend {
        options.check_backend(b).map_err(OpenError::ForeignKey)?;
    }
    let path = percent_decode(parsed.path()).ok_or_else(|| bad("the path is not valid UTF-8"))?;
    let client = ClientOptions::new()
        .with_timeout(policy.attempt_timeout)
        .with_connect_timeout(Duration::from_secs(10).min(policy.attempt_timeout));
    // walarchive's own helper retries; object_store must not retry underneath it.
    let no_retry = RetryConfig {
        max_retries: 0,
        ..RetryConfig::default()
    };
    let backend_err = |backend: Backend| {
        move |e: object_store::Error| OpenError::Backend {
            backend,
            reason: redact(&e.to_string()),
        }
    };
    let (store, prefix, backend): (Arc<dyn ObjectStore>, &str, Backend) = match scheme.as_str() {
        "s3" | "s3a" => {
            let bucket = parsed
                .host_str()
                .filter(|h| !h.is_empty())
                .ok_or_else(|| bad("missing bucket name"))?;
            let mut b = AmazonS3Builder::new()
                .with_client_options(client)
                .with_retry(no_retry);
            for (k, v) in env.with_prefix("AWS_").chain(options_for(options, "aws_")) {
                if let Ok(key) = k.parse::<AmazonS3ConfigKey>() {
                    b = b.with_config(key, v);
                }
            }
            let store = b
                .with_bucket_name(bucket)
                .build()
                .map_err(backend_err(Backend::S3))?;
            (Arc::new(store), path.as_str(), Backend::S3)
        }
        "az" | "azure" | "abfs" => {
            let container = parsed
                .host_str()
                .filter(|h| !h.is_empty())
                .ok_or_else(|| bad("missing container name"))?;
            let mut b = MicrosoftAzureBuilder::new()
                .with_client_options(client)
                .with_retry(no_retry);
            // As MicrosoftAzureBuilder::from_env: managed identity's endpoint has no AZURE_ name.
            let msi = env
                .get("IDENTITY_ENDPOINT")
                .map(|v| ("azure_msi_endpoint".to_string(), v.to_string()));
            for (k, v) in msi
                .into_iter()
                .chain(env.with_prefix("AZURE_"))
                .chain(options_for(options, "azure_"))
            {
                if let Ok(key) = k.parse::<AzureConfigKey>() {
                    b = b.with_config(key, v);
                }
            }
            let store = b
                .with_container_name(container)
                .build()
                .map_err(backend_err(Backend::Azure))?;
            (Arc::new(store), path.as_str(), Backend::Azure)
        }
        "gs" => {
            let bucket = parsed
                .host_str()
                .filter(|h| !h.is_empty())
                .ok_or_else(|| bad("missing bucket name"))?;
            // object_store's own default for GCS: plain HTTP is allowed, for emulators (the
            // endpoint only changes through the credential's gcs_base_url or google_base_url).
            let mut b = GoogleCloudStorageBuilder::new()
                .with_client_options(client.with_allow_http(true))
                .with_retry(no_retry);
            // As GoogleCloudStorageBuilder::from_env: SERVICE_ACCOUNT is its one name without
            // GOOGLE_ (GOOGLE_APPLICATION_CREDENTIALS is a configuration key by itself).
            let sa = env
                .get("SERVICE_ACCOUNT")
                .map(|v| ("google_service_account".to_string(), v.to_string()));
            let parse = |(k, v): (String, String)| k.parse::<GoogleConfigKey>().ok().zip(Some(v));
            let file: Vec<_> = options_for(options, "google_").filter_map(parse).collect();
            // A credential in the file replaces the environment's: object_store refuses a
            // service-account path and key together.
            let file_has_credential = file.iter().any(|(k, _)| is_gcs_credential(k));
            let from_env = sa
                .into_iter()
                .chain(env.with_prefix("GOOGLE_"))
                .filter_map(parse)
                .filter(|(k, _)| !(file_has_credential && is_gcs_credential(k)));
            for (key, v) in from_env.chain(file) {
                b = b.with_config(key, v);
            }
            let store = b
                .with_bucket_name(bucket)
                .build()
                .map_err(backend_err(Backend::Gcs))?;
            (Arc::new(store), path.as_str(), Backend::Gcs)
        }
        "swift" => {
            let container = parsed
                .host_str()
                .filter(|h| !h.is_empty())
                .ok_or_else(|| bad("missing container name"))?;
            let container =
                percent_decode(container).ok_or_else(|| bad("the container is not valid UTF-8"))?;
            // Settings by their OpenStack names; the file's [storage] keys (lower case) win.
            let get = |name: &str| {
                options
                    .0
                    .get(&name.to_ascii_lowercase())
                    .cloned()
                    .or_else(|| env.get(name).map(str::to_string))
            };
            let store = swift::SwiftStore::from_settings(
                &container,
                &get,
                policy.attempt_timeout,
                Duration::from_secs(10).min(policy.attempt_timeout),
            )
            .map_err(|e| OpenError::Backend {
                backend: Backend::Swift,
                reason: redact(&e.to_string()),
            })?;
            (Arc::new(store), path.as_str(), Backend::Swift)
        }
        "file" => {
            // The URL parser makes every file URL's path absolute: `file:relative/path`
            // would be read as `/relative/path`. Only an absolute path, as typed, is taken.
            let after_scheme = &url[url.find(':').map_or(0, |i| i + 1)..];
            if !after_scheme.starts_with('/') {
                return Err(bad(
                    "a file URL takes an absolute path (file:///path/to/repository), not a relative one",
                ));
            }
            if parsed
                .host_str()
                .is_some_and(|h| !h.is_empty() && h != "localhost")
            {
                return Err(bad(
                    "file URLs take an absolute path: file:///path/to/repository",
                ));
            }
            if path.trim_matches('/').is_empty() {
                return Err(bad("the repository cannot be the root directory"));
            }
            let store: Arc<dyn ObjectStore> = Arc::new(LocalFileSystem::new().with_fsync(true));
            // Root writing into another user's repository hands what it creates to that user.
            let dir = std::path::PathBuf::from(&path);
            let store: Arc<dyn ObjectStore> = match owned::foreign_owner(&dir) {
                Some((uid, gid)) => Arc::new(owned::OwnedBy::new(store, dir, uid, gid)),
                None => store,
            };
            (store, path.as_str(), Backend::Local)
        }
        other => {
            return Err(OpenError::UnknownScheme {
                scheme: other.to_string(),
                url: shown.clone(),
            })
        }
    };
    let prefix = Path::parse(prefix.trim_matches('/')).map_err(|e| bad(&e.to_string()))?;
    // Testing hook: WALARCHIVE_FAULTS wraps the store in a fault injector (inert when unset).
    let store = unreliable::from_plan(store, env.faults.as_deref(), policy.attempt_timeout)
        .map_err(|reason| OpenError::Backend { backend, reason })?;
    Ok(Location {
        store,
        prefix,
        backend,
    })
}

/// The configuration keys that choose how GCS requests are authenticated.
fn is_gcs_credential(key: &GoogleConfigKey) -> bool {
    matches!(
        key,
        GoogleConfigKey::ServiceAccount
            | GoogleConfigKey::ServiceAccountKey
            | GoogleConfigKey::ApplicationCredentials
            | GoogleConfigKey::BearerToken
    )
}

fn options_for<'a>(
    options: &'a StorageOptions,
    prefix: &'static str,
) -> impl Iterator<Item = (String, String)> + 'a {
    options
        .0
        .iter()
        .filter(move |(k, _)| k.starts_with(prefix))
        .map(|(k, v)| (k.clone(), v.clone()))
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests;
