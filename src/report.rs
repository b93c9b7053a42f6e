//! What commands share besides their output: sizes for people ([`human`]), and the outcome
//! counters that `wal-push` and `wal-fetch` keep in `pg_wal` ([`count`], [`note_error`]).

use walarchive::metrics::{self, Counters};

pub(crate) fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Adds one call's outcome to the counters in the `pg_wal` directory `wal_path` is in.
pub(crate) fn count(wal_path: &std::path::Path, change: impl FnOnce(&mut Counters)) {
    let Some(dir) = metrics::dir_for(wal_path) else {
        return;
    };
    if let Err(e) = metrics::update(&dir, change) {
        tracing::debug!(
            "cannot update {}: {e}",
            dir.join(metrics::FILE_NAME).display()
        );
    }
}

pub(crate) fn note_error(c: &mut Counters, e: &dyn std::fmt::Display) {
    c.last_error = Some(e.to_string().replace('\n', " "));
    c.last_error_time = Some(chrono::Utc::now().to_rfc3339());
}
