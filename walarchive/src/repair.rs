//! `repo-repair`: rebuilding a lost descriptor from what the repository's objects say.
//!
//! A repository whose `walarchive.repo` is gone is refused to every push (see
//! [`Repository::ensure_descriptor`]): otherwise the next cluster to push would claim the
//! whole archive as its own. The descriptor holds nothing that the objects do not say
//! themselves, so it can be rebuilt from them: the system identifier every bound object
//! carries in its header ([`crate::format`]), the long page header of WAL segments (system
//! identifier, segment size, WAL page magic), and the backups' manifests (system
//! identifier, segment size, PostgreSQL version); optionally the `pg_control` of the
//! cluster's data directory. Every source must agree; when they do not, the repository
//! holds more than one cluster's objects and repairing it is a decision for a person, so
//! nothing is written. It is a dry run unless asked to write, like `delete`.

use serde::Serialize;

use crate::control::ClusterIdentity;
use crate::layout::{parse_key, BackupObject, OwnKey};
use crate::repo::{Descriptor, Repository, REPOSITORY_FORMAT};
use crate::wal::{magic_for_major, SegmentName, TimelineId, WalFileName};
use crate::Error;

/// What one source says about the repository's cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Evidence {
    /// Where it comes from (an object's key, or a data directory).
    pub source: String,
    /// The system identifier it states.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_identifier: Option<String>,
    /// The WAL segment size it states.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wal_segment_size: Option<u64>,
    /// The WAL page magic it states.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wal_page_magic: Option<u16>,
    /// The PostgreSQL major version it states.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pg_version: Option<u32>,
}

/// What `repo-repair` found and did.
#[derive(Clone, Debug, Serialize)]
pub struct Repair {
    /// The descriptor the repository already has (nothing to repair).
    pub existing: Option<Descriptor>,
    /// The descriptor rebuilt from the evidence.
    pub rebuilt: Option<Descriptor>,
    /// Every source consulted.
    pub evidence: Vec<Evidence>,
    /// The repository's objects listed.
    pub objects: usize,
    /// Whether the rebuilt descriptor was written.
    pub written: bool,
}

/// Rebuilds the descriptor of `repo` from its objects (and `data_dir`'s pg_control, when
/// given), writing it when `confirm`. Refuses when the sources disagree
/// ([`Error::RepairConflict`]) or say too little ([`Error::Config`]).
pub async fn repair(
    repo: &Repository,
    data_dir: Option<&ClusterIdentity>,
    confirm: bool,
) -> Result<Repair, Error> {
    if let Some(existing) = repo.descriptor().await? {
        return Ok(Repair {
            existing: Some(existing),
            rebuilt: None,
            evidence: Vec::new(),
            objects: 0,
            written: false,
        });
    }
    let own: Vec<(String, OwnKey)> = repo
        .list("")
        .await?
        .into_iter()
        .filter_map(|l| parse_key(&l.key).map(|k| (l.key, k)))
        .collect();
    if own.is_empty() {
        // Nothing lost: a repository is created by the first push, not by repair.
        return Err(Error::Config(format!(
            "nothing to repair: no walarchive objects at {}",
            repo.url()
        )));
    }
    let mut evidence = Vec::new();
    if let Some(id) = data_dir {
        evidence.push(Evidence {
            source: format!("{}/global/pg_control", id.data_dir.display()),
            system_identifier: Some(id.system_identifier.to_string()),
            wal_segment_size: Some(id.wal_segment_size),
            wal_page_magic: Some(id.wal_page_magic),
            pg_version: id.pg_version,
        });
    }
    evidence.extend(bound_identities(repo, &own).await?);
    for key in sample_segments(&own) {
        evidence.push(segment_evidence(repo, &key).await?);
    }
    for (key, k) in &own {
        if let OwnKey::Backup {
            object: BackupObject::Manifest,
            ..
        } = k
        {
            let raw = repo.get_without_descriptor(key).await?;
            let m: crate::manifest::Manifest =
                serde_json::from_slice(&raw).map_err(|e| Error::Corrupt {
                    key: repo.key(key).to_string(),
                    source: crate::format::FormatError::Decode(crate::codec::DecodeError {
                        codec: "json",
                        reason: e.to_string(),
                    }),
                })?;
            let major = m.pg_version_num / 10000;
            evidence.push(Evidence {
                source: key.clone(),
                system_identifier: Some(m.system_identifier),
                wal_segment_size: Some(m.wal_segment_size),
                wal_page_magic: magic_for_major(major),
                pg_version: Some(major),
            });
        }
    }
    let rebuilt = agree(repo, &evidence)?;
    // Create-only: a descriptor written meanwhile is compared, never replaced.
    let written = confirm && repo.create_descriptor(&rebuilt, "repo-repair").await?;
    Ok(Repair {
        existing: None,
        rebuilt: Some(rebuilt),
        evidence,
        objects: own.len(),
        written,
    })
}

/// Objects whose headers [`repair`] reads at once.
const HEADER_READS: usize = 16;

/// The system identifiers bound objects state in their headers: every object's header is
/// read (one ranged read each), and each identifier is reported once, with the first object
/// stating it and how many do.
async fn bound_identities(
    repo: &Repository,
    own: &[(String, OwnKey)],
) -> Result<Vec<Evidence>, Error> {
    use futures::{StreamExt, TryStreamExt};
    let keys = own
        .iter()
        .filter(|(_, k)| *k != OwnKey::Descriptor)
        .map(|(key, _)| key.clone());
    let bound: Vec<(String, Option<u64>)> = futures::stream::iter(keys)
        .map(|key| async move {
            let sysid = repo.bound_system_identifier(&key).await?;
            Ok::<_, Error>((key, sysid))
        })
        .buffer_unordered(HEADER_READS)
        .try_collect()
        .await?;
    let mut by_sysid: std::collections::BTreeMap<u64, (String, usize)> = Default::default();
    for (key, sysid) in bound {
        if let Some(s) = sysid {
            let e = by_sysid.entry(s).or_insert_with(|| (key.clone(), 0));
            if key < e.0 {
                e.0 = key;
            }
            e.1 += 1;
        }
    }
    Ok(by_sysid
        .into_iter()
        .map(|(sysid, (first, count))| Evidence {
            source: match count {
                1 => format!("{first} (its header)"),
                n => format!("{first} and {} more objects (their headers)", n - 1),
            },
            system_identifier: Some(sysid.to_string()),
            wal_segment_size: None,
            wal_page_magic: None,
            pg_version: None,
        })
        .collect())
}

/// The segments whose page headers are read: the first and the last of each timeline
/// (segments or `.partial` files).
fn sample_segments(own: &[(String, OwnKey)]) -> Vec<String> {
    let mut by_tli: std::collections::BTreeMap<TimelineId, Vec<(SegmentName, &String)>> =
        Default::default();
    for (key, k) in own {
        if let OwnKey::Wal(n @ (WalFileName::Segment(_) | WalFileName::Partial(_))) = k {
            let seg = n.segment().expect("segments and partials name a segment");
            by_tli.entry(seg.timeline).or_default().push((seg, key));
        }
    }
    let mut out = Vec::new();
    for mut segs in by_tli.into_values() {
        segs.sort();
        out.push(segs[0].1.clone());
        if segs.len() > 1 {
            out.push(segs[segs.len() - 1].1.clone());
        }
    }
    out
}

/// What the long page header of the segment at `key` says.
async fn segment_evidence(repo: &Repository, key: &str) -> Result<Evidence, Error> {
    let name: WalFileName = key
        .rsplit('/')
        .next()
        .and_then(|n| n.parse().ok())
        .expect("sampled keys are WAL file names");
    let raw = repo.get_without_descriptor(key).await?;
    let d = crate::push::check_segment(&name, &raw).map_err(|reason| Error::Corrupt {
        key: repo.key(key).to_string(),
        source: crate::format::FormatError::Decode(crate::codec::DecodeError {
            codec: "WAL page header",
            reason,
        }),
    })?;
    Ok(Evidence {
        source: format!("{key} (its page header)"),
        system_identifier: Some(d.system_identifier),
        wal_segment_size: Some(d.wal_segment_size),
        wal_page_magic: Some(d.wal_page_magic),
        pg_version: d.pg_version,
    })
}

/// The descriptor every source agrees on.
fn agree(repo: &Repository, evidence: &[Evidence]) -> Result<Descriptor, Error> {
    fn one<T: Clone + PartialEq + std::fmt::Display>(
        evidence: &[Evidence],
        field: &'static str,
        get: impl Fn(&Evidence) -> Option<T>,
    ) -> Result<Option<T>, Error> {
        let mut found: Option<(T, &str)> = None;
        for e in evidence {
            let Some(v) = get(e) else { continue };
            match &found {
                None => found = Some((v, &e.source)),
                Some((first, source)) if *first != v => {
                    return Err(Error::RepairConflict {
                        field,
                        first: format!("{source} says {first}"),
                        second: format!("{} says {v}", e.source),
                    })
                }
                Some(_) => {}
            }
        }
        Ok(found.map(|(v, _)| v))
    }
    let sysid = one(evidence, "system identifier", |e| {
        e.system_identifier.clone()
    })?;
    let segsize = one(evidence, "WAL segment size", |e| e.wal_segment_size)?;
    let magic = one(evidence, "WAL page magic", |e| {
        e.wal_page_magic.map(|m| format!("0x{m:04X}"))
    })?;
    let pg_version = one(evidence, "PostgreSQL version", |e| e.pg_version)?;
    let missing = |what: &str| {
        Error::Config(format!(
            "cannot rebuild the descriptor of {}: no object says its {what} (no WAL segment or backup to read it from); pass --pgdata with the cluster's data directory",
            repo.url()
        ))
    };
    let system_identifier = sysid.ok_or_else(|| missing("system identifier"))?;
    let wal_segment_size = segsize.ok_or_else(|| missing("WAL segment size"))?;
    let magic = magic.ok_or_else(|| missing("WAL format (page magic)"))?;
    Ok(Descriptor {
        format_version: REPOSITORY_FORMAT,
        system_identifier,
        pg_version,
        wal_page_magic: u16::from_str_radix(magic.trim_start_matches("0x"), 16)
            .expect("formatted above"),
        wal_segment_size,
        created_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        created_by: format!("walarchive {} repo-repair", env!("CARGO_PKG_VERSION")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lsn::Lsn;
    use crate::manifest::{backup_key, Manifest};
    use crate::repo::DESCRIPTOR_KEY;
    use crate::Compression;

    const SEG: u64 = 1 << 20;

    fn segment(name: &str, sysid: u64) -> Vec<u8> {
        let seg: SegmentName = name.parse().unwrap();
        let mut b = vec![0u8; SEG as usize];
        b[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
        b[2..4].copy_from_slice(&0x0002u16.to_le_bytes());
        b[4..8].copy_from_slice(&seg.timeline.0.to_le_bytes());
        b[8..16].copy_from_slice(&seg.start_lsn(SEG).0.to_le_bytes());
        b[24..32].copy_from_slice(&sysid.to_le_bytes());
        b[32..36].copy_from_slice(&(SEG as u32).to_le_bytes());
        b[36..40].copy_from_slice(&8192u32.to_le_bytes());
        b
    }

    fn descriptor(sysid: u64) -> Descriptor {
        Descriptor {
            format_version: REPOSITORY_FORMAT,
            system_identifier: sysid.to_string(),
            pg_version: Some(15),
            wal_page_magic: 0xD110,
            wal_segment_size: SEG,
            created_at: 0,
            created_by: "test".into(),
        }
    }

    async fn put_segment(r: &Repository, name: &str, sysid: u64) {
        let key = Repository::wal_key(&name.parse().unwrap());
        r.put_new(&key, &segment(name, sysid), Compression::Lz4)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn rebuilds_a_lost_descriptor_from_the_objects() {
        let r = Repository::in_memory_for_tests("r", Compression::Lz4);
        r.ensure_descriptor(&descriptor(42), "t").await.unwrap();
        for n in 1..=4 {
            put_segment(&r, &format!("0000000100000000000000{n:02X}"), 42).await;
        }
        let m = Manifest {
            system_identifier: "42".into(),
            ..Manifest::for_tests("base_1", 1, Lsn(0x100_0028), Lsn(0x100_0100))
        };
        r.put_new(
            &backup_key("base_1", "manifest.json"),
            &serde_json::to_vec(&m).unwrap(),
            Compression::None,
        )
        .await
        .unwrap();
        // Nothing to repair while the descriptor is there.
        let done = repair(&r, None, true).await.unwrap();
        assert!(done.existing.is_some() && !done.written);

        r.delete(DESCRIPTOR_KEY).await.unwrap();
        let dry = repair(&r, None, false).await.unwrap();
        assert!(!dry.written);
        assert_eq!(
            r.descriptor().await.unwrap(),
            None,
            "a dry run writes nothing"
        );
        let d = dry.rebuilt.unwrap();
        assert_eq!(
            (
                d.system_identifier.as_str(),
                d.wal_segment_size,
                d.wal_page_magic
            ),
            ("42", SEG, 0xD110)
        );
        // Every object's header, the first and last segment of the timeline, the manifest.
        let sources: Vec<&str> = dry.evidence.iter().map(|e| e.source.as_str()).collect();
        assert_eq!(
            sources,
            [
                "basebackups/base_1/manifest.json and 4 more objects (their headers)",
                "wal/00000001/00000000/000000010000000000000001 (its page header)",
                "wal/00000001/00000000/000000010000000000000004 (its page header)",
                "basebackups/base_1/manifest.json",
            ]
        );
        let done = repair(&r, None, true).await.unwrap();
        assert!(done.written);
        let written = r.require_descriptor().await.unwrap();
        assert_eq!(written.system_identifier, "42");
        assert_eq!(written.wal_segment_size, SEG);
        // The repository takes pushes of its cluster again.
        r.ensure_descriptor(&descriptor(42), "t").await.unwrap();
    }

    #[tokio::test]
    async fn refuses_when_the_objects_disagree_or_say_too_little() {
        let r = Repository::in_memory_for_tests("r", Compression::Lz4);
        r.ensure_descriptor(&descriptor(42), "t").await.unwrap();
        put_segment(&r, "000000010000000000000001", 42).await;
        put_segment(&r, "000000020000000000000005", 7).await;
        r.delete(DESCRIPTOR_KEY).await.unwrap();
        let e = repair(&r, None, true).await.unwrap_err();
        assert!(matches!(e, Error::RepairConflict { .. }), "{e}");
        assert_eq!(e.kind(), crate::ErrorKind::ForeignCluster);
        assert!(e.to_string().contains("system identifier differs"), "{e}");
        assert_eq!(r.descriptor().await.unwrap(), None);

        // An object bound to another cluster (copied from its repository), even one whose
        // content says nothing of its cluster.
        let r = Repository::in_memory_for_tests("b", Compression::Lz4);
        r.ensure_descriptor(&descriptor(42), "t").await.unwrap();
        put_segment(&r, "000000010000000000000001", 42).await;
        let key = "wal/history/00000002.history";
        let foreign = crate::format::Binding::new(7, key);
        let obj = crate::format::encode(b"1\t0/3000000\tx\n", Compression::None, Some(&foreign));
        r.put_encoded(key, obj).await.unwrap();
        r.delete(DESCRIPTOR_KEY).await.unwrap();
        let e = repair(&r, None, true).await.unwrap_err();
        assert!(
            e.to_string()
                .contains("wal/history/00000002.history (its header) says 7"),
            "{e}"
        );

        // Only a history file: its cluster's data directory must say the rest.
        let r = Repository::in_memory_for_tests("h", Compression::Lz4);
        r.ensure_descriptor(&descriptor(42), "t").await.unwrap();
        r.put_new(
            "wal/history/00000002.history",
            b"1\t0/3000000\tx\n",
            Compression::None,
        )
        .await
        .unwrap();
        r.delete(DESCRIPTOR_KEY).await.unwrap();
        let e = repair(&r, None, false).await.unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Config, "{e}");
        assert!(e.to_string().contains("pass --pgdata"), "{e}");
        let id = ClusterIdentity {
            data_dir: "/d".into(),
            system_identifier: 42,
            wal_segment_size: SEG,
            wal_page_magic: 0xD110,
            pg_version: Some(15),
        };
        let done = repair(&r, Some(&id), true).await.unwrap();
        assert!(done.written);
        // Nothing at all: nothing to repair, with or without a data directory.
        let empty = Repository::in_memory_for_tests("e", Compression::Lz4);
        for data_dir in [None, Some(&id)] {
            let e = repair(&empty, data_dir, true).await.unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::Config, "{e}");
            assert_eq!(
                e.to_string(),
                format!(
                    "nothing to repair: no walarchive objects at {}",
                    empty.url()
                )
            );
        }
        assert!(empty.descriptor().await.unwrap().is_none());
    }
}
