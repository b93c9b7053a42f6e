//! The records of clones and restores: what a clone asked for (`clone-from`, `clone-at`, stored
//! as sent), which incarnation of which instance it copies, and the earlier incarnations of an
//! instance id (whose archives clones read).
//!
//! Why a room of its own inside `model`: these shapes are new with clones and grow with them
//! (the worker's restore pass, purges, disaster recovery); the rest of `model` keeps the
//! records every operation shares. Every field added to an existing record has a
//! `serde(default)`, so records written before clones existed still decode.

use serde::{Deserialize, Serialize};

use super::Timestamp;

/// The clone parameters of a provision (`clone-from`, `clone-at`), as the platform sent them
/// (validated by the API before they are stored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloneParameters {
    /// The source: a name in the same space, or an instance id in the same organization.
    #[serde(rename = "clone-from")]
    pub clone_from: String,
    /// The point to copy; the latest archived point when absent.
    #[serde(rename = "clone-at", default, skip_serializing_if = "Option::is_none")]
    pub clone_at: Option<CloneAt>,
}

/// The point of `clone-at`, as sent: a time or an LSN (both JSON strings, told apart by their
/// shape), or `{"restore-point": "NAME"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloneAt {
    /// An RFC 3339 time with a zone.
    Time(String),
    /// An LSN (`0/3000060`).
    Lsn(String),
    /// A restore point's name (`pg_create_restore_point`).
    RestorePoint(String),
}

impl CloneAt {
    /// True when `s` has an LSN's shape: 1 to 8 hex digits, `/`, 1 to 8 hex digits (the
    /// catalog's pattern; a time never matches it).
    pub fn is_lsn_shaped(s: &str) -> bool {
        let part = |p: &str| (1..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_hexdigit());
        s.split_once('/').is_some_and(|(a, b)| part(a) && part(b))
    }

    /// A string `clone-at`: an LSN when it has an LSN's shape, else a time (checked elsewhere).
    pub fn from_string(s: String) -> CloneAt {
        if Self::is_lsn_shaped(&s) {
            CloneAt::Lsn(s)
        } else {
            CloneAt::Time(s)
        }
    }
}

impl Serialize for CloneAt {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            CloneAt::Time(t) | CloneAt::Lsn(t) => s.serialize_str(t),
            CloneAt::RestorePoint(n) => {
                use serde::ser::SerializeMap;
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("restore-point", n)?;
                m.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for CloneAt {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Named {
            #[serde(rename = "restore-point")]
            restore_point: String,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Wire {
            Text(String),
            Named(Named),
        }
        Ok(match Wire::deserialize(d)? {
            Wire::Text(s) => CloneAt::from_string(s),
            Wire::Named(n) => CloneAt::RestorePoint(n.restore_point),
        })
    }
}

/// Why an instance's cluster starts from an archive rather than from `initdb`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RestoreKind {
    /// A new instance copying another's data (`clone-from`).
    Clone,
    /// An instance recreated from its own archive (disaster recovery).
    Recover,
}

/// The incarnation of an instance a restore reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceRef {
    /// The source's instance id.
    pub instance_id: String,
    /// Which incarnation of that id.
    pub incarnation: u32,
    /// Its name on the platform, if it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Its repository URL (the archive read).
    pub repository: String,
    /// When it was deleted, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<Timestamp>,
}

/// A recovery target as written for PostgreSQL: always a time or an LSN (restore points and
/// "latest" are resolved to an LSN).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetSpec {
    /// `recovery_target_time`, as RFC 3339 in UTC to the microsecond
    /// (`2026-12-07T10:15:00.000000Z`: exact, and what the cell's bootstrap spec takes).
    Time(String),
    /// `recovery_target_lsn`.
    Lsn(String),
}

/// What a requested point resolved to in the source's archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedTarget {
    /// The base backup restored.
    pub backup: String,
    /// The timeline to follow, only when off the archive's newest chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<u32>,
    /// The recovery target.
    pub target: TargetSpec,
    /// The LSN the clone will have replayed to, at least.
    pub expect_lsn: String,
    /// The time of the last transaction it will hold, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_time: Option<Timestamp>,
}

/// Where a finished restore's replay ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reached {
    /// The last replayed LSN.
    pub lsn: String,
    /// The time of the last replayed transaction, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Timestamp>,
}

/// `InstanceRecord.restore`: an instance whose cluster starts from an archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreRecord {
    /// Clone or recovery.
    pub kind: RestoreKind,
    /// The archive read.
    pub source: SourceRef,
    /// The clone parameters as sent (`None` for a recovery).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested: Option<CloneParameters>,
    /// The requested point resolved in the source's archive before the `202` (`None` only
    /// in records accepted before the broker resolved targets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved: Option<ResolvedTarget>,
    /// How many times the worker started the restore.
    #[serde(default)]
    pub attempt: u32,
    /// True once the source's binding roles were removed from the copy.
    #[serde(default)]
    pub roles_removed: bool,
    /// Where the replay ended, once the copy was promoted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reached: Option<Reached>,
}

/// A purge of a deleted incarnation's archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Purge {
    /// When.
    pub at: Timestamp,
    /// Objects deleted.
    pub objects: u64,
    /// Bytes deleted.
    pub bytes: u64,
}

/// An earlier incarnation of an instance id (`InstanceRecord.previous`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incarnation {
    /// Its number (1 for the first provision of the id).
    pub n: u32,
    /// Its repository URL.
    pub repository: String,
    /// When it was provisioned (unknown for incarnations recorded before this was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<Timestamp>,
    /// When it was deleted (unknown for incarnations recorded before this was kept, but the
    /// last: the next incarnation's creation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<Timestamp>,
    /// Since when its archive is being purged (no clone of it is accepted from then on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purging: Option<Timestamp>,
    /// Its archive's purge, once done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purged: Option<Purge>,
    /// Its PostgreSQL major (absent: recorded before majors, so 15).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgresql_major: Option<u32>,
}

impl Incarnation {
    /// Its PostgreSQL major ([`Incarnation::postgresql_major`], else 15).
    pub fn major(&self) -> u32 {
        self.postgresql_major.unwrap_or(crate::pgmajor::LEGACY)
    }
}

/// Reads `previous` as written now (a list of [`Incarnation`]s) or as written before clones
/// (`previous_repositories`: a list of URLs, oldest first, numbered from 1).
pub(super) fn incarnations<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<Incarnation>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Wire {
        Url(String),
        Full(Incarnation),
    }
    let v = Vec::<Wire>::deserialize(d)?;
    Ok(v.into_iter()
        .enumerate()
        .map(|(i, w)| match w {
            Wire::Full(inc) => inc,
            Wire::Url(repository) => Incarnation {
                n: i as u32 + 1,
                repository,
                created_at: None,
                deleted_at: None,
                postgresql_major: None,
                purging: None,
                purged: None,
            },
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::InstanceRecord;

    /// An instance record as the version before clones wrote it (third incarnation).
    const OLD: &str = r#"{"id":"i","service_id":"s","plan_id":"p","parameters":{"node-count":2},
        "node_count":2,"context":{"organization_guid":"o","space_guid":"sp","raw":null},
        "port":40001,"repository":"file:///r/i.3","incarnation":3,
        "previous_repositories":["file:///r/i","file:///r/i.2"],"state":"ready","nodes":[],
        "created_at":"2026-12-01T09:00:00.000Z","updated_at":"2026-12-01T09:00:00.000Z"}"#;

    #[test]
    fn old_records_decode_and_new_ones_round_trip() {
        let mut r: InstanceRecord = serde_json::from_str(OLD).unwrap();
        assert_eq!(r.restore, None);
        assert_eq!(
            r.previous
                .iter()
                .map(|i| (i.n, i.repository.as_str(), i.deleted_at))
                .collect::<Vec<_>>(),
            [(1, "file:///r/i", None), (2, "file:///r/i.2", None)]
        );
        r.previous[1].purged = Some(Purge {
            at: r.created_at,
            objects: 3,
            bytes: 42,
        });
        r.restore = Some(RestoreRecord {
            kind: RestoreKind::Clone,
            source: SourceRef {
                instance_id: "old".into(),
                incarnation: 2,
                name: Some("old-db".into()),
                repository: "file:///r/old.2".into(),
                deleted_at: Some(r.created_at),
            },
            requested: Some(CloneParameters {
                clone_from: "old-db".into(),
                clone_at: Some(CloneAt::RestorePoint("before".into())),
            }),
            resolved: None,
            attempt: 0,
            roles_removed: false,
            reached: None,
        });
        let json = serde_json::to_value(&r).unwrap();
        assert!(json.get("previous_repositories").is_none(), "{json}");
        assert_eq!(
            json["restore"]["requested"],
            serde_json::json!({"clone-from": "old-db", "clone-at": {"restore-point": "before"}})
        );
        let back: InstanceRecord = serde_json::from_value(json).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn clone_at_is_a_string_or_a_restore_point() {
        for (json, want) in [
            (r#""0/3000060""#, CloneAt::Lsn("0/3000060".into())),
            (
                r#""2026-12-07T10:15:00Z""#,
                CloneAt::Time("2026-12-07T10:15:00Z".into()),
            ),
            (
                r#"{"restore-point":"x"}"#,
                CloneAt::RestorePoint("x".into()),
            ),
        ] {
            let at: CloneAt = serde_json::from_str(json).unwrap();
            assert_eq!(at, want);
            assert_eq!(serde_json::to_string(&at).unwrap(), json);
        }
        assert!(serde_json::from_str::<CloneAt>(r#"{"restore-point":"x","y":1}"#).is_err());
        assert!(serde_json::from_str::<CloneAt>("5").is_err());
    }
}
