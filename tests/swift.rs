//! The Swift backend against a real OpenStack Swift all-in-one (Debian's packages, started
//! by the harness on 127.0.0.1 with TempAuth): the `ObjectStore` behaviour that
//! tests/conformance.rs does not check (Static Large Objects and their hidden segments,
//! server-side copies, token renewal, a missing container), then walarchive itself, as
//! PostgreSQL runs it, archiving into `swift://` and restoring a base backup from it. Keystone is not available here: its token and catalog
//! handling is covered by recorded-response unit tests (`storage::swift::auth::tests`).

use testkit as common;

use std::sync::Arc;

use common::stores::{
    backup_more_items, create, data, fetch_and_repush, primary_with_items, put_listing, quick,
    repository, swift_store, verify_and_restore,
};
use common::*;
use walarchive::storage::object_store::path::Path as StorePath;
use walarchive::storage::object_store::{self, ObjectStore, ObjectStoreExt, PutPayload};
use walarchive::storage::swift::{SwiftStore, SEGMENTS_PREFIX};
use walarchive::storage::Backend;
use walarchive::Repository;

/// A store on a fresh container, authenticating with TempAuth as walarchive would.
fn fresh_store() -> (SwiftStore, String) {
    let container = swift().fresh_container();
    (swift_store(&container, swift().env()), container)
}

fn swift_repository(store: SwiftStore, prefix: &str) -> Repository {
    repository(Arc::new(store), prefix, Backend::Swift, "swift://test")
}

// Put, get, ranges, head, missing objects (head, get, delete), conditional create,
// overwrites, delete, paged listings: tests/conformance.rs (`swift::*`). Here, what those
// checks do not see.

/// Entity tags on puts and heads, server-side copies (`copy_if_not_exists`), what the
/// container holds afterwards, and a missing container.
#[tokio::test]
async fn etags_copies_and_missing_container() {
    let (store, container) = fresh_store();
    let key = StorePath::from("db/wal/00000001/00000000/000000010000000000000001");
    let put = store
        .put_opts(&key, PutPayload::from(data(70_000, 1)), create())
        .await
        .unwrap();
    assert!(put.e_tag.is_some());
    assert!(store.head(&key).await.unwrap().e_tag.is_some());

    // Server-side copies of an overwritten object.
    store
        .put(&StorePath::from("x"), PutPayload::from_static(b"one"))
        .await
        .unwrap();
    store
        .put(&StorePath::from("x"), PutPayload::from_static(b"two"))
        .await
        .unwrap();
    store
        .copy_if_not_exists(&StorePath::from("x"), &StorePath::from("y"))
        .await
        .unwrap();
    let e = store
        .copy_if_not_exists(&StorePath::from("x"), &StorePath::from("y"))
        .await
        .unwrap_err();
    assert!(
        matches!(e, object_store::Error::AlreadyExists { .. }),
        "{e}"
    );
    assert_eq!(
        &store
            .get(&StorePath::from("y"))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()[..],
        b"two"
    );

    store.delete(&key).await.unwrap();
    assert_eq!(swift().raw_names(&container), ["x", "y"]);

    // A missing container is a permanent storage error, not "not found".
    let gone = swift_repository(swift_store("no-such-container", swift().env()), "db");
    let e = gone.list("wal").await.unwrap_err().to_string();
    assert!(e.contains("does not exist") && e.contains("404"), "{e}");
}

#[tokio::test]
async fn listings_page_with_marker_and_hide_segments() {
    let (store, container) = fresh_store();
    // Three names per request: every listing below takes several pages.
    let store = store.with_list_page_size(3).with_segment_size(4096);
    let others = [
        "db/wal/00000002/a",
        "db/wal/00000002/b",
        "db/walarchive.repo",
        "other/x",
    ];
    put_listing(&store, 10, |_| 100, &others).await;
    // An SLO: its segments sit in the container but no listing shows them.
    store
        .put_opts(
            &StorePath::from("db/basebackups/b1/part-000001"),
            PutPayload::from(data(10_000, 9)),
            create(),
        )
        .await
        .unwrap();
    let raw = swift().raw_names(&container);
    assert_eq!(
        raw.iter()
            .filter(|n| n.starts_with(SEGMENTS_PREFIX))
            .count(),
        3,
        "{raw:?}"
    );

    // Under the prefix, the SLO is one object of its full size, across pages.
    let all = swift_repository(store.clone(), "db")
        .list("")
        .await
        .unwrap();
    assert_eq!(all.len(), 10 + 3 + 1, "{all:?}");
    let part = all
        .iter()
        .find(|l| l.key == "basebackups/b1/part-000001")
        .unwrap();
    assert_eq!(part.size, 10_000);
    // At the container's root the segment prefix is hidden too.
    let root = store.list_with_delimiter(None).await.unwrap();
    let dirs: Vec<&str> = root.common_prefixes.iter().map(|p| p.as_ref()).collect();
    assert_eq!(dirs, ["db", "other"]);
    let everything: Vec<_> = swift_repository(store, "").list("").await.unwrap();
    assert_eq!(everything.len(), 15);
    assert!(everything
        .iter()
        .all(|l| !l.key.starts_with(SEGMENTS_PREFIX)));
}

#[tokio::test]
async fn large_objects_are_static_large_objects() {
    let (store, container) = fresh_store();
    let store = store.with_segment_size(1000);
    let key = StorePath::from("db/basebackups/b/data/part-000001");
    let body = data(3500, 7);
    store
        .put_opts(&key, PutPayload::from(body.clone()), create())
        .await
        .unwrap();
    let raw = swift().raw_names(&container);
    let segments: Vec<&String> = raw
        .iter()
        .filter(|n| n.starts_with(&format!("{SEGMENTS_PREFIX}/{key}/")))
        .collect();
    assert_eq!(segments.len(), 4, "{raw:?}");
    let r = swift().request("HEAD", &format!("/{container}/{key}"), &[], b"");
    assert_eq!(r.header("x-static-large-object"), Some("True"));

    assert_eq!(store.get(&key).await.unwrap().bytes().await.unwrap(), body);
    assert_eq!(store.head(&key).await.unwrap().size, 3500);
    // A range across segment boundaries.
    assert_eq!(
        store.get_range(&key, 900..2100).await.unwrap(),
        body[900..2100]
    );

    // A refused create leaves no segments behind.
    let e = store
        .put_opts(&key, PutPayload::from(data(2500, 8)), create())
        .await
        .unwrap_err();
    assert!(
        matches!(e, object_store::Error::AlreadyExists { .. }),
        "{e}"
    );
    assert_eq!(swift().raw_names(&container), raw);
    assert_eq!(store.get(&key).await.unwrap().bytes().await.unwrap(), body);

    // The multipart API writes an SLO from parts.
    let mp_key = StorePath::from("db/mp");
    let mut upload = store.put_multipart(&mp_key).await.unwrap();
    let parts = [data(1500, 1), data(1500, 2), data(10, 3)];
    for p in &parts {
        upload.put_part(PutPayload::from(p.clone())).await.unwrap();
    }
    upload.complete().await.unwrap();
    assert_eq!(
        store.get(&mp_key).await.unwrap().bytes().await.unwrap(),
        parts.concat()
    );
    let mut aborted = store
        .put_multipart(&StorePath::from("db/aborted"))
        .await
        .unwrap();
    aborted
        .put_part(PutPayload::from(data(100, 4)))
        .await
        .unwrap();
    aborted.abort().await.unwrap();

    // Deleting an SLO deletes its segments.
    store.delete(&key).await.unwrap();
    store.delete(&mp_key).await.unwrap();
    assert_eq!(swift().raw_names(&container), Vec::<String>::new());
}

#[tokio::test]
async fn token_is_renewed_after_expiry_and_preissued_tokens_work() {
    let container = swift().fresh_container();
    // A pre-issued token that Swift refuses, with credentials to renew it.
    let mut env = swift().env();
    env.push(("OS_STORAGE_URL".into(), swift().storage_url()));
    env.push(("OS_AUTH_TOKEN".into(), "AUTH_tkexpired0000".into()));
    let store = swift_store(&container, env);
    store
        .put(&StorePath::from("k"), PutPayload::from_static(b"v"))
        .await
        .unwrap();
    // A valid pre-issued token alone.
    let pre = swift_store(&container, swift().preissued_env());
    assert_eq!(
        &pre.get(&StorePath::from("k"))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()[..],
        b"v"
    );
}

/// walarchive as PostgreSQL runs it: archive_command and restore_command on `swift://`,
/// the exit statuses of the contract, a base backup whose parts are Static Large Objects,
/// and a point-in-time restore from it.
#[test]
fn walarchive_archives_and_restores_through_swift() {
    let container = swift().fresh_container();
    let repo = Repo {
        url: format!("swift://{container}/pg/main"),
        // Parts above 64 KiB become Static Large Objects.
        env: quick(
            &[
                swift().env(),
                vec![("SWIFT_SEGMENT_SIZE".into(), "65536".into())],
            ]
            .concat(),
        ),
        dir: None,
    };
    let (primary, seg) = primary_with_items(&repo);

    let scratch = TestDir::new("walarchive-swift-");
    let dest = scratch.join("fetched");
    let fetch = |name: &str, env: &[(String, String)]| {
        run_walarchive(
            &[
                "--repo",
                &repo.url,
                "wal-fetch",
                name,
                dest.to_str().unwrap(),
            ],
            env,
        )
    };
    // Fetched, missing, re-pushed, in conflict.
    let seg_path = fetch_and_repush(&repo, &primary, &seg, &scratch);
    // wal-e's variable names work as well.
    assert_success(&fetch(&seg, &quick(&swift().wal_e_env())));
    let push = |path: &std::path::Path, env: &[(String, String)]| {
        run_walarchive(
            &["--repo", &repo.url, "wal-push", path.to_str().unwrap()],
            env,
        )
    };

    // A wrong password: storage failure (7; 207 for wal-fetch, so recovery aborts), the
    // message says so, and the password is nowhere.
    let wrong: Vec<(String, String)> = repo
        .env
        .iter()
        .map(|(k, v)| {
            if k == "OS_PASSWORD" {
                (k.clone(), "not-the-password".to_string())
            } else {
                (k.clone(), v.clone())
            }
        })
        .collect();
    let out = fetch(&seg, &wrong);
    assert_code(&out, 207);
    let err = stderr(&out);
    eprintln!("wrong password: {err}");
    assert!(err.contains("refused the credentials"), "{err}");
    assert!(!err.contains("not-the-password"), "{err}");
    assert_code(&push(&seg_path, &wrong), 7);
    // No auth version: a configuration error (6; 206 for wal-fetch), never a guess.
    let unversioned: Vec<(String, String)> = repo
        .env
        .iter()
        .filter(|(k, _)| k != "OS_AUTH_TYPE")
        .cloned()
        .collect();
    let out = fetch(&seg, &unversioned);
    assert_code(&out, 206);
    assert!(stderr(&out).contains("does not guess"), "{}", stderr(&out));
    eprintln!("no auth version: {}", stderr(&out));

    // A missing container is no repository (206), never "not found" (which ends recovery).
    let out = run_walarchive(
        &[
            "--repo",
            "swift://no-such-container/pg",
            "wal-fetch",
            &seg,
            dest.to_str().unwrap(),
        ],
        &repo.env,
    );
    assert_code(&out, 206);
    let out = run_walarchive(
        &[
            "--repo",
            "swift://no-such-container/pg",
            "wal-push",
            seg_path.to_str().unwrap(),
        ],
        &repo.env,
    );
    assert_code(&out, 7);
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));

    // A base backup: its parts are SLOs (segments hidden from listings).
    let name = backup_more_items(&repo, &primary);
    let raw = swift().raw_names(&container);
    assert!(
        raw.iter()
            .any(|n| n.starts_with(&format!("{SEGMENTS_PREFIX}/pg/main/basebackups/{name}/"))),
        "no SLO segments: {raw:?}"
    );
    verify_and_restore(&repo, &primary, &name, &seg, "Swift");
}

/// object_store's own test suite for `ObjectStore` implementations
/// (`object_store::integration`), run against the native Swift store beside
/// tests/conformance.rs, one test per suite function, each on a fresh container.
///
/// Left out, for Swift reasons: `put_get_attributes` (Swift's proxy turns `_` in a metadata
/// name into `-`, so `test_key` comes back as `test-key`; walarchive stores no metadata
/// with `_`), the `multipart*` functions that take a `MultipartStore` and `list_paginated`
/// (the store implements neither trait; its multipart uploads are Static Large Objects
/// behind `put_multipart`, which `multipart_out_of_order` and `multipart_race_condition`
/// run). `put_opts` runs as for a store without conditional replace: Swift has none, and the
/// store answers `PutMode::Update` with `NotImplemented`.
mod object_store_suite {
    use super::*;
    use object_store::integration;

    fn store() -> SwiftStore {
        fresh_store().0
    }

    #[tokio::test]
    async fn put_get_delete_list() {
        integration::put_get_delete_list(&store()).await;
    }

    #[tokio::test]
    async fn get_opts() {
        integration::get_opts(&store()).await;
    }

    #[tokio::test]
    async fn put_opts() {
        integration::put_opts(&store(), false).await;
    }

    #[tokio::test]
    async fn stream_get() {
        integration::stream_get(&store()).await;
    }

    #[tokio::test]
    async fn list_uses_directories_correctly() {
        integration::list_uses_directories_correctly(&store()).await;
    }

    #[tokio::test]
    async fn list_with_delimiter() {
        integration::list_with_delimiter(&store()).await;
    }

    #[tokio::test]
    async fn get_nonexistent_object() {
        let err = integration::get_nonexistent_object(&store(), None).await;
        assert!(
            matches!(err, Err(object_store::Error::NotFound { .. })),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn rename_and_copy() {
        integration::rename_and_copy(&store()).await;
    }

    #[tokio::test]
    async fn copy_if_not_exists() {
        integration::copy_if_not_exists(&store()).await;
    }

    #[tokio::test]
    async fn copy_rename_nonexistent_object() {
        integration::copy_rename_nonexistent_object(&store()).await;
    }

    #[tokio::test]
    async fn multipart_out_of_order() {
        integration::multipart_out_of_order(&store()).await;
    }

    #[tokio::test]
    async fn multipart_race_condition() {
        integration::multipart_race_condition(&store(), true).await;
    }

    #[tokio::test]
    async fn list_with_offset_exclusivity() {
        integration::list_with_offset_exclusivity(&store()).await;
    }
}
