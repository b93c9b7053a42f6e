//! Retention: deciding what may be deleted, and deleting it in a safe order.
//!
//! Every decision comes from what the backups themselves recorded — start and stop LSN,
//! timeline, start time — never from object modification times, which change when a
//! repository is copied or migrated. The rules err on keeping:
//!
//! - A WAL file is kept when its segment ends after the start of the oldest kept backup
//!   (whatever its timeline), or when a kept permanent backup needs it for consistency
//!   (start to stop LSN on its own timeline). History files are always kept.
//! - Without any complete backup, no WAL is deleted (it may serve a base backup taken by
//!   other means), except by `delete everything`.
//! - Deletion removes a backup's manifest first, so an interrupted deletion leaves an
//!   incomplete backup (never listed, never restored) rather than a complete-looking one
//!   with missing parts; WAL goes oldest first, so what remains is still contiguous.
//! - Only the repository's own objects are ever deleted: a key must parse as exactly the key
//!   walarchive writes ([`crate::layout`]). Anything else under the prefix (another
//!   repository stored inside this one, say at `wal/`, whose keys end like WAL file names;
//!   stray files) is left alone and reported.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::backup::needed_segments;
use crate::catalog::{self, BackupEntry};
use crate::layout::{parse_key, OwnKey};
use crate::manifest::{backup_key, parse_time, Manifest};
use crate::repo::{Listed, Repository};
use crate::wal::{SegmentName, TimelineId, WalFileName};
use crate::Error;

/// Which backups to delete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Keep the newest N complete backups (and permanent ones).
    Retain(u32),
    /// Delete the complete backups older than this backup (which is kept).
    BeforeBackup(String),
    /// Delete the complete backups that are not needed to recover to this time: the newest
    /// backup ending before it is kept, older ones go.
    BeforeTime(DateTime<Utc>),
    /// Delete every backup and all WAL; permanent backups too when `force`.
    Everything {
        /// Also delete permanent backups.
        force: bool,
    },
    /// Delete incomplete backups started longer ago than the given age, and WAL older than
    /// the oldest backup.
    Garbage {
        /// Minimum age of an incomplete backup to count as abandoned.
        older_than: Duration,
    },
}

/// What a deletion will do.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Plan {
    /// Complete backups kept.
    pub keep_backups: Vec<String>,
    /// Backups (complete or not) deleted.
    pub delete_backups: Vec<String>,
    /// WAL files deleted, oldest first.
    pub delete_wal: Vec<String>,
    /// Every object deleted (keys relative to the repository root), in deletion order.
    pub objects: Vec<String>,
    /// Bytes those objects occupy.
    pub bytes: u64,
    /// Damaged or young incomplete backups left alone, with the reason.
    pub left_alone: Vec<String>,
    /// Keys under the prefix that are not the repository's own objects (another repository
    /// nested in it, stray files): never deleted.
    pub not_ours: Vec<String>,
}

fn backup_time(e: &BackupEntry) -> Option<DateTime<Utc>> {
    e.manifest
        .as_ref()
        .map(|m| m.start_time.as_str())
        .or(e.started.as_ref().map(|s| s.start_time.as_str()))
        .and_then(parse_time)
}

/// Works out what `policy` deletes, without deleting anything.
pub async fn plan(repo: &Repository, policy: &Policy, now: DateTime<Utc>) -> Result<Plan, Error> {
    let entries = catalog::list_backups(repo, true).await?;
    let complete: Vec<&BackupEntry> = entries.iter().filter(|e| e.is_complete()).collect();
    let mut delete: BTreeSet<String> = BTreeSet::new();
    let mut plan = Plan::default();
    match policy {
        Policy::Retain(n) => {
            let cut = complete.len().saturating_sub(*n as usize);
            for e in &complete[..cut] {
                if !e.permanent {
                    delete.insert(e.name.clone());
                }
            }
        }
        Policy::BeforeBackup(name) => {
            let pos = complete
                .iter()
                .position(|e| &e.name == name)
                .ok_or_else(|| Error::NotFound {
                    key: format!("complete backup {name}"),
                })?;
            for e in &complete[..pos] {
                if !e.permanent {
                    delete.insert(e.name.clone());
                }
            }
        }
        Policy::BeforeTime(t) => {
            // The newest backup that ends before t serves a recovery to t: keep it.
            let ends_before = |e: &&BackupEntry| {
                e.manifest
                    .as_ref()
                    .and_then(|m| parse_time(&m.stop_time))
                    .is_some_and(|stop| stop <= *t)
            };
            if let Some(pos) = complete.iter().rposition(ends_before) {
                for e in &complete[..pos] {
                    if !e.permanent {
                        delete.insert(e.name.clone());
                    }
                }
            }
        }
        Policy::Everything { force } => {
            if let Some(p) = entries.iter().find(|e| e.permanent && !force) {
                return Err(Error::BadInput {
                    path: "delete everything".into(),
                    reason: format!(
                        "backup {} is permanent: unmark it (backup-mark --unmark) or pass --force",
                        p.name
                    ),
                });
            }
            delete.extend(entries.iter().map(|e| e.name.clone()));
        }
        Policy::Garbage { older_than } => {
            for e in entries.iter().filter(|e| !e.is_complete()) {
                if e.damaged.is_some() {
                    plan.left_alone.push(format!(
                        "{}: damaged manifest (inspect it before deleting)",
                        e.name
                    ));
                    continue;
                }
                let age = backup_time(e).map(|t| now.signed_duration_since(t));
                let old_enough = age.is_none_or(|a| a.to_std().unwrap_or_default() >= *older_than);
                if old_enough {
                    delete.insert(e.name.clone());
                } else {
                    plan.left_alone.push(format!(
                        "{}: incomplete but younger than {older_than:?} (may still be running)",
                        e.name
                    ));
                }
            }
        }
    }

    // One listing of the whole prefix: what is ours, and what is not (reported, kept).
    let mut wal_objects = Vec::new();
    let mut backup_objects: BTreeMap<String, Vec<Listed>> = BTreeMap::new();
    for o in repo.list("").await? {
        match parse_key(&o.key) {
            Some(OwnKey::Wal(name)) => wal_objects.push((name, o)),
            Some(OwnKey::Backup { name, .. }) => backup_objects.entry(name).or_default().push(o),
            Some(OwnKey::Descriptor) => {}
            None => plan.not_ours.push(o.key),
        }
    }
    if !plan.not_ours.is_empty() {
        tracing::warn!(
            "{} object(s) under {} are not this repository's and are left alone (another repository nested in it? stray files?), e.g. {}",
            plan.not_ours.len(),
            repo.url(),
            plan.not_ours[0]
        );
    }

    // Backups: manifest first, then the rest.
    for name in &delete {
        let mut objects = backup_objects.remove(name).unwrap_or_default();
        let manifest = backup_key(name, "manifest.json");
        objects.sort_by_key(|o| (o.key != manifest, o.key.clone()));
        for o in objects {
            plan.bytes += o.size;
            plan.objects.push(o.key);
        }
        plan.delete_backups.push(name.clone());
    }
    let kept: Vec<&Manifest> = complete
        .iter()
        .filter(|e| !delete.contains(&e.name))
        .filter_map(|e| e.manifest.as_ref())
        .collect();
    plan.keep_backups = kept.iter().map(|m| m.name.clone()).collect();

    // WAL.
    let everything = matches!(policy, Policy::Everything { .. });
    if everything || !kept.is_empty() {
        let permanent: Vec<&Manifest> = complete
            .iter()
            .filter(|e| e.permanent && !delete.contains(&e.name))
            .filter_map(|e| e.manifest.as_ref())
            .collect();
        let keeper = WalKeeper::new(&kept, &permanent);
        let mut wal: Vec<(SegmentKey, String, u64)> = Vec::new();
        for (name, o) in wal_objects {
            if everything || !keeper.keeps(&name) {
                wal.push((SegmentKey::of(&name, keeper.segsize), o.key, o.size));
            }
        }
        wal.sort();
        for (_, key, size) in wal {
            plan.bytes += size;
            plan.delete_wal
                .push(key.rsplit('/').next().unwrap_or(&key).to_string());
            plan.objects.push(key);
        }
    }
    Ok(plan)
}

/// Orders WAL deletions oldest first (history files, which only `everything` deletes, last).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct SegmentKey(u64, u32, u8);

impl SegmentKey {
    fn of(name: &WalFileName, segsize: u64) -> Self {
        match name.segment() {
            Some(s) => SegmentKey(s.start_lsn(segsize).0, s.timeline.0, 0),
            None => SegmentKey(u64::MAX, name.timeline().0, 1),
        }
    }
}

/// Decides which WAL files the kept backups need.
struct WalKeeper {
    segsize: u64,
    /// Start of the oldest kept non-permanent backup (or of the oldest kept backup).
    min_start: Option<u64>,
    /// Segments permanent backups need for consistency.
    pinned: BTreeSet<SegmentName>,
}

impl WalKeeper {
    fn new(kept: &[&Manifest], permanent: &[&Manifest]) -> Self {
        let segsize = kept.first().map(|m| m.wal_segment_size).unwrap_or(16 << 20);
        let non_permanent: Vec<&&Manifest> = kept
            .iter()
            .filter(|m| !permanent.iter().any(|p| p.name == m.name))
            .collect();
        let base: Vec<&Manifest> = if non_permanent.is_empty() {
            kept.to_vec()
        } else {
            non_permanent.into_iter().copied().collect()
        };
        let min_start = base.iter().map(|m| m.start_lsn.0).min();
        let pinned = permanent
            .iter()
            .flat_map(|m| needed_segments(TimelineId(m.timeline), m.start_lsn, m.stop_lsn, segsize))
            .collect();
        WalKeeper {
            segsize,
            min_start,
            pinned,
        }
    }

    fn keeps(&self, name: &WalFileName) -> bool {
        let Some(seg) = name.segment() else {
            return true; // history files
        };
        if self.pinned.contains(&seg) {
            return true;
        }
        let end = seg.start_lsn(self.segsize).0 + self.segsize;
        self.min_start.is_some_and(|start| end > start)
    }
}

/// Deletes what `plan` lists, in its order. Returns the number of objects deleted.
pub async fn execute(repo: &Repository, plan: &Plan) -> Result<usize, Error> {
    for key in &plan.objects {
        repo.delete(key).await?;
    }
    Ok(plan.objects.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(name: &str, tli: u32, start: &str, stop: &str) -> Manifest {
        Manifest::for_tests(name, tli, start.parse().unwrap(), stop.parse().unwrap())
    }

    fn n(s: &str) -> WalFileName {
        s.parse().unwrap()
    }

    #[test]
    fn keeps_wal_from_the_oldest_kept_backup_and_what_permanent_ones_need() {
        let b1 = manifest("b1", 1, "0/200028", "0/200100"); // permanent
        let b3 = manifest("b3", 2, "0/800028", "0/800100");
        let k = WalKeeper::new(&[&b1, &b3], &[&b1]);
        assert!(
            k.keeps(&n("000000010000000000000002")),
            "pinned by the permanent backup"
        );
        assert!(!k.keeps(&n("000000010000000000000001")));
        assert!(
            !k.keeps(&n("000000010000000000000005")),
            "between the permanent backup and the oldest other"
        );
        assert!(!k.keeps(&n("000000020000000000000007")));
        assert!(k.keeps(&n("000000020000000000000008")), "holds b3's start");
        assert!(
            k.keeps(&n("000000010000000000000009")),
            "after the oldest start, on any timeline"
        );
        assert!(k.keeps(&n("000000010000000000000008.partial")));
        assert!(k.keeps(&n("00000002.history")));
        assert!(!k.keeps(&n("000000010000000000000003.00000028.backup")));
    }

    #[test]
    fn only_permanent_backups_left() {
        let b1 = manifest("b1", 1, "0/200028", "0/300100");
        let k = WalKeeper::new(&[&b1], &[&b1]);
        assert!(k.keeps(&n("000000010000000000000002")));
        assert!(k.keeps(&n("000000010000000000000003")));
        assert!(k.keeps(&n("000000010000000000000004")), "after its start");
        assert!(!k.keeps(&n("000000010000000000000001")));
    }

    #[test]
    fn deletion_order_is_oldest_first_history_last() {
        let seg = 1 << 20;
        let mut keys = [
            SegmentKey::of(&n("00000002.history"), seg),
            SegmentKey::of(&n("000000020000000000000003"), seg),
            SegmentKey::of(&n("000000010000000000000001"), seg),
        ];
        keys.sort();
        assert_eq!(keys[0], SegmentKey::of(&n("000000010000000000000001"), seg));
        assert_eq!(keys[2], SegmentKey::of(&n("00000002.history"), seg));
    }

    /// Another repository stored inside this one (at `wal/`, whose keys end like WAL file
    /// names; or under `basebackups/`), and stray files: never planned for deletion,
    /// whatever the policy, and reported.
    #[tokio::test]
    async fn only_the_repositorys_own_objects_are_deleted() {
        use crate::codec::Compression;
        let repo = Repository::in_memory_for_tests("r", Compression::None);
        repo.ensure_descriptor(&crate::repo::Descriptor::for_tests("1"), "t")
            .await
            .unwrap();
        let seg = |n: u32| Repository::wal_key(&n_seg(n));
        for n in 1..=8 {
            repo.put_new(&seg(n), b"wal", Compression::None)
                .await
                .unwrap();
        }
        for (name, start) in [("base_1", "0/200028"), ("base_2", "0/600028")] {
            let m = Manifest {
                start_time: format!("2026-01-0{}T00:00:00Z", &name[5..]),
                stop_time: format!("2026-01-0{}T00:01:00Z", &name[5..]),
                ..manifest(name, 1, start, start)
            };
            repo.put_new(
                &backup_key(name, "manifest.json"),
                &serde_json::to_vec(&m).unwrap(),
                Compression::None,
            )
            .await
            .unwrap();
            repo.put_new(
                &backup_key(name, "data/part-000001"),
                b"p",
                Compression::None,
            )
            .await
            .unwrap();
        }
        let foreign = [
            "wal/walarchive.repo".to_string(),
            format!("wal/{}", seg(1)),
            format!("wal/{}", seg(2)),
            "basebackups/base_1/walarchive.repo".to_string(),
            "basebackups/nested/walarchive.repo".to_string(),
            format!("basebackups/nested/{}", seg(1)),
            "notes.txt".to_string(),
        ];
        for k in &foreign {
            repo.put_new(k, b"not ours", Compression::None)
                .await
                .unwrap();
        }
        let now = chrono::Utc::now();
        for policy in [
            Policy::Retain(1),
            Policy::Garbage {
                older_than: Duration::from_secs(0),
            },
            Policy::Everything { force: true },
        ] {
            let p = plan(&repo, &policy, now).await.unwrap();
            for k in &foreign {
                assert!(!p.objects.contains(k), "{policy:?} plans to delete {k}");
            }
            let mut not_ours = p.not_ours.clone();
            not_ours.sort();
            let mut want = foreign.to_vec();
            want.sort();
            assert_eq!(not_ours, want, "{policy:?}");
            assert!(
                !p.delete_backups.contains(&"nested".to_string()),
                "{policy:?}"
            );
        }
        let p = plan(&repo, &Policy::Retain(1), now).await.unwrap();
        assert_eq!(p.delete_backups, ["base_1"]);
        assert_eq!(p.delete_wal.len(), 5, "{:?}", p.delete_wal);
        execute(&repo, &p).await.unwrap();
        let everything = plan(&repo, &Policy::Everything { force: true }, now)
            .await
            .unwrap();
        execute(&repo, &everything).await.unwrap();
        let mut left: Vec<String> = repo
            .list("")
            .await
            .unwrap()
            .into_iter()
            .map(|l| l.key)
            .collect();
        left.sort();
        let mut want = foreign.to_vec();
        want.push("walarchive.repo".into());
        want.sort();
        assert_eq!(left, want);
    }

    fn n_seg(n: u32) -> WalFileName {
        format!("0000000100000000{n:08X}").parse().unwrap()
    }
}
