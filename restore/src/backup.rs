//! Restoring base backups (`backup-fetch`).
//!
//! Parts are downloaded in order, each verified against its own checksum, and fed to a tar
//! extractor running on a blocking thread; every file is checked again against the
//! manifest's SHA-256 and fsynced, and the manifest's list must be matched exactly, so a
//! restore either reproduces the backup bit for bit or fails with the reason. Only then are
//! backup_label, tablespace_map and the recovery settings written: a destination without
//! them cannot be started by mistake as if it were a consistent cluster.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use walarchive_core::backup::Progress;
use walarchive_core::catalog;
use walarchive_core::manifest::{backup_key, part_key, EntryKind, FileEntry, Manifest};
use walarchive_core::{Lsn, Repository, SegmentName, WalFileName};

use crate::recovery::{self, Recovery, Target};
use crate::FetchError;

/// How to restore.
#[derive(Clone, Debug)]
pub struct BackupFetchOptions {
    /// Destination data directory (missing or empty, unless `force`).
    pub dest: PathBuf,
    /// Backup name, or `LATEST`.
    pub backup: String,
    /// Recovery settings.
    pub recovery: Recovery,
    /// Where each tablespace goes (default: where it was).
    pub tablespace_map: BTreeMap<u32, PathBuf>,
    /// Empty non-empty destinations first.
    pub force: bool,
    /// The `restore_command` to write.
    pub restore_command: String,
}

/// What was restored.
#[derive(Clone, Debug)]
pub struct FetchedBackup {
    /// The backup's manifest.
    pub manifest: Manifest,
    /// Files written.
    pub files: usize,
    /// Bytes written.
    pub bytes: u64,
}

/// Restores a backup and prepares the destination for point-in-time recovery.
pub async fn fetch_backup(
    repo: &Repository,
    opts: &BackupFetchOptions,
    progress: Arc<dyn Progress>,
) -> Result<FetchedBackup, FetchError> {
    let entries = catalog::list_backups(repo, true).await?;
    if let Some(e) = entries
        .iter()
        .find(|e| e.name == opts.backup && !e.is_complete())
    {
        return Err(match &e.damaged {
            Some(why) => FetchError::BadBackup(why.clone()),
            None => FetchError::NoBackup(format!(
                "backup {} is incomplete (interrupted or still running) and cannot be restored",
                e.name
            )),
        });
    }
    let damaged: Vec<String> = entries.iter().filter_map(|e| e.damaged.clone()).collect();
    let manifests: Vec<Manifest> = entries.into_iter().filter_map(|b| b.manifest).collect();
    let manifest = match recovery::choose(&manifests, &opts.backup, &opts.recovery) {
        Ok(m) => m.clone(),
        // Say so when the backups that would have served are damaged, not merely absent.
        Err(FetchError::NoBackup(_)) if !damaged.is_empty() => {
            return Err(FetchError::BadBackup(damaged.join("; ")))
        }
        Err(e) => return Err(e),
    };
    if let Some(t) = &opts.recovery.target {
        check_archive_reaches(repo, &manifest, t).await?;
    }
    tracing::info!(
        "restoring backup {} ({}..{}, timeline {}) into {}",
        manifest.name,
        manifest.start_lsn,
        manifest.stop_lsn,
        manifest.timeline,
        opts.dest.display()
    );

    // Destinations: the data directory and each tablespace's directory.
    let mut roots = BTreeMap::new();
    for s in &manifest.streams {
        let root = match (s.tablespace_oid, &s.tablespace_location) {
            (None, _) => opts.dest.clone(),
            (Some(oid), loc) => match opts.tablespace_map.get(&oid) {
                Some(dir) => dir.clone(),
                None => PathBuf::from(loc.clone().unwrap_or_default()),
            },
        };
        // --force empties the data directory only: a tablespace's directory may belong to a
        // running cluster, so it must be empty (or remapped with --tablespace-map).
        prepare_dir(&root, opts.force && s.tablespace_oid.is_none())?;
        roots.insert(s.name.clone(), root);
    }
    std::fs::set_permissions(&opts.dest, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| write_err(&opts.dest, e))?;

    progress.start(manifest.original_bytes);
    let mut files = 0;
    let mut bytes = 0;
    for s in &manifest.streams {
        let expected: HashMap<String, FileEntry> = manifest
            .files
            .iter()
            .filter(|f| f.stream == s.name)
            .map(|f| (f.path.clone(), f.clone()))
            .collect();
        let root = Some(roots[&s.name].clone());
        let (n, b) = restore_stream(
            repo,
            &manifest.name,
            &s.name,
            s.parts,
            root,
            expected,
            progress.clone(),
        )
        .await?;
        files += n;
        bytes += b;
    }

    // backup_label and tablespace_map come from pg_backup_stop, never from the copy.
    let (_, label) = repo
        .get_verified(&backup_key(&manifest.name, "backup_label"))
        .await?;
    write_durably(&opts.dest.join("backup_label"), &label, false)?;
    if manifest.has_tablespace_map {
        let (_, map) = repo
            .get_verified(&backup_key(&manifest.name, "tablespace_map"))
            .await?;
        let map = remap_tablespaces(&String::from_utf8_lossy(&map), &opts.tablespace_map);
        write_durably(&opts.dest.join("tablespace_map"), map.as_bytes(), false)?;
    }
    let settings = recovery::settings(&manifest.name, &opts.restore_command, &opts.recovery);
    write_durably(
        &opts.dest.join("postgresql.auto.conf"),
        settings.as_bytes(),
        true,
    )?;
    let signal = if opts.recovery.standby {
        "standby.signal"
    } else {
        "recovery.signal"
    };
    write_durably(&opts.dest.join(signal), b"", false)?;
    for root in roots.values() {
        sync_tree_dirs(root)?;
    }
    Ok(FetchedBackup {
        manifest,
        files,
        bytes,
    })
}

/// Reads every part of backup `m`, verifying each part's checksum and every file's SHA-256
/// and size against the manifest, without writing anything. Returns (files, bytes) checked.
pub async fn verify_backup_content(
    repo: &Repository,
    m: &Manifest,
    progress: Arc<dyn Progress>,
) -> Result<(usize, u64), FetchError> {
    progress.start(m.original_bytes);
    let (mut files, mut bytes) = (0, 0);
    for s in &m.streams {
        let expected: HashMap<String, FileEntry> = m
            .files
            .iter()
            .filter(|f| f.stream == s.name)
            .map(|f| (f.path.clone(), f.clone()))
            .collect();
        let (n, b) = restore_stream(
            repo,
            &m.name,
            &s.name,
            s.parts,
            None,
            expected,
            progress.clone(),
        )
        .await?;
        files += n;
        bytes += b;
    }
    repo.get_verified(&backup_key(&m.name, "backup_label"))
        .await?;
    if m.has_tablespace_map {
        repo.get_verified(&backup_key(&m.name, "tablespace_map"))
            .await?;
    }
    Ok((files, bytes))
}

/// Refuses a target the archive cannot reach: past the end of the newest archived WAL.
async fn check_archive_reaches(
    repo: &Repository,
    m: &Manifest,
    target: &Target,
) -> Result<(), FetchError> {
    let wal = repo.list("wal/").await?;
    match target {
        Target::Lsn(lsn) => {
            let end = wal
                .iter()
                .filter_map(|l| l.key.rsplit('/').next()?.parse::<WalFileName>().ok())
                .filter(|n| n.timeline().0 >= m.timeline)
                .filter_map(|n| match n {
                    WalFileName::Segment(s) => Some(s),
                    _ => None,
                })
                .map(|s: SegmentName| Lsn(s.start_lsn(m.wal_segment_size).0 + m.wal_segment_size))
                .max()
                .unwrap_or(m.stop_lsn);
            if *lsn > end {
                return Err(FetchError::BadTarget(format!(
                    "the recovery target LSN {lsn} is past the end of the archived WAL ({end}): recovery would stop short of it"
                )));
            }
        }
        Target::Time(s, t) => {
            let newest = wal.iter().map(|l| l.last_modified).max();
            if newest.is_none_or(|n| n < *t) {
                return Err(FetchError::BadTarget(format!(
                    "the recovery target time {s} is later than the newest archived WAL ({}): recovery would stop short of it",
                    newest.map(|n| n.to_rfc3339()).unwrap_or_else(|| "none".into())
                )));
            }
        }
        _ => {}
    }
    Ok(())
}

fn write_err(path: &Path, source: std::io::Error) -> FetchError {
    FetchError::Write {
        path: path.to_path_buf(),
        source,
    }
}

/// A destination must be missing or empty; `force` empties it.
fn prepare_dir(dir: &Path, force: bool) -> Result<(), FetchError> {
    match std::fs::read_dir(dir) {
        Ok(mut rd) => {
            if rd.next().is_some() {
                if !force {
                    return Err(FetchError::DestinationNotEmpty(dir.to_path_buf()));
                }
                tracing::warn!("--force: emptying {}", dir.display());
                for entry in std::fs::read_dir(dir).map_err(|e| write_err(dir, e))? {
                    let p = entry.map_err(|e| write_err(dir, e))?.path();
                    let r = if p.is_dir() && !p.is_symlink() {
                        std::fs::remove_dir_all(&p)
                    } else {
                        std::fs::remove_file(&p)
                    };
                    r.map_err(|e| write_err(&p, e))?;
                }
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(|e| write_err(dir, e))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| write_err(dir, e))
        }
        Err(e) => Err(write_err(dir, e)),
    }
}

/// Writes (or appends) `content` to a 0600 file and fsyncs it.
fn write_durably(path: &Path, content: &[u8], append: bool) -> Result<(), FetchError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .append(append)
        .truncate(!append)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| write_err(path, e))?;
    f.write_all(content)
        .and_then(|_| f.sync_all())
        .map_err(|e| write_err(path, e))
}

/// Rewrites `tablespace_map` lines (`<oid> <path>`) for the remapped tablespaces.
pub fn remap_tablespaces(map: &str, remap: &BTreeMap<u32, PathBuf>) -> String {
    let mut out = String::new();
    for line in map.lines() {
        let new = line
            .split_once(' ')
            .and_then(|(oid, _)| Some((oid, remap.get(&oid.parse::<u32>().ok()?)?)))
            .map(|(oid, dir)| format!("{oid} {}", dir.display()));
        out.push_str(new.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

fn sync_tree_dirs(root: &Path) -> Result<(), FetchError> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).map_err(|e| write_err(&dir, e))? {
            let entry = entry.map_err(|e| write_err(&dir, e))?;
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(entry.path());
            }
        }
        std::fs::File::open(&dir)
            .and_then(|f| f.sync_all())
            .map_err(|e| write_err(&dir, e))?;
    }
    Ok(())
}

/// Downloads the parts of one stream in order and extracts them under `root`.
async fn restore_stream(
    repo: &Repository,
    name: &str,
    stream: &str,
    parts: u32,
    root: Option<PathBuf>,
    expected: HashMap<String, FileEntry>,
    progress: Arc<dyn Progress>,
) -> Result<(usize, u64), FetchError> {
    let (tx, rx) = mpsc::channel::<Vec<u8>>(1);
    let stream_name = stream.to_string();
    let extractor = tokio::task::spawn_blocking(move || {
        let reader = ChunkReader {
            rx,
            current: Vec::new(),
            pos: 0,
        };
        extract(
            reader,
            root.as_deref(),
            &stream_name,
            expected,
            progress.as_ref(),
        )
    });
    let mut download_error = None;
    for i in 1..=parts {
        match repo.get_verified(&part_key(name, stream, i)).await {
            Ok((_, chunk)) => {
                if tx.send(chunk).await.is_err() {
                    break; // the extractor stopped: its error says why
                }
            }
            Err(e) => {
                download_error = Some(e);
                break;
            }
        }
    }
    drop(tx);
    let extracted = extractor.await.expect("extractor does not panic");
    if let Some(e) = download_error {
        return Err(e.into());
    }
    extracted
}

/// A `Read` over the parts the downloader sends.
struct ChunkReader {
    rx: mpsc::Receiver<Vec<u8>>,
    current: Vec<u8>,
    pos: usize,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.current.len() {
            match self.rx.blocking_recv() {
                Some(chunk) => {
                    self.current = chunk;
                    self.pos = 0;
                }
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.pos);
        buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn corrupt(stream: &str, reason: String) -> FetchError {
    FetchError::BadBackup(format!("{stream}: {reason}"))
}

/// A relative path with no `..`, root or prefix components.
fn safe_relative(p: &Path) -> bool {
    p.components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

/// Reads one file's content from the tar stream, hashing it and (when given) writing it.
fn hash_entry(
    entry: &mut impl Read,
    stream: &str,
    rel: &str,
    mut out: Option<(&mut std::fs::File, &Path)>,
    progress: &dyn Progress,
) -> Result<(String, u64), FetchError> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut n_total = 0u64;
    loop {
        let n = entry
            .read(&mut buf)
            .map_err(|e| corrupt(stream, format!("{rel}: {e}")))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        if let Some((f, path)) = out.as_mut() {
            f.write_all(&buf[..n]).map_err(|e| write_err(path, e))?;
        }
        n_total += n as u64;
        progress.advance(n as u64);
    }
    Ok((hex::encode(hasher.finalize()), n_total))
}

fn check_file(
    stream: &str,
    rel: &str,
    want: &FileEntry,
    sha: &str,
    len: u64,
) -> Result<(), FetchError> {
    if len != want.size || Some(sha) != want.sha256.as_deref() {
        return Err(corrupt(
            stream,
            format!(
                "{rel} does not match the manifest (sha256 {sha}, {len} bytes; expected {}, {} bytes)",
                want.sha256.as_deref().unwrap_or("?"),
                want.size
            ),
        ));
    }
    Ok(())
}

fn extract(
    reader: ChunkReader,
    root: Option<&Path>,
    stream: &str,
    mut expected: HashMap<String, FileEntry>,
    progress: &dyn Progress,
) -> Result<(usize, u64), FetchError> {
    let mut archive = tar::Archive::new(reader);
    let mut files = 0;
    let mut bytes = 0;
    let entries = archive
        .entries()
        .map_err(|e| corrupt(stream, e.to_string()))?;
    for entry in entries {
        let mut entry =
            entry.map_err(|e| corrupt(stream, format!("unreadable tar stream: {e}")))?;
        let rel = entry
            .path()
            .map_err(|e| corrupt(stream, e.to_string()))?
            .into_owned();
        let rel_str = rel.to_string_lossy().trim_end_matches('/').to_string();
        if !safe_relative(&rel) {
            return Err(corrupt(
                stream,
                format!("unsafe path {rel_str:?} in the backup"),
            ));
        }
        let Some(want) = expected.remove(&rel_str) else {
            return Err(corrupt(stream, format!("{rel_str} is not in the manifest")));
        };
        // Without a root, only verify: read and hash, write nothing.
        let Some(root) = root else {
            if want.kind == EntryKind::File {
                let (sha, n) = hash_entry(&mut entry, stream, &rel_str, None, progress)?;
                check_file(stream, &rel_str, &want, &sha, n)?;
                files += 1;
                bytes += n;
            }
            continue;
        };
        let path = root.join(&rel);
        match want.kind {
            EntryKind::Dir => {
                std::fs::create_dir_all(&path).map_err(|e| write_err(&path, e))?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(want.mode))
                    .map_err(|e| write_err(&path, e))?;
            }
            EntryKind::Symlink => {
                // Tablespace links are recreated by PostgreSQL from tablespace_map.
                if stream == "data" && rel_str.starts_with("pg_tblspc/") {
                    continue;
                }
                let target = want.target.clone().unwrap_or_default();
                std::os::unix::fs::symlink(&target, &path).map_err(|e| write_err(&path, e))?;
            }
            EntryKind::File => {
                let mut out = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .map_err(|e| write_err(&path, e))?;
                let (sha, written) = hash_entry(
                    &mut entry,
                    stream,
                    &rel_str,
                    Some((&mut out, &path)),
                    progress,
                )?;
                out.sync_all().map_err(|e| write_err(&path, e))?;
                drop(out);
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(want.mode))
                    .map_err(|e| write_err(&path, e))?;
                check_file(stream, &rel_str, &want, &sha, written)?;
                files += 1;
                bytes += written;
            }
        }
    }
    if let Some(missing) = expected.keys().min() {
        return Err(corrupt(
            stream,
            format!(
                "{} manifest entries are missing from the backup, e.g. {missing}",
                expected.len()
            ),
        ));
    }
    Ok((files, bytes))
}

#[cfg(test)]
mod tests {
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
}
