//! [`LegacySource`] over a `file://` wal-e archive laid out from the lzop fixtures (made by
//! Debian's lzop: `walarchive/tests/fixtures/legacy/make.sh`).

use std::path::Path as FsPath;

use sha2::{Digest, Sha256};

use super::*;
use crate::ErrorKind;

const SEGMENT_LZO: &[u8] = include_bytes!("../../tests/fixtures/legacy/segment.lzo");
const SEGMENT_NAME: &str = include_str!("../../tests/fixtures/legacy/segment.name");
const TEXT: &[u8] = include_bytes!("../../tests/fixtures/legacy/text.txt");
const TEXT_LZO: &[u8] = include_bytes!("../../tests/fixtures/legacy/text.lzo");
const SHA256SUMS: &str = include_str!("../../tests/fixtures/legacy/SHA256SUMS");

fn segment_name() -> WalFileName {
    SEGMENT_NAME.trim().parse().unwrap()
}

fn put(root: &FsPath, relative: &str, bytes: &[u8]) {
    let path = root.join(relative);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

fn policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 1,
        ..Default::default()
    }
}

/// A wal-e archive under `<tmp>/pg`: the real segment, a history file, a `.backup` file, a
/// segment whose block 0 is damaged, and objects that are not WAL files.
fn archive() -> (tempfile::TempDir, LegacySource) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("pg");
    let seg = segment_name().to_string();
    put(&root, &format!("wal_005/{seg}.lzo"), SEGMENT_LZO);
    put(&root, "wal_005/00000002.history.lzo", TEXT_LZO);
    put(
        &root,
        "wal_005/000000010000000000000003.00000028.backup.lzo",
        TEXT_LZO,
    );
    let mut bad = SEGMENT_LZO.to_vec();
    bad[38 + 12 + 500] ^= 0x10;
    put(&root, "wal_005/000000010000000000000009.lzo", &bad);
    put(&root, "wal_005/not-wal.txt", b"x");
    put(
        &root,
        "wal_005/000000010000000000000004",
        b"no .lzo: not wal-e's",
    );
    put(&root, "wal_005/sub/000000010000000000000005.lzo", TEXT_LZO);
    put(
        &root,
        "basebackups_005/base_x/extended_version.txt",
        b"PostgreSQL 15",
    );
    let url = format!("file://{}", root.display());
    let source = LegacySource::open(
        LegacyKind::WalE,
        &url,
        &StorageOptions::default(),
        &StorageEnv::default(),
        &policy(),
    )
    .unwrap();
    (dir, source)
}

#[tokio::test]
async fn get_wal_decodes_a_real_segment() {
    let (_dir, source) = archive();
    let (key, content) = source.get_wal(&segment_name()).await.unwrap();
    assert!(
        key.ends_with(&format!("pg/wal_005/{}.lzo", SEGMENT_NAME.trim())),
        "{key}"
    );
    let digest = hex::encode(Sha256::digest(&content));
    assert!(SHA256SUMS.contains(&format!("{digest}  segment")));
    let history: WalFileName = "00000002.history".parse().unwrap();
    assert_eq!(source.get_wal(&history).await.unwrap().1, TEXT);
}

#[tokio::test]
async fn a_missing_file_is_not_found_and_a_damaged_one_corrupt() {
    let (_dir, source) = archive();
    let absent: WalFileName = "000000010000000000000007".parse().unwrap();
    let e = source.get_wal(&absent).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");

    let damaged: WalFileName = "000000010000000000000009".parse().unwrap();
    let e = source.get_wal(&damaged).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("wal_005/000000010000000000000009.lzo is corrupt: lzop block 0:"),
        "{msg}"
    );
    // A segment without the .lzo suffix is not what wal-e wrote: not found, not read.
    let plain: WalFileName = "000000010000000000000004".parse().unwrap();
    assert_eq!(
        source.get_wal(&plain).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
}

#[tokio::test]
async fn list_wal_lists_wal_files_only() {
    let (_dir, source) = archive();
    let names: Vec<String> = source
        .list_wal()
        .await
        .unwrap()
        .into_iter()
        .map(|(name, key)| {
            assert!(key.ends_with(&format!("wal_005/{name}.lzo")), "{key}");
            name.to_string()
        })
        .collect();
    let mut expected = vec![
        "000000010000000000000003.00000028.backup".to_string(),
        SEGMENT_NAME.trim().to_string(),
        "000000010000000000000009".to_string(),
        "00000002.history".to_string(),
    ];
    expected.sort_by_key(|n| n.parse::<WalFileName>().unwrap());
    assert_eq!(names, expected);
}

#[tokio::test]
async fn an_empty_archive_lists_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let source = LegacySource::open(
        LegacyKind::WalE,
        &url,
        &StorageOptions::default(),
        &StorageEnv::default(),
        &policy(),
    )
    .unwrap();
    assert!(source.list_wal().await.unwrap().is_empty());
    assert_eq!(source.kind(), LegacyKind::WalE);
    assert_eq!(source.url(), url);
}

#[test]
fn wal_g_is_refused_until_it_is_built() {
    let e = LegacySource::open(
        LegacyKind::WalG,
        "file:///tmp/nothing",
        &StorageOptions::default(),
        &StorageEnv::default(),
        &policy(),
    )
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(e.to_string().contains("wal-g"), "{e}");
}
