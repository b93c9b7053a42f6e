//! Who may see what: the operator's login, the per-instance links, sessions and CSRF tokens.
//!
//! Why stateless signed cookies: every broker process must accept a session another one
//! issued, and nothing secret should be stored to make that work. A session is a small JSON
//! claim (operator, or one instance's id, incarnation and link generation; expiry; a random
//! nonce) with a MAC from the `[secrets]` key ([`crate::secrets::Keyring::mac`]). An instance
//! session is checked against the instance's record on every request, so a rotated link
//! (`dashboard_generation` incremented) or a deleted instance ends its sessions at once.
//! Logging out removes the cookies from the browser; a copied cookie stays valid until it
//! expires (`dashboard.session_lifetime`), which is the price of keeping no session store.
//!
//! The per-instance link is a MAC of the instance's id, incarnation and generation: never the
//! broker password, never stored, and useless for any other instance (or a later incarnation
//! of the same id). Opening it sets a cookie named after the instance and redirects to a URL
//! without the secret.
//!
//! Every path under `/dashboard` goes through [`guard`]; only [`PUBLIC`] paths pass without a
//! session.

use axum::extract::{Form, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::render;
use crate::api::AppState;
use crate::config::BrokerConfig;
use crate::secrets::Keyring;
use crate::state::{InstanceRecord, InstanceState};

const SESSION_PURPOSE: &str = "dashboard-session";
const CSRF_PURPOSE: &str = "dashboard-csrf";
/// Every dashboard cookie's name starts with this.
const COOKIE_PREFIX: &str = "wa_dash";
/// Paths that need no session: the login page (and its form), its stylesheet, and the
/// per-instance links (which carry their own secret). Prefixes end with `/`.
pub(super) const PUBLIC: &[&str] = &[
    "/dashboard/login",
    "/dashboard/assets/dashboard.css",
    "/dashboard/open/",
];

/// Whether `path` may be served without a session.
pub(super) fn is_public(path: &str) -> bool {
    PUBLIC
        .iter()
        .any(|p| path == *p || (p.ends_with('/') && path.starts_with(p)))
}

/// What a session opens: everything (the operator) or one incarnation of one instance at one
/// link generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct InstanceScope {
    /// The instance id.
    pub id: String,
    /// Its incarnation.
    pub inc: u32,
    /// Its link generation.
    pub gen: u32,
}

/// A session, as its cookie carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Session {
    /// None: the operator's session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<InstanceScope>,
    /// Expiry (Unix seconds).
    pub exp: i64,
    /// Random: what the CSRF token is derived from.
    pub nonce: String,
}

impl Session {
    fn new(instance: Option<InstanceScope>, config: &BrokerConfig) -> Session {
        let mut n = [0u8; 16];
        getrandom::fill(&mut n).expect("the OS random number generator");
        let life = config.dashboard.session_lifetime.0.as_secs() as i64;
        Session {
            instance,
            exp: chrono::Utc::now().timestamp() + life,
            nonce: B64.encode(n),
        }
    }

    /// The cookie's value: the claim and its MAC.
    fn encode(&self, keyring: &Keyring) -> String {
        let claim = B64.encode(serde_json::to_vec(self).expect("JSON"));
        let tag = B64.encode(keyring.mac(SESSION_PURPOSE, claim.as_bytes()));
        format!("{claim}.{tag}")
    }

    /// The session of a cookie's value, when its MAC holds and it has not expired.
    fn decode(value: &str, keyring: &Keyring) -> Option<Session> {
        let (claim, tag) = value.split_once('.')?;
        let tag = B64.decode(tag).ok()?;
        if !keyring.verify_mac(SESSION_PURPOSE, claim.as_bytes(), &tag) {
            return None;
        }
        let s: Session = serde_json::from_slice(&B64.decode(claim).ok()?).ok()?;
        (s.exp > chrono::Utc::now().timestamp()).then_some(s)
    }

    /// The token the session's forms carry.
    pub(crate) fn csrf(&self, keyring: &Keyring) -> String {
        B64.encode(keyring.mac(CSRF_PURPOSE, self.nonce.as_bytes()))
    }

    fn cookie_name(&self) -> String {
        match &self.instance {
            None => COOKIE_PREFIX.to_string(),
            Some(i) => instance_cookie_name(&i.id),
        }
    }
}

/// The cookie of an instance's session: one per instance (a user may hold links of several),
/// named by a digest of the id (ids may hold any character).
fn instance_cookie_name(id: &str) -> String {
    let d = Sha256::digest(id.as_bytes());
    let hex: String = d[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("{COOKIE_PREFIX}_{hex}")
}

/// The valid sessions of a request (put into its extensions by [`guard`]).
#[derive(Debug, Clone, Default)]
pub(crate) struct Sessions(pub Vec<Session>);

impl Sessions {
    /// The operator's session, if any.
    pub(crate) fn operator(&self) -> Option<&Session> {
        self.0.iter().find(|s| s.instance.is_none())
    }

    /// The session that opens instance `id`: the operator's, else that instance's.
    pub(crate) fn for_instance(&self, id: &str) -> Option<&Session> {
        self.operator().or_else(|| {
            self.0
                .iter()
                .find(|s| s.instance.as_ref().is_some_and(|i| i.id == id))
        })
    }

    /// Whether `token` is the CSRF token of one of these sessions.
    pub(crate) fn csrf_ok(&self, keyring: &Keyring, token: &str) -> bool {
        self.0
            .iter()
            .any(|s| crate::secrets::constant_time_eq(s.csrf(keyring).as_bytes(), token.as_bytes()))
    }
}

/// Whether cookies must be `Secure`: the broker serves TLS or its dashboard URL is https.
fn secure(config: &BrokerConfig) -> bool {
    config.tls.is_some()
        || config
            .dashboard
            .url
            .as_deref()
            .is_some_and(|u| u.starts_with("https:"))
}

fn set_cookie(config: &BrokerConfig, name: &str, value: &str, max_age: i64) -> HeaderValue {
    let secure = if secure(config) { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/dashboard; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}"
    ))
    .expect("cookie values are base64 and names hex")
}

fn session_cookie(config: &BrokerConfig, s: &Session) -> HeaderValue {
    let life = config.dashboard.session_lifetime.0.as_secs() as i64;
    set_cookie(config, &s.cookie_name(), &s.encode(&config.keyring()), life)
}

/// The dashboard cookies of a request, `(name, value)`.
fn cookies(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .filter(|(n, _)| n.starts_with(COOKIE_PREFIX))
}

/// Whether a session of `scope` is still good for `record` (same incarnation, same link
/// generation, not deleted).
fn scope_current(scope: &InstanceScope, record: &InstanceRecord) -> bool {
    record.state != InstanceState::Deleted
        && record.incarnation == scope.inc
        && record.dashboard_generation == scope.gen
}

/// In front of every dashboard route: the request's sessions into its extensions; without
/// one, a page request goes to the login page and anything else gets 401.
pub(super) async fn guard(State(st): State<AppState>, mut req: Request, next: Next) -> Response {
    let keyring = st.config.keyring();
    let mut valid = Vec::new();
    for (_, value) in cookies(req.headers()) {
        let Some(s) = Session::decode(value, &keyring) else {
            continue;
        };
        if let Some(scope) = &s.instance {
            match st.store.instance(&scope.id).await {
                Ok(Some(r)) if scope_current(scope, &r.value) => {}
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "dashboard: cannot read an instance record");
                    return render::unavailable();
                }
            }
        }
        valid.push(s);
    }
    let path = req.uri().path();
    let mut resp = if valid.is_empty() && !is_public(path) {
        let page = req.method() == Method::GET && !path.starts_with("/dashboard/assets/");
        if page {
            Redirect::to("/dashboard/login").into_response()
        } else {
            render::error_page(
                StatusCode::UNAUTHORIZED,
                "Log in first",
                "This needs a session.",
            )
        }
    } else {
        req.extensions_mut().insert(Sessions(valid));
        next.run(req).await
    };
    render::security_headers(resp.headers_mut());
    resp
}

/// `GET /dashboard/login`.
pub(super) async fn login_page() -> Response {
    render::login(None).into_response()
}

#[derive(Deserialize)]
pub(super) struct LoginForm {
    username: String,
    password: String,
}

/// Failed operator logins this process saw recently: beyond [`FailedLogins::LIMIT`] within
/// [`FailedLogins::WINDOW`] the login form answers 429 without checking, so that guessing the
/// broker's password through the form is slow (the OSB API's basic auth has no such limit:
/// keep it off untrusted networks).
pub(super) struct FailedLogins(std::collections::VecDeque<std::time::Instant>);

impl FailedLogins {
    const LIMIT: usize = 20;
    const WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

    /// Whether a login may be tried at `now`.
    fn allowed(&mut self, now: std::time::Instant) -> bool {
        while self
            .0
            .front()
            .is_some_and(|t| now.duration_since(*t) > Self::WINDOW)
        {
            self.0.pop_front();
        }
        self.0.len() < Self::LIMIT
    }

    fn failed(&mut self, now: std::time::Instant) {
        self.0.push_back(now);
    }
}

fn failed_logins() -> std::sync::MutexGuard<'static, FailedLogins> {
    static F: std::sync::OnceLock<std::sync::Mutex<FailedLogins>> = std::sync::OnceLock::new();
    F.get_or_init(|| std::sync::Mutex::new(FailedLogins(Default::default())))
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// `POST /dashboard/login`: the broker's credentials → an operator session.
pub(super) async fn login(State(st): State<AppState>, Form(f): Form<LoginForm>) -> Response {
    let now = std::time::Instant::now();
    if !failed_logins().allowed(now) {
        tracing::warn!("dashboard: too many failed operator logins; refusing for a minute");
        let mut r = render::login(Some("Too many failed logins: wait a minute.")).into_response();
        *r.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        return r;
    }
    if !st.credentials_match(&f.username, &f.password) {
        failed_logins().failed(now);
        tracing::info!("dashboard: a failed operator login");
        let mut r = render::login(Some("Wrong user name or password.")).into_response();
        *r.status_mut() = StatusCode::UNAUTHORIZED;
        return r;
    }
    let s = Session::new(None, &st.config);
    let mut r = Redirect::to("/dashboard/").into_response();
    r.headers_mut()
        .append(header::SET_COOKIE, session_cookie(&st.config, &s));
    r
}

#[derive(Deserialize)]
pub(super) struct CsrfForm {
    pub(super) csrf: String,
}

/// `POST /dashboard/logout`: every dashboard cookie of the browser removed.
pub(super) async fn logout(
    State(st): State<AppState>,
    axum::Extension(sessions): axum::Extension<Sessions>,
    headers: HeaderMap,
    Form(f): Form<CsrfForm>,
) -> Response {
    if !sessions.csrf_ok(&st.config.keyring(), &f.csrf) {
        return render::csrf_refused();
    }
    let mut r = Redirect::to("/dashboard/login").into_response();
    for (name, _) in cookies(&headers) {
        r.headers_mut()
            .append(header::SET_COOKIE, set_cookie(&st.config, name, "", 0));
    }
    r
}

/// `GET /dashboard/open/{id}/{token}`: a per-instance link. A valid token becomes a session
/// for that instance and a redirect to its page (a URL without the token); anything else is
/// the same 404, whether the instance exists or not.
pub(super) async fn open_link(
    State(st): State<AppState>,
    Path((id, token)): Path<(String, String)>,
) -> Response {
    let record = match st.store.instance(&id).await {
        Ok(r) => r.map(|r| r.value),
        Err(e) => {
            tracing::warn!(error = %e, "dashboard: cannot read an instance record");
            return render::unavailable();
        }
    };
    let keyring = st.config.keyring();
    let ok = record
        .as_ref()
        .filter(|r| crate::links::verify(&keyring, r, &token));
    let Some(r) = ok else {
        return render::error_page(
            StatusCode::NOT_FOUND,
            "This link does not open anything",
            "It may have been replaced by a newer one: ask for the instance's current dashboard link.",
        );
    };
    let scope = InstanceScope {
        id: r.id.clone(),
        inc: r.incarnation,
        gen: r.dashboard_generation,
    };
    let s = Session::new(Some(scope), &st.config);
    let mut resp = Redirect::to(&super::instance_path(&r.id)).into_response();
    resp.headers_mut()
        .append(header::SET_COOKIE, session_cookie(&st.config, &s));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_signed_and_expire() {
        let ring = Keyring::from_base64(&Keyring::generate_key()).unwrap();
        let s = Session {
            instance: Some(InstanceScope {
                id: "a".into(),
                inc: 1,
                gen: 0,
            }),
            exp: chrono::Utc::now().timestamp() + 60,
            nonce: "n".into(),
        };
        let v = s.encode(&ring);
        assert_eq!(Session::decode(&v, &ring), Some(s.clone()));
        // Another key, an altered claim, an expired session: none.
        let other = Keyring::from_base64(&Keyring::generate_key()).unwrap();
        assert_eq!(Session::decode(&v, &other), None);
        let forged = Session {
            instance: None,
            ..s.clone()
        };
        let (_, tag) = v.split_once('.').unwrap();
        let claim = B64.encode(serde_json::to_vec(&forged).unwrap());
        assert_eq!(Session::decode(&format!("{claim}.{tag}"), &ring), None);
        let old = Session {
            exp: chrono::Utc::now().timestamp() - 1,
            ..s
        };
        assert_eq!(Session::decode(&old.encode(&ring), &ring), None);
    }

    #[test]
    fn failed_logins_are_limited_per_minute() {
        let mut f = FailedLogins(Default::default());
        let t0 = std::time::Instant::now();
        for _ in 0..FailedLogins::LIMIT {
            assert!(f.allowed(t0));
            f.failed(t0);
        }
        assert!(!f.allowed(t0 + std::time::Duration::from_secs(59)));
        assert!(f.allowed(t0 + std::time::Duration::from_secs(61)));
    }

    #[test]
    fn public_paths_are_only_these() {
        assert!(is_public("/dashboard/login"));
        assert!(is_public("/dashboard/open/x/y"));
        assert!(is_public("/dashboard/assets/dashboard.css"));
        assert!(!is_public("/dashboard/login2"));
        assert!(!is_public("/dashboard/assets/uPlot.iife.min.js"));
        assert!(!is_public("/dashboard/"));
        assert!(!is_public("/dashboard/instances/x"));
    }
}
