//! Object-level helpers shared by the store tests (tests/gcs.rs, tests/swift.rs,
//! tests/conformance.rs): opening a store as walarchive opens it, create-only puts,
//! deterministic bytes, a `Repository` over a store, short retries for the binary, and
//! the primary, base backup and restore that walarchive's own tests on a store go through.

use std::sync::Arc;
use std::time::Duration;

use std::fs;
use std::path::PathBuf;

use crate::{assert_code, assert_conflict, assert_success, PgCluster, PgOptions, Repo, TestDir};
use walarchive::storage::object_store::path::Path as StorePath;
use walarchive::storage::object_store::{
    ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
};
use walarchive::storage::swift::SwiftStore;
use walarchive::storage::{self, Backend, StorageOptions};
use walarchive::{Compression, Repository, RetryPolicy};

/// Looks variables up in `env` (the harness's environment for the binary), as walarchive
/// looks them up in its own environment.
pub fn env_get(env: Vec<(String, String)>) -> impl Fn(&str) -> Option<String> {
    move |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
}

/// The store of repository `url`, opened by `storage::open` with `opts` as walarchive opens
/// it; it must be a `backend` store.
pub fn open_url(url: &str, opts: &StorageOptions, backend: Backend) -> Arc<dyn ObjectStore> {
    // The environment of the tests, as walarchive takes its own.
    let env = storage::StorageEnv::new(std::env::vars(), None);
    let loc = storage::open(url, opts, &env, &RetryPolicy::default())
        .unwrap_or_else(|e| panic!("open {url}: {e}"));
    assert_eq!(loc.backend, backend);
    loc.store
}

/// Swift `container`, authenticating with the settings in `env` as walarchive would.
pub fn swift_store(container: &str, env: Vec<(String, String)>) -> SwiftStore {
    SwiftStore::from_settings(
        container,
        &env_get(env),
        Duration::from_secs(30),
        Duration::from_secs(5),
    )
    .unwrap()
}

/// `PutMode::Create`: never overwrite.
pub fn create() -> PutOptions {
    PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    }
}

/// Deterministic, incompressible-looking bytes.
pub fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[2] ^ seed)
        .collect()
}

/// Puts `n` objects `db/wal/00000001/{i:08X}` of `len(i)` bytes (create-only), then a
/// one-byte object at each of `others`: something to list.
pub async fn put_listing(
    store: &dyn ObjectStore,
    n: usize,
    len: impl Fn(usize) -> usize,
    others: &[&str],
) {
    for i in 0..n {
        let k = format!("db/wal/00000001/{i:08X}");
        store
            .put_opts(
                &StorePath::from(k.as_str()),
                PutPayload::from(data(len(i), i as u8)),
                create(),
            )
            .await
            .unwrap();
    }
    for k in others {
        store
            .put(&StorePath::from(*k), PutPayload::from_static(b"z"))
            .await
            .unwrap();
    }
}

/// The engine's view of `store` under `prefix` (default retries, no compression).
pub fn repository(
    store: Arc<dyn ObjectStore>,
    prefix: &str,
    backend: Backend,
    url: &str,
) -> Repository {
    Repository::with_store(
        store,
        StorePath::from(prefix),
        backend,
        url,
        RetryPolicy::default(),
        Compression::None,
    )
}

/// `env` with few, short retries for the binary: a failing call fails in seconds.
pub fn quick(env: &[(String, String)]) -> Vec<(String, String)> {
    let mut e = env.to_vec();
    e.push(("WALARCHIVE_RETRIES".into(), "2".into()));
    e.push(("WALARCHIVE_REQUEST_TIMEOUT".into(), "10".into()));
    e
}

/// The digest of table `items`: its row count and the md5 of its payloads in order.
const ITEMS_DIGEST: &str =
    "select count(*) || ':' || md5(string_agg(payload, ',' order by id)) from items";

/// A primary archiving into `repo` (keeping its WAL) with 20 000 rows in table `items`,
/// and the segment that holds them, archived.
pub fn primary_with_items(repo: &Repo) -> (PgCluster, String) {
    let primary = repo.start_primary(PgOptions {
        extra_conf: "wal_keep_size = 256MB\n".into(),
        ..Default::default()
    });
    primary.psql("create table items(id bigint primary key, payload text)");
    primary.psql("insert into items select g, md5(g::text) from generate_series(1, 20000) g");
    let seg = primary.switch_wal();
    primary.wait_archived(&seg, Duration::from_secs(120));
    (primary, seg)
}

/// Archived segment `seg` of `primary`, through `repo`: wal-fetch returns its bytes, a
/// missing segment is 1 (PostgreSQL ends recovery or keeps polling); re-pushing it succeeds
/// and different content under its name is a conflict (4). Its path in pg_wal.
pub fn fetch_and_repush(repo: &Repo, primary: &PgCluster, seg: &str, scratch: &TestDir) -> PathBuf {
    let dest = scratch.join("fetched");
    let fetch = |name: &str| repo.run(&["wal-fetch", name, dest.to_str().unwrap()]);
    assert_success(&fetch(seg));
    let seg_path = primary.wal_dir().join(seg);
    assert_eq!(fs::read(&dest).unwrap(), fs::read(&seg_path).unwrap());
    assert_code(&fetch("0000000100000000000000F0"), 1);

    let push = |path: &std::path::Path| repo.run(&["wal-push", path.to_str().unwrap()]);
    assert_success(&push(&seg_path));
    let altered = scratch.join(seg);
    let mut bytes = fs::read(&seg_path).unwrap();
    bytes[300_000] ^= 0xff;
    fs::write(&altered, &bytes).unwrap();
    assert_conflict(&push(&altered));
    seg_path
}

/// More rows in `items`, then a base backup of `primary` into `repo`: its name.
pub fn backup_more_items(repo: &Repo, primary: &PgCluster) -> String {
    primary.psql("insert into items select g, md5(g::text) from generate_series(20001, 40000) g");
    let backup = repo.backup_push(primary, &[]);
    backup["name"].as_str().unwrap().to_string()
}

/// Base backup `name` verifies and the archive lists segment `seg`; after the backup, more
/// rows, archived; a restore of `name` promoted at the end of the archive holds every row,
/// replayed from the archive (on `store`, for the message).
pub fn verify_and_restore(repo: &Repo, primary: &PgCluster, name: &str, seg: &str, store: &str) {
    assert_success(&repo.run(&["verify", "backup", name]));
    let listed = repo.wal_list();
    assert!(listed.iter().any(|e| e["name"] == seg), "{listed:?}");

    primary.psql("insert into items select g, md5(g::text) from generate_series(40001, 50000) g");
    let digest = primary.psql(ITEMS_DIGEST);
    let last = primary.switch_wal();
    primary.wait_archived(&last, Duration::from_secs(120));
    let restored = repo.restore(name, &["--target-action", "promote"]);
    restored.append_conf("archive_mode = off\n");
    restored.start_with_env(&repo.env);
    restored.wait_promoted();
    assert_eq!(restored.psql(ITEMS_DIGEST), digest);
    assert!(
        restored.log().contains("restored log file"),
        "replay did not come from {store}"
    );
}
