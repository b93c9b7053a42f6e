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

mod pages;
mod stream;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::codec::Compression;
use crate::lsn::Lsn;
use crate::manifest::{
    backup_key, backup_name, tablespace_stream, DamagedFile, EntryKind, Manifest, Started,
    StreamInfo, MANIFEST_VERSION,
};
use crate::repo::{Descriptor, PutOutcome, Repository, REPOSITORY_FORMAT};
use crate::wal::{SegmentName, TimelineId, WalFileName};
use crate::{pg, Error};
pub use pages::pg_checksum_page;
use stream::{upload_stream, PageCheck};

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

    // Pages are checked against their checksums when the cluster has them (see `pages`).
    let control = crate::control::read_control(&pgdata)?;
    let page_rules = (control.data_checksum_version != 0).then_some(pages::PageRules {
        start_lsn,
        block_size: control.block_size as usize,
        relseg_size: control.relseg_size,
    });
    let mut damaged_pages = Vec::new();

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
            PageCheck {
                rules: page_rules,
                tablespace: tablespace.is_some(),
            },
        )
        .await?;
        damaged_pages.extend(result.bad_pages.iter().map(|(path, bad)| DamagedFile {
            stream: stream.clone(),
            path: path.clone(),
            blocks: bad.iter().map(|p| p.block).collect(),
        }));
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
        damaged_pages,
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
    let bad_pages = manifest.damaged_page_count();
    if bad_pages > 0 {
        tracing::warn!(
            "backup {name}: {bad_pages} page(s) of the source fail their checksum (listed above): its data files are damaged there, and the backup holds them as they are"
        );
    }
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

/// The directories a backup holds of `pg_wal` (whose contents it never holds): `pg_wal`
/// itself and `archive_status`, and from PostgreSQL 17 `summaries` (the WAL summarizer's),
/// when the server has it: as `basebackup.c` sends them. The summaries themselves describe
/// the source's WAL for the source's incremental backups; a restored server writes its own.
fn wal_dirs(pg_wal: &Path) -> Vec<&'static str> {
    let mut dirs = vec!["pg_wal", "pg_wal/archive_status"];
    if pg_wal.join("summaries").is_dir() {
        dirs.push("pg_wal/summaries");
    }
    dirs
}

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
            for rel in wal_dirs(&path) {
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
                    for rel in wal_dirs(&path).into_iter().skip(1) {
                        out.push(WalkEntry {
                            rel: rel.into(),
                            kind: EntryKind::Dir,
                            size: 0,
                            mode,
                            target: None,
                        });
                    }
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
