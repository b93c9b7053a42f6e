//! Archiving status: how far the WAL archive lags behind the server, measured against a
//! recovery point objective (RPO), for people (`walarchive status`) and for alerting (its
//! exit status, JSON and the Prometheus text exposition format).
//!
//! # Why it is built this way
//!
//! * **There is no daemon to ask.** `wal-push` and `wal-fetch` are one process per WAL
//!   file, started by PostgreSQL: nothing stays alive to count pushes or remember the last
//!   success. The figures therefore come from where that state actually lives: the
//!   repository (which segments are stored, and when the store wrote them), the server (its
//!   WAL position, and `pg_stat_archiver`, which counts `archive_command`'s successes and
//!   failures) and the data directory (the `.ready` files of segments waiting to be archived).
//! * **Each source may be missing.** A status run on another host has no data directory, a
//!   server may be down. What needs a missing source is left out, never guessed; and a lag
//!   that cannot be measured at all fails the objective: an alert that stays silent because
//!   it cannot see is worse than one that fires.
//! * **Read the server first, the repository last.** The server's position is read first,
//!   then the `.ready` files, then the repository is listed. A segment completed before the
//!   position was read is then either still `.ready` or already listed, so a segment that is
//!   archived while `status` runs never shows up as lag.
//! * **Lag in seconds** is the age of the oldest completed segment not yet archived. The
//!   `.ready` file PostgreSQL creates when it completes a segment has exactly that age, so
//!   when `.ready` files are visible (in the data directory, or through the server's
//!   `pg_ls_archive_statusdir()`) the oldest one's age is used. Otherwise — and also when the
//!   repository misses more segments than are waiting, i.e. segments PostgreSQL counted as
//!   archived never reached *this* repository — the lag is approximated by the age of the
//!   newest archived segment (now − the time the store wrote it): an upper bound, since the
//!   oldest missing segment was completed after the newest archived one was stored. It is
//!   not used when `.ready` files account for every missing segment, because after an idle
//!   hour the newest archived segment is an hour old while the segment just completed has
//!   waited milliseconds: using it there would raise false alarms.

use std::path::Path;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Serialize, Serializer};

use crate::catalog;
use crate::lsn::Lsn;
use crate::manifest::{self, backup_key, BACKUPS_PREFIX};
use crate::repo::{Descriptor, Listed, Repository};
use crate::wal::{SegmentName, TimelineId, WalFileName};
use crate::Error;

pub mod human;
pub mod render;

use human::human_seconds;

fn ser_time<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339(t))
}

fn ser_opt_time<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&rfc3339(t)),
        None => s.serialize_none(),
    }
}

fn ser_opt_display<T: std::fmt::Display, S: Serializer>(
    v: &Option<T>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.collect_str(v),
        None => s.serialize_none(),
    }
}

/// A time as RFC 3339 in UTC with milliseconds (`2026-11-22T05:30:00.123Z`).
pub fn rfc3339(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Seconds from `then` to `now`, never negative (clocks of different hosts may disagree).
pub fn age_seconds(now: DateTime<Utc>, then: DateTime<Utc>) -> f64 {
    ((now - then).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6).max(0.0)
}

/// A time from seconds since the Unix epoch (as PostgreSQL's `extract(epoch ...)` gives it).
pub fn from_epoch(seconds: f64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_micros((seconds * 1e6).round() as i64)
}

// ---------------------------------------------------------------------------
// The repository
// ---------------------------------------------------------------------------

/// The newest archived segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewestSegment {
    /// Its name.
    pub name: SegmentName,
    /// When the store wrote it.
    pub stored_at: DateTime<Utc>,
}

/// What the repository's `wal/` holds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ArchivedWal {
    /// WAL objects (segments, partial segments, history and backup history files).
    pub files: u64,
    /// Their stored size in bytes.
    pub bytes: u64,
    /// The newest segment (highest timeline, then name) on a timeline no higher than the
    /// ceiling given to [`summarize_wal`].
    pub newest: Option<NewestSegment>,
    /// The highest timeline of any archived segment (may exceed the ceiling).
    pub highest_timeline: Option<TimelineId>,
}

/// Summarizes a listing of `wal/`. With `max_timeline` (the server's timeline), the newest
/// segment is sought on that timeline and the ones before it only: a restored clone
/// archiving a newer timeline into the same repository says nothing about this server.
pub fn summarize_wal(listing: &[Listed], max_timeline: Option<TimelineId>) -> ArchivedWal {
    let mut out = ArchivedWal::default();
    for l in listing {
        // Only this repository's own WAL (not another repository's nested in it).
        let Some(crate::layout::OwnKey::Wal(name)) = crate::layout::parse_key(&l.key) else {
            continue;
        };
        out.files += 1;
        out.bytes += l.size;
        let WalFileName::Segment(seg) = name else {
            continue;
        };
        out.highest_timeline = out.highest_timeline.max(Some(seg.timeline));
        if max_timeline.is_some_and(|max| seg.timeline > max) {
            continue;
        }
        if out.newest.is_none_or(|n| seg > n.name) {
            out.newest = Some(NewestSegment {
                name: seg,
                stored_at: l.last_modified,
            });
        }
    }
    out
}

/// The newest complete backup and how many complete backups there are.
#[derive(Clone, Debug, Default)]
pub struct Backups {
    /// Backups with a manifest.
    pub count: u64,
    /// The newest one whose manifest could be read.
    pub last: Option<manifest::Manifest>,
}

/// Counts the complete backups (one existence check of each manifest) and reads the newest
/// readable manifest only: unlike [`catalog::list_backups`], the cost does not grow with
/// the size of every backup's manifest, which matters for a command run every minute.
/// Backup names are times (`base_YYYYMMDDTHHMMSSZ`), so name order is time order.
pub async fn backups(repo: &Repository) -> Result<Backups, Error> {
    let mut names: Vec<String> = repo
        .list_prefixes(&format!("{BACKUPS_PREFIX}/"))
        .await?
        .iter()
        .filter_map(|p| p.rsplit('/').next().map(str::to_string))
        .collect();
    names.sort();
    let mut out = Backups::default();
    for name in names.iter().rev() {
        if !repo
            .exists(&repo.key(&backup_key(name, "manifest.json")))
            .await?
        {
            continue;
        }
        out.count += 1;
        if out.last.is_none() {
            match catalog::load_manifest(repo, name).await {
                Ok(m) => out.last = Some(m),
                Err(e @ (Error::Corrupt { .. } | Error::NotFound { .. })) => {
                    tracing::warn!("backup {name} cannot be read: {e}");
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// The data directory's archive_status
// ---------------------------------------------------------------------------

/// The `.ready` files: WAL files PostgreSQL completed and has not archived yet.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReadyFiles {
    /// How many (segments, history and backup history files).
    pub count: u64,
    /// How many of them are segments.
    pub segments: u64,
    /// The oldest one (the WAL file name, without `.ready`).
    pub oldest: Option<String>,
    /// Its age in seconds.
    pub oldest_age_seconds: Option<f64>,
    /// Where they were read: `data directory DIR` or `server`.
    pub source: String,
}

/// Summarizes `(file name, age in seconds)` pairs of an `archive_status` directory; names
/// not ending in `.ready` are ignored.
pub fn summarize_ready(
    entries: impl IntoIterator<Item = (String, f64)>,
    source: impl Into<String>,
) -> ReadyFiles {
    let mut out = ReadyFiles {
        count: 0,
        segments: 0,
        oldest: None,
        oldest_age_seconds: None,
        source: source.into(),
    };
    for (file, age) in entries {
        let Some(name) = file.strip_suffix(".ready") else {
            continue;
        };
        out.count += 1;
        if matches!(name.parse(), Ok(WalFileName::Segment(_))) {
            out.segments += 1;
        }
        let older = match (out.oldest_age_seconds, out.oldest.as_deref()) {
            (Some(a), Some(n)) => age > a || (age == a && name < n),
            _ => true,
        };
        if older {
            out.oldest = Some(name.to_string());
            out.oldest_age_seconds = Some(age.max(0.0));
        }
    }
    out
}

/// Reads `<pgdata>/pg_wal/archive_status`; ages are measured against `now`.
pub fn read_ready_dir(pgdata: &Path, now: SystemTime) -> Result<ReadyFiles, Error> {
    let dir = pgdata.join("pg_wal").join("archive_status");
    let io = |context: String| move |source| Error::Io { context, source };
    if !pgdata.join("PG_VERSION").is_file() {
        return Err(Error::BadInput {
            path: pgdata.display().to_string(),
            reason: "is not a PostgreSQL data directory (no PG_VERSION)".into(),
        });
    }
    let mut entries = Vec::new();
    for e in std::fs::read_dir(&dir).map_err(io(format!("cannot read {}", dir.display())))? {
        let e = e.map_err(io(format!("cannot read {}", dir.display())))?;
        let file = e.file_name().to_string_lossy().into_owned();
        if !file.ends_with(".ready") {
            continue;
        }
        // Archived (renamed to .done) between the listing and now: not waiting any more.
        let Ok(meta) = e.metadata() else { continue };
        let age = meta
            .modified()
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .unwrap_or_default();
        entries.push((file, age.as_secs_f64()));
    }
    Ok(summarize_ready(
        entries,
        format!("data directory {}", pgdata.display()),
    ))
}

// ---------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------

/// `pg_stat_archiver`: what PostgreSQL's archiver (which runs `archive_command`) counted
/// since the statistics were last reset.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ArchiverStats {
    /// Files archived successfully.
    pub archived_count: i64,
    /// The last file archived.
    pub last_archived_wal: Option<String>,
    /// When.
    #[serde(serialize_with = "ser_opt_time")]
    pub last_archived_time: Option<DateTime<Utc>>,
    /// Failed attempts.
    pub failed_count: i64,
    /// The last file that failed.
    pub last_failed_wal: Option<String>,
    /// When.
    #[serde(serialize_with = "ser_opt_time")]
    pub last_failed_time: Option<DateTime<Utc>>,
    /// When the statistics were reset.
    #[serde(serialize_with = "ser_opt_time")]
    pub stats_reset: Option<DateTime<Utc>>,
}

impl ArchiverStats {
    /// Whether the last attempt failed: a failure newer than the last success.
    pub fn failing(&self) -> bool {
        match (self.last_failed_time, self.last_archived_time) {
            (Some(f), Some(a)) => f > a,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }
}

/// What the server says.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ServerFigures {
    /// A standby (in recovery): the position is the replay position.
    pub in_recovery: bool,
    /// `server_version_num`.
    pub version_num: i32,
    /// The current WAL write position (`pg_current_wal_lsn()`), or on a standby the replay
    /// position (`pg_last_wal_replay_lsn()`).
    #[serde(serialize_with = "ser_opt_display")]
    pub wal_position: Option<Lsn>,
    /// The timeline being written (a standby: being received, else of its last restartpoint).
    pub timeline: u32,
    /// The segment the position is in (still being written on a primary).
    #[serde(serialize_with = "ser_opt_display")]
    pub current_segment: Option<SegmentName>,
    /// `wal_segment_size` in bytes.
    pub wal_segment_size: u64,
    /// `archive_mode`.
    pub archive_mode: String,
    /// The cluster's system identifier, when the role may read `pg_control_system()`.
    pub system_identifier: Option<String>,
    /// `pg_stat_archiver`.
    pub archiver: ArchiverStats,
    /// The server's clock when it was asked.
    #[serde(serialize_with = "ser_time")]
    pub clock: DateTime<Utc>,
}

fn pg_err(what: &str) -> impl Fn(tokio_postgres::Error) -> Error + '_ {
    move |e| Error::Postgres(format!("{what}: {}", crate::pg::error_chain(&e)))
}

/// Reads the server's WAL position, timeline and archiver statistics.
pub async fn read_server(client: &tokio_postgres::Client) -> Result<ServerFigures, Error> {
    let row = client
        .query_one(
            "select pg_is_in_recovery(), current_setting('server_version_num')::int, \
             (select setting::bigint from pg_settings where name = 'wal_segment_size'), \
             current_setting('archive_mode'), extract(epoch from clock_timestamp())::float8",
            &[],
        )
        .await
        .map_err(pg_err("cannot read the server's settings"))?;
    let in_recovery: bool = row.get(0);
    let version_num: i32 = row.get(1);
    let wal_segment_size = row.get::<_, i64>(2) as u64;
    let archive_mode: String = row.get(3);
    let clock = from_epoch(row.get(4)).unwrap_or_else(Utc::now);
    let (position, timeline): (Option<String>, i32) = if in_recovery {
        let row = client
            .query_one(
                "select pg_last_wal_replay_lsn()::text, \
                 coalesce((select received_tli from pg_stat_wal_receiver), \
                          (select timeline_id from pg_control_checkpoint()))::int",
                &[],
            )
            .await
            .map_err(pg_err("cannot read the server's replay position"))?;
        (row.get(0), row.get(1))
    } else {
        // pg_walfile_name names the segment holding the byte *before* the position; only
        // its timeline is used (the insertion timeline, right even just after a promotion).
        let row = client
            .query_one(
                "select l::text, ('x' || substr(pg_walfile_name(l), 1, 8))::bit(32)::int \
                 from pg_current_wal_lsn() l",
                &[],
            )
            .await
            .map_err(pg_err("cannot read the server's WAL position"))?;
        (row.get(0), row.get(1))
    };
    let wal_position = match position {
        Some(p) => Some(
            p.parse::<Lsn>()
                .map_err(|e| Error::Postgres(e.to_string()))?,
        ),
        None => None,
    };
    let timeline = timeline as u32;
    let current_segment = wal_position
        .filter(|_| timeline > 0 && crate::wal::is_valid_segment_size(wal_segment_size))
        .map(|p| SegmentName::containing(TimelineId(timeline), p, wal_segment_size));
    let row = client
        .query_one(
            "select archived_count, last_archived_wal, \
             extract(epoch from last_archived_time)::float8, failed_count, last_failed_wal, \
             extract(epoch from last_failed_time)::float8, extract(epoch from stats_reset)::float8 \
             from pg_stat_archiver",
            &[],
        )
        .await
        .map_err(pg_err("cannot read pg_stat_archiver"))?;
    let time = |i: usize| row.get::<_, Option<f64>>(i).and_then(from_epoch);
    let archiver = ArchiverStats {
        archived_count: row.get(0),
        last_archived_wal: row.get(1),
        last_archived_time: time(2),
        failed_count: row.get(3),
        last_failed_wal: row.get(4),
        last_failed_time: time(5),
        stats_reset: time(6),
    };
    // pg_control_system() may be refused to unprivileged roles: then simply unknown.
    let system_identifier = client
        .query_one(
            "select system_identifier::text from pg_control_system()",
            &[],
        )
        .await
        .ok()
        .map(|r| r.get::<_, String>(0));
    Ok(ServerFigures {
        in_recovery,
        version_num,
        wal_position,
        timeline,
        current_segment,
        wal_segment_size,
        archive_mode,
        system_identifier,
        archiver,
        clock,
    })
}

/// Reads the `.ready` files through the server (`pg_ls_archive_statusdir()`, which needs a
/// superuser or the `pg_monitor` role), with ages measured by the server's clock.
pub async fn read_ready_via_server(client: &tokio_postgres::Client) -> Result<ReadyFiles, Error> {
    let rows = client
        .query(
            "select name, extract(epoch from clock_timestamp() - modification)::float8 \
             from pg_ls_archive_statusdir() where name like '%.ready'",
            &[],
        )
        .await
        .map_err(pg_err("cannot list the server's archive_status"))?;
    Ok(summarize_ready(
        rows.iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, f64>(1))),
        "server",
    ))
}

// ---------------------------------------------------------------------------
// Assessment
// ---------------------------------------------------------------------------

/// Everything `status` gathered.
#[derive(Clone, Debug)]
pub struct Inputs {
    /// The repository URL.
    pub repository: String,
    /// When the figures were gathered (this host's clock).
    pub now: DateTime<Utc>,
    /// The recovery point objective.
    pub rpo: Duration,
    /// The repository's descriptor, when it has one.
    pub descriptor: Option<Descriptor>,
    /// The archived WAL.
    pub wal: ArchivedWal,
    /// The server's figures, or why there are none (e.g. unreachable).
    pub server: Result<ServerFigures, String>,
    /// Where the server was sought (never with a password).
    pub server_address: String,
    /// The `.ready` files, why they could not be read, or `None` when there was neither a
    /// data directory nor a server to ask.
    pub ready: Option<Result<ReadyFiles, String>>,
    /// The backups.
    pub backups: Backups,
    /// How long gathering took.
    pub duration: Duration,
    /// wal-push/wal-fetch counters from the data directory's pg_wal, when readable.
    pub counters: Option<crate::metrics::Counters>,
}

/// The server part of a [`Report`].
#[derive(Clone, Debug, Serialize)]
pub struct ServerReport {
    /// Whether the server answered.
    pub reachable: bool,
    /// Where it was sought.
    pub address: String,
    /// Why it did not answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Its figures.
    #[serde(flatten)]
    pub figures: Option<ServerFigures>,
    /// Whether the archiver's last attempt failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub archiver_failing: Option<bool>,
}

/// The last complete backup.
#[derive(Clone, Debug, Serialize)]
pub struct LastBackup {
    /// Its name.
    pub name: String,
    /// When it ended (it is restorable from then on).
    pub stop_time: String,
    /// Its age in seconds.
    pub age_seconds: Option<f64>,
    /// Its start LSN.
    pub start_lsn: Lsn,
    /// Its stop LSN.
    pub stop_lsn: Lsn,
    /// Its timeline.
    pub timeline: u32,
}

/// The figures and the verdict (the JSON of `walarchive status --json`).
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The repository URL.
    pub repository: String,
    /// When the figures were gathered.
    #[serde(serialize_with = "ser_time")]
    pub checked_at: DateTime<Utc>,
    /// The recovery point objective in seconds.
    pub rpo_seconds: f64,
    /// True when the objective is demonstrably met: the exit status is 0.
    pub ok: bool,
    /// Why not.
    pub problems: Vec<String>,
    /// Worth knowing, but no failure.
    pub notes: Vec<String>,
    /// The newest archived segment.
    #[serde(serialize_with = "ser_opt_display")]
    pub newest_archived_segment: Option<SegmentName>,
    /// When the store wrote it.
    #[serde(serialize_with = "ser_opt_time")]
    pub newest_archived_time: Option<DateTime<Utc>>,
    /// Its age in seconds.
    pub newest_archived_age_seconds: Option<f64>,
    /// WAL objects in the repository.
    pub archived_wal_files: u64,
    /// Their stored size in bytes.
    pub archived_wal_bytes: u64,
    /// The server.
    pub server: ServerReport,
    /// `.ready` files waiting (when visible).
    pub ready_files: Option<u64>,
    /// The oldest of them.
    pub oldest_ready_file: Option<String>,
    /// Its age in seconds.
    pub oldest_ready_age_seconds: Option<f64>,
    /// Where the `.ready` files were read.
    pub ready_source: Option<String>,
    /// Why they could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready_error: Option<String>,
    /// Completed segments not in the repository (the segment being written is not counted).
    pub lag_segments: Option<u64>,
    /// How long the oldest of them has waited (see the module documentation), 0 when none.
    pub lag_seconds: Option<f64>,
    /// How `lag_seconds` was measured: `none waiting`, `oldest .ready file` or
    /// `newest archived segment's age`.
    pub lag_basis: Option<&'static str>,
    /// Complete backups.
    pub backups: u64,
    /// The newest complete backup.
    pub last_backup: Option<LastBackup>,
    /// How long gathering the figures took, in seconds.
    pub duration_seconds: f64,
    /// wal-push/wal-fetch counters (`pg_wal/walarchive-metrics.json`), when `--pgdata` was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counters: Option<crate::metrics::Counters>,
}

/// Computes the lags and the verdict.
pub fn assess(inputs: Inputs) -> Report {
    let Inputs {
        repository,
        now,
        rpo,
        descriptor,
        wal,
        server,
        server_address,
        ready,
        backups,
        duration,
        counters,
    } = inputs;
    let mut problems = Vec::new();
    let mut notes = Vec::new();
    let newest_age = wal.newest.map(|n| age_seconds(now, n.stored_at));

    let (figures, server_error) = match server {
        Ok(f) => (Some(f), None),
        Err(e) => {
            notes.push(format!("no server figures: {e}"));
            (None, Some(e))
        }
    };
    let (ready, ready_error) = match ready {
        Some(Ok(r)) => (Some(r), None),
        Some(Err(e)) => {
            notes.push(format!("cannot count the .ready files: {e}"));
            (None, Some(e))
        }
        None => (None, None),
    };

    // Lag in segments as the server sees it: completed segments the repository lacks.
    let server_lag = figures.as_ref().and_then(|f| {
        let pos = f.wal_position?;
        let newest = wal.newest?;
        if !crate::wal::is_valid_segment_size(f.wal_segment_size) {
            return None;
        }
        let current = pos.segment_number(f.wal_segment_size);
        let archived = newest.name.segment_number(f.wal_segment_size);
        Some(current.saturating_sub(archived + 1))
    });
    let lag_segments = match (server_lag, &ready) {
        (Some(s), Some(r)) => Some(s.max(r.segments)),
        (Some(s), None) => Some(s),
        (None, Some(r)) => Some(r.segments),
        (None, None) => None,
    };

    // Lag in seconds: see the module documentation.
    let ready_age = ready
        .as_ref()
        .filter(|r| r.count > 0)
        .and_then(|r| r.oldest_age_seconds);
    let unaccounted = match (server_lag, &ready) {
        (Some(s), Some(r)) => s > r.segments,
        (Some(s), None) => s > 0,
        (None, _) => false,
    };
    let approx = if unaccounted { newest_age } else { None };
    let (lag_seconds, lag_basis) = match (ready_age, approx) {
        (Some(r), Some(a)) if a > r => (Some(a), Some("newest archived segment's age")),
        (Some(r), _) => (Some(r), Some("oldest .ready file")),
        (None, Some(a)) => (Some(a), Some("newest archived segment's age")),
        (None, None) if server_lag.is_some() || ready.is_some() => {
            (Some(0.0), Some("none waiting"))
        }
        (None, None) => (None, None),
    };

    match (&wal.newest, &descriptor) {
        (None, None) => problems.push(format!(
            "no archived WAL: {repository} holds no walarchive repository (wrong URL, or \
             nothing was ever archived there: check archive_mode and archive_command)"
        )),
        (None, Some(_)) => problems.push(format!(
            "no archived WAL segment in {repository}{}",
            match (&figures, wal.highest_timeline) {
                (Some(f), Some(t)) => format!(
                    " on the server's timeline {} or before (only timeline {t})",
                    f.timeline
                ),
                _ => String::new(),
            }
        )),
        _ => {}
    }
    match lag_seconds {
        Some(l) if l > rpo.as_secs_f64() => problems.push(format!(
            "archive lag {} exceeds the RPO of {}",
            human_seconds(l),
            human_seconds(rpo.as_secs_f64())
        )),
        Some(_) => {}
        None if wal.newest.is_some() => problems.push(
            "cannot measure the archive lag: no server figures and no .ready files (give \
             --pg-conn, or --pgdata on the database host)"
                .into(),
        ),
        None => {}
    }
    if let Some(f) = &figures {
        let a = &f.archiver;
        if a.failing() {
            problems.push(format!(
                "archive_command is failing: the last attempt, on {} at {}, failed ({} failures \
                 since {}); the last success was {} (see the server log)",
                a.last_failed_wal.as_deref().unwrap_or("?"),
                a.last_failed_time.as_ref().map(rfc3339).unwrap_or_default(),
                a.failed_count,
                a.stats_reset
                    .as_ref()
                    .map(rfc3339)
                    .unwrap_or_else(|| "the statistics' reset".into()),
                match (&a.last_archived_wal, &a.last_archived_time) {
                    (Some(w), Some(t)) => format!("{w} at {}", rfc3339(t)),
                    _ => "never".into(),
                }
            ));
        }
        if !f.in_recovery && f.archive_mode == "off" {
            problems.push("archive_mode is off: the server archives nothing".into());
        }
        let server_major = u32::try_from(f.version_num / 10000).ok();
        let repo_major = descriptor
            .as_ref()
            .and_then(|d| crate::wal::pg_major_for_magic(d.wal_page_magic).or(d.pg_version));
        if let (Some(repo), Some(server)) = (repo_major, server_major.filter(|&m| m > 0)) {
            if repo != server {
                // After pg_upgrade: the system identifier differs too, but the major is what
                // the user must hear about (wal-push refuses it the same way).
                problems.push(format!(
                    "the repository holds PostgreSQL {repo}'s WAL but the server is PostgreSQL \
                     {server}: a repository holds one major version (after pg_upgrade, archive \
                     into a new repository and take a new base backup there)"
                ));
            }
        }
        if let (Some(d), Some(id)) = (&descriptor, &f.system_identifier) {
            if &d.system_identifier != id && repo_major == server_major {
                problems.push(format!(
                    "the repository belongs to another cluster (system identifier {}) than the \
                     server ({id}): is archive_command pointed at another repository?",
                    d.system_identifier
                ));
            }
        }
        if let Some(t) = wal.highest_timeline.filter(|t| t.0 > f.timeline) {
            notes.push(format!(
                "the repository holds timeline {t}, newer than the server's ({}): a restored \
                 clone or another server archives there too; figures use timeline {} and before",
                f.timeline, f.timeline
            ));
        }
        if f.in_recovery {
            notes.push(
                "the server is a standby: the lag is measured from its replay position".into(),
            );
        }
    }

    let last_backup = backups.last.as_ref().map(|m| LastBackup {
        name: m.name.clone(),
        stop_time: m.stop_time.clone(),
        age_seconds: manifest::parse_time(&m.stop_time).map(|t| age_seconds(now, t)),
        start_lsn: m.start_lsn,
        stop_lsn: m.stop_lsn,
        timeline: m.timeline,
    });
    let archiver_failing = figures.as_ref().map(|f| f.archiver.failing());
    Report {
        ok: problems.is_empty(),
        repository,
        checked_at: now,
        rpo_seconds: rpo.as_secs_f64(),
        problems,
        notes,
        newest_archived_segment: wal.newest.map(|n| n.name),
        newest_archived_time: wal.newest.map(|n| n.stored_at),
        newest_archived_age_seconds: newest_age,
        archived_wal_files: wal.files,
        archived_wal_bytes: wal.bytes,
        server: ServerReport {
            reachable: figures.is_some(),
            address: server_address,
            error: server_error,
            figures,
            archiver_failing,
        },
        ready_files: ready.as_ref().map(|r| r.count),
        oldest_ready_file: ready.as_ref().and_then(|r| r.oldest.clone()),
        oldest_ready_age_seconds: ready.as_ref().and_then(|r| r.oldest_age_seconds),
        ready_source: ready.as_ref().map(|r| r.source.clone()),
        ready_error,
        lag_segments,
        lag_seconds,
        lag_basis,
        backups: backups.count,
        last_backup,
        duration_seconds: duration.as_secs_f64(),
        counters,
    }
}

#[cfg(test)]
mod tests;
