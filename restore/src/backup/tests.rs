use sha2::{Digest, Sha256};

use super::*;

#[test]
fn remaps_tablespaces() {
    let map = "16384 /old/ts one\n16385 /old/two\n";
    let remap = BTreeMap::from([(16384u32, PathBuf::from("/new/ts"))]);
    assert_eq!(
        remap_tablespaces(map, &remap),
        "16384 /new/ts\n16385 /old/two\n"
    );
}

#[test]
fn refuses_unsafe_paths() {
    assert!(safe_relative(Path::new("base/1/1234")));
    assert!(!safe_relative(Path::new("../etc/passwd")));
    assert!(!safe_relative(Path::new("/etc/passwd")));
    assert!(!safe_relative(Path::new("base/../../x")));
}

use walarchive::Compression;

/// A repository in memory holding backup `b`'s `data` stream: a tar of `files`, cut
/// into parts of `part_size` bytes. Returns the repository, the part count and the
/// manifest's entries: every other file with a BLAKE3 (manifest version 2), the others
/// with a SHA-256 (version 1), so that both are read.
async fn stream_in_memory(
    files: &[(String, Vec<u8>)],
    part_size: usize,
) -> (Repository, u32, HashMap<String, FileEntry>) {
    let repo = Repository::in_memory_for_tests("r", Compression::Zstd(1));
    let mut tar = tar::Builder::new(Vec::new());
    let mut expected = HashMap::new();
    for (i, (rel, content)) in files.iter().enumerate() {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o600);
        h.set_size(content.len() as u64);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, rel, &content[..]).unwrap();
        expected.insert(
            rel.clone(),
            FileEntry {
                stream: "data".into(),
                path: rel.clone(),
                kind: EntryKind::File,
                size: content.len() as u64,
                mode: 0o600,
                sha256: (i % 2 == 0).then(|| hex::encode(Sha256::digest(content))),
                blake3: (i % 2 == 1).then(|| blake3::hash(content).to_hex().to_string()),
                target: None,
            },
        );
    }
    let stream = tar.into_inner().unwrap();
    let mut parts = 0;
    for chunk in stream.chunks(part_size) {
        parts += 1;
        repo.put_new(&part_key("b", "data", parts), chunk, Compression::Zstd(1))
            .await
            .unwrap();
    }
    (repo, parts, expected)
}

fn sample_files() -> Vec<(String, Vec<u8>)> {
    (0..12usize)
        .map(|i| {
            let size = [0, 1, 777, 20_000, 65_536, 100_003][i % 6] * (1 + i / 6);
            let content = (0..size).map(|j| ((j * 13 + i) % 253) as u8).collect();
            (format!("f{i:02}"), content)
        })
        .collect()
}

#[tokio::test]
async fn parts_reach_the_extractor_in_order_at_any_parallelism() {
    let files = sample_files();
    let (repo, parts, expected) = stream_in_memory(&files, 8 << 10).await;
    assert!(parts > 30, "{parts} parts");
    for parallel in [1, 2, 4, 16] {
        let (n, bytes) = restore_stream(
            &repo,
            "b",
            "data",
            parts,
            parallel,
            None,
            expected.clone(),
            Arc::new(walarchive::backup::NoProgress),
        )
        .await
        .unwrap();
        assert_eq!(n, files.len(), "parallel {parallel}");
        assert_eq!(bytes, files.iter().map(|f| f.1.len() as u64).sum::<u64>());
    }
    let dest = tempfile::tempdir().unwrap();
    restore_stream(
        &repo,
        "b",
        "data",
        parts,
        3,
        Some(dest.path().to_path_buf()),
        expected,
        Arc::new(walarchive::backup::NoProgress),
    )
    .await
    .unwrap();
    for (rel, content) in &files {
        assert!(
            std::fs::read(dest.path().join(rel)).unwrap() == *content,
            "{rel}"
        );
    }
}

#[tokio::test]
async fn a_missing_part_fails_the_stream_naming_it() {
    let files = sample_files();
    let (repo, parts, expected) = stream_in_memory(&files, 8 << 10).await;
    repo.delete(&part_key("b", "data", 3)).await.unwrap();
    for parallel in [1, 4] {
        let dest = tempfile::tempdir().unwrap();
        let e = restore_stream(
            &repo,
            "b",
            "data",
            parts,
            parallel,
            Some(dest.path().to_path_buf()),
            expected.clone(),
            Arc::new(walarchive::backup::NoProgress),
        )
        .await
        .unwrap_err();
        let text = e.to_string();
        assert!(
            matches!(&e, FetchError::BadBackup(_))
                && text.contains(&format!("part-000003 of {parts} is missing"))
                && text.contains("r/basebackups/b/data/part-000003 is not in the repository"),
            "parallel {parallel}: {text}"
        );
        // Nothing beyond the missing part was extracted.
        assert!(!dest.path().join("f11").exists(), "parallel {parallel}");
    }
}

#[tokio::test]
async fn every_file_is_checked_against_the_manifest() {
    let mut files = sample_files();
    // Larger than the checksum thread's buffers together: they are reused as it streams.
    let big: Vec<u8> = (0..5_000_000usize).map(|j| (j * 7 % 241) as u8).collect();
    files.push(("big".into(), big.clone()));
    let (repo, parts, mut expected) = stream_in_memory(&files, 1 << 20).await;
    let run = |expected: HashMap<String, FileEntry>, root: Option<PathBuf>| {
        let repo = repo.clone();
        async move {
            restore_stream(
                &repo,
                "b",
                "data",
                parts,
                2,
                root,
                expected,
                Arc::new(walarchive::backup::NoProgress),
            )
            .await
        }
    };
    let dest = tempfile::tempdir().unwrap();
    let (n, _) = run(expected.clone(), Some(dest.path().to_path_buf()))
        .await
        .unwrap();
    assert_eq!(n, files.len());
    assert!(std::fs::read(dest.path().join("big")).unwrap() == big);

    // One file's content is not what the manifest recorded (its size is): the stream
    // fails naming it, whether restoring or only verifying, with either digest.
    for (file, kind) in [("f04", "sha256"), ("f03", "blake3")] {
        let mut expected = expected.clone();
        let entry = expected.get_mut(file).unwrap();
        let digest = if kind == "sha256" {
            &mut entry.sha256
        } else {
            &mut entry.blake3
        };
        assert!(digest.is_some(), "{file} has a {kind}");
        *digest = Some("00".repeat(32));
        for restoring in [false, true] {
            let dest = tempfile::tempdir().unwrap();
            let root = restoring.then(|| dest.path().to_path_buf());
            let e = run(expected.clone(), root).await.unwrap_err();
            assert!(
                matches!(&e, FetchError::BadBackup(_))
                    && e.to_string()
                        .contains(&format!("{file} does not match the manifest ({kind} ")),
                "restoring {restoring}: {e}"
            );
        }
    }
    // The last file, the big one, is checked too before the stream counts as restored.
    expected.get_mut("big").unwrap().sha256 = Some("00".repeat(32));
    let e = run(expected, None).await.unwrap_err();
    assert!(
        e.to_string().contains("big does not match the manifest"),
        "{e}"
    );
}
