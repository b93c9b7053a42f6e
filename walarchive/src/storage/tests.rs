//! Unit tests of [`super`].

use super::*;

fn policy() -> RetryPolicy {
    RetryPolicy::default()
}

/// The retry helper classifies and wraps storage errors through [`Retryable`].
#[tokio::test]
async fn retry_wraps_storage_errors() {
    let fast = RetryPolicy {
        max_attempts: 2,
        base_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(1),
        attempt_timeout: Duration::from_millis(50),
    };
    let r: Result<(), _> =
        crate::retry::retry(&fast, "test", || async { std::future::pending().await }).await;
    assert!(
        matches!(&r, Err(StorageError::GaveUp { attempts: 2, last })
                if matches!(**last, StorageError::Timeout(_))),
        "{r:?}"
    );
    let r: Result<(), _> =
        crate::retry::retry(&fast, "test", || async { Err(StorageError::NotFound) }).await;
    assert!(matches!(r, Err(StorageError::NotFound)), "{r:?}");
}

#[test]
fn opens_each_scheme() {
    let none = StorageOptions::default();
    let l = open(
        "file:///tmp/some/repo/",
        &none,
        &StorageEnv::default(),
        &policy(),
    )
    .unwrap();
    assert_eq!(l.backend, Backend::Local);
    assert_eq!(l.prefix.as_ref(), "tmp/some/repo");
    for url in ["file:/tmp/some/repo", "file://localhost/tmp/some/repo"] {
        let l = open(url, &none, &StorageEnv::default(), &policy()).unwrap();
        assert_eq!(l.prefix.as_ref(), "tmp/some/repo", "{url}");
    }
    // Each backend with its own keys: another backend's key is refused (ForeignKey).
    let options = |pairs: &[(&str, &str)]| {
        StorageOptions(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    };
    let s3 = options(&[("aws_region", "eu-west-1")]);
    let opts = options(&[
        ("azure_storage_account_name", "acct"),
        ("azure_storage_account_key", "a2V5"),
    ]);
    let s = open(
        "s3://bucket/pre/fix",
        &s3,
        &StorageEnv::default(),
        &policy(),
    )
    .unwrap();
    assert_eq!((s.backend, s.prefix.as_ref()), (Backend::S3, "pre/fix"));
    let a = open("az://container", &opts, &StorageEnv::default(), &policy()).unwrap();
    assert_eq!((a.backend, a.prefix.as_ref()), (Backend::Azure, ""));
    assert_eq!(
        open("azure://c/p", &opts, &StorageEnv::default(), &policy())
            .unwrap()
            .backend,
        Backend::Azure
    );
}

#[test]
fn refuses_bad_urls() {
    let none = StorageOptions::default();
    for url in [
        "",
        "/tmp/repo",
        "file:///",
        "file://host/x",
        "file:relative/path",
        "file:./repo",
        "FILE:repo",
        "file:~/repo",
        "s3:///prefix",
        "s3://b/p?x-amz-signature=1",
        "s3://user:pw@b/p",
    ] {
        assert!(
            matches!(
                open(url, &none, &StorageEnv::default(), &policy()),
                Err(OpenError::BadUrl { .. })
            ),
            "{url}"
        );
    }
    assert!(matches!(
        open("ftp://x/y", &none, &StorageEnv::default(), &policy()),
        Err(OpenError::UnknownScheme { .. })
    ));
}

#[test]
fn opens_swift_urls() {
    let opts = StorageOptions(
        [
            ("os_storage_url", "http://127.0.0.1:9/v1/AUTH_test"),
            ("os_auth_token", "AUTH_tk0"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
    );
    let l = open(
        "swift://backups/pg/main/",
        &opts,
        &StorageEnv::default(),
        &policy(),
    )
    .unwrap();
    assert_eq!((l.backend, l.prefix.as_ref()), (Backend::Swift, "pg/main"));
    assert!(!format!("{:?}", l.store).contains("AUTH_tk0"));
    // Container names keep their case (Swift's are case-sensitive).
    let upper = open(
        "swift://PG_Archive/x",
        &opts,
        &StorageEnv::default(),
        &policy(),
    )
    .unwrap();
    assert!(
        format!("{:?}", upper.store).contains("\"PG_Archive\""),
        "{:?}",
        upper.store
    );
    assert!(matches!(
        open("swift:///pg", &opts, &StorageEnv::default(), &policy()),
        Err(OpenError::BadUrl { .. })
    ));
    // Settings that name no auth version are a configuration error.
    let unversioned = StorageOptions(
        [
            ("os_auth_url", "http://127.0.0.1:9/auth/v1.0"),
            ("os_username", "test:tester"),
            ("os_password", "testing"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
    );
    {
        match open(
            "swift://backups",
            &unversioned,
            &StorageEnv::default(),
            &policy(),
        ) {
            Err(OpenError::Backend {
                backend: Backend::Swift,
                reason,
            }) => assert!(reason.contains("does not guess"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn classifies_swift_errors() {
    use swift::SwiftError;
    let generic = |e: SwiftError| object_store::Error::Generic {
        store: "Swift",
        source: Box::new(e),
    };
    let status = |code: u16| SwiftError::Status {
        what: "PUT".into(),
        url: "http://s/v1/AUTH_t/c/o?multipart-manifest=put".into(),
        status: code,
        reason: String::new(),
        detail: String::new(),
    };
    // 422 is Swift's answer to an ETag mismatch: damaged in transit, worth retrying.
    assert!(!StorageError::from(generic(status(422))).is_permanent());
    assert!(!StorageError::from(generic(status(503))).is_permanent());
    assert!(StorageError::from(generic(status(400))).is_permanent());
    assert!(!StorageError::from(generic(SwiftError::Transport("reset".into()))).is_permanent());
    assert!(StorageError::from(generic(SwiftError::Catalog("none".into()))).is_permanent());
    let msg = StorageError::from(generic(status(500))).to_string();
    assert!(
        msg.contains("?<redacted>") && !msg.contains("multipart-manifest"),
        "{msg}"
    );
}

fn gcs_key(base_url: &str) -> String {
    format!(
        r#"{{"gcs_base_url": "{base_url}", "disable_oauth": true, "client_email": "", "private_key": "", "private_key_id": ""}}"#
    )
}

#[test]
fn opens_gcs_urls() {
    let opts = StorageOptions(
        [(
            "google_service_account_key".to_string(),
            gcs_key("http://127.0.0.1:9"),
        )]
        .into(),
    );
    let l = open(
        "gs://backups/pg/main/",
        &opts,
        &StorageEnv::default(),
        &policy(),
    )
    .unwrap();
    assert_eq!((l.backend, l.prefix.as_ref()), (Backend::Gcs, "pg/main"));
    let root = open("gs://backups", &opts, &StorageEnv::default(), &policy()).unwrap();
    assert_eq!((root.backend, root.prefix.as_ref()), (Backend::Gcs, ""));
    for url in ["gs:///pg", "gs://b/p?X-Goog-Signature=1", "gs://u:p@b/p"] {
        assert!(
            matches!(
                open(url, &opts, &StorageEnv::default(), &policy()),
                Err(OpenError::BadUrl { .. })
            ),
            "{url}"
        );
    }
    // A credential the backend cannot use is a configuration error; the key's content
    // is not in the message, the path of a missing file is.
    for (key, value, shown, hidden) in [
        (
            "google_service_account_key",
            "{\"private_key\": \"s3cr3t-material",
            "credential",
            "s3cr3t",
        ),
        (
            "google_service_account",
            "/nonexistent/sa.json",
            "/nonexistent/sa.json",
            "\u{0}",
        ),
    ] {
        let bad = StorageOptions([(key.to_string(), value.to_string())].into());
        match open("gs://backups/pg", &bad, &StorageEnv::default(), &policy()) {
            Err(OpenError::Backend {
                backend: Backend::Gcs,
                reason,
            }) => assert!(
                reason.contains(shown) && !reason.contains(hidden),
                "{key}: {reason}"
            ),
            other => panic!("{key}: {other:?}"),
        }
    }
    // The URL names the bucket, whatever google_bucket says.
    let both = StorageOptions(
        [
            (
                "google_service_account_key".to_string(),
                gcs_key("http://127.0.0.1:9"),
            ),
            ("google_bucket".to_string(), "ignored".to_string()),
        ]
        .into(),
    );
    let l = open(
        "gs://url-bucket/p",
        &both,
        &StorageEnv::default(),
        &policy(),
    )
    .unwrap();
    assert!(
        format!("{:?}", l.store).contains("url-bucket"),
        "{:?}",
        l.store
    );
}

#[test]
fn debug_hides_secret_values() {
    let opts =
        StorageOptions([("aws_secret_access_key".to_string(), "hunter2".to_string())].into());
    let shown = format!("{opts:?}");
    assert!(
        shown.contains("aws_secret_access_key") && !shown.contains("hunter2"),
        "{shown}"
    );
}

#[test]
fn urls_are_shown_without_credentials() {
    for (url, shown) in [
        (
            "s3://AKIAKEY:Secret123@bucket/x",
            "s3://<redacted>@bucket/x",
        ),
        ("s3://AKIAKEY@bucket/x", "s3://<redacted>@bucket/x"),
        ("s3://K:S@b", "s3://<redacted>@b"),
        ("s3:AKIAKEY:Secret123@bucket/x", "<redacted>@bucket/x"),
        ("AKIAKEY:Secret123@bucket", "<redacted>@bucket"),
        ("s3://b/p?X-Amz-Signature=Secret123", "s3://b/p?<redacted>"),
        ("az://c/p#Secret123", "az://c/p?<redacted>"),
        (
            "http://u:Secret123@127.0.0.1:9/b?sig=1",
            "http://<redacted>@127.0.0.1:9/b?<redacted>",
        ),
        ("file:///tmp/a@b/repo", "file:///tmp/a@b/repo"),
        ("s3://bucket/pre@fix", "s3://bucket/pre@fix"),
        ("", ""),
    ] {
        assert_eq!(redact_url(url), shown, "{url}");
    }
    let none = StorageOptions::default();
    for url in [
        "s3://AKIAKEY:Secret123@bucket/x",
        "s3:AKIAKEY:Secret123@bucket/x",
        "AKIAKEY:Secret123@bucket",
        "akiakey:Secret123@bucket",
        "s3://b/x?X-Amz-Signature=Secret123",
        "ftp://AKIAKEY:Secret123@host/x",
        "s3://AKIAKEY:Secret 123@bucket/x",
    ] {
        let e = open(url, &none, &StorageEnv::default(), &policy())
            .unwrap_err()
            .to_string();
        assert!(
            !e.to_lowercase().contains("akiakey") && !e.contains("Secret"),
            "{url}: {e}"
        );
        assert!(e.contains("<redacted>"), "{url}: {e}");
    }
}

#[test]
fn redacts_query_strings() {
    assert_eq!(
        redact("Error performing GET https://a.blob/c/x?sig=SECRET&se=1 in 3ms - 500"),
        "Error performing GET https://a.blob/c/x?<redacted> in 3ms - 500"
    );
    assert_eq!(
        redact("error sending request for url (http://key:pw@127.0.0.1:9/b/k): refused"),
        "error sending request for url (http://<redacted>@127.0.0.1:9/b/k): refused"
    );
    assert_eq!(redact("no url here"), "no url here");
}

#[test]
fn classifies_errors() {
    let generic = |m: &str| object_store::Error::Generic {
        store: "S3",
        source: m.to_string().into(),
    };
    assert!(!StorageError::from(generic(
        "Server returned non-2xx status code: 503 Service Unavailable"
    ))
    .is_permanent());
    assert!(StorageError::from(generic(
        "Server returned non-2xx status code: 400 Bad Request"
    ))
    .is_permanent());
    assert!(!StorageError::from(generic(
        "Server returned non-2xx status code: 429 Slow Down"
    ))
    .is_permanent());
    assert!(!StorageError::from(generic("something odd")).is_permanent());
    let nf = object_store::Error::NotFound {
        path: "x".into(),
        source: "404".into(),
    };
    assert!(StorageError::from(nf).is_not_found());
    let denied = object_store::Error::PermissionDenied {
        path: "x".into(),
        source: "403".into(),
    };
    assert!(matches!(
        StorageError::from(denied),
        StorageError::AccessDenied(_)
    ));
}
