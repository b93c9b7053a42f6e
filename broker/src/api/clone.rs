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
//! within `[clones] validation_budget`), then [`check_target`], the one seam where the
//! restorable window's checks will go once the core computes windows.

use std::time::Duration;

use axum::http::HeaderMap;
use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};
use tracing::warn;

use super::AppState;
use crate::error::ApiError;
use crate::state::{
    CloneAt, CloneParameters, InstanceRecord, InstanceState, Purge, RestoreKind, RestoreRecord,
    SourceRef, Timestamp, Versioned,
};

/// A validated clone: what the instance record keeps, and the source record's revision the
/// create transaction compares (so that a change since validation makes the PUT decide again).
pub(super) struct Validated {
    /// `InstanceRecord.restore` of the new instance.
    pub(super) restore: RestoreRecord,
    /// The source's instance id and its record's mod revision when validated.
    pub(super) source_revision: (String, i64),
}

/// What the provision asked for, and who asked.
pub(super) struct CloneRequest<'a> {
    /// The new instance's organization and space.
    pub(super) org: &'a str,
    pub(super) space: &'a str,
    /// The new instance's service.
    pub(super) service_id: &'a str,
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
    let budget = st.config.clones.validation_budget.0;
    let backups = completed_backups(st, &source.repository, budget)
        .await
        .map_err(|detail| {
            warn!(source = %rec.id, repository = %source.repository,
                  "cannot read a clone source's archive: {detail}");
            ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                format!(
                    "The archive of {named} could not be read in time to check clone-at; retry in a minute."
                ),
            )
        })?;
    if backups == 0 {
        return Err(ApiError::invalid_parameters(
            if source.deleted_at.is_some() || !source.is_current() {
                format!("{named} never completed a base backup; it cannot be cloned.")
            } else {
                format!(
                    "{named} has no completed base backup yet; it can be cloned once its first backup is taken."
                )
            },
        ));
    }
    check_target(req.params.clone_at.as_ref(), Utc::now())?;
    Ok(Validated {
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
            resolved: None,
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
    let (deleted_at, purging, purged) = if entry.incarnation == r.incarnation {
        (r.deleted_at, r.purging, r.purged.clone())
    } else {
        let earlier = r.previous.iter().find(|i| i.n == entry.incarnation);
        (
            entry
                .deleted_at
                .or_else(|| earlier.and_then(|i| i.deleted_at)),
            earlier.and_then(|i| i.purging),
            earlier.and_then(|i| i.purged.clone()),
        )
    };
    Ok(Source {
        incarnation: entry.incarnation,
        repository: entry.repository.clone(),
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

/// How many completed base backups the archive at `url` holds, read within `budget`;
/// `Err` (for the log only) when it cannot be read in time.
async fn completed_backups(st: &AppState, url: &str, budget: Duration) -> Result<usize, String> {
    let repo = crate::archive::open(&st.config, url).map_err(|e| e.to_string())?;
    match tokio::time::timeout(budget, walarchive::catalog::list_backups(&repo, false)).await {
        Ok(Ok(b)) => Ok(b.iter().filter(|b| b.is_complete()).count()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("not read within {} s", budget.as_secs())),
    }
}

/// Whether the source's archive can give the point `at` asks for. The seam of the
/// restorable window: once the core computes windows (`walarchive::window`), the checks
/// "too early", "not yet archived", "LSN past the end" and "no such restore point" go here;
/// today only a time in the future is refused, which needs no archive.
pub(super) fn check_target(at: Option<&CloneAt>, now: DateTime<Utc>) -> Result<(), ApiError> {
    if let Some(CloneAt::Time(s)) = at {
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
    }
    Ok(())
}

/// A time as the API's texts give them: RFC 3339 in UTC, to the millisecond, without a
/// fraction when it is whole (`2026-12-07T10:15:00Z`, `2026-12-07T10:14:59.81Z`).
pub(super) fn time_text(t: DateTime<Utc>) -> String {
    let s = t.to_rfc3339_opts(SecondsFormat::Millis, true);
    match s.strip_suffix("Z").and_then(|s| s.split_once('.')) {
        Some((whole, frac)) => {
            let frac = frac.trim_end_matches('0');
            if frac.is_empty() {
                format!("{whole}Z")
            } else {
                format!("{whole}.{frac}Z")
            }
        }
        None => s,
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
/// copies. `at` and `backup` say what was resolved; until the broker resolves targets in the
/// archive they hold what was requested (`at`) and nothing (`backup`).
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
    fn only_a_time_in_the_future_is_refused_today() {
        let now = t("2026-12-07T10:14:02Z");
        let e = check_target(Some(&CloneAt::Time("2026-12-07T10:15:00Z".into())), now).unwrap_err();
        assert_eq!(
            e.description,
            "clone-at 2026-12-07T10:15:00Z is in the future (the broker's clock says 2026-12-07T10:14:02Z)."
        );
        assert_eq!(e.error, "InvalidParameters");
        for ok in [
            None,
            Some(CloneAt::Time("2026-12-07T10:14:02Z".into())),
            Some(CloneAt::Lsn("0/3000060".into())),
            Some(CloneAt::RestorePoint("x".into())),
        ] {
            assert!(check_target(ok.as_ref(), now).is_ok(), "{ok:?}");
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
