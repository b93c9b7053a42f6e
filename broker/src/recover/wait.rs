//! Step 3 of a disaster recovery (design §4.2): a worker run in-process until every
//! operation the recovery wrote has finished, and what each instance recovered to.
//!
//! Why in-process: the operator runs one command and learns, per instance, whether it came
//! back and to which point, before the platform is let in again; the broker started after it
//! finds the instances ready (or failed) and adopts the router the worker left running.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::Notify;

use super::{Action, RecoverError, Recovery, Report};
use crate::state::OperationState;
use crate::worker::Worker;

/// How one instance's recovery ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outcome {
    /// The instance id.
    pub id: String,
    /// Its name on the platform, if it has one.
    pub name: Option<String>,
    /// The LSN it was recovered to (a recover operation that promoted).
    pub lsn: Option<String>,
    /// The time of the last transaction it was recovered to, when known.
    pub time: Option<String>,
    /// Seconds from the start of the worker to the end of its operation (or the timeout).
    pub seconds: u64,
    /// True when its operation succeeded.
    pub ok: bool,
    /// `succeeded`, `failed: <reason>` or `timed out: <last progress>`.
    pub outcome: String,
}

impl Recovery<'_> {
    /// Runs a worker until every operation of `report`'s instances (but failed instances and
    /// tombstones) has finished, or `worker.restore_timeout`; the outcomes, in report order.
    pub async fn wait(&self, report: &Report) -> Result<Vec<Outcome>, RecoverError> {
        let waited: Vec<_> = report
            .instances
            .iter()
            .filter(|p| !matches!(p.action, Action::KeepFailed | Action::KeepDeleted))
            .collect();
        let worker = Worker::new(
            Arc::new(self.config.clone()),
            self.store.clone(),
            Arc::new(Notify::new()),
        )
        .map_err(|e| RecoverError::Worker(e.to_string()))?;
        let stop = Arc::new(Notify::new());
        let stopped = stop.clone();
        let run = tokio::spawn(worker.run(async move { stopped.notified().await }));
        let start = Instant::now();
        let timeout = self.config.worker.restore_timeout.0;
        let mut done: Vec<Option<Outcome>> = vec![None; waited.len()];
        loop {
            for (slot, p) in done.iter_mut().zip(&waited) {
                if slot.is_some() {
                    continue;
                }
                let (inst, op) = match self.store.instance_and_operation(&p.id).await {
                    Ok(r) => r,
                    // etcd away for a moment: the worker waits for it too.
                    Err(e) => {
                        tracing::warn!(instance = %p.id, "cannot read the recovery's progress: {e}");
                        continue;
                    }
                };
                let (inst, op) = (inst.map(|v| v.value), op.map(|v| v.value));
                let reached = inst
                    .as_ref()
                    .and_then(|i| i.restore.as_ref())
                    .and_then(|r| r.reached.clone());
                let state = op.as_ref().map(|o| o.state);
                let timed_out = start.elapsed() >= timeout;
                if state == Some(OperationState::InProgress) && !timed_out {
                    continue;
                }
                let description = op
                    .as_ref()
                    .map(|o| o.description.clone())
                    .unwrap_or_default();
                let (ok, outcome) = match state {
                    Some(OperationState::Succeeded) => (true, "succeeded".to_string()),
                    Some(OperationState::InProgress) => {
                        (false, format!("timed out: {description}"))
                    }
                    _ => (false, format!("failed: {description}")),
                };
                *slot = Some(Outcome {
                    id: p.id.clone(),
                    name: p.name.clone(),
                    lsn: reached.as_ref().map(|r| r.lsn.clone()),
                    time: reached
                        .and_then(|r| r.time)
                        .map(|t| t.0.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
                    seconds: start.elapsed().as_secs(),
                    ok,
                    outcome,
                });
            }
            if done.iter().all(Option::is_some) {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        stop.notify_one();
        if let Err(e) = run.await {
            tracing::warn!("the recovery's worker ended badly: {e}");
        }
        Ok(done.into_iter().flatten().collect())
    }
}

/// The outcomes, one line per instance (`id name recovered-to-LSN recovered-to-time duration
/// outcome`), and a last line naming the instances that did not come back.
pub fn outcomes_text(outcomes: &[Outcome]) -> String {
    let mut out = String::new();
    for o in outcomes {
        out.push_str(&format!(
            "{} {} {} {} {}s {}\n",
            o.id,
            o.name.as_deref().unwrap_or("-"),
            o.lsn.as_deref().unwrap_or("-"),
            o.time.as_deref().unwrap_or("-"),
            o.seconds,
            o.outcome
        ));
    }
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| !o.ok)
        .map(|o| o.id.as_str())
        .collect();
    if failed.is_empty() {
        out.push_str(&format!("all {} instances recovered\n", outcomes.len()));
    } else {
        out.push_str(&format!(
            "{} of {} instances not recovered: {}\n",
            failed.len(),
            outcomes.len(),
            failed.join(", ")
        ));
    }
    out
}
