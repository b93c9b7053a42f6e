//! Swift authentication: which method the settings name, and how each one obtains a storage
//! URL and a token.
//!
//! Four ways in, as the OpenStack clients know them:
//!
//! - **TempAuth / v1** (`GET <auth URL>` with `X-Auth-User`/`X-Auth-Key`, answered with
//!   `X-Storage-Url` and `X-Auth-Token`): Swift's own auth, and what swiftstack-era and
//!   test clusters use.
//! - **Keystone v3 password** and **application credential** (`POST <auth URL>/auth/tokens`
//!   with a JSON body, answered with the token in `X-Subject-Token` and a service catalog,
//!   from which the object-store endpoint is chosen by region and interface).
//! - **A pre-issued token**: `OS_STORAGE_URL` + `OS_AUTH_TOKEN`, used as is (and, when
//!   credentials are configured too, replaced by a fresh token once it is refused).
//!
//! The auth version is taken only from `OS_AUTH_TYPE`, `OS_IDENTITY_API_VERSION` (or
//! `OS_AUTH_VERSION`, wal-e's `SWIFT_AUTH_VERSION`), never guessed from the shape of the
//! auth URL: a URL ending in `/v1.0` may well be a Keystone behind a proxy, and a wrong
//! guess sends the password to the wrong protocol. Application credentials exist only in
//! Keystone v3, so their presence alone is not ambiguous.
//!
//! Secrets (passwords, application-credential secrets, tokens) live in [`Secret`], whose
//! `Debug` shows nothing, and never enter an error message.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::{Client, StatusCode};
use serde::Deserialize;

use super::SwiftError;

/// A secret string (password, token): `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The secret as an HTTP header value marked sensitive (hidden from HTTP-level `Debug`
    /// output and never indexed by HTTP/2 header compression).
    pub fn header_value(&self) -> Result<reqwest::header::HeaderValue, SwiftError> {
        let mut v = reqwest::header::HeaderValue::from_str(&self.0).map_err(|_| {
            SwiftError::Config(
                "a token or key contains characters not allowed in HTTP headers".into(),
            )
        })?;
        v.set_sensitive(true);
        Ok(v)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where requests go and with which token, until the token expires or is refused.
#[derive(Clone, Debug)]
pub struct Session {
    /// The account's storage URL (`https://host/v1/AUTH_account`).
    pub storage_url: String,
    /// The token, sent as `X-Auth-Token`.
    pub token: Secret,
    /// When the token expires, when the auth service said so.
    pub expires: Option<DateTime<Utc>>,
}

impl Session {
    /// Whether the token expires within `margin` (unknown expiry: never).
    pub fn expires_within(&self, margin: Duration) -> bool {
        self.expires.is_some_and(|e| {
            e - chrono::Duration::from_std(margin).unwrap_or_default() <= Utc::now()
        })
    }
}

/// A user or project named either by ID or by name within a domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Named {
    /// By ID (unique across domains).
    Id(String),
    /// By name, within a domain.
    Name {
        /// The name.
        name: String,
        /// Its domain.
        domain: Domain,
    },
}

/// A Keystone domain, by ID or by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Domain {
    /// By ID.
    Id(String),
    /// By name.
    Name(String),
}

/// The Keystone v3 identity method.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeystoneIdentity {
    /// `password`: a user and a password, scoped to a project.
    Password {
        /// The user.
        user: Named,
        /// The password.
        password: Secret,
        /// The project the token is scoped to (its catalog lists the project's endpoints).
        project: Named,
    },
    /// `application_credential`: scoped by the credential itself.
    ApplicationCredential {
        /// The credential, by ID, or by name with its user.
        credential: AppCredential,
        /// The credential's secret.
        secret: Secret,
    },
}

/// An application credential, by ID or by name and owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppCredential {
    /// By ID.
    Id(String),
    /// By name, with the user owning it.
    Name {
        /// The credential's name.
        name: String,
        /// Its owner.
        user: Named,
    },
}

/// Which endpoint of the catalog to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interface {
    /// `public` (the default).
    Public,
    /// `internal`.
    Internal,
    /// `admin`.
    Admin,
}

impl Interface {
    fn parse(s: &str) -> Result<Self, SwiftError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "public" | "publicurl" => Ok(Interface::Public),
            "internal" | "internalurl" => Ok(Interface::Internal),
            "admin" | "adminurl" => Ok(Interface::Admin),
            other => Err(SwiftError::Config(format!(
                "unknown OS_INTERFACE {other:?}: expected public, internal or admin"
            ))),
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Interface::Public => "public",
            Interface::Internal => "internal",
            Interface::Admin => "admin",
        }
    }
}

/// Keystone v3 settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeystoneV3 {
    /// `OS_AUTH_URL` (`https://keystone:5000/v3`; `/v3` is added when missing).
    pub auth_url: String,
    /// How to authenticate.
    pub identity: KeystoneIdentity,
    /// `OS_REGION_NAME`: required when the catalog offers object storage in several regions.
    pub region: Option<String>,
    /// `OS_INTERFACE`.
    pub interface: Interface,
}

/// A way to obtain a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthMethod {
    /// TempAuth / v1.
    TempAuth {
        /// The auth URL (`http://proxy:8080/auth/v1.0`).
        url: String,
        /// `account:user`.
        user: String,
        /// The key (password).
        key: Secret,
    },
    /// Keystone v3.
    Keystone(KeystoneV3),
}

/// How a store authenticates: an initial pre-issued session, a method to (re)authenticate,
/// or both, and an optional storage URL that replaces the one the auth service returns.
#[derive(Clone, Debug)]
pub struct AuthConfig {
    /// How to get a (new) token; `None` for a pre-issued token alone.
    pub method: Option<AuthMethod>,
    /// `OS_STORAGE_URL` + `OS_AUTH_TOKEN`, used until refused.
    pub preissued: Option<Session>,
    /// `OS_STORAGE_URL` with credentials: used instead of the returned storage URL.
    pub storage_url_override: Option<String>,
}

/// Names under which each setting may be given, first one wins: the OpenStack client
/// names, then wal-e's `SWIFT_*` and python-swiftclient's `ST_*` aliases.
const AUTH_URL: &[&str] = &["OS_AUTH_URL", "SWIFT_AUTHURL", "ST_AUTH"];
const USERNAME: &[&str] = &["OS_USERNAME", "SWIFT_USER", "ST_USER"];
const USER_ID: &[&str] = &["OS_USER_ID"];
const PASSWORD: &[&str] = &["OS_PASSWORD", "SWIFT_PASSWORD", "ST_KEY"];
const PROJECT_NAME: &[&str] = &["OS_PROJECT_NAME", "OS_TENANT_NAME", "SWIFT_TENANT"];
const PROJECT_ID: &[&str] = &["OS_PROJECT_ID", "OS_TENANT_ID", "SWIFT_TENANT_ID"];
const REGION: &[&str] = &["OS_REGION_NAME", "SWIFT_REGION"];
const INTERFACE: &[&str] = &["OS_INTERFACE", "OS_ENDPOINT_TYPE", "SWIFT_ENDPOINT_TYPE"];
const VERSION: &[&str] = &[
    "OS_IDENTITY_API_VERSION",
    "OS_AUTH_VERSION",
    "SWIFT_AUTH_VERSION",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    V1,
    V3Password,
    V3AppCred,
    /// Version 3 from a version variable: password or application credential by what is set.
    V3,
}

impl AuthConfig {
    /// Reads the settings through `get` (a variable name such as `OS_AUTH_URL` → its value,
    /// empty values counting as unset) and decides the auth method.
    pub fn from_settings(get: &dyn Fn(&str) -> Option<String>) -> Result<AuthConfig, SwiftError> {
        let get = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        let first = |names: &[&str]| names.iter().find_map(|n| get(n));
        let config = |m: String| SwiftError::Config(m);

        let storage_url = get("OS_STORAGE_URL");
        let token = get("OS_AUTH_TOKEN");
        let preissued =
            match (storage_url.clone(), token) {
                (Some(u), Some(t)) => Some(Session {
                    storage_url: u,
                    token: Secret::new(t),
                    expires: None,
                }),
                (None, Some(_)) => return Err(config(
                    "OS_AUTH_TOKEN is set without OS_STORAGE_URL: a pre-issued token needs both"
                        .into(),
                )),
                _ => None,
            };

        let from_type = match get("OS_AUTH_TYPE") {
            None => None,
            Some(t) => Some(match t.trim().to_ascii_lowercase().as_str() {
                "v1password" | "v1" | "tempauth" => Kind::V1,
                "password" | "v3password" => Kind::V3Password,
                "v3applicationcredential" | "applicationcredential" | "application_credential" => {
                    Kind::V3AppCred
                }
                other => {
                    return Err(config(format!(
                        "unsupported OS_AUTH_TYPE {other:?}: expected v1password (TempAuth), \
                         password (Keystone v3) or v3applicationcredential"
                    )))
                }
            }),
        };
        let version_var = VERSION.iter().find_map(|n| get(n).map(|v| (*n, v)));
        let from_version = match &version_var {
            None => None,
            Some((name, v)) => Some(match v.trim().trim_start_matches(['v', 'V']) {
                "1" | "1.0" => Kind::V1,
                "3" | "3.0" => Kind::V3,
                "2" | "2.0" => {
                    return Err(config(format!(
                        "{name}={v}: Keystone v2 is not supported (OpenStack removed it in \
                             2018); use {name}=3, with OS_USER_DOMAIN_NAME and \
                             OS_PROJECT_DOMAIN_NAME when the domain is not \"Default\""
                    )))
                }
                _ => {
                    return Err(config(format!(
                        "unsupported {name}={v:?}: expected 1 (TempAuth) or 3 (Keystone v3)"
                    )))
                }
            }),
        };
        let has_app_cred = get("OS_APPLICATION_CREDENTIAL_ID").is_some()
            || get("OS_APPLICATION_CREDENTIAL_NAME").is_some();
        let kind = match (from_type, from_version) {
            (Some(t), None) => Some(t),
            (None, Some(Kind::V3)) if has_app_cred => Some(Kind::V3AppCred),
            (None, Some(Kind::V3)) => Some(Kind::V3Password),
            (None, Some(v)) => Some(v),
            (Some(Kind::V1), Some(Kind::V1)) => Some(Kind::V1),
            (Some(t @ (Kind::V3Password | Kind::V3AppCred)), Some(Kind::V3)) => Some(t),
            (Some(_), Some(_)) => {
                let (name, v) = version_var.expect("a version was read");
                return Err(config(format!(
                    "OS_AUTH_TYPE={} contradicts {name}={v}",
                    get("OS_AUTH_TYPE").unwrap_or_default(),
                )));
            }
            (None, None) if has_app_cred => Some(Kind::V3AppCred),
            (None, None) => None,
        };

        let Some(kind) = kind else {
            if preissued.is_some() {
                return Ok(AuthConfig {
                    method: None,
                    preissued,
                    storage_url_override: None,
                });
            }
            if first(AUTH_URL).is_some() {
                return Err(config(
                    "the Swift auth version is not set: set OS_AUTH_TYPE (v1password for \
                     TempAuth, password or v3applicationcredential for Keystone v3) or \
                     OS_IDENTITY_API_VERSION / SWIFT_AUTH_VERSION (1 or 3); walarchive does not \
                     guess it from the auth URL"
                        .into(),
                ));
            }
            return Err(config(
                "no Swift credentials: set OS_AUTH_URL with OS_AUTH_TYPE or \
                 OS_IDENTITY_API_VERSION and the credentials, or OS_STORAGE_URL and \
                 OS_AUTH_TOKEN"
                    .into(),
            ));
        };

        let auth_url = first(AUTH_URL).ok_or_else(|| {
            config("OS_AUTH_URL (or SWIFT_AUTHURL) is required to authenticate".into())
        })?;
        let url_ok = url::Url::parse(&auth_url)
            .map(|u| matches!(u.scheme(), "http" | "https"))
            .unwrap_or(false);
        if !url_ok {
            return Err(config(format!(
                "OS_AUTH_URL {auth_url:?} is not an http(s) URL"
            )));
        }
        let method = match kind {
            Kind::V1 => {
                let user = first(USERNAME).ok_or_else(|| {
                    config("TempAuth needs OS_USERNAME (or SWIFT_USER), as account:user".into())
                })?;
                let key = first(PASSWORD).ok_or_else(|| {
                    config("TempAuth needs OS_PASSWORD (or SWIFT_PASSWORD)".into())
                })?;
                AuthMethod::TempAuth {
                    url: auth_url,
                    user,
                    key: Secret::new(key),
                }
            }
            Kind::V3 | Kind::V3Password | Kind::V3AppCred => {
                let domain = |name_var: &str, id_var: &str| {
                    get(id_var)
                        .map(Domain::Id)
                        .or_else(|| get(name_var).map(Domain::Name))
                        .or_else(|| get("OS_DEFAULT_DOMAIN_ID").map(Domain::Id))
                        .or_else(|| get("OS_DEFAULT_DOMAIN_NAME").map(Domain::Name))
                        .unwrap_or_else(|| Domain::Name("Default".into()))
                };
                let user = || {
                    first(USER_ID).map(Named::Id).or_else(|| {
                        first(USERNAME).map(|name| Named::Name {
                            name,
                            domain: domain("OS_USER_DOMAIN_NAME", "OS_USER_DOMAIN_ID"),
                        })
                    })
                };
                let identity = if kind == Kind::V3AppCred {
                    let secret = get("OS_APPLICATION_CREDENTIAL_SECRET").ok_or_else(|| {
                        config(
                            "an application credential needs OS_APPLICATION_CREDENTIAL_SECRET"
                                .into(),
                        )
                    })?;
                    let credential = if let Some(id) = get("OS_APPLICATION_CREDENTIAL_ID") {
                        AppCredential::Id(id)
                    } else if let Some(name) = get("OS_APPLICATION_CREDENTIAL_NAME") {
                        AppCredential::Name {
                            name,
                            user: user().ok_or_else(|| {
                                config("OS_APPLICATION_CREDENTIAL_NAME needs OS_USERNAME or OS_USER_ID".into())
                            })?,
                        }
                    } else {
                        return Err(config("an application credential needs OS_APPLICATION_CREDENTIAL_ID (or _NAME with OS_USERNAME)".into()));
                    };
                    KeystoneIdentity::ApplicationCredential {
                        credential,
                        secret: Secret::new(secret),
                    }
                } else {
                    let user = user().ok_or_else(|| {
                        config("Keystone password auth needs OS_USERNAME (or OS_USER_ID)".into())
                    })?;
                    let password = first(PASSWORD).ok_or_else(|| {
                        config(
                            "Keystone password auth needs OS_PASSWORD (or SWIFT_PASSWORD)".into(),
                        )
                    })?;
                    let project = first(PROJECT_ID).map(Named::Id).or_else(|| {
                        first(PROJECT_NAME).map(|name| Named::Name {
                            name,
                            domain: domain("OS_PROJECT_DOMAIN_NAME", "OS_PROJECT_DOMAIN_ID"),
                        })
                    });
                    let project = project.ok_or_else(|| {
                        config("Keystone password auth needs OS_PROJECT_NAME or OS_PROJECT_ID (or SWIFT_TENANT): an unscoped token has no service catalog".into())
                    })?;
                    KeystoneIdentity::Password {
                        user,
                        password: Secret::new(password),
                        project,
                    }
                };
                let interface = match first(INTERFACE) {
                    Some(i) => Interface::parse(&i)?,
                    None => Interface::Public,
                };
                AuthMethod::Keystone(KeystoneV3 {
                    auth_url,
                    identity,
                    region: first(REGION),
                    interface,
                })
            }
        };
        Ok(AuthConfig {
            method: Some(method),
            storage_url_override: if preissued.is_some() {
                None
            } else {
                storage_url
            },
            preissued,
        })
    }
}

impl AuthMethod {
    /// Obtains a new session.
    pub async fn authenticate(&self, client: &Client) -> Result<Session, SwiftError> {
        match self {
            AuthMethod::TempAuth { url, user, key } => tempauth(client, url, user, key).await,
            AuthMethod::Keystone(k) => keystone(client, k).await,
        }
    }
}

fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

async fn tempauth(
    client: &Client,
    url: &str,
    user: &str,
    key: &Secret,
) -> Result<Session, SwiftError> {
    let resp = client
        .get(url)
        .header("X-Auth-User", user)
        .header("X-Auth-Key", key.header_value()?)
        .send()
        .await
        .map_err(|e| SwiftError::transport("TempAuth request", e))?;
    let status = resp.status();
    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        return Err(SwiftError::AuthRefused(format!(
            "TempAuth at {url} refused the credentials of user {user:?} (status code: {})",
            status.as_u16()
        )));
    }
    if !status.is_success() {
        return Err(SwiftError::status("TempAuth", url, status, ""));
    }
    let storage_url = header(&resp, "x-storage-url").ok_or_else(|| {
        SwiftError::Protocol(format!("TempAuth at {url} answered without X-Storage-Url"))
    })?;
    let token = header(&resp, "x-auth-token")
        .or_else(|| header(&resp, "x-storage-token"))
        .ok_or_else(|| {
            SwiftError::Protocol(format!("TempAuth at {url} answered without X-Auth-Token"))
        })?;
    let expires = header(&resp, "x-auth-token-expires")
        .and_then(|s| s.parse::<f64>().ok())
        .map(|secs| Utc::now() + chrono::Duration::milliseconds((secs * 1000.0) as i64));
    Ok(Session {
        storage_url,
        token: Secret::new(token),
        expires,
    })
}

/// `<auth URL>/auth/tokens`, adding the `/v3` that openrc files usually include.
pub fn keystone_tokens_url(auth_url: &str) -> String {
    let base = auth_url.trim_end_matches('/');
    if base.ends_with("/auth/tokens") {
        base.to_string()
    } else if base.ends_with("/v3") {
        format!("{base}/auth/tokens")
    } else {
        format!("{base}/v3/auth/tokens")
    }
}

fn named_json(n: &Named) -> serde_json::Value {
    match n {
        Named::Id(id) => serde_json::json!({ "id": id }),
        Named::Name { name, domain } => {
            let domain = match domain {
                Domain::Id(id) => serde_json::json!({ "id": id }),
                Domain::Name(n) => serde_json::json!({ "name": n }),
            };
            serde_json::json!({ "name": name, "domain": domain })
        }
    }
}

/// The JSON body of `POST /v3/auth/tokens`.
pub fn keystone_request_body(identity: &KeystoneIdentity) -> serde_json::Value {
    match identity {
        KeystoneIdentity::Password {
            user,
            password,
            project,
        } => {
            let mut user = named_json(user);
            user["password"] = password.expose().into();
            serde_json::json!({
                "auth": {
                    "identity": { "methods": ["password"], "password": { "user": user } },
                    "scope": { "project": named_json(project) }
                }
            })
        }
        KeystoneIdentity::ApplicationCredential { credential, secret } => {
            let mut cred = match credential {
                AppCredential::Id(id) => serde_json::json!({ "id": id }),
                AppCredential::Name { name, user } => {
                    serde_json::json!({ "name": name, "user": named_json(user) })
                }
            };
            cred["secret"] = secret.expose().into();
            serde_json::json!({
                "auth": {
                    "identity": {
                        "methods": ["application_credential"],
                        "application_credential": cred
                    }
                }
            })
        }
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    token: TokenBody,
}

#[derive(Deserialize)]
struct TokenBody {
    #[serde(default)]
    expires_at: Option<String>,
    #[serde(default)]
    catalog: Option<Vec<CatalogService>>,
}

#[derive(Deserialize)]
struct CatalogService {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    endpoints: Vec<CatalogEndpoint>,
}

#[derive(Deserialize)]
struct CatalogEndpoint {
    interface: String,
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    region_id: Option<String>,
    url: String,
}

#[derive(Deserialize)]
struct KeystoneErrorBody {
    error: KeystoneErrorDetail,
}

#[derive(Deserialize)]
struct KeystoneErrorDetail {
    #[serde(default)]
    message: String,
}

/// Parses a Keystone v3 token response body: the object-store endpoint chosen by region and
/// interface, and the expiry time.
pub fn parse_token_response(
    body: &[u8],
    region: Option<&str>,
    interface: Interface,
) -> Result<(String, Option<DateTime<Utc>>), SwiftError> {
    let parsed: TokenResponse = serde_json::from_slice(body).map_err(|e| {
        SwiftError::Protocol(format!("Keystone's token response is not valid JSON: {e}"))
    })?;
    let expires = parsed
        .token
        .expires_at
        .as_deref()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|d| d.with_timezone(&Utc));
    let catalog = parsed.token.catalog.unwrap_or_default();
    let services: Vec<&CatalogService> = catalog
        .iter()
        .filter(|s| s.kind == "object-store")
        .collect();
    if services.is_empty() {
        return Err(SwiftError::Catalog(
            "the service catalog has no object-store service (is the token scoped to a project \
             that has Swift?)"
                .into(),
        ));
    }
    let endpoints = || services.iter().flat_map(|s| s.endpoints.iter());
    let region_of = |e: &CatalogEndpoint| e.region_id.clone().or_else(|| e.region.clone());
    let region_matches = |e: &CatalogEndpoint| match region {
        None => true,
        Some(r) => e.region_id.as_deref() == Some(r) || e.region.as_deref() == Some(r),
    };
    let mut urls: Vec<(&str, Option<String>)> = Vec::new();
    for e in endpoints() {
        if e.interface.eq_ignore_ascii_case(interface.as_str())
            && region_matches(e)
            && !urls.iter().any(|(u, _)| *u == e.url)
        {
            urls.push((&e.url, region_of(e)));
        }
    }
    match urls.len() {
        1 => Ok((urls[0].0.to_string(), expires)),
        0 => {
            let mut offered: Vec<String> = endpoints()
                .map(|e| {
                    format!(
                        "{}/{}",
                        region_of(e).unwrap_or_else(|| "(no region)".into()),
                        e.interface
                    )
                })
                .collect();
            offered.sort();
            offered.dedup();
            Err(SwiftError::Catalog(format!(
                "the service catalog has no {} object-store endpoint{} (offered, as region/interface: {}); set OS_REGION_NAME and OS_INTERFACE",
                interface.as_str(),
                region.map(|r| format!(" in region {r:?}")).unwrap_or_default(),
                if offered.is_empty() { "none".to_string() } else { offered.join(", ") }
            )))
        }
        _ => {
            let mut regions: Vec<String> = urls
                .iter()
                .map(|(_, r)| r.clone().unwrap_or_else(|| "(no region)".into()))
                .collect();
            regions.sort();
            regions.dedup();
            Err(SwiftError::Catalog(format!(
                "the service catalog has several {} object-store endpoints (regions: {}): set OS_REGION_NAME to choose one",
                interface.as_str(),
                regions.join(", ")
            )))
        }
    }
}

async fn keystone(client: &Client, k: &KeystoneV3) -> Result<Session, SwiftError> {
    let url = keystone_tokens_url(&k.auth_url);
    let body =
        serde_json::to_vec(&keystone_request_body(&k.identity)).expect("a JSON value serializes");
    let resp = client
        .post(&url)
        .header("Content-Type", "application/json")
        .header("Accept", "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| SwiftError::transport("Keystone request", e))?;
    let status = resp.status();
    let token = header(&resp, "x-subject-token");
    let body = resp
        .bytes()
        .await
        .map_err(|e| SwiftError::transport("Keystone response", e))?;
    if !status.is_success() {
        let detail = serde_json::from_slice::<KeystoneErrorBody>(&body)
            .map(|b| b.error.message)
            .unwrap_or_default();
        let detail: String = detail.chars().take(300).collect();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(SwiftError::AuthRefused(format!(
                "Keystone at {url} refused the credentials (status code: {}){}",
                status.as_u16(),
                if detail.is_empty() {
                    String::new()
                } else {
                    format!(": {detail}")
                }
            )));
        }
        return Err(SwiftError::status("Keystone", &url, status, &detail));
    }
    let token = token.ok_or_else(|| {
        SwiftError::Protocol(format!(
            "Keystone at {url} answered without X-Subject-Token"
        ))
    })?;
    let (storage_url, expires) = parse_token_response(&body, k.region.as_deref(), k.interface)?;
    Ok(Session {
        storage_url,
        token: Secret::new(token),
        expires,
    })
}

#[cfg(test)]
mod tests;
