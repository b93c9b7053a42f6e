//! Auth selection, Keystone request bodies and catalog parsing, with recorded responses.
//!
//! No Keystone runs on the test machine, so Keystone v3 is covered here: the token
//! responses below are shaped as Keystone returns them (trimmed catalogs of a two-region
//! cloud), and a small local HTTP server plays Keystone and Swift for the token-refresh
//! path. TempAuth runs against a real Swift in `tests/swift.rs`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use object_store::ObjectStoreExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::storage::swift::SwiftStore;

fn settings(pairs: &[(&str, &str)]) -> AuthConfig {
    try_settings(pairs).unwrap()
}

fn try_settings(pairs: &[(&str, &str)]) -> Result<AuthConfig, SwiftError> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    AuthConfig::from_settings(&move |k: &str| map.get(k).cloned())
}

fn config_err(pairs: &[(&str, &str)]) -> String {
    match try_settings(pairs) {
        Err(SwiftError::Config(m)) => m,
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

#[test]
fn tempauth_from_os_and_wal_e_names() {
    let a = settings(&[
        ("OS_AUTH_TYPE", "v1password"),
        ("OS_AUTH_URL", "http://127.0.0.1:8080/auth/v1.0"),
        ("OS_USERNAME", "test:tester"),
        ("OS_PASSWORD", "testing"),
    ]);
    assert_eq!(
        a.method,
        Some(AuthMethod::TempAuth {
            url: "http://127.0.0.1:8080/auth/v1.0".into(),
            user: "test:tester".into(),
            key: Secret::new("testing"),
        })
    );
    let b = settings(&[
        ("SWIFT_AUTH_VERSION", "1"),
        ("SWIFT_AUTHURL", "http://127.0.0.1:8080/auth/v1.0"),
        ("SWIFT_USER", "test:tester"),
        ("SWIFT_PASSWORD", "testing"),
    ]);
    assert_eq!(a.method, b.method);
    assert!(b.preissued.is_none() && b.storage_url_override.is_none());
}

#[test]
fn keystone_password_from_openrc() {
    let a = settings(&[
        ("OS_IDENTITY_API_VERSION", "3"),
        ("OS_AUTH_URL", "https://keystone.example:5000/v3"),
        ("OS_USERNAME", "alice"),
        ("OS_PASSWORD", "pw"),
        ("OS_PROJECT_NAME", "backups"),
        ("OS_USER_DOMAIN_NAME", "Users"),
        ("OS_PROJECT_DOMAIN_ID", "d42"),
        ("OS_REGION_NAME", "RegionTwo"),
        ("OS_INTERFACE", "internal"),
    ]);
    let Some(AuthMethod::Keystone(k)) = a.method else {
        panic!("not keystone: {a:?}")
    };
    assert_eq!(k.region.as_deref(), Some("RegionTwo"));
    assert_eq!(k.interface, Interface::Internal);
    assert_eq!(
        k.identity,
        KeystoneIdentity::Password {
            user: Named::Name {
                name: "alice".into(),
                domain: Domain::Name("Users".into())
            },
            password: Secret::new("pw"),
            project: Named::Name {
                name: "backups".into(),
                domain: Domain::Id("d42".into())
            },
        }
    );
    // wal-e's names, with the domain defaulting to "Default" and the wal-e endpoint type.
    let b = settings(&[
        ("SWIFT_AUTH_VERSION", "3"),
        ("SWIFT_AUTHURL", "https://keystone.example:5000/v3"),
        ("SWIFT_USER", "alice"),
        ("SWIFT_PASSWORD", "pw"),
        ("SWIFT_TENANT", "backups"),
        ("SWIFT_REGION", "RegionOne"),
        ("SWIFT_ENDPOINT_TYPE", "publicURL"),
    ]);
    let Some(AuthMethod::Keystone(k)) = b.method else {
        panic!("not keystone")
    };
    assert_eq!(k.interface, Interface::Public);
    assert_eq!(k.region.as_deref(), Some("RegionOne"));
    let KeystoneIdentity::Password { user, project, .. } = k.identity else {
        panic!("not password")
    };
    assert_eq!(
        user,
        Named::Name {
            name: "alice".into(),
            domain: Domain::Name("Default".into())
        }
    );
    assert_eq!(
        project,
        Named::Name {
            name: "backups".into(),
            domain: Domain::Name("Default".into())
        }
    );
}

#[test]
fn application_credentials() {
    for pairs in [
        vec![("OS_AUTH_TYPE", "v3applicationcredential")],
        vec![("OS_IDENTITY_API_VERSION", "3")],
        vec![],
    ] {
        let mut pairs = pairs;
        pairs.extend([
            ("OS_AUTH_URL", "https://keystone.example:5000/v3/"),
            ("OS_APPLICATION_CREDENTIAL_ID", "ac1"),
            ("OS_APPLICATION_CREDENTIAL_SECRET", "s3cr3t"),
        ]);
        let a = settings(&pairs);
        let Some(AuthMethod::Keystone(k)) = a.method else {
            panic!("not keystone")
        };
        assert_eq!(
            k.identity,
            KeystoneIdentity::ApplicationCredential {
                credential: AppCredential::Id("ac1".into()),
                secret: Secret::new("s3cr3t"),
            }
        );
    }
}

#[test]
fn preissued_token_alone_or_with_credentials() {
    let a = settings(&[
        ("OS_STORAGE_URL", "http://swift.example/v1/AUTH_x"),
        ("OS_AUTH_TOKEN", "tok"),
    ]);
    assert!(a.method.is_none());
    assert_eq!(
        a.preissued.as_ref().unwrap().storage_url,
        "http://swift.example/v1/AUTH_x"
    );
    let b = settings(&[
        ("OS_STORAGE_URL", "http://swift.example/v1/AUTH_x"),
        ("OS_AUTH_TOKEN", "tok"),
        ("OS_AUTH_TYPE", "v1password"),
        ("OS_AUTH_URL", "http://swift.example/auth/v1.0"),
        ("OS_USERNAME", "a:b"),
        ("OS_PASSWORD", "c"),
    ]);
    assert!(b.method.is_some() && b.preissued.is_some());
    // A storage URL with credentials but no token replaces the catalog's.
    let c = settings(&[
        ("OS_STORAGE_URL", "http://internal.example/v1/AUTH_x"),
        ("OS_AUTH_TYPE", "v1password"),
        ("OS_AUTH_URL", "http://swift.example/auth/v1.0"),
        ("OS_USERNAME", "a:b"),
        ("OS_PASSWORD", "c"),
    ]);
    assert_eq!(
        c.storage_url_override.as_deref(),
        Some("http://internal.example/v1/AUTH_x")
    );
}

#[test]
fn never_guesses_the_version() {
    let m = config_err(&[
        ("OS_AUTH_URL", "http://127.0.0.1:8080/auth/v1.0"),
        ("OS_USERNAME", "test:tester"),
        ("OS_PASSWORD", "testing"),
    ]);
    assert!(m.contains("does not guess"), "{m}");
    let m = config_err(&[
        ("SWIFT_AUTH_VERSION", "2"),
        ("SWIFT_AUTHURL", "https://k/v2.0"),
        ("SWIFT_USER", "u"),
        ("SWIFT_PASSWORD", "p"),
        ("SWIFT_TENANT", "t"),
    ]);
    assert!(m.contains("Keystone v2 is not supported"), "{m}");
    let m = config_err(&[
        ("OS_AUTH_TYPE", "v1password"),
        ("OS_IDENTITY_API_VERSION", "3"),
        ("OS_AUTH_URL", "https://k/v3"),
    ]);
    assert!(m.contains("contradicts"), "{m}");
    let m = config_err(&[("OS_AUTH_TYPE", "oidc"), ("OS_AUTH_URL", "https://k/v3")]);
    assert!(m.contains("unsupported OS_AUTH_TYPE"), "{m}");
    let m = config_err(&[]);
    assert!(m.contains("no Swift credentials"), "{m}");
    let m = config_err(&[
        ("OS_IDENTITY_API_VERSION", "3"),
        ("OS_AUTH_URL", "https://k/v3"),
        ("OS_USERNAME", "u"),
        ("OS_PASSWORD", "p"),
    ]);
    assert!(m.contains("OS_PROJECT_NAME"), "{m}");
    let m = config_err(&[("OS_AUTH_TOKEN", "t")]);
    assert!(m.contains("OS_STORAGE_URL"), "{m}");
    let m = config_err(&[
        ("OS_AUTH_TYPE", "password"),
        ("OS_AUTH_URL", "keystone:5000"),
        ("OS_USERNAME", "u"),
        ("OS_PASSWORD", "p"),
        ("OS_PROJECT_ID", "x"),
    ]);
    assert!(m.contains("not an http(s) URL"), "{m}");
}

#[test]
fn secrets_stay_out_of_debug() {
    let a = settings(&[
        ("OS_AUTH_TYPE", "password"),
        ("OS_AUTH_URL", "https://k/v3"),
        ("OS_USERNAME", "u"),
        ("OS_PASSWORD", "hunter2"),
        ("OS_PROJECT_ID", "x"),
        ("OS_STORAGE_URL", "https://s/v1/AUTH_x"),
        ("OS_AUTH_TOKEN", "gAAAAAtoken"),
    ]);
    let shown = format!("{a:?}");
    assert!(
        !shown.contains("hunter2") && !shown.contains("gAAAAAtoken"),
        "{shown}"
    );
}

#[test]
fn keystone_request_bodies() {
    let pw = keystone_request_body(&KeystoneIdentity::Password {
        user: Named::Name {
            name: "alice".into(),
            domain: Domain::Name("Default".into()),
        },
        password: Secret::new("pw"),
        project: Named::Id("p1".into()),
    });
    assert_eq!(
        pw,
        serde_json::json!({"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": "alice", "domain": {"name": "Default"}, "password": "pw"}}},
            "scope": {"project": {"id": "p1"}}
        }})
    );
    let ac = keystone_request_body(&KeystoneIdentity::ApplicationCredential {
        credential: AppCredential::Id("ac1".into()),
        secret: Secret::new("s"),
    });
    assert_eq!(
        ac,
        serde_json::json!({"auth": {"identity": {
            "methods": ["application_credential"],
            "application_credential": {"id": "ac1", "secret": "s"}
        }}})
    );
    let by_name = keystone_request_body(&KeystoneIdentity::ApplicationCredential {
        credential: AppCredential::Name {
            name: "backup".into(),
            user: Named::Id("u1".into()),
        },
        secret: Secret::new("s"),
    });
    assert_eq!(
        by_name["auth"]["identity"]["application_credential"],
        serde_json::json!({"name": "backup", "user": {"id": "u1"}, "secret": "s"})
    );
    assert_eq!(
        keystone_tokens_url("https://k:5000/v3/"),
        "https://k:5000/v3/auth/tokens"
    );
    assert_eq!(
        keystone_tokens_url("https://k:5000"),
        "https://k:5000/v3/auth/tokens"
    );
    assert_eq!(
        keystone_tokens_url("https://k/identity/v3/auth/tokens"),
        "https://k/identity/v3/auth/tokens"
    );
}

/// A token response as Keystone v3 returns it (trimmed: two regions, three interfaces, an
/// identity and a compute service that must be ignored).
const TOKEN_RESPONSE: &str = r#"{"token": {
  "methods": ["password"],
  "user": {"domain": {"id": "default", "name": "Default"}, "id": "ee4dfb6e5540447cb3741905149d9b6e", "name": "alice", "password_expires_at": null},
  "audit_ids": ["3T2dc1CGQxyJsHdDu1xkcw"],
  "expires_at": "2026-11-30T18:43:25.000000Z",
  "issued_at": "2026-11-30T06:43:25.000000Z",
  "project": {"domain": {"id": "default", "name": "Default"}, "id": "a6944d763bf64ee6a275f1263fae0352", "name": "backups"},
  "is_domain": false,
  "roles": [{"id": "51cc68287d524c759f47c811e6463340", "name": "member"}],
  "catalog": [
    {"endpoints": [
       {"id": "1", "interface": "public", "region_id": "RegionOne", "url": "https://keystone.example:5000", "region": "RegionOne"}],
     "id": "k", "type": "identity", "name": "keystone"},
    {"endpoints": [
       {"id": "2", "interface": "public", "region_id": "RegionOne", "url": "https://swift1.example/v1/AUTH_a6944d763bf64ee6a275f1263fae0352", "region": "RegionOne"},
       {"id": "3", "interface": "internal", "region_id": "RegionOne", "url": "http://10.0.0.1:8080/v1/AUTH_a6944d763bf64ee6a275f1263fae0352", "region": "RegionOne"},
       {"id": "4", "interface": "admin", "region_id": "RegionOne", "url": "http://10.0.0.1:8080/v1", "region": "RegionOne"},
       {"id": "5", "interface": "public", "region_id": "RegionTwo", "url": "https://swift2.example/v1/AUTH_a6944d763bf64ee6a275f1263fae0352", "region": "RegionTwo"},
       {"id": "6", "interface": "internal", "region_id": "RegionTwo", "url": "http://10.1.0.1:8080/v1/AUTH_a6944d763bf64ee6a275f1263fae0352", "region": "RegionTwo"}],
     "id": "s", "type": "object-store", "name": "swift"},
    {"endpoints": [
       {"id": "7", "interface": "public", "region_id": "RegionOne", "url": "https://nova.example/v2.1", "region": "RegionOne"}],
     "id": "n", "type": "compute", "name": "nova"}
  ]
}}"#;

#[test]
fn catalog_selection_by_region_and_interface() {
    let body = TOKEN_RESPONSE.as_bytes();
    let (url, expires) = parse_token_response(body, Some("RegionTwo"), Interface::Public).unwrap();
    assert_eq!(
        url,
        "https://swift2.example/v1/AUTH_a6944d763bf64ee6a275f1263fae0352"
    );
    assert_eq!(expires.unwrap().to_rfc3339(), "2026-11-30T18:43:25+00:00");
    let (url, _) = parse_token_response(body, Some("RegionOne"), Interface::Internal).unwrap();
    assert_eq!(
        url,
        "http://10.0.0.1:8080/v1/AUTH_a6944d763bf64ee6a275f1263fae0352"
    );
    // Two regions offer a public endpoint: no region is ambiguous.
    let Err(SwiftError::Catalog(m)) = parse_token_response(body, None, Interface::Public) else {
        panic!("expected ambiguity")
    };
    assert!(
        m.contains("RegionOne, RegionTwo") && m.contains("OS_REGION_NAME"),
        "{m}"
    );
    // No admin endpoint in RegionTwo; the message lists what there is.
    let Err(SwiftError::Catalog(m)) =
        parse_token_response(body, Some("RegionTwo"), Interface::Admin)
    else {
        panic!("expected a missing endpoint")
    };
    assert!(
        m.contains("no admin object-store endpoint in region \"RegionTwo\"")
            && m.contains("RegionTwo/internal"),
        "{m}"
    );
    let Err(SwiftError::Catalog(m)) =
        parse_token_response(body, Some("RegionThree"), Interface::Public)
    else {
        panic!("expected a missing region")
    };
    assert!(m.contains("RegionThree"), "{m}");
    // A single-region cloud needs no region.
    let one = TOKEN_RESPONSE.replace("RegionTwo", "RegionOne").replace(
        "https://swift2.example/v1/AUTH_a6944d763bf64ee6a275f1263fae0352",
        "https://swift1.example/v1/AUTH_a6944d763bf64ee6a275f1263fae0352",
    );
    let (url, _) = parse_token_response(one.as_bytes(), None, Interface::Public).unwrap();
    assert!(url.starts_with("https://swift1.example/"), "{url}");
    // An unscoped token has no catalog.
    let unscoped = br#"{"token": {"methods": ["password"], "expires_at": "2026-11-30T18:43:25.000000Z", "user": {"id": "u"}}}"#;
    let Err(SwiftError::Catalog(m)) = parse_token_response(unscoped, None, Interface::Public)
    else {
        panic!("expected no object-store")
    };
    assert!(m.contains("no object-store service"), "{m}");
    assert!(matches!(
        parse_token_response(b"<html>", None, Interface::Public),
        Err(SwiftError::Protocol(_))
    ));
}

/// One request as the canned server saw it.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

type Reply = (u16, Vec<(String, String)>, Vec<u8>);

/// A local HTTP/1.1 server answering with `respond`; returns its base URL and the log of
/// requests.
async fn canned_server(
    respond: impl Fn(&Seen, &str) -> Reply + Send + Sync + 'static,
) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let respond = Arc::new(respond);
    let (log, base2) = (seen.clone(), base.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let (log, respond, base) = (log.clone(), respond.clone(), base2.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let end = loop {
                        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break p;
                        }
                        let mut chunk = [0u8; 4096];
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    let mut lines = head.split("\r\n");
                    let mut first = lines.next().unwrap_or("").split(' ');
                    let method = first.next().unwrap_or("").to_string();
                    let path = first.next().unwrap_or("").to_string();
                    let headers: Vec<(String, String)> = lines
                        .filter_map(|l| l.split_once(':'))
                        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                        .collect();
                    let len: usize = headers
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                        .and_then(|(_, v)| v.parse().ok())
                        .unwrap_or(0);
                    while buf.len() < end + 4 + len {
                        let mut chunk = [0u8; 4096];
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body = buf[end + 4..end + 4 + len].to_vec();
                    buf.drain(..end + 4 + len);
                    let req = Seen {
                        method,
                        path,
                        headers,
                        body,
                    };
                    let (status, headers, body) = respond(&req, &base);
                    log.lock().unwrap().push(req);
                    let mut out =
                        format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\n", body.len());
                    for (k, v) in headers {
                        out.push_str(&format!("{k}: {v}\r\n"));
                    }
                    out.push_str("\r\n");
                    let mut bytes = out.into_bytes();
                    bytes.extend_from_slice(&body);
                    if sock.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (base, seen)
}

fn store(pairs: &[(&str, &str)]) -> SwiftStore {
    SwiftStore::new(
        "c",
        settings(pairs),
        Duration::from_secs(10),
        Duration::from_secs(5),
    )
    .unwrap()
}

#[tokio::test]
async fn keystone_token_is_renewed_on_401() {
    let issued = Arc::new(Mutex::new(0u32));
    let issued2 = issued.clone();
    let (base, seen) = canned_server(move |req, base| {
        if req.method == "POST" && req.path == "/v3/auth/tokens" {
            let mut n = issued2.lock().unwrap();
            *n += 1;
            let body = TOKEN_RESPONSE.replace(
                "https://swift1.example/v1/AUTH_a6944d763bf64ee6a275f1263fae0352",
                &format!("{base}/v1/AUTH_p"),
            );
            return (
                201,
                vec![
                    ("X-Subject-Token".into(), format!("token-{n}")),
                    ("Content-Type".into(), "application/json".into()),
                ],
                body.into_bytes(),
            );
        }
        // The first token has "expired" by the time it is used.
        match (req.path.as_str(), req.header("x-auth-token")) {
            ("/v1/AUTH_p/c/wal/x", Some("token-2")) => (
                200,
                vec![
                    ("Etag".into(), "5d41402abc4b2a76b9719d911017c592".into()),
                    (
                        "Last-Modified".into(),
                        "Mon, 30 Nov 2026 06:21:52 GMT".into(),
                    ),
                ],
                b"hello".to_vec(),
            ),
            _ => (401, vec![], b"<html><h1>Unauthorized</h1></html>".to_vec()),
        }
    })
    .await;
    let s = store(&[
        ("OS_AUTH_TYPE", "password"),
        ("OS_AUTH_URL", &format!("{base}/v3")),
        ("OS_USERNAME", "alice"),
        ("OS_PASSWORD", "pw"),
        ("OS_PROJECT_NAME", "backups"),
        ("OS_REGION_NAME", "RegionOne"),
    ]);
    let got = s.get(&"wal/x".into()).await.unwrap().bytes().await.unwrap();
    assert_eq!(&got[..], b"hello");
    assert_eq!(*issued.lock().unwrap(), 2);
    let seen = seen.lock().unwrap().clone();
    let auth: Vec<&Seen> = seen.iter().filter(|r| r.method == "POST").collect();
    let body: serde_json::Value = serde_json::from_slice(&auth[0].body).unwrap();
    assert_eq!(
        body["auth"]["identity"]["password"]["user"]["name"],
        "alice"
    );
    assert_eq!(body["auth"]["scope"]["project"]["name"], "backups");
    let gets: Vec<Option<&str>> = seen
        .iter()
        .filter(|r| r.method == "GET")
        .map(|r| r.header("x-auth-token"))
        .collect();
    assert_eq!(gets, [Some("token-1"), Some("token-2")]);
}

#[tokio::test]
async fn application_credential_token_and_refusals() {
    let (base, seen) = canned_server(|req, base| {
        if req.method == "POST" {
            let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
            let cred = &body["auth"]["identity"]["application_credential"];
            if cred["secret"] != "right" {
                return (
                    401,
                    vec![],
                    br#"{"error": {"code": 401, "title": "Unauthorized", "message": "The request you have made requires authentication."}}"#.to_vec(),
                );
            }
            let body = TOKEN_RESPONSE.replace(
                "http://10.1.0.1:8080/v1/AUTH_a6944d763bf64ee6a275f1263fae0352",
                &format!("{base}/v1/AUTH_p"),
            );
            return (201, vec![("X-Subject-Token".into(), "tok".into())], body.into_bytes());
        }
        (404, vec![], Vec::new())
    })
    .await;
    let settings_for = |secret: &'static str| {
        vec![
            ("OS_AUTH_TYPE", "v3applicationcredential"),
            (
                "OS_AUTH_URL",
                Box::leak(format!("{base}/v3").into_boxed_str()) as &str,
            ),
            ("OS_APPLICATION_CREDENTIAL_ID", "ac1"),
            ("OS_APPLICATION_CREDENTIAL_SECRET", secret),
            ("OS_REGION_NAME", "RegionTwo"),
            ("OS_INTERFACE", "internal"),
        ]
    };
    let good = store(&settings_for("right"));
    let e = good.head(&"missing".into()).await.unwrap_err();
    assert!(matches!(e, object_store::Error::NotFound { .. }), "{e}");
    assert!(seen
        .lock()
        .unwrap()
        .iter()
        .any(|r| r.method == "HEAD" && r.path == "/v1/AUTH_p/c/missing"));

    let bad = store(&settings_for("wrong-secret"));
    let e = bad.head(&"x".into()).await.unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(e, object_store::Error::Unauthenticated { .. }),
        "{msg}"
    );
    assert!(
        msg.contains("refused the credentials") && msg.contains("401"),
        "{msg}"
    );
    assert!(!msg.contains("wrong-secret"), "{msg}");
    let classified = crate::storage::StorageError::from(e);
    assert!(matches!(
        classified,
        crate::storage::StorageError::AccessDenied(_)
    ));
}

#[tokio::test]
async fn tempauth_and_preissued_tokens() {
    let (base, seen) = canned_server(|req, base| match req.path.as_str() {
        "/auth/v1.0" if req.header("x-auth-key") == Some("testing") => (
            200,
            vec![
                ("X-Storage-Url".into(), format!("{base}/v1/AUTH_test")),
                ("X-Auth-Token".into(), "AUTH_tk1".into()),
                ("X-Auth-Token-Expires".into(), "86399".into()),
            ],
            Vec::new(),
        ),
        "/auth/v1.0" => (401, vec![], Vec::new()),
        _ if req.header("x-auth-token") == Some("AUTH_tk1") => (204, vec![], Vec::new()),
        _ => (401, vec![], Vec::new()),
    })
    .await;
    let auth_url = format!("{base}/auth/v1.0");
    let s = store(&[
        ("OS_AUTH_TYPE", "v1password"),
        ("OS_AUTH_URL", &auth_url),
        ("OS_USERNAME", "test:tester"),
        ("OS_PASSWORD", "testing"),
    ]);
    s.delete(&"x".into()).await.unwrap(); // HEAD answered 204: not an SLO, then DELETE
    assert!(seen.lock().unwrap().iter().any(|r| r.method == "DELETE"));

    let wrong = store(&[
        ("OS_AUTH_TYPE", "v1password"),
        ("OS_AUTH_URL", &auth_url),
        ("OS_USERNAME", "test:tester"),
        ("OS_PASSWORD", "nope-secret"),
    ]);
    let msg = wrong.head(&"x".into()).await.unwrap_err().to_string();
    assert!(
        msg.contains("TempAuth") && msg.contains("test:tester"),
        "{msg}"
    );
    assert!(!msg.contains("nope-secret"), "{msg}");

    // A pre-issued token that is refused cannot be renewed: a clear error, once.
    let storage_url = format!("{base}/v1/AUTH_test");
    let pre = store(&[
        ("OS_STORAGE_URL", &storage_url),
        ("OS_AUTH_TOKEN", "AUTH_expired"),
    ]);
    let before = seen.lock().unwrap().len();
    let e = pre.head(&"x".into()).await.unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(e, object_store::Error::Unauthenticated { .. }),
        "{msg}"
    );
    assert!(
        msg.contains("pre-issued") && !msg.contains("AUTH_expired"),
        "{msg}"
    );
    assert_eq!(seen.lock().unwrap().len(), before + 1);
}

#[tokio::test]
async fn tokens_about_to_expire_are_renewed_before_use() {
    let issued = Arc::new(Mutex::new(0u32));
    let issued2 = issued.clone();
    let (base, _) = canned_server(move |req, base| match req.path.as_str() {
        "/auth/v1.0" => {
            let mut n = issued2.lock().unwrap();
            *n += 1;
            // The first token has 30 s left, under the renewal margin; the next one a day.
            let expires = if *n == 1 { "30" } else { "86400" };
            (
                200,
                vec![
                    ("X-Storage-Url".into(), format!("{base}/v1/AUTH_test")),
                    ("X-Auth-Token".into(), format!("AUTH_tk{n}")),
                    ("X-Auth-Token-Expires".into(), expires.into()),
                ],
                Vec::new(),
            )
        }
        _ => (404, vec![], Vec::new()),
    })
    .await;
    let s = store(&[
        ("OS_AUTH_TYPE", "v1password"),
        ("OS_AUTH_URL", &format!("{base}/auth/v1.0")),
        ("OS_USERNAME", "test:tester"),
        ("OS_PASSWORD", "testing"),
    ]);
    for _ in 0..3 {
        let e = s.head(&"x".into()).await.unwrap_err();
        assert!(matches!(e, object_store::Error::NotFound { .. }), "{e}");
    }
    assert_eq!(*issued.lock().unwrap(), 2);
}
