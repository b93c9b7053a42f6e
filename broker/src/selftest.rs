//! `walarchive-broker selftest --config FILE`: the whole system checked end to end with the
//! broker's own configuration (design §5).
//!
//! Why: a broker whose archive credentials expired, whose certificate a platform no longer
//! trusts, or whose clones cannot restore looks healthy until the day someone needs it. The
//! self-test does what a platform and an application would (through the OSB API the broker
//! serves, with the platform's credentials), on instances of its own, and says which step
//! failed. Each step prints one line, `[ok] 3 catalog … (0.1 s)`, `[skip] …` or
//! `[FAILED] 8 …: reason`; the last line names the failed step. Exit status 0 only when every
//! step passed.
//!
//! What it leaves behind: nothing. Its instances are in organization and space
//! `walarchive-selftest`, with ids `walarchive-selftest-<UTC time>-<8 hex>` (never a
//! platform's); whatever happens (a failed step, Ctrl-C, SIGTERM, a panic), a guard runs
//! steps 10 (deprovision) and 11 (purge the archives, forget the records) on the ids it
//! asked for, and only ids with that prefix can be purged or forgotten
//! ([`crate::state::is_selftest_id`], enforced by the store too).

mod osb;
mod probe;
mod steps;

use std::future::Future;
use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::Utc;
use serde_json::json;

use crate::config::BrokerConfig;
use crate::state::{Store, SELFTEST_ID_PREFIX};
use crate::EtcdClient;

/// The organization and space of the self-test's instances.
pub const SELFTEST_ORG: &str = "walarchive-selftest";
/// The table the self-test writes.
const TABLE: &str = "walarchive_selftest";

/// The steps, by number.
pub const STEPS: [&str; 12] = [
    "repository credentials",
    "state store credentials",
    "catalog through the broker's API",
    "provision a one-node instance",
    "bind it and write 100 rows through the router",
    "base backup on the leader",
    "100 more rows, time T between",
    "clone at T through the API",
    "bind the clone: exactly 100 rows",
    "deprovision both instances",
    "purge both archives and forget their records",
    "the newest state snapshot verifies",
];

/// A new self-test instance id: `walarchive-selftest-<UTC time>-<8 hex>`.
pub fn new_instance_id() -> String {
    format!(
        "{SELFTEST_ID_PREFIX}{}-{}",
        Utc::now().format("%Y%m%dT%H%M%SZ"),
        &crate::state::new_id()[..8]
    )
}

/// What a run shares between its steps and its guard.
struct Run {
    config: Arc<BrokerConfig>,
    store: Store,
    api: osb::Api,
    source: String,
    clone: String,
    /// The ids a provision was asked for (before the request: it may have been recorded
    /// even when its answer was lost).
    created: Mutex<Vec<String>>,
    /// The connection of step 5, used again by step 7.
    db: tokio::sync::Mutex<Option<tokio_postgres::Client>>,
}

impl Run {
    fn created_ids(&self) -> Vec<String> {
        let mut v = self.created.lock().expect("lock").clone();
        v.dedup();
        v
    }
}

/// The step running or last started, for the line an interruption prints.
type Current = Arc<Mutex<Option<(usize, Instant)>>>;

fn print_line(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Runs step `n` (1-based), printing its line; its result.
async fn step<T>(
    n: usize,
    current: &Current,
    work: impl Future<Output = Result<(T, String), String>>,
) -> Result<T, String> {
    let start = Instant::now();
    *current.lock().expect("lock") = Some((n, start));
    let r = work.await;
    let secs = start.elapsed().as_secs_f64();
    match r {
        Ok((v, what)) => {
            let what = if what.is_empty() {
                String::new()
            } else {
                format!(": {what}")
            };
            print_line(&format!("[ok] {n} {}{what} ({secs:.1} s)", STEPS[n - 1]));
            Ok(v)
        }
        Err(reason) => {
            print_line(&format!("[FAILED] {n} {}: {reason}", STEPS[n - 1]));
            Err(reason)
        }
    }
}

fn skip(n: usize, why: &str) {
    print_line(&format!("[skip] {n} {}: {why}", STEPS[n - 1]));
}

/// Steps 1 to 9: the first failed step's number.
async fn forward(run: Arc<Run>, current: Current) -> Result<(), usize> {
    let hex = &crate::state::new_id()[..8];
    let config = run.config.clone();
    step(1, &current, async {
        let (loc, policy) = crate::archive::open_storage(&config, &config.repository.base)
            .map_err(|e| e.to_string())?;
        probe::probe(&loc, &policy, hex).await?;
        Ok(((), config.repository.base.clone()))
    })
    .await
    .map_err(|_| 1usize)?;
    match &config.state_backup {
        None => skip(2, "no [state_backup]"),
        Some(sb) => step(2, &current, async {
            let (loc, policy) = crate::statebackup::open_location(sb).map_err(|e| e.to_string())?;
            probe::probe(&loc, &policy, hex).await?;
            Ok(((), sb.url.clone()))
        })
        .await
        .map_err(|_| 2usize)?,
    }
    step(3, &current, async { run.catalog().await.map(|w| ((), w)) })
        .await
        .map_err(|_| 3usize)?;
    step(4, &current, async {
        run.provision(&run.source, json!({ "node-count": 1 }))
            .await
            .map(|w| ((), w))
    })
    .await
    .map_err(|_| 4usize)?;
    step(5, &current, async {
        run.bind_and_write().await.map(|w| ((), w))
    })
    .await
    .map_err(|_| 5usize)?;
    step(6, &current, async { run.backup().await.map(|w| ((), w)) })
        .await
        .map_err(|_| 6usize)?;
    let t = step(7, &current, async {
        run.write_more().await.map(|t| {
            let text = format!(
                "T = {}",
                t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
            );
            (t, text)
        })
    })
    .await
    .map_err(|_| 7usize)?;
    step(8, &current, async {
        run.clone_at(t).await.map(|w| ((), w))
    })
    .await
    .map_err(|_| 8usize)?;
    step(9, &current, async {
        run.check_clone().await.map(|w| ((), w))
    })
    .await
    .map_err(|_| 9usize)?;
    Ok(())
}

/// Runs the self-test with `config` until done or until `interrupt` completes (the guard
/// then still runs steps 10 and 11); whether every step passed. `Err` only when it cannot
/// start (etcd's client, the API's client).
pub async fn run(
    config: BrokerConfig,
    interrupt: impl Future<Output = ()>,
) -> Result<bool, String> {
    let config = Arc::new(config);
    let etcd = EtcdClient::from_config(&config.etcd).map_err(|e| e.to_string())?;
    let store = Store::new(etcd, config.etcd.prefix.clone(), config.keyring());
    let api = osb::Api::new(&config)?;
    let run = Arc::new(Run {
        config: config.clone(),
        store,
        api,
        source: new_instance_id(),
        clone: new_instance_id(),
        created: Mutex::new(Vec::new()),
        db: tokio::sync::Mutex::new(None),
    });
    let current: Current = Arc::new(Mutex::new(None));
    // A task of its own: a panic in a step ends the task, not the guard.
    let mut task = tokio::spawn(forward(run.clone(), current.clone()));
    let outcome: Result<(), (usize, &str)> = tokio::select! {
        r = &mut task => match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(n)) => Err((n, "")),
            Err(_) => Err((current_step(&current), "panicked")),
        },
        () = interrupt => {
            task.abort();
            let _ = task.await;
            Err((current_step(&current), "interrupted"))
        }
    };
    if let Err((n, why)) = outcome {
        if !why.is_empty() {
            print_line(&format!("[FAILED] {n} {}: {why}", STEPS[n - 1]));
        }
    }
    // The guard (and, after a success, steps 10 and 11 themselves).
    let ten = step(10, &current, async {
        run.deprovision_all().await.map(|w| ((), w))
    })
    .await;
    let eleven = step(11, &current, async {
        run.purge_and_forget().await.map(|w| ((), w))
    })
    .await;
    let failed = match outcome {
        Err((n, _)) => Some(n),
        Ok(()) if ten.is_err() => Some(10),
        Ok(()) if eleven.is_err() => Some(11),
        Ok(()) => match &config.state_backup {
            None => {
                skip(12, "no [state_backup]");
                None
            }
            Some(_) => step(12, &current, async {
                run.verify_state().await.map(|w| ((), w))
            })
            .await
            .err()
            .map(|_| 12),
        },
    };
    match failed {
        None => {
            print_line("selftest passed");
            Ok(true)
        }
        Some(n) => {
            let cleanup = if ten.is_err() || eleven.is_err() {
                "; the cleanup failed too: see steps 10 and 11"
            } else {
                ""
            };
            print_line(&format!(
                "selftest FAILED at step {n} ({}){cleanup}",
                STEPS[n - 1]
            ));
            Ok(false)
        }
    }
}

/// The step running (or the last one started), for an interruption's line.
fn current_step(current: &Current) -> usize {
    current.lock().expect("lock").map_or(1, |(n, _)| n)
}
