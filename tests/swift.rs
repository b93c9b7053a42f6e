//! The Swift backend against a real OpenStack Swift all-in-one (Debian's packages, started
//! by the harness on 127.0.0.1 with TempAuth): the `ObjectStore` operations the engine
//! relies on (conditional create, ranged reads, paginated listings, deletes, Static Large
//! Objects), then walarchive itself, as PostgreSQL runs it, archiving into `swift://` and
//! restoring a base backup from it. Keystone is not available here: its token and catalog
//! handling is covered by recorded-response unit tests (`storage::swift::auth::tests`).

mod common;

use std::fs;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use walarchive_core::storage::object_store::path::Path as StorePath;
use walarchive_core::storage::object_store::{
    self, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
};
use walarchive_core::storage::swift::{SwiftStore, SEGMENTS_PREFIX};
use walarchive_core::storage::Backend;
use walarchive_core::{Compression, Repository, RetryPolicy};

fn env_get(env: Vec<(String, String)>) -> impl Fn(&str) -> Option<String> {
    move |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
}

/// A store on a fresh container, authenticating with TempAuth as walarchive would.
fn fresh_store() -> (SwiftStore, String) {
    let container = swift().fresh_container();
    let store = SwiftStore::from_settings(
        &container,
        &env_get(swift().env()),
        Duration::from_secs(30),
        Duration::from_secs(5),
    )
    .unwrap();
    (store, container)
}

fn create() -> PutOptions {
    PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    }
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[2] ^ seed)
        .collect()
}

fn repository(store: SwiftStore, prefix: &str) -> Repository {
    Repository::with_store(
        Arc::new(store),
        StorePath::from(prefix),
        Backend::Swift,
        "swift://test",
        RetryPolicy::default(),
        Compression::None,
    )
}

#[tokio::test]
async fn put_get_head_delete_and_conditional_create() {
    let (store, container) = fresh_store();
    let key = StorePath::from("db/wal/00000001/00000000/000000010000000000000001");
    let body = data(70_000, 1);
    let put = store
        .put_opts(&key, PutPayload::from(body.clone()), create())
        .await
        .unwrap();
    assert!(put.e_tag.is_some());

    let got = store.get(&key).await.unwrap();
    assert_eq!(got.meta.size, 70_000);
    assert_eq!(got.bytes().await.unwrap(), body);
    let head = store.head(&key).await.unwrap();
    assert_eq!((head.size, head.location.clone()), (70_000, key.clone()));
    assert!(head.e_tag.is_some());
    assert_eq!(
        store.get_range(&key, 1000..1010).await.unwrap(),
        body[1000..1010]
    );
    let suffix = store
        .get_opts(
            &key,
            GetOptions {
                range: Some(GetRange::Suffix(5)),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(suffix.range, 69_995..70_000);
    assert_eq!(suffix.bytes().await.unwrap(), body[69_995..]);

    // Never overwrite: a second create is refused and the stored object is untouched.
    let again = store
        .put_opts(&key, PutPayload::from(data(10, 2)), create())
        .await
        .unwrap_err();
    assert!(
        matches!(again, object_store::Error::AlreadyExists { .. }),
        "{again}"
    );
    assert_eq!(store.get(&key).await.unwrap().bytes().await.unwrap(), body);

    // Missing objects are NotFound, for head, get and delete.
    let missing = StorePath::from("db/nothing");
    for e in [
        store.head(&missing).await.unwrap_err(),
        store.get(&missing).await.map(|_| ()).unwrap_err(),
        store.delete(&missing).await.unwrap_err(),
    ] {
        assert!(matches!(e, object_store::Error::NotFound { .. }), "{e}");
    }

    // Overwrite mode and server-side copies.
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
    assert!(matches!(
        store.head(&key).await.unwrap_err(),
        object_store::Error::NotFound { .. }
    ));
    assert_eq!(swift().raw_names(&container), ["x", "y"]);

    // A missing container is a permanent storage error, not "not found".
    let gone = SwiftStore::from_settings(
        "no-such-container",
        &env_get(swift().env()),
        Duration::from_secs(30),
        Duration::from_secs(5),
    )
    .unwrap();
    let repo = repository(gone, "db");
    let e = repo.list("wal").await.unwrap_err().to_string();
    assert!(e.contains("does not exist") && e.contains("404"), "{e}");
}

#[tokio::test]
async fn listings_page_with_marker_and_hide_segments() {
    let (store, container) = fresh_store();
    // Three names per request: every listing below takes several pages.
    let store = store.with_list_page_size(3).with_segment_size(4096);
    let mut expected = Vec::new();
    for i in 0..10 {
        let k = format!("db/wal/00000001/{i:08X}");
        store
            .put_opts(
                &StorePath::from(k.as_str()),
                PutPayload::from(data(100, i as u8)),
                create(),
            )
            .await
            .unwrap();
        expected.push(k.strip_prefix("db/").unwrap().to_string());
    }
    for k in [
        "db/wal/00000002/a",
        "db/wal/00000002/b",
        "db/walarchive.repo",
        "other/x",
    ] {
        store
            .put(&StorePath::from(k), PutPayload::from_static(b"z"))
            .await
            .unwrap();
    }
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

    let repo = repository(store.clone(), "db");
    let tl1: Vec<String> = repo
        .list("wal/00000001")
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.key)
        .collect();
    assert_eq!(tl1, expected);
    let all = repo.list("").await.unwrap();
    assert_eq!(all.len(), 10 + 3 + 1, "{all:?}");
    let part = all
        .iter()
        .find(|l| l.key == "basebackups/b1/part-000001")
        .unwrap();
    assert_eq!(part.size, 10_000);
    assert_eq!(
        repo.list_prefixes("wal").await.unwrap(),
        ["wal/00000001", "wal/00000002"]
    );
    assert_eq!(
        repo.list_prefixes("").await.unwrap(),
        ["basebackups", "wal"]
    );
    // At the container's root the segment prefix is hidden too.
    let root = store.list_with_delimiter(None).await.unwrap();
    let dirs: Vec<&str> = root.common_prefixes.iter().map(|p| p.as_ref()).collect();
    assert_eq!(dirs, ["db", "other"]);
    let everything: Vec<_> = repository(store, "").list("").await.unwrap();
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
    let store = SwiftStore::from_settings(
        &container,
        &env_get(env),
        Duration::from_secs(30),
        Duration::from_secs(5),
    )
    .unwrap();
    store
        .put(&StorePath::from("k"), PutPayload::from_static(b"v"))
        .await
        .unwrap();
    // A valid pre-issued token alone.
    let pre = SwiftStore::from_settings(
        &container,
        &env_get(swift().preissued_env()),
        Duration::from_secs(30),
        Duration::from_secs(5),
    )
    .unwrap();
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

fn quick(env: &[(String, String)]) -> Vec<(String, String)> {
    let mut e = env.to_vec();
    e.push(("WALARCHIVE_RETRIES".into(), "2".into()));
    e.push(("WALARCHIVE_REQUEST_TIMEOUT".into(), "10".into()));
    e
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
    let primary = repo.start_primary(PgOptions {
        extra_conf: "wal_keep_size = 256MB\n".into(),
        ..Default::default()
    });
    primary.psql("create table items(id bigint primary key, payload text)");
    primary.psql("insert into items select g, md5(g::text) from generate_series(1, 20000) g");
    let seg = primary.switch_wal();
    primary.wait_archived(&seg, Duration::from_secs(120));

    // wal-fetch returns the archived bytes.
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
    assert_success(&fetch(&seg, &repo.env));
    assert_eq!(
        fs::read(&dest).unwrap(),
        fs::read(primary.wal_dir().join(&seg)).unwrap()
    );
    // Missing: 1 (PostgreSQL ends recovery or keeps polling).
    assert_code(&fetch("0000000100000000000000F0", &repo.env), 1);
    // wal-e's variable names work as well.
    assert_success(&fetch(&seg, &quick(&swift().wal_e_env())));

    // Re-pushing identical content succeeds; different content is a conflict (4).
    let seg_path = primary.wal_dir().join(&seg);
    let push = |path: &std::path::Path, env: &[(String, String)]| {
        run_walarchive(
            &["--repo", &repo.url, "wal-push", path.to_str().unwrap()],
            env,
        )
    };
    assert_success(&push(&seg_path, &repo.env));
    let altered = scratch.join(&seg);
    let mut bytes = fs::read(&seg_path).unwrap();
    bytes[300_000] ^= 0xff;
    fs::write(&altered, &bytes).unwrap();
    let out = push(&altered, &repo.env);
    assert_code(&out, 4);
    assert!(
        stderr(&out).contains("different content"),
        "{}",
        stderr(&out)
    );

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
    primary.psql("insert into items select g, md5(g::text) from generate_series(20001, 40000) g");
    let backup = repo.backup_push(&primary, &[]);
    let name = backup["name"].as_str().unwrap().to_string();
    let raw = swift().raw_names(&container);
    assert!(
        raw.iter()
            .any(|n| n.starts_with(&format!("{SEGMENTS_PREFIX}/pg/main/basebackups/{name}/"))),
        "no SLO segments: {raw:?}"
    );
    assert_success(&repo.run(&["verify", "backup", &name]));
    let listed = repo.wal_list();
    assert!(
        listed.iter().any(|e| e["name"] == seg.as_str()),
        "{listed:?}"
    );

    // After the backup: more rows, archived; the restore replays them from Swift.
    primary.psql("insert into items select g, md5(g::text) from generate_series(40001, 50000) g");
    let digest = primary
        .psql("select count(*) || ':' || md5(string_agg(payload, ',' order by id)) from items");
    let last = primary.switch_wal();
    primary.wait_archived(&last, Duration::from_secs(120));
    let restored = repo.restore(&name, &["--target-action", "promote"]);
    restored.append_conf("archive_mode = off\n");
    restored.start_with_env(&repo.env);
    restored.wait_promoted();
    assert_eq!(
        restored
            .psql("select count(*) || ':' || md5(string_agg(payload, ',' order by id)) from items"),
        digest
    );
    assert!(
        restored.log().contains("restored log file"),
        "replay did not come from Swift"
    );
}
