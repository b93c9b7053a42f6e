use std::io::Read;

use super::*;
use crate::manifest::part_key;

#[test]
fn temp_relations() {
    for yes in [
        "t3_16384",
        "t3_16384_fsm",
        "t12_99.1",
        "t3_16384_vm",
        "t1_2_init",
    ] {
        assert!(is_temp_relation(yes), "{yes}");
    }
    for no in [
        "16384",
        "t3",
        "t_1",
        "tx_1",
        "t3_16384_foo",
        "pg_internal.init",
        "t3_",
    ] {
        assert!(!is_temp_relation(no), "{no}");
    }
}

#[test]
fn label_timeline() {
    let label = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n\
                 CHECKPOINT LOCATION: 0/2000060\nBACKUP METHOD: streamed\nBACKUP FROM: primary\n\
                 START TIME: 2026-11-22 05:00:00 UTC\nLABEL: x\nSTART TIMELINE: 3\n";
    assert_eq!(parse_label_timeline(label), Some(3));
    assert_eq!(parse_label_timeline("nothing"), None);
}

#[test]
fn segments_a_backup_needs() {
    let seg = 16 << 20;
    let names = |a: &str, b: &str| -> Vec<String> {
        needed_segments(TimelineId(2), a.parse().unwrap(), b.parse().unwrap(), seg)
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    assert_eq!(
        names("0/2000028", "0/2000100"),
        ["000000020000000000000002"]
    );
    assert_eq!(
        names("0/2000028", "0/4000000"),
        ["000000020000000000000002", "000000020000000000000003"]
    );
    assert_eq!(names("0/2FFFFF0", "0/3000010").len(), 2);
}

#[test]
fn walk_applies_exclusions() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    for dir in [
        "base/1",
        "global",
        "pg_wal/archive_status",
        "pg_stat_tmp",
        "pg_tblspc",
        "base/pgsql_tmp",
        ".walarchive-restore/old/base",
        ".walarchive-restore-done",
    ] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    for file in [
        "PG_VERSION",
        "postmaster.pid",
        "backup_label",
        "base/1/16384",
        "base/1/t3_16385",
        "base/1/pg_internal.init",
        "base/pgsql_tmp/pgsql_tmp1.0",
        "global/pg_control",
        "global/1262",
        "pg_wal/000000010000000000000001",
        "pg_stat_tmp/global.stat",
    ] {
        std::fs::write(root.join(file), b"x").unwrap();
    }
    let rels: Vec<String> = walk(root, WalkRoot::DataDirectory)
        .unwrap()
        .into_iter()
        .map(|e| e.rel)
        .collect();
    // pg_wal on another disk (a symlink) is backed up as an empty directory.
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::rename(root.join("pg_wal"), elsewhere.path().join("wal")).unwrap();
    std::os::unix::fs::symlink(elsewhere.path().join("wal"), root.join("pg_wal")).unwrap();
    let linked = walk(root, WalkRoot::DataDirectory).unwrap();
    let wal: Vec<_> = linked
        .iter()
        .filter(|e| e.rel.starts_with("pg_wal"))
        .collect();
    assert_eq!(wal.len(), 2);
    assert!(wal
        .iter()
        .all(|e| e.kind == EntryKind::Dir && e.target.is_none()));
    assert_eq!(
        rels,
        [
            "PG_VERSION",
            "base",
            "base/1",
            "base/1/16384",
            "global",
            "global/1262",
            "pg_stat_tmp",
            "pg_tblspc",
            "pg_wal",
            "pg_wal/archive_status",
            "global/pg_control"
        ]
    );
}

#[test]
fn walk_keeps_pg_wal_summaries_empty() {
    // PostgreSQL 17's WAL summarizer directory: kept, its summaries not (as basebackup.c).
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    for dir in ["global", "pg_wal/archive_status", "pg_wal/summaries"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    std::fs::write(root.join("global/pg_control"), b"x").unwrap();
    let summary = "pg_wal/summaries/0000000100000000010000280000000001000100.summary";
    std::fs::write(root.join(summary), b"x").unwrap();
    let rels = |root: &Path| -> Vec<String> {
        walk(root, WalkRoot::DataDirectory)
            .unwrap()
            .into_iter()
            .filter(|e| e.rel.starts_with("pg_wal"))
            .map(|e| e.rel)
            .collect()
    };
    let want = ["pg_wal", "pg_wal/archive_status", "pg_wal/summaries"];
    assert_eq!(rels(root), want);
    // pg_wal on another disk: the same three directories.
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::rename(root.join("pg_wal"), elsewhere.path().join("wal")).unwrap();
    std::os::unix::fs::symlink(elsewhere.path().join("wal"), root.join("pg_wal")).unwrap();
    assert_eq!(rels(root), want);
}

/// A store that refuses to store one key (and delays the others a little, so that
/// uploads overlap and finish out of order).
#[derive(Debug)]
struct RefusesOne {
    inner: object_store::memory::InMemory,
    refused: String,
}

impl std::fmt::Display for RefusesOne {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RefusesOne")
    }
}

#[async_trait::async_trait]
impl object_store::ObjectStore for RefusesOne {
    async fn put_opts(
        &self,
        location: &object_store::path::Path,
        payload: object_store::PutPayload,
        opts: object_store::PutOptions,
    ) -> object_store::Result<object_store::PutResult> {
        let delay = location.as_ref().bytes().map(u64::from).sum::<u64>() % 7;
        tokio::time::sleep(Duration::from_millis(delay)).await;
        if location.as_ref().ends_with(&self.refused) {
            return Err(object_store::Error::PermissionDenied {
                path: location.to_string(),
                source: "refused by the test".into(),
            });
        }
        self.inner.put_opts(location, payload, opts).await
    }
    async fn put_multipart_opts(
        &self,
        location: &object_store::path::Path,
        opts: object_store::PutMultipartOptions,
    ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }
    async fn get_opts(
        &self,
        location: &object_store::path::Path,
        options: object_store::GetOptions,
    ) -> object_store::Result<object_store::GetResult> {
        self.inner.get_opts(location, options).await
    }
    fn delete_stream(
        &self,
        locations: futures::stream::BoxStream<
            'static,
            object_store::Result<object_store::path::Path>,
        >,
    ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::path::Path>> {
        self.inner.delete_stream(locations)
    }
    fn list(
        &self,
        prefix: Option<&object_store::path::Path>,
    ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>> {
        self.inner.list(prefix)
    }
    async fn list_with_delimiter(
        &self,
        prefix: Option<&object_store::path::Path>,
    ) -> object_store::Result<object_store::ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }
    async fn copy_opts(
        &self,
        from: &object_store::path::Path,
        to: &object_store::path::Path,
        options: object_store::CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

fn test_repo(refused: &str, compression: Compression) -> Repository {
    let r = Repository::with_store(
        Arc::new(RefusesOne {
            inner: object_store::memory::InMemory::new(),
            refused: refused.into(),
        }),
        object_store::path::Path::from("r"),
        crate::storage::Backend::Local,
        "memory://test",
        crate::RetryPolicy {
            max_attempts: 1,
            ..Default::default()
        },
        compression,
    );
    r.assume_descriptor_for_tests(Descriptor::for_tests("1"));
    r
}

/// A directory of files whose content differs from file to file and spans many parts.
fn sample_tree() -> (tempfile::TempDir, Vec<(String, Vec<u8>)>) {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("base/1")).unwrap();
    let mut files = Vec::new();
    for (i, size) in [0usize, 1, 511, 4096, 70_000, 200_001, 9_999]
        .iter()
        .enumerate()
    {
        let rel = format!("base/1/{}", 16384 + i);
        let content: Vec<u8> = (0..*size)
            .map(|j| ((j * 31 + i * 7) % 251) as u8 ^ (j / 1000) as u8)
            .collect();
        std::fs::write(d.path().join(&rel), &content).unwrap();
        files.push((rel, content));
    }
    (d, files)
}

/// Uploads the sample tree as one stream with `parallel` and small parts, then checks
/// the parts: numbered from 1 without a gap, and decoding to the tar stream, in order.
async fn upload_and_check(parallel: usize, compression: Compression) {
    let (d, files) = sample_tree();
    let repo = test_repo("no such part", compression);
    let entries = walk(d.path(), WalkRoot::Tablespace).unwrap();
    let part_size = 16 << 10;
    let r = upload_stream(
        &repo,
        "b",
        "data",
        d.path(),
        entries,
        part_size,
        parallel,
        Arc::new(NoProgress),
        PageCheck {
            rules: None,
            tablespace: true,
        },
    )
    .await
    .unwrap();
    let listed = repo.list("basebackups/b/data/").await.unwrap();
    let keys: Vec<String> = listed.iter().map(|l| l.key.clone()).collect();
    let want: Vec<String> = (1..=r.parts).map(|i| part_key("b", "data", i)).collect();
    assert_eq!(keys, want, "parallel {parallel}");
    assert!(r.parts > 10, "{} parts", r.parts);
    assert_eq!(r.stored_bytes, listed.iter().map(|l| l.size).sum::<u64>());
    let mut tar_stream = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let (_, raw) = repo.get_verified(key).await.unwrap();
        if i + 1 < keys.len() {
            assert_eq!(raw.len(), part_size, "{key}");
        }
        tar_stream.extend_from_slice(&raw);
    }
    assert_eq!(tar_stream.len() as u64, r.tar_bytes);
    let mut archive = tar::Archive::new(&tar_stream[..]);
    let mut seen = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let mut content = Vec::new();
        entry.read_to_end(&mut content).unwrap();
        seen.push((path.trim_end_matches('/').to_string(), content));
    }
    for (rel, content) in &files {
        let got = seen
            .iter()
            .find(|(p, _)| p == rel)
            .expect("file in the stream");
        assert!(got.1 == *content, "{rel} differs");
        let entry = r.files.iter().find(|f| &f.path == rel).unwrap();
        assert_eq!(entry.sha256, None);
        assert_eq!(
            entry.blake3.as_deref(),
            Some(blake3::hash(content).to_hex().as_str())
        );
    }
}

#[tokio::test]
async fn parts_are_numbered_in_stream_order_at_any_parallelism() {
    for parallel in [1, 2, 5] {
        upload_and_check(parallel, Compression::Zstd(1)).await;
    }
    upload_and_check(4, Compression::None).await;
}

#[tokio::test]
async fn a_failed_upload_fails_the_stream() {
    let (d, _) = sample_tree();
    for parallel in [1, 4] {
        let repo = test_repo("part-000003", Compression::Zstd(1));
        let entries = walk(d.path(), WalkRoot::Tablespace).unwrap();
        let e = upload_stream(
            &repo,
            "b",
            "data",
            d.path(),
            entries,
            16 << 10,
            parallel,
            Arc::new(NoProgress),
            PageCheck {
                rules: None,
                tablespace: true,
            },
        )
        .await
        .err()
        .expect("the upload of part 3 fails");
        let text = e.to_string();
        assert!(
            matches!(e, Error::Storage { op: "put", .. }) && text.contains("part-000003"),
            "parallel {parallel}: {text}"
        );
        // It stopped: not every part was stored.
        let stored = repo.list("basebackups/b/data/").await.unwrap().len();
        assert!(stored < 10, "parallel {parallel}: {stored} parts stored");
    }
}
