//! `walarchive-broker restorable-window` (design `docs/design/clones.md` §2.7): every
//! incarnation of an instance, live, deleted or purged, with what its archive can restore.
//!
//! Why an operator's command: a platform user sees the window of a live instance only (`GET`
//! answers 404 once deprovisioned), but a clone may copy a deleted one, by name or id, until
//! its archive is purged; whoever answers "can we still get last Tuesday's data back?" needs
//! every incarnation, its repository and its dates, in one place.
//!
//! Why through [`crate::windows::compute`]: the API's validation and `GET` read windows there,
//! with the repository opened by [`crate::archive`]; what this command says is then what a
//! clone would be checked against, never a second reading of the same archive.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use walarchive::window::Point;

use crate::config::BrokerConfig;
use crate::state::{InstanceRecord, InstanceState, Purge, Store, StoreError, Timestamp};
use crate::windows::{self, WindowError};

/// How long one archive's window may take to read (listing plus the last segments).
pub const BUDGET: Duration = Duration::from_secs(120);

/// Which instance to list.
#[derive(Debug, Clone)]
pub enum Selector {
    /// An instance id: its every incarnation.
    Id(String),
    /// A name on the platform: every incarnation (of any id) that had it in that space.
    Name {
        /// The organization's GUID.
        org: String,
        /// The space's GUID.
        space: String,
        /// The instance name.
        name: String,
    },
}

/// Why the listing could not be made (one line each).
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Nothing by that id or name.
    #[error("no instance {0}")]
    NoInstance(String),
    /// The broker's state could not be read.
    #[error("the broker's state could not be read: {0}")]
    Store(#[from] StoreError),
    /// An archive could not be read (storage, corruption, or beyond [`BUDGET`]).
    #[error("the archive of instance {instance} (incarnation {incarnation}) at {repository} could not be read: {why}")]
    Archive {
        /// The instance id.
        instance: String,
        /// The incarnation.
        incarnation: u32,
        /// Its repository, without credentials.
        repository: String,
        /// What the store said (already without credentials).
        why: String,
    },
}

/// One incarnation and what its archive holds.
#[derive(Debug, Clone, Serialize)]
pub struct IncarnationWindow {
    /// The instance id.
    pub instance_id: String,
    /// Its incarnation (1 for the id's first provision).
    pub incarnation: u32,
    /// Its name on the platform, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `ready`, `failed`, ... for the id's current incarnation; `deleted`, `purging`, `purged`
    /// for the others (and for a deprovisioned current one).
    pub state: String,
    /// Its repository URL, without credentials.
    pub repository: String,
    /// When it was provisioned, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at: Option<Timestamp>,
    /// When it was deprovisioned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<Timestamp>,
    /// Since when its archive is being purged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub purging: Option<Timestamp>,
    /// Its archive's purge.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub purged: Option<Purge>,
    /// The restorable window (absent when purged or empty: `note` says which).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<WindowView>,
    /// Why there is no window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A restorable window as printed.
#[derive(Debug, Clone, Serialize)]
pub struct WindowView {
    /// The earliest restorable point (the oldest restorable backup's end).
    pub earliest: PointView,
    /// The latest (the last complete archived record, with the last transaction's time).
    pub latest: PointView,
    /// How many complete base backups the archive holds.
    pub backups: usize,
    /// When the window was read.
    pub computed_at: Timestamp,
}

/// A WAL point as printed.
#[derive(Debug, Clone, Serialize)]
pub struct PointView {
    /// `0/3000060`.
    pub lsn: String,
    /// The timeline.
    pub timeline: u32,
    /// RFC 3339 in UTC to the microsecond (what `clone-at` takes exactly), when known.
    pub time: Option<String>,
}

impl PointView {
    fn of(p: &Point) -> PointView {
        PointView {
            lsn: p.lsn.to_string(),
            timeline: p.timeline.0,
            time: p.time.map(micros),
        }
    }
}

fn micros(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Every incarnation `selector` designates, oldest first, each with its window.
pub async fn restorable_windows(
    config: &BrokerConfig,
    store: &Store,
    selector: &Selector,
) -> Result<Vec<IncarnationWindow>, AdminError> {
    let rows = incarnations(store, selector).await?;
    let mut out = Vec::with_capacity(rows.len());
    for mut row in rows {
        fill_window(config, &mut row.0, &row.1).await?;
        out.push(row.0);
    }
    Ok(out)
}

/// The incarnations (without windows yet), each with its repository URL as stored.
async fn incarnations(
    store: &Store,
    selector: &Selector,
) -> Result<Vec<(IncarnationWindow, String)>, AdminError> {
    match selector {
        Selector::Id(id) => {
            let rec = store
                .instance(id)
                .await?
                .ok_or_else(|| AdminError::NoInstance(format!("with id {id:?}")))?
                .value;
            let mut rows: Vec<_> = rec
                .previous
                .iter()
                .map(|i| of_record(&rec, i.n, &i.repository))
                .collect();
            rows.push(of_record(&rec, rec.incarnation, &rec.repository));
            Ok(rows)
        }
        Selector::Name { org, space, name } => {
            let entries = store.find_by_name(org, space, name).await?;
            if entries.is_empty() {
                return Err(AdminError::NoInstance(format!(
                    "named {name:?} in organization {org:?}, space {space:?}"
                )));
            }
            let mut rows = Vec::with_capacity(entries.len());
            for e in entries {
                let row = match store.instance(&e.instance_id).await? {
                    Some(rec) => {
                        let mut r = of_record(&rec.value, e.incarnation, &e.repository);
                        r.0.name = Some(name.clone());
                        r.0.created_at = r.0.created_at.or(Some(e.created_at));
                        r.0.deleted_at = r.0.deleted_at.or(e.deleted_at);
                        r.0.purged = r.0.purged.or(e.purged);
                        let current = e.incarnation == rec.value.incarnation;
                        r.0.state = state_text(&r.0, current.then_some(rec.value.state));
                        r
                    }
                    // A catalog entry whose record is gone: what the entry says.
                    None => {
                        let mut r = IncarnationWindow {
                            instance_id: e.instance_id.clone(),
                            incarnation: e.incarnation,
                            name: Some(name.clone()),
                            state: String::new(),
                            repository: walarchive::storage::redact_url(&e.repository),
                            created_at: Some(e.created_at),
                            deleted_at: e.deleted_at,
                            purging: None,
                            purged: e.purged,
                            window: None,
                            note: None,
                        };
                        r.state = if e.deleted {
                            state_text(&r, None)
                        } else {
                            "no instance record".into()
                        };
                        (r, e.repository)
                    }
                };
                rows.push(row);
            }
            Ok(rows)
        }
    }
}

/// Incarnation `n` of `rec` (its current one or one of `previous`), at `repository`.
fn of_record(rec: &InstanceRecord, n: u32, repository: &str) -> (IncarnationWindow, String) {
    let current = n == rec.incarnation;
    let earlier = rec.previous.iter().find(|i| i.n == n);
    let mut row = IncarnationWindow {
        instance_id: rec.id.clone(),
        incarnation: n,
        name: if current {
            rec.context.instance_name.clone()
        } else {
            None
        },
        state: String::new(),
        repository: walarchive::storage::redact_url(repository),
        created_at: if current {
            Some(rec.created_at)
        } else {
            earlier.and_then(|i| i.created_at)
        },
        deleted_at: if current {
            rec.deleted_at
        } else {
            earlier.and_then(|i| i.deleted_at)
        },
        purging: if current {
            rec.purging
        } else {
            earlier.and_then(|i| i.purging)
        },
        purged: if current {
            rec.purged.clone()
        } else {
            earlier.and_then(|i| i.purged.clone())
        },
        window: None,
        note: None,
    };
    row.state = state_text(&row, current.then_some(rec.state));
    (row, repository.to_string())
}

/// `purged`, `purging`, `deleted`, else the current incarnation's state.
fn state_text(row: &IncarnationWindow, current: Option<InstanceState>) -> String {
    match current {
        _ if row.purged.is_some() => "purged".into(),
        _ if row.purging.is_some() => "purging".into(),
        Some(s) if row.deleted_at.is_none() => serde_json::to_value(s)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        _ => "deleted".into(),
    }
}

async fn fill_window(
    config: &BrokerConfig,
    row: &mut IncarnationWindow,
    url: &str,
) -> Result<(), AdminError> {
    if let Some(p) = &row.purged {
        row.note = Some(format!(
            "purged {} ({} objects, {} bytes deleted): nothing to restore",
            p.at.0.to_rfc3339_opts(SecondsFormat::Millis, true),
            p.objects,
            p.bytes
        ));
        return Ok(());
    }
    match windows::compute(config, url, BUDGET).await {
        Ok(c) => {
            row.window = Some(WindowView {
                earliest: PointView::of(&c.window.earliest),
                latest: PointView::of(&c.window.latest),
                backups: c.window.backups.len(),
                computed_at: Timestamp(c.computed_at),
            });
        }
        Err(WindowError::NoBackup) => {
            row.note = Some("no completed base backup: nothing to restore".into());
        }
        Err(WindowError::Unreadable(why)) => {
            return Err(AdminError::Archive {
                instance: row.instance_id.clone(),
                incarnation: row.incarnation,
                repository: row.repository.clone(),
                why: walarchive::storage::redact(&why),
            })
        }
    }
    Ok(())
}

/// The listing as a small table, one incarnation a line.
pub fn table(rows: &[IncarnationWindow]) -> String {
    let opt = |t: &Option<Timestamp>| {
        t.map(|t| t.0.to_rfc3339_opts(SecondsFormat::Secs, true))
            .unwrap_or_else(|| "-".into())
    };
    let point = |p: &PointView| {
        format!(
            "{} (timeline {}{})",
            p.lsn,
            p.timeline,
            p.time
                .as_deref()
                .map(|t| format!(", {t}"))
                .unwrap_or_default()
        )
    };
    let mut cells: Vec<[String; 10]> = vec![[
        "INSTANCE".into(),
        "INC".into(),
        "NAME".into(),
        "STATE".into(),
        "CREATED".into(),
        "DELETED".into(),
        "BACKUPS".into(),
        "EARLIEST".into(),
        "LATEST".into(),
        "REPOSITORY".into(),
    ]];
    for r in rows {
        let (backups, earliest, latest) = match (&r.window, &r.note) {
            (Some(w), _) => (w.backups.to_string(), point(&w.earliest), point(&w.latest)),
            (None, note) => ("0".into(), note.clone().unwrap_or_default(), String::new()),
        };
        cells.push([
            r.instance_id.clone(),
            r.incarnation.to_string(),
            r.name.clone().unwrap_or_else(|| "-".into()),
            r.state.clone(),
            opt(&r.created_at),
            opt(&r.deleted_at),
            backups,
            earliest,
            latest,
            r.repository.clone(),
        ]);
    }
    let mut widths = [0usize; 10];
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for row in &cells {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(state: &str, window: Option<WindowView>, note: Option<&str>) -> IncarnationWindow {
        IncarnationWindow {
            instance_id: "i".into(),
            incarnation: 1,
            name: None,
            state: state.into(),
            repository: "file:///r/i".into(),
            created_at: None,
            deleted_at: None,
            purging: None,
            purged: None,
            window,
            note: note.map(Into::into),
        }
    }

    #[test]
    fn repositories_are_shown_without_credentials() {
        let rec: InstanceRecord = serde_json::from_value(serde_json::json!({
            "id": "i", "service_id": "s", "plan_id": "p", "parameters": {}, "node_count": 1,
            "context": {"organization_guid": "o", "space_guid": "sp", "raw": null},
            "port": 40001, "repository": "s3://KEYID:VERYSECRET@bucket/i.2", "incarnation": 2,
            "previous": ["s3://bucket/i?X-Amz-Signature=VERYSECRET"], "state": "ready",
            "created_at": "2026-12-01T09:00:00.000Z", "updated_at": "2026-12-01T09:00:00.000Z"
        }))
        .unwrap();
        for (n, url) in [(1, &rec.previous[0].repository), (2, &rec.repository)] {
            let (row, stored) = of_record(&rec, n, url);
            assert_eq!(&stored, url, "opened with its credentials");
            let shown = serde_json::to_string(&row).unwrap() + &table(&[row]);
            assert!(!shown.contains("VERYSECRET"), "{shown}");
            assert!(shown.contains("bucket/i"), "{shown}");
        }
    }

    #[test]
    fn the_table_aligns_and_says_why_there_is_no_window() {
        let p = |lsn: &str| PointView {
            lsn: lsn.into(),
            timeline: 1,
            time: None,
        };
        let t = table(&[
            row(
                "ready",
                Some(WindowView {
                    earliest: p("0/2000100"),
                    latest: p("0/3000060"),
                    backups: 2,
                    computed_at: Timestamp::now(),
                }),
                None,
            ),
            row("purged", None, Some("purged")),
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert!(lines[0].starts_with("INSTANCE  INC  NAME  STATE "), "{t}");
        let col = lines[0].find("BACKUPS").unwrap();
        assert_eq!(&lines[1][col..col + 1], "2", "{t}");
        assert!(lines[1].contains("0/2000100 (timeline 1)"), "{t}");
        assert!(lines[2].contains("purged"), "{t}");
    }
}
