//! Rendering a status [`Report`] in the Prometheus text exposition format. The report is data (also serialized as JSON); how it is shown lives here, apart
//! from how it is computed.
//!
//! The exposition is written by hand rather than with `prometheus-client`: that crate's
//! registry renders its own `# HELP`/`# TYPE`/`# EOF` framing (OpenMetrics, with `_total`
//! added to counter names), while this output is the plain text format 0.0.4 with fixed metric
//! names that alert rules and dashboards already use, and series left out when a figure is
//! unknown.

use chrono::{DateTime, Utc};

use super::Report;
use crate::manifest;

// ---------------------------------------------------------------------------
// Prometheus
// ---------------------------------------------------------------------------

/// A sample value in the text format (`NaN`, `+Inf`, `-Inf` spelled as Prometheus does).
pub(crate) fn value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

/// Escapes a label value (backslash, double quote, line feed).
fn label_value(s: &str) -> String {
    s.replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Exposition(String);

impl Exposition {
    fn metric(&mut self, name: &str, kind: &str, help: &str, samples: &[(&str, f64)]) {
        use std::fmt::Write;
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(self.0, "{name}{labels} {}", value(*v));
        }
    }

    fn gauge(&mut self, name: &str, help: &str, v: Option<f64>) {
        if let Some(v) = v {
            self.metric(name, "gauge", help, &[("", v)]);
        }
    }

    fn counter(&mut self, name: &str, help: &str, v: Option<f64>) {
        if let Some(v) = v {
            self.metric(name, "counter", help, &[("", v)]);
        }
    }
}

fn flag(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

/// The report in the Prometheus text exposition format (version 0.0.4). Figures that are
/// unknown (no server, no data directory) are left out rather than given a made-up value,
/// so that alert rules see an absent series, not a false zero.
pub fn prometheus(r: &Report) -> String {
    let mut e = Exposition(String::new());
    e.0.push_str(
        "# walarchive status: wal-push and wal-fetch run as one process per WAL file; they add\n\
         # their outcomes to pg_wal/walarchive-metrics.json, read here with --pgdata\n\
         # (walarchive_push_*, walarchive_fetch_*). PostgreSQL's own pg_stat_archiver counts\n\
         # archive_command's outcomes too (walarchive_pg_*).\n",
    );
    let f = r.server.figures.as_ref();
    e.metric(
        "walarchive_info",
        "gauge",
        "Constant 1, labelled with the repository checked and the walarchive version.",
        &[(
            &format!(
                "{{repository=\"{}\",version=\"{}\"}}",
                label_value(&r.repository),
                env!("CARGO_PKG_VERSION")
            ),
            1.0,
        )],
    );
    e.gauge(
        "walarchive_rpo_ok",
        "1 when the recovery point objective is demonstrably met (status exits 0): WAL is \
         archived, the lag is known and within the RPO, and archive_command is not failing.",
        Some(flag(r.ok)),
    );
    e.gauge(
        "walarchive_rpo_seconds",
        "The recovery point objective (--rpo) in seconds.",
        Some(r.rpo_seconds),
    );
    e.gauge(
        "walarchive_archive_lag_seconds",
        "How long the oldest completed WAL segment not yet archived has waited (0 when none \
         waits): the age of the oldest .ready file, or the newest archived segment's age when \
         the repository misses segments the .ready files do not account for.",
        r.lag_seconds,
    );
    e.gauge(
        "walarchive_archive_lag_segments",
        "Completed WAL segments not in the repository (the segment being written is not counted).",
        r.lag_segments.map(|v| v as f64),
    );
    e.gauge(
        "walarchive_last_archived_timestamp_seconds",
        "When the store wrote the newest archived WAL segment (Unix time).",
        r.newest_archived_time.as_ref().map(epoch),
    );
    e.gauge(
        "walarchive_last_archived_age_seconds",
        "Age of the newest archived WAL segment.",
        r.newest_archived_age_seconds,
    );
    e.gauge(
        "walarchive_last_archived_timeline",
        "Timeline of the newest archived WAL segment.",
        r.newest_archived_segment.map(|s| f64::from(s.timeline.0)),
    );
    e.gauge(
        "walarchive_ready_files",
        "WAL files PostgreSQL completed and has not archived yet (.ready files).",
        r.ready_files.map(|v| v as f64),
    );
    e.gauge(
        "walarchive_oldest_ready_age_seconds",
        "Age of the oldest .ready file.",
        r.oldest_ready_age_seconds,
    );
    e.gauge(
        "walarchive_repository_wal_files",
        "WAL objects in the repository (segments, partial segments, history files).",
        Some(r.archived_wal_files as f64),
    );
    e.gauge(
        "walarchive_repository_wal_bytes",
        "Stored (compressed) size of the repository's WAL objects in bytes.",
        Some(r.archived_wal_bytes as f64),
    );
    e.gauge(
        "walarchive_backups",
        "Complete base backups in the repository.",
        Some(r.backups as f64),
    );
    let lb = r.last_backup.as_ref();
    e.gauge(
        "walarchive_last_backup_timestamp_seconds",
        "When the newest complete base backup ended (Unix time).",
        lb.and_then(|b| manifest::parse_time(&b.stop_time))
            .as_ref()
            .map(epoch),
    );
    e.gauge(
        "walarchive_last_backup_age_seconds",
        "Age of the newest complete base backup.",
        lb.and_then(|b| b.age_seconds),
    );
    e.gauge(
        "walarchive_pg_up",
        "1 when the server answered, 0 when it could not be reached or queried.",
        Some(flag(f.is_some())),
    );
    e.gauge(
        "walarchive_pg_in_recovery",
        "1 when the server is a standby.",
        f.map(|f| flag(f.in_recovery)),
    );
    e.gauge(
        "walarchive_pg_wal_position_bytes",
        "The server's current WAL write position (a standby: its replay position), as a byte offset.",
        f.and_then(|f| f.wal_position).map(|l| l.0 as f64),
    );
    e.gauge(
        "walarchive_pg_timeline",
        "The server's timeline.",
        f.map(|f| f64::from(f.timeline)),
    );
    let a = f.map(|f| &f.archiver);
    e.counter(
        "walarchive_pg_archived_total",
        "WAL files archive_command archived successfully (pg_stat_archiver.archived_count; \
         walarchive wal-push is one process per file, so PostgreSQL does the counting).",
        a.map(|a| a.archived_count as f64),
    );
    e.counter(
        "walarchive_pg_archive_failed_total",
        "Failed archive_command runs (pg_stat_archiver.failed_count; walarchive wal-push is \
         one process per file, so PostgreSQL does the counting).",
        a.map(|a| a.failed_count as f64),
    );
    e.gauge(
        "walarchive_pg_last_archived_timestamp_seconds",
        "When archive_command last succeeded (pg_stat_archiver.last_archived_time, Unix time).",
        a.and_then(|a| a.last_archived_time.as_ref().map(epoch)),
    );
    e.gauge(
        "walarchive_pg_last_archive_failure_timestamp_seconds",
        "When archive_command last failed (pg_stat_archiver.last_failed_time, Unix time).",
        a.and_then(|a| a.last_failed_time.as_ref().map(epoch)),
    );
    e.gauge(
        "walarchive_pg_archive_failing",
        "1 when archive_command's last attempt failed (a failure newer than the last success).",
        a.map(|a| flag(a.failing())),
    );
    e.gauge(
        "walarchive_pg_archiver_stats_reset_timestamp_seconds",
        "When pg_stat_archiver was last reset (the counters' origin, Unix time).",
        a.and_then(|a| a.stats_reset.as_ref().map(epoch)),
    );
    e.gauge(
        "walarchive_status_timestamp_seconds",
        "When these figures were gathered (Unix time).",
        Some(epoch(&r.checked_at)),
    );
    e.gauge(
        "walarchive_status_duration_seconds",
        "How long gathering these figures took (server queries and repository listings).",
        Some(r.duration_seconds),
    );
    if let Some(c) = &r.counters {
        let n = |v: u64| Some(v as f64);
        e.counter(
            "walarchive_push_total",
            "WAL files newly archived by wal-push.",
            n(c.push_total),
        );
        e.counter(
            "walarchive_push_already_archived_total",
            "wal-push calls for files already archived with the same content.",
            n(c.push_already_archived_total),
        );
        e.counter(
            "walarchive_push_errors_total",
            "wal-push calls that failed.",
            n(c.push_errors_total),
        );
        e.counter(
            "walarchive_push_bytes_total",
            "Uncompressed bytes archived by wal-push.",
            n(c.push_bytes_total),
        );
        e.counter(
            "walarchive_push_stored_bytes_total",
            "Bytes stored by wal-push (compressed, with headers).",
            n(c.push_stored_bytes_total),
        );
        e.counter(
            "walarchive_push_seconds_total",
            "Seconds spent in wal-push.",
            Some(c.push_seconds_total),
        );
        e.counter(
            "walarchive_fetch_total",
            "WAL files restored by wal-fetch.",
            n(c.fetch_total),
        );
        e.counter(
            "walarchive_fetch_not_found_total",
            "wal-fetch calls for files the repository does not have.",
            n(c.fetch_not_found_total),
        );
        e.counter(
            "walarchive_fetch_errors_total",
            "wal-fetch calls that failed.",
            n(c.fetch_errors_total),
        );
        e.counter(
            "walarchive_fetch_standby_waits_total",
            "wal-fetch storage failures on a standby, answered 'not available' so that \
             PostgreSQL kept waiting (the store was unreachable).",
            n(c.fetch_standby_waits_total),
        );
        e.counter(
            "walarchive_fetch_bytes_total",
            "Bytes restored by wal-fetch.",
            n(c.fetch_bytes_total),
        );
        e.counter(
            "walarchive_fetch_seconds_total",
            "Seconds spent in wal-fetch.",
            Some(c.fetch_seconds_total),
        );
    }
    e.0
}

fn epoch(t: &DateTime<Utc>) -> f64 {
    t.timestamp_micros() as f64 / 1e6
}
