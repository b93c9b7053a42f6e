//! An instance's repository as the dashboard shows it: its completed backups and the window a
//! clone can target. Read every `[stats] repository_interval` (and after an action), not
//! every sample: listing an archive and reading its last segments costs storage requests.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tracing::warn;

use crate::config::BrokerConfig;
use crate::state::{BackupEntry, InstanceRecord, Timestamp};
use crate::stats::{BackupSummary, RepositoryState, RestorableWindow};
use crate::windows::WindowError;

/// How long one reading may take.
const BUDGET: Duration = Duration::from_secs(30);

fn time(text: &str) -> Option<Timestamp> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| Timestamp(t.with_timezone(&Utc)))
}

/// Names the node that took each of `state`'s backups the broker's backup log lists.
pub fn name_nodes(state: &mut RepositoryState, log: &[BackupEntry]) {
    for b in &mut state.backups {
        if let Some(e) = log.iter().find(|e| e.name == b.name) {
            b.node = Some(e.node.clone());
        }
    }
}

/// Reads instance `inst`'s repository; failures become a sentence in `error` (the details go
/// to the log).
pub async fn read(config: &BrokerConfig, inst: &InstanceRecord) -> RepositoryState {
    let mut state = RepositoryState {
        backups: Vec::new(),
        window: None,
        computed_at: Timestamp::now(),
        error: None,
    };
    let listed = async {
        let repo = crate::archive::open(config, &inst.repository)?;
        walarchive::catalog::list_backups(&repo, false).await
    };
    match tokio::time::timeout(BUDGET, listed).await {
        Ok(Ok(entries)) => {
            state.backups = entries
                .iter()
                .filter_map(|e| {
                    let m = e.manifest.as_ref()?;
                    let (started_at, stopped_at) = (time(&m.start_time), time(&m.stop_time));
                    Some(BackupSummary {
                        name: e.name.clone(),
                        started_at,
                        stopped_at,
                        bytes: Some(m.original_bytes),
                        duration_seconds: match (started_at, stopped_at) {
                            (Some(a), Some(b)) => {
                                Some((b.0 - a.0).num_milliseconds() as f64 / 1000.0)
                            }
                            _ => None,
                        },
                        node: None,
                    })
                })
                .collect();
        }
        Ok(Err(walarchive::Error::NoRepository { .. })) => {}
        Ok(Err(e)) => {
            warn!(instance = %inst.id, "cannot list an instance's backups: {e}");
            state.error = Some("The archive's backups could not be listed; retrying later.".into());
        }
        Err(_) => {
            state.error = Some(format!(
                "The archive's backups were not listed within {} s; retrying later.",
                BUDGET.as_secs()
            ));
        }
    }
    match crate::windows::compute(config, &inst.repository, BUDGET).await {
        Ok(c) => {
            state.window = Some(RestorableWindow {
                earliest_lsn: c.window.earliest.lsn.to_string(),
                earliest_at: c.window.earliest.time.map(Timestamp),
                latest_lsn: c.window.latest.lsn.to_string(),
                latest_at: c.window.latest.time.map(Timestamp),
            });
        }
        Err(WindowError::NoBackup) => {}
        Err(WindowError::Unreadable(detail)) => {
            warn!(instance = %inst.id, "cannot read an instance's restorable window: {detail}");
            state.error.get_or_insert_with(|| {
                "The restorable window could not be read; retrying later.".into()
            });
        }
    }
    state
}
