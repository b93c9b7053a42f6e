//! Taking base backups (`backup-push`).
//!
//! The non-exclusive backup API ties a backup to one database session: if walarchive dies,
//! the session ends and PostgreSQL forgets the backup, so nothing on the server is left
//! half-done. The data directory is read file by file into a tar stream that is cut into
//! fixed-size parts; up to `parallel` parts are compressed (on the blocking pool) and
//! uploaded at once while the next ones are read, and part buffers are reused, so memory
//! stays at `parallel + 1` parts whatever the database size. A backup only counts once every WAL segment
//! from its start to its stop LSN is in the repository: the manifest, written last, is the
//! proof of that, and nothing without a manifest is ever listed or restored.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::codec::Compression;
use crate::format;
use crate::lsn::Lsn;
use crate::manifest::{
    backup_key, backup_name, part_key, tablespace_stream, EntryKind, FileEntry, Manifest, Started,
    StreamInfo, MANIFEST_VERSION,
};
use crate::repo::{Descriptor, PutOutcome, Repository, REPOSITORY_FORMAT};
use crate::wal::{SegmentName, TimelineId, WalFileName};
use crate::{pg, Error};

/// Default uncompressed size of one backup part.
pub const DEFAULT_PART_SIZE: usize = 16 << 20;
/// Default number of parts compressed and uploaded at once.
pub const DEFAULT_PARALLEL: usize = 2;

/// How to take a backup.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    /// Data directory; asked from the server when not given.
    pub pgdata: Option<PathBuf>,
    /// Connection settings.
    pub conn: tokio_postgres::Config,
    /// Label (default: the backup name).
    pub label: Option<String>,
    /// Request an immediate checkpoint instead of a spread one.
    pub fast_checkpoint: bool,
    /// Uncompressed bytes per part.
    pub part_size: usize,
    /// Parts compressed and uploaded at once (1: one at a time, while the next is read).
    pub parallel: usize,
    /// How long to wait for the backup's WAL to be archived.
    pub wal_timeout: Duration,
    /// Mark the backup permanent (see [`crate::manifest::PERMANENT_MARKER`]).
    pub permanent: bool,
}

/// Receives progress reports (the CLI draws a bar on a terminal).
pub trait Progress: Send + Sync {
    /// The total number of bytes to read is now known.
    fn start(&self, total_bytes: u64);
    /// `bytes` more were read.
    fn advance(&self, bytes: u64);
    /// A phase begins.
    fn phase(&self, what: &str);
}

/// A progress sink that ignores everything.
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _: u64) {}
    fn advance(&self, _: u64) {}
    fn phase(&self, _: &str) {}
}

/// What the server told us before the backup.
struct ServerInfo {
    version_num: u32,
    in_recovery: bool,
    system_identifier: String,
    wal_segment_size: u64,
    data_directory: PathBuf,
}

fn pg_err(what: &str) -> impl Fn(tokio_postgres::Error) -> Error + '_ {
    move |e| Error::Postgres(format!("{what}: {}", pg::error_chain(&e)))
}

const UTC_NOW: &str =
    r#"to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"#;

/// Takes a base backup of the server `opts.conn` points at into `repo`.
pub async fn backup_push(
    repo: &Repository,
    opts: &BackupOptions,
    progress: Arc<dyn Progress>,
) -> Result<Manifest, Error> {
    let client = pg::connect(&opts.conn).await?;
    let row = client
        .query_one(
            "select current_setting('server_version_num')::int, pg_is_in_recovery(), \
             (select system_identifier from pg_control_system())::text, \
             (select setting::bigint from pg_settings where name = 'wal_segment_size'), \
             current_setting('data_directory')",
            &[],
        )
        .await
        .map_err(pg_err("cannot read the server's settings"))?;
    let info = ServerInfo {
        version_num: row.get::<_, i32>(0) as u32,
        in_recovery: row.get(1),
        system_identifier: row.get(2),
        wal_segment_size: row.get::<_, i64>(3) as u64,
        data_directory: PathBuf::from(row.get::<_, String>(4)),
    };
    if info.version_num < 150000 {
        return Err(Error::Config(format!(
            "PostgreSQL {} is not supported: walarchive needs 15 or later",
            info.version_num / 10000
        )));
    }
    let pgdata = opts
        .pgdata
        .clone()
        .unwrap_or_else(|| info.data_directory.clone());
    if !pgdata.join("PG_VERSION").is_file() {
        return Err(Error::BadInput {
            path: pgdata.display().to_string(),
            reason: if opts.pgdata.is_some() {
                "is not a PostgreSQL data directory (no PG_VERSION): check --pgdata".into()
            } else {
                "is the server's data_directory but is not readable here (no PG_VERSION): run walarchive on the database host or pass --pgdata".into()
            },
        });
    }
    check_repository(repo, &info).await?;

    // Claim a name; the claim also marks the backup as in progress.
    let label_base = opts.label.clone();
    let (name, start_time) = claim_name(repo, &client, label_base.as_deref()).await?;
    let label = label_base.unwrap_or_else(|| name.clone());
    tracing::info!(
        "starting backup {name} of {} ({})",
        pgdata.display(),
        pg::describe(&opts.conn)
    );
    progress.phase("checkpoint");
    let start_lsn: String = client
        .query_one(
            "select pg_backup_start($1, $2)::text",
            &[&label, &opts.fast_checkpoint],
        )
        .await
        .map_err(pg_err("pg_backup_start failed"))?
        .get(0);
    let start_lsn: Lsn = start_lsn
        .parse()
        .map_err(|e| Error::Postgres(format!("{e}")))?;

    // Copy: tablespaces, then the data directory with global/pg_control last.
    let tablespaces = list_tablespaces(&pgdata)?;
    let mut plans = Vec::new();
    for (oid, location) in &tablespaces {
        let entries = walk(location, WalkRoot::Tablespace)?;
        plans.push((
            tablespace_stream(*oid),
            location.clone(),
            entries,
            Some((*oid, location.clone())),
        ));
    }
    let data_entries = walk(&pgdata, WalkRoot::DataDirectory)?;
    plans.push(("data".to_string(), pgdata.clone(), data_entries, None));
    let total: u64 = plans.iter().flat_map(|p| p.2.iter()).map(|e| e.size).sum();
    progress.start(total);
    progress.phase("copying");

    let mut streams = Vec::new();
    let mut files = Vec::new();
    let mut original_bytes = 0;
    for (stream, root, entries, tablespace) in plans {
        let result = upload_stream(
            repo,
            &name,
            &stream,
            &root,
            entries,
            opts.part_size,
            opts.parallel,
            progress.clone(),
        )
        .await?;
        original_bytes += result
            .files
            .iter()
            .filter(|f| f.kind == EntryKind::File)
            .map(|f| f.size)
            .sum::<u64>();
        files.extend(result.files);
        streams.push(StreamInfo {
            name: stream,
            tablespace_oid: tablespace.as_ref().map(|t| t.0),
            tablespace_location: tablespace.map(|t| t.1.display().to_string()),
            parts: result.parts,
            tar_bytes: result.tar_bytes,
            stored_bytes: result.stored_bytes,
        });
    }

    progress.phase("pg_backup_stop");
    let stop = client
        .query_one(
            "select lsn::text, labelfile, spcmapfile from pg_backup_stop(false)",
            &[],
        )
        .await
        .map_err(pg_err("pg_backup_stop failed"))?;
    let stop_lsn: Lsn = stop
        .get::<_, String>(0)
        .parse()
        .map_err(|e| Error::Postgres(format!("{e}")))?;
    let labelfile: String = stop.get(1);
    let spcmapfile: Option<String> = stop.get(2);
    let after = client
        .query_one(
            &format!("select {UTC_NOW}, pg_snapshot_xmax(pg_current_snapshot())::text"),
            &[],
        )
        .await
        .map_err(pg_err("cannot read the stop time"))?;
    let stop_time: String = after.get(0);
    let stop_next_xid: u64 = after.get::<_, String>(1).parse().unwrap_or(0);
    let timeline = parse_label_timeline(&labelfile).ok_or_else(|| {
        Error::Postgres("pg_backup_stop returned a backup_label without START TIMELINE".into())
    })?;

    let mut stored_bytes: u64 = streams.iter().map(|s| s.stored_bytes).sum();
    stored_bytes += stored(
        repo.put_new(
            &backup_key(&name, "backup_label"),
            labelfile.as_bytes(),
            Compression::None,
        )
        .await?,
    );
    let spcmap = spcmapfile.filter(|m| !m.trim().is_empty());
    if let Some(map) = &spcmap {
        stored_bytes += stored(
            repo.put_new(
                &backup_key(&name, "tablespace_map"),
                map.as_bytes(),
                Compression::None,
            )
            .await?,
        );
    }

    progress.phase("waiting for WAL");
    wait_for_wal(
        repo,
        TimelineId(timeline),
        start_lsn,
        stop_lsn,
        info.wal_segment_size,
        opts.wal_timeout,
    )
    .await?;

    let manifest = Manifest {
        format_version: MANIFEST_VERSION,
        name: name.clone(),
        label,
        start_lsn,
        stop_lsn,
        timeline,
        start_time,
        stop_time,
        stop_next_xid,
        pg_version_num: info.version_num,
        system_identifier: info.system_identifier.clone(),
        wal_segment_size: info.wal_segment_size,
        from_standby: info.in_recovery,
        original_bytes,
        stored_bytes,
        compression: repo.compression.to_string(),
        part_size: opts.part_size as u64,
        streams,
        files,
        has_tablespace_map: spcmap.is_some(),
        created_by: format!("walarchive {}", env!("CARGO_PKG_VERSION")),
    };
    if opts.permanent {
        crate::catalog::set_permanent(repo, &name, true).await?;
    }
    let json = serde_json::to_vec_pretty(&manifest).expect("manifest serializes");
    repo.put_new(
        &backup_key(&name, "manifest.json"),
        &json,
        Compression::Zstd(3),
    )
    .await?;
    tracing::info!(
        "backup {name} complete: {start_lsn}..{stop_lsn} on timeline {timeline}, {} bytes stored",
        manifest.stored_bytes
    );
    Ok(manifest)
}

fn stored(o: PutOutcome) -> u64 {
    match o {
        PutOutcome::Stored { stored_len } => stored_len,
        PutOutcome::AlreadyStored => 0,
    }
}

/// The repository must archive this cluster; a backup may also be its first object.
async fn check_repository(repo: &Repository, info: &ServerInfo) -> Result<(), Error> {
    let major = info.version_num / 10000;
    match crate::wal::magic_for_major(major) {
        Some(magic) => {
            let wanted = Descriptor {
                format_version: REPOSITORY_FORMAT,
                system_identifier: info.system_identifier.clone(),
                pg_version: Some(major),
                wal_page_magic: magic,
                wal_segment_size: info.wal_segment_size,
                created_at: chrono::Utc::now().timestamp().max(0) as u64,
                created_by: format!("walarchive {}", env!("CARGO_PKG_VERSION")),
            };
            repo.ensure_descriptor(&wanted, "the backup").await?;
        }
        None => {
            let d = repo.require_descriptor().await?;
            if d.system_identifier != info.system_identifier {
                return Err(Error::ForeignCluster {
                    name: "the backup".into(),
                    field: "system identifier",
                    repo: d.system_identifier,
                    wal: info.system_identifier.clone(),
                });
            }
        }
    }
    Ok(())
}

async fn claim_name(
    repo: &Repository,
    client: &tokio_postgres::Client,
    label: Option<&str>,
) -> Result<(String, String), Error> {
    let now: String = client
        .query_one(&format!("select {UTC_NOW}"), &[])
        .await
        .map_err(pg_err("cannot read the server's clock"))?
        .get(0);
    let at = crate::manifest::parse_time(&now).unwrap_or_else(chrono::Utc::now);
    let base = backup_name(at);
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let claim = format!("{}-{nanos:x}", std::process::id());
    for attempt in 0..100 {
        let name = if attempt == 0 {
            base.clone()
        } else {
            format!("{base}_{attempt}")
        };
        let started = Started {
            name: name.clone(),
            label: label.unwrap_or(&name).to_string(),
            start_time: now.clone(),
            host: host.clone(),
            claim: claim.clone(),
        };
        let json = serde_json::to_vec_pretty(&started).expect("serializes");
        match repo
            .put_new(&backup_key(&name, "started.json"), &json, Compression::None)
            .await
        {
            // Identical content carries our own claim: a retry whose first answer was lost.
            Ok(PutOutcome::Stored { .. } | PutOutcome::AlreadyStored) => return Ok((name, now)),
            Err(Error::Conflict { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(Error::Config(format!(
        "cannot find a free backup name near {base}"
    )))
}

/// The timeline in a backup_label's `START TIMELINE:` line.
pub fn parse_label_timeline(label: &str) -> Option<u32> {
    label
        .lines()
        .find_map(|l| l.strip_prefix("START TIMELINE:"))
        .and_then(|t| t.trim().parse().ok())
}

/// The WAL segments a backup needs: from the one holding `start` to the one holding the
/// last byte before `stop`.
pub fn needed_segments(
    timeline: TimelineId,
    start: Lsn,
    stop: Lsn,
    wal_segment_size: u64,
) -> Vec<SegmentName> {
    let first = start.segment_number(wal_segment_size);
    let last = Lsn(stop.0.saturating_sub(1).max(start.0)).segment_number(wal_segment_size);
    (first..=last)
        .map(|n| SegmentName::from_segment_number(timeline, n, wal_segment_size))
        .collect()
}

async fn wait_for_wal(
    repo: &Repository,
    timeline: TimelineId,
    start: Lsn,
    stop: Lsn,
    wal_segment_size: u64,
    timeout: Duration,
) -> Result<(), Error> {
    let deadline = Instant::now() + timeout;
    // The last segment is usually archived within milliseconds of pg_backup_stop (its
    // switch wakes the archiver): poll often at first, then every half second.
    let mut pause = Duration::from_millis(10);
    for seg in needed_segments(timeline, start, stop, wal_segment_size) {
        let key = repo.key(&Repository::wal_key(&WalFileName::Segment(seg)));
        loop {
            if repo.exists(&key).await? {
                break;
            }
            if Instant::now() >= deadline {
                return Err(Error::WalMissing {
                    segment: seg.to_string(),
                    waited: timeout,
                });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }
    Ok(())
}

/// Tablespaces: the symlinks in pg_tblspc, by OID.
fn list_tablespaces(pgdata: &Path) -> Result<Vec<(u32, PathBuf)>, Error> {
    let dir = pgdata.join("pg_tblspc");
    let io = |source| Error::Io {
        context: format!("cannot read {}", dir.display()),
        source,
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let Some(oid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let target = std::fs::read_link(entry.path()).map_err(io)?;
        let target = if target.is_absolute() {
            target
        } else {
            dir.join(target)
        };
        out.push((oid, target));
    }
    out.sort();
    Ok(out)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum WalkRoot {
    DataDirectory,
    Tablespace,
}

/// One entry to archive, found by [`walk`].
#[derive(Debug, Clone)]
struct WalkEntry {
    rel: String,
    kind: EntryKind,
    size: u64,
    mode: u32,
    target: Option<String>,
}

/// Directories whose contents are never backed up (the directory itself is kept).
const CONTENTS_EXCLUDED: &[&str] = &[
    "pg_wal",
    "pg_replslot",
    "pg_dynshmem",
    "pg_notify",
    "pg_serial",
    "pg_snapshots",
    "pg_stat_tmp",
    "pg_subtrans",
];

/// While `backup-fetch` restores into a data directory, the directory holding what it
/// replaces (see `walarchive_restore::destination`).
pub const RESTORE_WORK_DIR: &str = ".walarchive-restore";
/// [`RESTORE_WORK_DIR`] once the restore is complete, while it is being deleted.
pub const RESTORE_DONE_DIR: &str = ".walarchive-restore-done";

/// Files in the data directory's root that are never backed up.
const ROOT_FILES_EXCLUDED: &[&str] = &[
    RESTORE_WORK_DIR,
    RESTORE_DONE_DIR,
    "postmaster.pid",
    "postmaster.opts",
    "recovery.signal",
    "standby.signal",
    "backup_label",
    "backup_label.old",
    "backup_manifest",
    "tablespace_map",
    "tablespace_map.old",
    "postgresql.auto.conf.tmp",
    "current_logfiles.tmp",
];

/// Whether `name` is a temporary relation's file (`t<backend>_<relfilenode>[_fork][.segment]`).
fn is_temp_relation(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('t') else {
        return false;
    };
    let rest = rest.split('.').next().unwrap_or("");
    let mut parts = rest.splitn(3, '_');
    let digits =
        |s: Option<&str>| s.is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()));
    let (a, b, fork) = (parts.next(), parts.next(), parts.next());
    digits(a) && digits(b) && fork.is_none_or(|f| matches!(f, "fsm" | "vm" | "init"))
}

/// Lists what to archive under `root`, applying PostgreSQL's exclusion rules. global/pg_control
/// is moved to the end so that it is copied last.
fn walk(root: &Path, kind: WalkRoot) -> Result<Vec<WalkEntry>, Error> {
    let mut out = Vec::new();
    let mut pg_control = None;
    walk_dir(root, root, kind, &mut out, &mut pg_control)?;
    out.extend(pg_control);
    Ok(out)
}

fn walk_dir(
    root: &Path,
    dir: &Path,
    kind: WalkRoot,
    out: &mut Vec<WalkEntry>,
    pg_control: &mut Option<WalkEntry>,
) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    let io = |source| Error::Io {
        context: format!("cannot read {}", dir.display()),
        source,
    };
    let mut entries: Vec<_> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.collect::<Result<_, _>>().map_err(io)?,
        // Dropped while we walk (a database or tablespace removed during the backup).
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && dir != root => return Ok(()),
        Err(e) => return Err(io(e)),
    };
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            tracing::warn!("skipping {} (name is not UTF-8)", path.display());
            continue;
        };
        let rel = path
            .strip_prefix(root)
            .expect("under root")
            .to_str()
            .expect("UTF-8 path")
            .to_string();
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io(e)),
        };
        let at_root = dir == root;
        if name.starts_with("pgsql_tmp") || name == "pg_internal.init" || is_temp_relation(&name) {
            continue;
        }
        if kind == WalkRoot::DataDirectory
            && at_root
            && ROOT_FILES_EXCLUDED.contains(&name.as_str())
        {
            continue;
        }
        let mode = meta.permissions().mode() & 0o7777;
        let ft = meta.file_type();
        // pg_wal on another disk is a symlink: restore it as an empty directory, never as a
        // link into the original server's WAL.
        let wal_link =
            kind == WalkRoot::DataDirectory && at_root && name == "pg_wal" && ft.is_symlink();
        if wal_link {
            for rel in ["pg_wal", "pg_wal/archive_status"] {
                out.push(WalkEntry {
                    rel: rel.into(),
                    kind: EntryKind::Dir,
                    size: 0,
                    mode: 0o700,
                    target: None,
                });
            }
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&path).map_err(io)?;
            out.push(WalkEntry {
                rel,
                kind: EntryKind::Symlink,
                size: 0,
                mode,
                target: Some(target.to_string_lossy().into_owned()),
            });
        } else if ft.is_dir() {
            out.push(WalkEntry {
                rel: rel.clone(),
                kind: EntryKind::Dir,
                size: 0,
                mode,
                target: None,
            });
            if kind == WalkRoot::DataDirectory
                && at_root
                && CONTENTS_EXCLUDED.contains(&name.as_str())
            {
                if name == "pg_wal" {
                    out.push(WalkEntry {
                        rel: "pg_wal/archive_status".into(),
                        kind: EntryKind::Dir,
                        size: 0,
                        mode,
                        target: None,
                    });
                }
                continue;
            }
            walk_dir(root, &path, kind, out, pg_control)?;
        } else if ft.is_file() {
            let e = WalkEntry {
                rel,
                kind: EntryKind::File,
                size: meta.len(),
                mode,
                target: None,
            };
            if kind == WalkRoot::DataDirectory && e.rel == "global/pg_control" {
                *pg_control = Some(e);
            } else {
                out.push(e);
            }
        }
    }
    Ok(())
}

struct StreamResult {
    files: Vec<FileEntry>,
    parts: u32,
    tar_bytes: u64,
    stored_bytes: u64,
}

/// Writes `entries` as one tar stream, cut into parts that are compressed and uploaded as
/// they fill, up to `parallel` at once.
///
/// The tar writer runs on a blocking thread and hands each full part over a channel of one
/// slot; every part gets its number as it leaves the writer, so the parts are numbered in
/// stream order (`part-000001` onwards, contiguous) whatever order their uploads finish in.
/// Each part is compressed on the blocking pool and uploaded by a task of its own; its
/// buffer goes back to the writer as soon as it is compressed. In memory at any time:
/// `parallel + 1` part buffers (filled, queued or compressing; the writer waits for one to
/// come back rather than allocate more) and the compressed copies being uploaded. A
/// `parallel + 2`nd buffer (one filled while another waits in the queue) bought no speed on
/// two cores and cost a part's size of RSS.
#[allow(clippy::too_many_arguments)]
async fn upload_stream(
    repo: &Repository,
    name: &str,
    stream: &str,
    root: &Path,
    entries: Vec<WalkEntry>,
    part_size: usize,
    parallel: usize,
    progress: Arc<dyn Progress>,
) -> Result<StreamResult, Error> {
    let parallel = parallel.max(1);
    // Every part is bound to its key and the repository's cluster (see format.rs).
    let system_identifier = repo.system_identifier().await?;
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(1);
    // Part buffers come back here once compressed: at most `parallel + 1` are ever
    // allocated, so the heap stays flat instead of keeping a trail of freed parts.
    let (free_tx, free_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let root = root.to_path_buf();
    let stream_name = stream.to_string();
    let writer = tokio::task::spawn_blocking(move || {
        let sink = PartWriter::new(part_size, parallel + 1, tx, free_rx);
        write_tar(&root, &stream_name, entries, sink, progress.as_ref())
    });
    let mut uploads: JoinSet<Result<u64, Error>> = JoinSet::new();
    let mut stored_total = 0u64;
    let mut parts = 0u32;
    let mut upload_error = None;
    let mut reaped = |done: Result<Result<u64, Error>, tokio::task::JoinError>| match done
        .expect("upload tasks do not panic and are not aborted while awaited")
    {
        Ok(n) => {
            stored_total += n;
            None
        }
        Err(e) => Some(e),
    };
    loop {
        // A free upload slot first: the writer meanwhile fills the next part and the queue.
        let chunk = if uploads.len() >= parallel {
            let done = uploads.join_next().await.expect("uploads are running");
            upload_error = reaped(done);
            if upload_error.is_some() {
                break;
            }
            continue;
        } else if uploads.is_empty() {
            rx.recv().await
        } else {
            tokio::select! {
                biased;
                Some(done) = uploads.join_next() => {
                    upload_error = reaped(done);
                    if upload_error.is_some() {
                        break;
                    }
                    continue;
                }
                chunk = rx.recv() => chunk,
            }
        };
        let Some(chunk) = chunk else {
            break; // the writer is done (or failed: its result says why)
        };
        parts += 1;
        let key = part_key(name, stream, parts);
        let compression = repo.compression;
        let (repo, free_tx) = (repo.clone(), free_tx.clone());
        uploads.spawn(async move {
            let binding = format::Binding::new(system_identifier, &key);
            let encoded = tokio::task::spawn_blocking(move || {
                let kind = format::DigestKind::Sha256OfBody;
                let encoded = format::encode_as(&chunk, compression, kind, Some(&binding));
                let _ = free_tx.send(chunk); // the writer may be gone: then it is dropped
                encoded
            })
            .await
            .expect("encoding does not panic");
            repo.put_encoded(&key, encoded).await.map(stored)
        });
    }
    // The writer stops at its next hand-over once the receiver is gone.
    drop(rx);
    let written = writer.await.expect("tar writer does not panic");
    if upload_error.is_none() && written.is_ok() {
        while let Some(done) = uploads.join_next().await {
            upload_error = reaped(done);
            if upload_error.is_some() {
                break;
            }
        }
    }
    // Whatever still runs after a failure is abandoned: the backup gets no manifest.
    uploads.abort_all();
    if let Some(e) = upload_error {
        return Err(e);
    }
    let (files, tar_bytes) = written?;
    Ok(StreamResult {
        files,
        parts,
        tar_bytes,
        stored_bytes: stored_total,
    })
}

/// A `Write` that cuts what it receives into parts of `part_size` bytes and hands each full
/// part to the uploader, taking its next buffer from those the uploader gave back.
struct PartWriter {
    buf: Vec<u8>,
    part_size: usize,
    /// Part buffers allocated so far (the one being filled included), and the most there
    /// may be.
    allocated: usize,
    max_buffers: usize,
    tx: mpsc::Sender<Vec<u8>>,
    free: std::sync::mpsc::Receiver<Vec<u8>>,
    total: u64,
}

impl PartWriter {
    /// A writer of parts of `part_size` bytes, handed to `tx`, with at most `max_buffers`
    /// part buffers, which come back through `free`.
    fn new(
        part_size: usize,
        max_buffers: usize,
        tx: mpsc::Sender<Vec<u8>>,
        free: std::sync::mpsc::Receiver<Vec<u8>>,
    ) -> PartWriter {
        PartWriter {
            buf: Vec::with_capacity(part_size),
            part_size,
            allocated: 1,
            max_buffers,
            tx,
            free,
            total: 0,
        }
    }

    fn send(&mut self) -> std::io::Result<()> {
        let full = std::mem::take(&mut self.buf);
        self.tx
            .blocking_send(full)
            .map_err(|_| std::io::Error::other("the upload failed"))?;
        // Only once the part is handed over, so that a recycled (resident) buffer is not
        // held while waiting. At most `max_buffers` are ever allocated: with all of them out
        // (one queued, the rest compressing), the next part waits for one to come back.
        let mut b = loop {
            match self.free.try_recv() {
                Ok(b) => break b,
                Err(_) if self.allocated < self.max_buffers => {
                    self.allocated += 1;
                    break Vec::with_capacity(self.part_size);
                }
                Err(_) => {}
            }
            match self
                .free
                .recv_timeout(std::time::Duration::from_millis(100))
            {
                Ok(b) => break b,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) if self.tx.is_closed() => {
                    return Err(std::io::Error::other("the upload failed"));
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                // Nobody can give one back: a fresh one rather than waiting forever.
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    self.allocated += 1;
                    break Vec::with_capacity(self.part_size);
                }
            }
        };
        b.clear();
        self.buf = b;
        Ok(())
    }

    fn finish(mut self) -> std::io::Result<u64> {
        if !self.buf.is_empty() {
            self.send()?;
        }
        Ok(self.total)
    }
}

impl Write for PartWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(self.part_size - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        self.total += n as u64;
        if self.buf.len() == self.part_size {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Reads exactly `remaining` bytes of a file that may change while it is read: a file that
/// shrank is padded with zeros (WAL replay rewrites it), one that grew is cut. Hashes what
/// it returns (BLAKE3: see [`crate::manifest::MANIFEST_VERSION`]).
struct SnapshotReader<'a> {
    file: std::fs::File,
    remaining: u64,
    hasher: blake3::Hasher,
    progress: &'a dyn Progress,
}

impl Read for SnapshotReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let want = buf.len().min(self.remaining as usize);
        let mut n = self.file.read(&mut buf[..want])?;
        if n == 0 {
            buf[..want].fill(0);
            n = want;
        }
        self.remaining -= n as u64;
        self.hasher.update(&buf[..n]);
        self.progress.advance(n as u64);
        Ok(n)
    }
}

fn write_tar(
    root: &Path,
    stream: &str,
    entries: Vec<WalkEntry>,
    sink: PartWriter,
    progress: &dyn Progress,
) -> Result<(Vec<FileEntry>, u64), Error> {
    let io = |context: String| move |source| Error::Io { context, source };
    let mut tar = tar::Builder::new(sink);
    let mut files = Vec::with_capacity(entries.len());
    let mut skipped = BTreeMap::new();
    for e in entries {
        let mut header = tar::Header::new_gnu();
        header.set_mode(e.mode);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        let ctx = || format!("cannot archive {}", root.join(&e.rel).display());
        let digest = match e.kind {
            EntryKind::Dir => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                tar.append_data(&mut header, &e.rel, std::io::empty())
                    .map_err(io(ctx()))?;
                None
            }
            EntryKind::Symlink => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_size(0);
                let target = e.target.clone().unwrap_or_default();
                tar.append_link(&mut header, &e.rel, &target)
                    .map_err(io(ctx()))?;
                None
            }
            EntryKind::File => {
                let file = match std::fs::File::open(root.join(&e.rel)) {
                    Ok(f) => f,
                    // Dropped during the backup: WAL replay recreates or removes it.
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                        skipped.insert(e.rel.clone(), e.size);
                        progress.advance(e.size);
                        continue;
                    }
                    Err(err) => return Err(io(ctx())(err)),
                };
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(e.size);
                let mut reader = SnapshotReader {
                    file,
                    remaining: e.size,
                    hasher: blake3::Hasher::new(),
                    progress,
                };
                tar.append_data(&mut header, &e.rel, &mut reader)
                    .map_err(io(ctx()))?;
                Some(reader.hasher.finalize().to_hex().to_string())
            }
        };
        files.push(FileEntry {
            stream: stream.to_string(),
            path: e.rel,
            kind: e.kind,
            size: e.size,
            mode: e.mode,
            sha256: None,
            blake3: digest,
            target: e.target,
        });
    }
    if !skipped.is_empty() {
        tracing::debug!(
            "{} files vanished during the backup: {:?}",
            skipped.len(),
            skipped.keys().take(5)
        );
    }
    let sink = tar
        .into_inner()
        .map_err(io(format!("cannot finish the {stream} stream")))?;
    let total = sink
        .finish()
        .map_err(io(format!("cannot finish the {stream} stream")))?;
    Ok((files, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With every part buffer out (handed over, none given back), the tar writer waits for
    /// one to come back instead of allocating another: at most `parallel + 1` ever exist.
    #[test]
    fn part_buffers_never_exceed_parallel_plus_one() {
        let (parallel, part_size) = (2, 1024);
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(1);
        let (free_tx, free_rx) = std::sync::mpsc::channel::<Vec<u8>>();
        let writer = std::thread::spawn(move || {
            let mut sink = PartWriter::new(part_size, parallel + 1, tx, free_rx);
            for i in 0..20u8 {
                sink.write_all(&[i; 1024]).unwrap();
                assert!(sink.allocated <= parallel + 1, "{} buffers", sink.allocated);
            }
            let allocated = sink.allocated;
            (sink.finish().unwrap(), allocated)
        });
        // Two parts taken (compressing) and a third queued, none given back: the writer
        // has all three buffers out and must wait.
        let held: Vec<Vec<u8>> = (0..2).map(|_| rx.blocking_recv().unwrap()).collect();
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            !writer.is_finished(),
            "the writer went on without a buffer back"
        );
        let mut pointers: std::collections::HashSet<usize> =
            held.iter().map(|b| b.as_ptr() as usize).collect();
        for b in held {
            free_tx.send(b).unwrap();
        }
        // From now on every part comes back as soon as it is taken.
        let mut parts = 2;
        while let Some(b) = rx.blocking_recv() {
            assert_eq!(b.len(), part_size);
            assert!(b.iter().all(|&x| x == parts), "parts arrive in order");
            pointers.insert(b.as_ptr() as usize);
            parts += 1;
            let _ = free_tx.send(b);
        }
        let (total, allocated) = writer.join().unwrap();
        assert_eq!((parts, total), (20, 20 * 1024));
        assert_eq!(allocated, parallel + 1);
        assert!(
            pointers.len() <= parallel + 1,
            "{} distinct buffers",
            pointers.len()
        );
    }

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
        ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::path::Path>>
        {
            self.inner.delete_stream(locations)
        }
        fn list(
            &self,
            prefix: Option<&object_store::path::Path>,
        ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>>
        {
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
}
