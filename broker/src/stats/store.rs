//! The samples file: every instance's [`Sample`]s in one `redb` file on the broker's disk.
//!
//! Why a file of the broker's and not etcd: samples are many small writes (every instance
//! every 15 s) that matter to nobody but the charts; etcd is the broker's consensus store,
//! sized and backed up for decisions, and every write there is replicated and kept in its
//! history until compaction. A single embedded file (ACID, crash-safe, no server) keeps
//! the charts across a broker restart at no cost to etcd; a broker on another machine simply
//! starts a history of its own. Two tables, both keyed by (instance id, milliseconds):
//! every sample for `full_retention`, and one bucket per `coarse_interval` for
//! `coarse_retention` ([`merge`] says how a bucket sums up its samples). Pruned as it goes.

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::Sample;
use crate::state::Timestamp;

const FULL: TableDefinition<'static, (&'static str, i64), &'static [u8]> =
    TableDefinition::new("samples");
const COARSE: TableDefinition<'static, (&'static str, i64), &'static [u8]> =
    TableDefinition::new("samples_coarse");

/// A failure of the samples file (its text is for the broker's log).
#[derive(Debug, thiserror::Error)]
#[error("the samples file: {0}")]
pub struct StoreError(String);

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

/// How long samples are kept.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retention {
    /// Every sample, this long.
    pub full: Duration,
    /// One bucket per this interval ...
    pub coarse_interval: Duration,
    /// ... this long.
    pub coarse: Duration,
}

/// A coarse bucket: the samples of one interval summed up, and how many had a rate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    /// The summary (its `at` is the bucket's start).
    pub sample: Sample,
    /// Samples whose `tps` went into the mean.
    pub tps_n: u32,
}

fn max_opt<T: PartialOrd + Copy>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(x), Some(y)) => Some(if y > x { y } else { x }),
        (x, None) => x,
        (None, y) => y,
    }
}

/// Adds `s` to the bucket starting at `start`: lags and connections keep their maximum (the
/// worst of the interval is what an operator looks for), `tps` its mean, the database size its
/// latest value.
pub fn merge(bucket: Option<Bucket>, start: DateTime<Utc>, s: &Sample) -> Bucket {
    let Some(mut b) = bucket else {
        return Bucket {
            sample: Sample {
                at: Timestamp(start),
                ..s.clone()
            },
            tps_n: u32::from(s.tps.is_some()),
        };
    };
    let m = &mut b.sample;
    m.archive_lag_seconds = max_opt(m.archive_lag_seconds, s.archive_lag_seconds);
    m.replication_lag_bytes = max_opt(m.replication_lag_bytes, s.replication_lag_bytes);
    m.replication_lag_seconds = max_opt(m.replication_lag_seconds, s.replication_lag_seconds);
    m.connections = max_opt(m.connections, s.connections);
    if s.database_bytes.is_some() {
        m.database_bytes = s.database_bytes;
    }
    if let Some(t) = s.tps {
        let n = f64::from(b.tps_n);
        m.tps = Some((m.tps.unwrap_or(0.0) * n + t) / (n + 1.0));
        b.tps_n += 1;
    }
    b
}

/// The start of the bucket of length `interval` that `t` falls in (milliseconds).
pub fn bucket_start(t: i64, interval: Duration) -> i64 {
    let i = (interval.as_millis() as i64).max(1);
    t.div_euclid(i) * i
}

fn millis_time(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The samples file.
pub struct SampleStore {
    db: Database,
    retention: Retention,
}

impl std::fmt::Debug for SampleStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SampleStore")
            .field("retention", &self.retention)
            .finish_non_exhaustive()
    }
}

impl SampleStore {
    /// Opens (or creates) the file at `path`.
    pub fn open(path: &Path, retention: Retention) -> Result<SampleStore, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let db = Database::create(path).map_err(err)?;
        let w = db.begin_write().map_err(err)?;
        w.open_table(FULL).map_err(err)?;
        w.open_table(COARSE).map_err(err)?;
        w.commit().map_err(err)?;
        Ok(SampleStore { db, retention })
    }

    /// A store in memory only (its samples die with the process): what the broker samples
    /// into when its file cannot be opened.
    pub fn in_memory(retention: Retention) -> Result<SampleStore, StoreError> {
        let db = redb::Builder::new()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(err)?;
        let w = db.begin_write().map_err(err)?;
        w.open_table(FULL).map_err(err)?;
        w.open_table(COARSE).map_err(err)?;
        w.commit().map_err(err)?;
        Ok(SampleStore { db, retention })
    }

    /// Appends one sample per instance (taken at `now`) and prunes those instances' series.
    pub fn append(
        &self,
        samples: &[(String, Sample)],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let now = now.timestamp_millis();
        let full_cut = now.saturating_sub(ms(self.retention.full));
        let coarse_cut = now.saturating_sub(ms(self.retention.coarse));
        let w = self.db.begin_write().map_err(err)?;
        {
            let mut full = w.open_table(FULL).map_err(err)?;
            let mut coarse = w.open_table(COARSE).map_err(err)?;
            for (id, s) in samples {
                let at = s.at.0.timestamp_millis();
                let value = serde_json::to_vec(s).map_err(err)?;
                full.insert((id.as_str(), at), value.as_slice())
                    .map_err(err)?;
                let start = bucket_start(at, self.retention.coarse_interval);
                let old = coarse
                    .get((id.as_str(), start))
                    .map_err(err)?
                    .and_then(|v| serde_json::from_slice::<Bucket>(v.value()).ok());
                let b = merge(old, millis_time(start), s);
                let value = serde_json::to_vec(&b).map_err(err)?;
                coarse
                    .insert((id.as_str(), start), value.as_slice())
                    .map_err(err)?;
                full.retain_in((id.as_str(), i64::MIN)..(id.as_str(), full_cut), |_, _| {
                    false
                })
                .map_err(err)?;
                coarse
                    .retain_in(
                        (id.as_str(), i64::MIN)..(id.as_str(), coarse_cut),
                        |_, _| false,
                    )
                    .map_err(err)?;
            }
        }
        w.commit().map_err(err)
    }

    /// Drops every sample older than the retention, of every instance (also those no longer
    /// sampled: deleted instances' series end this way).
    pub fn prune(&self, now: DateTime<Utc>) -> Result<(), StoreError> {
        let now = now.timestamp_millis();
        let full_cut = now.saturating_sub(ms(self.retention.full));
        let coarse_cut = now.saturating_sub(ms(self.retention.coarse));
        let w = self.db.begin_write().map_err(err)?;
        {
            let mut full = w.open_table(FULL).map_err(err)?;
            full.retain(|k, _| k.1 >= full_cut).map_err(err)?;
            let mut coarse = w.open_table(COARSE).map_err(err)?;
            coarse.retain(|k, _| k.1 >= coarse_cut).map_err(err)?;
        }
        w.commit().map_err(err)
    }

    /// Instance `id`'s samples at or after `since`, oldest first: the coarse buckets before
    /// the full-resolution retention, every sample within it.
    pub fn series(
        &self,
        id: &str,
        since: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Vec<Sample>, StoreError> {
        let since = since.timestamp_millis();
        let full_cut = now
            .timestamp_millis()
            .saturating_sub(ms(self.retention.full));
        let r = self.db.begin_read().map_err(err)?;
        let mut out = Vec::new();
        if since < full_cut {
            let coarse = r.open_table(COARSE).map_err(err)?;
            let from = bucket_start(since, self.retention.coarse_interval);
            for e in coarse.range((id, from)..(id, full_cut)).map_err(err)? {
                let (_, v) = e.map_err(err)?;
                if let Ok(b) = serde_json::from_slice::<Bucket>(v.value()) {
                    out.push(b.sample);
                }
            }
        }
        let full = r.open_table(FULL).map_err(err)?;
        for e in full
            .range((id, since.max(full_cut))..=(id, i64::MAX))
            .map_err(err)?
        {
            let (_, v) = e.map_err(err)?;
            if let Ok(s) = serde_json::from_slice::<Sample>(v.value()) {
                out.push(s);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at: DateTime<Utc>, lag: f64, tps: f64, size: u64) -> Sample {
        Sample {
            at: Timestamp(at),
            archive_lag_seconds: Some(lag),
            replication_lag_bytes: Some(lag as u64 * 10),
            replication_lag_seconds: None,
            tps: Some(tps),
            connections: Some(lag as u32),
            database_bytes: Some(size),
        }
    }

    #[test]
    fn a_bucket_keeps_the_worst_lag_the_mean_rate_and_the_last_size() {
        let t0 = Utc.timestamp_millis_opt(600_000).unwrap();
        let mut b = None;
        for (lag, tps, size) in [(1.0, 10.0, 100), (7.0, 20.0, 110), (3.0, 30.0, 120)] {
            b = Some(merge(b, t0, &sample(t0, lag, tps, size)));
        }
        let b = b.unwrap();
        assert_eq!(b.sample.at, Timestamp(t0));
        assert_eq!(b.sample.archive_lag_seconds, Some(7.0));
        assert_eq!(b.sample.replication_lag_bytes, Some(70));
        assert_eq!(b.sample.connections, Some(7));
        assert_eq!(b.sample.tps, Some(20.0));
        assert_eq!(b.sample.database_bytes, Some(120));
        assert_eq!(b.tps_n, 3);
        // A sample without a rate (the first after a restart) leaves the mean alone.
        let mut s = sample(t0, 0.0, 0.0, 130);
        s.tps = None;
        let b = merge(Some(b), t0, &s);
        assert_eq!((b.sample.tps, b.tps_n), (Some(20.0), 3));
    }

    #[test]
    fn buckets_start_on_their_interval() {
        let ten = Duration::from_secs(600);
        assert_eq!(bucket_start(1_234_567, ten), 1_200_000);
        assert_eq!(bucket_start(1_200_000, ten), 1_200_000);
        assert_eq!(bucket_start(-1, ten), -600_000);
    }

    /// Every sample within `full`, one per bucket before it, nothing past `coarse`; and the
    /// file read again after it is reopened.
    #[test]
    fn retention_and_downsampling() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("samples.redb");
        let retention = Retention {
            full: Duration::from_secs(3600),
            coarse_interval: Duration::from_secs(600),
            coarse: Duration::from_secs(6 * 3600),
        };
        let start = Utc.timestamp_opt(1_800_000_000, 0).unwrap();
        let step = chrono::Duration::seconds(60);
        {
            let store = SampleStore::open(&path, retention).unwrap();
            // Ten hours of one sample a minute, for two instances, written an hour at a time.
            for hour in 0..10 {
                let mut batch = Vec::new();
                for i in hour * 60..(hour + 1) * 60 {
                    let s = sample(start + step * i, f64::from(i % 10), 1.0, i as u64);
                    batch.push(("a".to_string(), s.clone()));
                    batch.push(("b".to_string(), s));
                }
                store
                    .append(&batch, start + step * ((hour + 1) * 60 - 1))
                    .unwrap();
            }
        }
        let store = SampleStore::open(&path, retention).unwrap();
        let now = start + step * 599;
        let all = store.series("a", start, now).unwrap();
        // Beyond 6 h nothing; 6 h..1 h coarse (30 buckets of 10 min); the last hour every minute.
        let cut = now - chrono::Duration::hours(1);
        let (coarse, full): (Vec<_>, Vec<_>) = all.iter().partition(|s| s.at.0 < cut);
        assert_eq!(full.len(), 61, "{:?}", full.first());
        assert!((29..=31).contains(&coarse.len()), "{}", coarse.len());
        assert!(coarse.iter().all(|s| s.archive_lag_seconds == Some(9.0)));
        assert!(coarse[0].at.0 >= now - chrono::Duration::hours(6) - chrono::Duration::minutes(10));
        assert!(all.windows(2).all(|w| w[0].at < w[1].at));
        // `since` within the last hour: only full-resolution samples from it.
        let recent = store
            .series("a", now - chrono::Duration::minutes(5), now)
            .unwrap();
        assert_eq!(recent.len(), 6);
        assert_eq!(store.series("c", start, now).unwrap(), vec![]);
        // A later prune (an instance no longer sampled) empties the file.
        store.prune(now + chrono::Duration::hours(7)).unwrap();
        assert!(store.series("b", start, now).unwrap().is_empty());
        // A second opening of the file (another broker process) is refused: the broker then
        // keeps its samples in memory.
        assert!(SampleStore::open(&path, retention).is_err());
        let memory = SampleStore::in_memory(retention).unwrap();
        memory
            .append(&[("a".into(), sample(now, 1.0, 1.0, 1))], now)
            .unwrap();
        assert_eq!(memory.series("a", start, now).unwrap().len(), 1);
    }
}
