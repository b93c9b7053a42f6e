//! Validation of a clone before the `202`: which instance `clone-from` names, whether the
//! platform user may copy it, and whether its archive can give what `clone-at` asks for.
//!
//! Why here and not in the worker: a clone that cannot succeed (an unknown source, one without
//! a base backup, a time in the future) must be refused while the platform's user is still
//! looking at the command they typed, with the reason, and with nothing recorded. The worker
//! only learns of accepted clones.
//!
//! Why every refusal of an instance the user may not see is the *same* answer: an instance id
//! of another organization, existing or not, gives byte for byte the body an unknown name
//! gives, so that ids cannot be probed across organizations.
//!
//! The order is the design's (docs/design/clones.md §2.2): [`lookup_source`], [`authorize`],
//! the source's state, its archive (a completed base backup, read with the core library
//! within `[clones] validation_budget`), then `clone-at` resolved in its restorable window
//! (`walarchive::window`, through [`crate::windows`]' cache) to what PostgreSQL stops at
//! exactly; the resolution is stored for the worker's restore pass.

use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use tracing::warn;
use walarchive::window::{self, Point, Unrestorable, Wanted};
use walarchive::Lsn;

use super::AppState;
use crate::error::ApiError;
use crate::state::{
    CloneAt, CloneParameters, Incarnation, InstanceRecord, InstanceState, Purge, ResolvedTarget,
    RestoreKind, RestoreRecord, SourceRef, Timestamp, Versioned,
};
pub(super) use crate::windows::time_text;
use crate::windows::{self, resolved_target, WindowError};

/// A validated clone: what the instance record keeps, and the source record's revision the
/// create transaction compares (so that a change since validation makes the PUT decide again).
pub(super) struct Validated {
    /// `InstanceRecord.restore` of the new instance.
    pub(super) restore: RestoreRecord,
    /// The source's instance id and its record's mod revision when validated.
    pub(super) source_revision: (String, i64),
    /// The source's PostgreSQL major: the clone's.
    pub(super) major: u32,
}

/// What the provision asked for, and who asked.
pub(super) struct CloneRequest<'a> {
    /// The new instance's organization and space.
    pub(super) org: &'a str,
    pub(super) space: &'a str,
    /// The new instance's service.
    pub(super) service_id: &'a str,
    /// `postgresql-version`, when sent: must be the source's.
    pub(super) major: Option<u32>,
    /// `clone-from`, `clone-at` as sent.
    pub(super) params: &'a CloneParameters,
    /// The platform user, from `X-Broker-API-Originating-Identity` (Cloud Foundry's).
    pub(super) user: Option<String>,
}

/// The incarnation of an instance `clone-from` names.
struct Source {
    /// The instance id's current record (the chosen incarnation, or a later one).
    record: Versioned<InstanceRecord>,
    incarnation: u32,
    repository: String,
    /// The chosen incarnation's PostgreSQL major.
    major: u32,
    deleted_at: Option<Timestamp>,
    purging: Option<Timestamp>,
    purged: Option<Purge>,
}

impl Source {
    /// True when the chosen incarnation is the id's current one.
    fn is_current(&self) -> bool {
        self.incarnation == self.record.value.incarnation
    }
}

/// Validates a clone (design §2.2); every refusal is a 400 `InvalidParameters` but an
/// unreadable archive (503: the request may be fine).
pub(super) async fn validate(st: &AppState, req: &CloneRequest<'_>) -> Result<Validated, ApiError> {
    let named = req.params.clone_from.as_str();
    let source = lookup_source(st, req.org, req.space, named).await?;
    authorize(st, req, &source)?;
    let rec = &source.record.value;
    if rec.service_id != req.service_id {
        return Err(ApiError::invalid_parameters(format!(
            "clone-from {named:?} is an instance of another service; a clone must be of the same service."
        )));
    }
    if source.is_current() && rec.state == InstanceState::Provisioning {
        return Err(ApiError::invalid_parameters(format!(
            "{named} is still being created; clone it once its creation has succeeded."
        )));
    }
    if let Some(p) = &source.purged {
        let after = source
            .deleted_at
            .map(|d| format!(" ({} after its deletion)", span_text(p.at.0 - d.0)))
            .unwrap_or_default();
        return Err(ApiError::invalid_parameters(format!(
            "The archive of {named} was purged on {}{after}; it can no longer be cloned.",
            time_text(p.at.0)
        )));
    }
    if let Some(since) = source.purging {
        return Err(ApiError::invalid_parameters(format!(
            "The archive of {named} is being purged (since {}); it can no longer be cloned.",
            time_text(since.0)
        )));
    }
    if let Some(m) = req.major.filter(|m| *m != source.major) {
        return Err(ApiError::invalid_parameters(format!(
            "{named} runs PostgreSQL {src}, so its clone does: a clone restores {named}'s data files, which only PostgreSQL {src} can run. Omit postgresql-version (a clone runs its source's major), or ask for {src}; to have the data on PostgreSQL {m}, upgrade the clone afterwards (pg_upgrade, or pg_dump and pg_restore into a new PostgreSQL {m} instance).",
            src = source.major
        )));
    }
    let wanted = wanted(req.params.clone_at.as_ref(), Utc::now())?;
    let resolved = resolve_in_archive(st, named, &source, &wanted).await?;
    Ok(Validated {
        major: source.major,
        source_revision: (rec.id.clone(), source.record.mod_revision),
        restore: RestoreRecord {
            kind: RestoreKind::Clone,
            source: SourceRef {
                instance_id: rec.id.clone(),
                incarnation: source.incarnation,
                name: rec.context.instance_name.clone(),
                repository: source.repository.clone(),
                deleted_at: source.deleted_at,
            },
            requested: Some(req.params.clone()),
            resolved: Some(resolved),
            attempt: 0,
            roles_removed: false,
            reached: None,
        },
    })
}

/// The answer for a source that does not exist *or may not be seen*: one text for both.
fn no_such_instance(named: &str) -> ApiError {
    ApiError::invalid_parameters(format!(
        "clone-from {named:?}: no such instance in this space (by name) or organization (by id)."
    ))
}

/// Finds the incarnation `named` designates: by name in the space first (the live instance
/// of that name, else the newest deleted one; two live ones are ambiguous), else by instance
/// id (the id's newest incarnation). A string that is a name here and the id of another
/// instance of the organization is ambiguous.
async fn lookup_source(
    st: &AppState,
    org: &str,
    space: &str,
    named: &str,
) -> Result<Source, ApiError> {
    let entries = st.store.find_by_name(org, space, named).await?;
    let by_id = st.store.instance(named).await?;
    if entries.is_empty() {
        let record = by_id.ok_or_else(|| no_such_instance(named))?;
        let r = &record.value;
        return Ok(Source {
            incarnation: r.incarnation,
            repository: r.repository.clone(),
            major: r.major(),
            deleted_at: r.deleted_at,
            purging: r.purging,
            purged: r.purged.clone(),
            record,
        });
    }
    let live: Vec<_> = entries.iter().filter(|e| !e.deleted).collect();
    if live.len() > 1 {
        let ids: Vec<&str> = live.iter().map(|e| e.instance_id.as_str()).collect();
        return Err(ApiError::invalid_parameters(format!(
            "clone-from {named:?} names {} existing instances in this space (ids {}); give the instance id.",
            ids.len(),
            ids.join(", ")
        )));
    }
    // Oldest first: the live one, else the newest deleted.
    let entry = live
        .first()
        .copied()
        .or_else(|| entries.last())
        .expect("not empty");
    // Another instance's id (of this organization: others are not seen) is ambiguous too.
    if by_id.is_some_and(|o| {
        o.value.id != entry.instance_id && o.value.context.organization_guid == org
    }) {
        return Err(ApiError::invalid_parameters(format!(
            "clone-from {named:?} is the name of instance {} in this space and the id of another instance; give the id of the one to copy.",
            entry.instance_id
        )));
    }
    let record = st
        .store
        .instance(&entry.instance_id)
        .await?
        .ok_or_else(|| no_such_instance(named))?;
    let r = &record.value;
    // The instance record is the purge's own record; the catalog entry's copy is a fallback.
    let (deleted_at, purging, purged, major) = if entry.incarnation == r.incarnation {
        (r.deleted_at, r.purging, r.purged.clone(), r.major())
    } else {
        let earlier = r.previous.iter().find(|i| i.n == entry.incarnation);
        (
            entry
                .deleted_at
                .or_else(|| earlier.and_then(|i| i.deleted_at)),
            earlier.and_then(|i| i.purging),
            earlier.and_then(|i| i.purged.clone()),
            earlier.map_or(crate::pgmajor::LEGACY, Incarnation::major),
        )
    };
    Ok(Source {
        incarnation: entry.incarnation,
        repository: entry.repository.clone(),
        major,
        deleted_at,
        purging,
        purged: purged.or(entry.purged.clone()),
        record,
    })
}

/// A source of another organization is seen only by the users of `[clones]
/// cross_organization_users`; for anyone else it does not exist (the same answer as an
/// unknown one).
fn authorize(st: &AppState, req: &CloneRequest<'_>, source: &Source) -> Result<(), ApiError> {
    if source.record.value.context.organization_guid == req.org {
        return Ok(());
    }
    let allowed = &st.config.clones.cross_organization_users;
    match &req.user {
        Some(u) if allowed.iter().any(|a| a == u) => Ok(()),
        _ => Err(no_such_instance(&req.params.clone_from)),
    }
}

/// The platform user of `X-Broker-API-Originating-Identity` when the platform is Cloud
/// Foundry (`cloudfoundry <base64 of {"user_id": ...}>`); `None` otherwise or when malformed.
pub(super) fn originating_user(headers: &HeaderMap) -> Option<String> {
    let v = headers
        .get("X-Broker-API-Originating-Identity")?
        .to_str()
        .ok()?;
    let (platform, value) = v.split_once(' ')?;
    if platform != "cloudfoundry" {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .ok()?;
    let v: Value = serde_json::from_slice(&raw).ok()?;
    v.get("user_id")?.as_str().map(str::to_string)
}

/// The 503 of an archive that cannot be read in time (the request may be fine).
fn unreadable(named: &str) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        "ServiceUnavailable",
        format!("The archive of {named} could not be read in time to check clone-at; retry in a minute."),
    )
}

/// How long a clone's validation waits for the source's leader to say its current LSN.
const LEADER_BUDGET: Duration = Duration::from_secs(5);

/// Computes the source's restorable window (cached, within `[clones] validation_budget`) and
/// resolves `wanted` in it: every target PostgreSQL would refuse is a 400 saying why, an
/// archive that cannot be read in time a 503. `complete_to`: a deleted incarnation's archive
/// is final (its window's end); a running source's is its leader's current LSN when its cell
/// tells it in time (else resolved without: a time after the last archived commit is then
/// "not archived yet").
async fn resolve_in_archive(
    st: &AppState,
    named: &str,
    source: &Source,
    wanted: &Wanted,
) -> Result<ResolvedTarget, ApiError> {
    let rec = &source.record.value;
    let budget = st.config.clones.validation_budget.0;
    let started = Instant::now();
    let final_ = source.deleted_at.is_some() || !source.is_current();
    let log = |detail: &dyn std::fmt::Display| {
        warn!(source = %rec.id, repository = %source.repository,
              "cannot read a clone source's archive: {detail}");
    };
    let leader = async {
        match &st.leader_wal {
            Some(wal) if !final_ && !rec.nodes.is_empty() => {
                windows::leader_lsn(wal.as_ref(), rec, budget.min(LEADER_BUDGET)).await
            }
            _ => None,
        }
    };
    let (computed, leader) = tokio::join!(
        st.windows
            .get(&st.config, &source.repository, final_, budget),
        leader
    );
    let w = match computed {
        Ok(c) => c.window,
        Err(WindowError::NoBackup) => {
            return Err(ApiError::invalid_parameters(if final_ {
                format!("{named} never completed a base backup; it cannot be cloned.")
            } else {
                format!(
                    "{named} has no completed base backup yet; it can be cloned once its first backup is taken."
                )
            }))
        }
        Err(WindowError::Unreadable(detail)) => {
            log(&detail);
            return Err(unreadable(named));
        }
    };
    let complete_to = if final_ { Some(w.end) } else { leader };
    let repo = crate::archive::open(&st.config, &source.repository).map_err(|e| {
        log(&e);
        unreadable(named)
    })?;
    let left = budget.saturating_sub(started.elapsed());
    let resolved =
        match tokio::time::timeout(left, window::resolve(&repo, &w, wanted, complete_to)).await {
            Ok(Ok(r)) => r,
            Ok(Err(window::Error::Unrestorable(u))) => {
                return Err(ApiError::invalid_parameters(refusal(
                    named,
                    &u,
                    st.config.archive_timeout.0,
                )))
            }
            Ok(Err(e)) => {
                log(&e);
                return Err(unreadable(named));
            }
            Err(_) => {
                log(&format!("not resolved within {} s", budget.as_secs()));
                return Err(unreadable(named));
            }
        };
    Ok(resolved_target(&resolved))
}

/// What `clone-at` asks for, once it is not in the future: a time, an LSN, a restore point,
/// or (absent) the latest point. Needs no archive.
pub(super) fn wanted(at: Option<&CloneAt>, now: DateTime<Utc>) -> Result<Wanted, ApiError> {
    Ok(match at {
        None => Wanted::Latest,
        Some(CloneAt::Time(s)) => {
            let t = DateTime::parse_from_rfc3339(s)
                .map_err(|_| ApiError::invalid_parameters("clone-at is not an RFC 3339 time."))?
                .with_timezone(&Utc);
            if t > now {
                return Err(ApiError::invalid_parameters(format!(
                    "clone-at {} is in the future (the broker's clock says {}).",
                    time_text(t),
                    time_text(now)
                )));
            }
            Wanted::Time(t)
        }
        Some(CloneAt::Lsn(s)) => Wanted::Lsn(s.parse::<Lsn>().map_err(|_| {
            ApiError::invalid_parameters(format!("clone-at {s:?} is not an LSN (0/3000060)."))
        })?),
        Some(CloneAt::RestorePoint(n)) => Wanted::RestorePoint(n.clone()),
    })
}

/// What was asked, as the refusals name it.
fn asked(w: &Wanted) -> String {
    match w {
        Wanted::Latest => "The latest point".into(),
        Wanted::Time(t) => format!("clone-at {}", time_text(*t)),
        Wanted::Lsn(l) => format!("clone-at {l}"),
        Wanted::RestorePoint(n) => format!("clone-at restore point {n:?}"),
    }
}

/// A point of a window in words: its time then, in parentheses, `what` and its LSN (its LSN
/// alone when no time is known).
fn point_text(p: &Point, what: &str) -> String {
    match p.time {
        Some(t) => format!("{} ({what}LSN {})", time_text(t), p.lsn),
        None => format!("LSN {} ({what}no transaction time known)", p.lsn),
    }
}

/// The description of a 400 for a target the source's archive cannot give (design §2.2's
/// table). `named`: the source as the request named it.
pub(crate) fn refusal(named: &str, u: &Unrestorable, archive_timeout: Duration) -> String {
    let short = |p: &Point| p.time.map_or_else(|| format!("LSN {}", p.lsn), time_text);
    match u {
        Unrestorable::BeforeEarliest {
            target: Wanted::RestorePoint(n),
            found: Some(f),
            earliest,
        } => format!(
            "The restore point {n:?} of {named} ({}, LSN {}) is before the earliest restorable point of {named}, {}.",
            time_text(f.time),
            f.lsn,
            point_text(earliest, "the end of its oldest base backup, ")
        ),
        Unrestorable::BeforeEarliest {
            target, earliest, ..
        } => format!(
            "{} is before the earliest restorable point of {named}, {}.",
            asked(target),
            point_text(earliest, "the end of its oldest base backup, ")
        ),
        Unrestorable::NotArchivedYet { target, latest } => format!(
            "clone-at {} is after the latest restorable point of {named}, {}: later WAL is not archived yet; retry after archive_timeout ({} s), or omit clone-at for the latest point.",
            time_text(*target),
            point_text(latest, ""),
            archive_timeout.as_secs()
        ),
        Unrestorable::PastEnd { target, latest } => format!(
            "clone-at {target} is past the end of the archived WAL of {named} ({}).",
            latest.lsn
        ),
        Unrestorable::Gap { target, reaches } => format!(
            "{} cannot be restored: the archived WAL of {named} has a gap before it (the WAL after its base backup runs only to LSN {reaches}).",
            asked(target)
        ),
        Unrestorable::NoSuchRestorePoint {
            name,
            earliest,
            latest,
        } => format!(
            "The archive of {named} has no restore point named {name:?} (its restorable window is {} to {}).",
            short(earliest),
            short(latest)
        ),
    }
}

/// A span of time in the largest whole unit: `30 days`, `1 day`, `5 hours`, `2 minutes`,
/// `12 seconds`.
fn span_text(d: chrono::Duration) -> String {
    let s = d.num_seconds().max(0);
    let (n, unit) = match s {
        86400.. => (s / 86400, "day"),
        3600.. => (s / 3600, "hour"),
        60.. => (s / 60, "minute"),
        _ => (s, "second"),
    };
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

/// The point a clone asked for, in words.
fn at_text(at: Option<&CloneAt>) -> String {
    match at {
        None => "the latest archived point".into(),
        Some(CloneAt::Time(s)) => DateTime::parse_from_rfc3339(s)
            .map(|t| time_text(t.with_timezone(&Utc)))
            .unwrap_or_else(|_| s.clone()),
        Some(CloneAt::Lsn(l)) => format!("LSN {l}"),
        Some(CloneAt::RestorePoint(n)) => format!("restore point {n:?}"),
    }
}

/// The first description of an accepted clone.
pub(super) fn accepted_description(r: &RestoreRecord) -> String {
    let requested = r.requested.as_ref();
    let named = requested.map_or(r.source.instance_id.as_str(), |p| p.clone_from.as_str());
    let deleted = r
        .source
        .deleted_at
        .map(|d| format!(", deleted {}", time_text(d.0)))
        .unwrap_or_default();
    format!(
        "Clone of {named} (instance {}{deleted}) at {} accepted.",
        r.source.instance_id,
        at_text(requested.and_then(|p| p.clone_at.as_ref()))
    )
}

/// The 202 body's `metadata.attributes.clone_of` (OSB 2.16 `metadata`): what the clone
/// copies. `at` (`{lsn, time}` the clone will hold) and `backup` say what was resolved;
/// records accepted before targets were resolved hold what was requested and no backup.
pub(super) fn clone_of(r: &RestoreRecord) -> Value {
    let at = r.requested.as_ref().and_then(|p| p.clone_at.as_ref());
    let (lsn, time) = match (&r.resolved, at) {
        (Some(res), _) => (
            Some(res.expect_lsn.clone()),
            res.expect_time.map(|t| time_text(t.0)),
        ),
        (None, Some(CloneAt::Lsn(l))) => (Some(l.clone()), None),
        (None, Some(CloneAt::Time(_))) => (None, Some(at_text(at))),
        (None, _) => (None, None),
    };
    let mut at_json = json!({ "lsn": lsn, "time": time });
    if let Some(CloneAt::RestorePoint(n)) = at {
        at_json["restore_point"] = json!(n);
    }
    json!({
        "instance_id": r.source.instance_id,
        "name": r.source.name,
        "incarnation": r.source.incarnation,
        "deleted_at": r.source.deleted_at.map(|d| time_text(d.0)),
        "at": at_json,
        "backup": r.resolved.as_ref().map(|res| res.backup.clone()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn times_are_utc_to_the_millisecond() {
        assert_eq!(
            time_text(t("2026-12-07T11:15:00+01:00")),
            "2026-12-07T10:15:00Z"
        );
        assert_eq!(
            time_text(t("2026-12-07T10:14:59.8101Z")),
            "2026-12-07T10:14:59.81Z"
        );
    }

    #[test]
    fn spans_in_the_largest_whole_unit() {
        let d = chrono::Duration::seconds;
        assert_eq!(span_text(d(30 * 86400 + 5)), "30 days");
        assert_eq!(span_text(d(86400)), "1 day");
        assert_eq!(span_text(d(7200)), "2 hours");
        assert_eq!(span_text(d(61)), "1 minute");
        assert_eq!(span_text(d(3)), "3 seconds");
    }

    #[test]
    fn a_time_in_the_future_is_refused_without_the_archive() {
        let now = t("2026-12-07T10:14:02Z");
        let e = wanted(Some(&CloneAt::Time("2026-12-07T10:15:00Z".into())), now).unwrap_err();
        assert_eq!(
            e.description,
            "clone-at 2026-12-07T10:15:00Z is in the future (the broker's clock says 2026-12-07T10:14:02Z)."
        );
        assert_eq!(e.error, "InvalidParameters");
        for (at, w) in [
            (None, Wanted::Latest),
            (
                Some(CloneAt::Time("2026-12-07T11:14:02+01:00".into())),
                Wanted::Time(now),
            ),
            (
                Some(CloneAt::Lsn("0/3000060".into())),
                Wanted::Lsn(Lsn(0x3000060)),
            ),
            (
                Some(CloneAt::RestorePoint("x".into())),
                Wanted::RestorePoint("x".into()),
            ),
        ] {
            assert_eq!(wanted(at.as_ref(), now).unwrap(), w, "{at:?}");
        }
    }

    #[test]
    fn refusals_say_what_the_archive_holds() {
        let p = |lsn: u64, time: Option<&str>| Point {
            lsn: Lsn(lsn),
            timeline: walarchive::wal::TimelineId(1),
            time: time.map(t),
        };
        let earliest = p(0x9000028, Some("2026-12-03T04:00:12Z"));
        let latest = p(0x5A3F2D8, Some("2026-12-07T10:14:31Z"));
        let min = Duration::from_secs(60);
        let cases = [
            (
                Unrestorable::BeforeEarliest {
                    target: Wanted::Time(t("2026-12-01T00:00:00Z")),
                    found: None,
                    earliest: earliest.clone(),
                },
                "clone-at 2026-12-01T00:00:00Z is before the earliest restorable point of old-db, 2026-12-03T04:00:12Z (the end of its oldest base backup, LSN 0/9000028).",
            ),
            (
                Unrestorable::NotArchivedYet {
                    target: t("2026-12-07T10:15:00Z"),
                    latest: latest.clone(),
                },
                "clone-at 2026-12-07T10:15:00Z is after the latest restorable point of old-db, 2026-12-07T10:14:31Z (LSN 0/5A3F2D8): later WAL is not archived yet; retry after archive_timeout (60 s), or omit clone-at for the latest point.",
            ),
            (
                Unrestorable::PastEnd {
                    target: Lsn(0x7000000),
                    latest: latest.clone(),
                },
                "clone-at 0/7000000 is past the end of the archived WAL of old-db (0/5A3F2D8).",
            ),
            (
                Unrestorable::NoSuchRestorePoint {
                    name: "before-migration".into(),
                    earliest: earliest.clone(),
                    latest: p(0x5A3F2D8, None),
                },
                "The archive of old-db has no restore point named \"before-migration\" (its restorable window is 2026-12-03T04:00:12Z to LSN 0/5A3F2D8).",
            ),
            (
                Unrestorable::Gap {
                    target: Wanted::Lsn(Lsn(0x5000000)),
                    reaches: Lsn(0x4000000),
                },
                "clone-at 0/5000000 cannot be restored: the archived WAL of old-db has a gap before it (the WAL after its base backup runs only to LSN 0/4000000).",
            ),
        ];
        for (u, want) in cases {
            assert_eq!(refusal("old-db", &u, min), want);
        }
    }

    #[test]
    fn the_originating_user_is_read_from_cloud_foundry_only() {
        let mut h = HeaderMap::new();
        assert_eq!(originating_user(&h), None);
        let v = base64::engine::general_purpose::STANDARD.encode(r#"{"user_id": "u-1"}"#);
        h.insert(
            "X-Broker-API-Originating-Identity",
            format!("cloudfoundry {v}").parse().unwrap(),
        );
        assert_eq!(originating_user(&h).as_deref(), Some("u-1"));
        h.insert(
            "X-Broker-API-Originating-Identity",
            format!("kubernetes {v}").parse().unwrap(),
        );
        assert_eq!(originating_user(&h), None);
    }
}
