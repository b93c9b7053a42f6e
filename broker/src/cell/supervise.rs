//! Supervision of the Patroni processes: each node's Patroni started tied to the agent,
//! restarted with backoff when it exits (1 s, doubling up to 30 s, reset after a minute of
//! running), stopped with SIGTERM then SIGKILL, and never restarted after a failed bootstrap
//! from an archive; and PostgreSQL left running by a lost Patroni, shut down.
//!
//! Its own room because it is the agent's one long-running loop per node; `cell` decides
//! which nodes exist (creation, adoption, removal) and only starts or stops this.

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};
use tracing::{error, info, warn};

use super::{restore, Agent, Node};
use crate::process::{self, Signal};

/// The postmaster's PID from `postmaster.pid`, when that process is a live `postgres`.
fn live_postmaster(data_dir: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    let pid: u32 = text.lines().next()?.trim().parse().ok()?;
    (process::comm(pid).as_deref() == Some("postgres")).then_some(pid)
}

/// Makes sure no PostgreSQL runs in `data_dir`: immediate shutdown, then SIGKILL (its
/// children exit on their own once the postmaster is gone).
pub(super) async fn kill_postgres(data_dir: &Path) {
    let Some(pid) = live_postmaster(data_dir) else {
        return;
    };
    warn!(data_dir = %data_dir.display(), pid, "PostgreSQL still running: immediate shutdown");
    process::signal(pid, Signal::SIGQUIT);
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if live_postmaster(data_dir).is_none() {
            return;
        }
    }
    process::signal(pid, Signal::SIGKILL);
}

impl Agent {
    pub(super) fn start_supervisor(self: &Arc<Self>, node: &Arc<Node>) {
        let agent = self.clone();
        let n = node.clone();
        let rx = node.stop.subscribe();
        let handle = tokio::spawn(async move { agent.supervise(n, rx).await });
        // The lock is free: the node was just created or its previous task was awaited.
        if let Ok(mut t) = node.task.try_lock() {
            *t = Some(handle);
        }
    }

    fn patroni_command(&self, node: &Node) -> std::process::Command {
        let rec = node.record();
        let log_path = node.dir.join("patroni.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&log_path);
        let mut cmd = self.node_command(&self.config.patroni, node, &rec);
        cmd.arg(node.dir.join("patroni.yml"))
            .env("LC_ALL", "C.UTF-8")
            .env("LANG", "C.UTF-8");
        match log {
            Ok(f) => {
                let _ = std::os::unix::fs::chown(&log_path, Some(self.uid), Some(self.gid));
                if let Ok(f2) = f.try_clone() {
                    cmd.stdout(f2);
                }
                cmd.stderr(f);
            }
            Err(e) => warn!(node = node.name, "cannot open {}: {e}", log_path.display()),
        }
        cmd
    }

    async fn supervise(self: Arc<Self>, node: Arc<Node>, mut stop: watch::Receiver<bool>) {
        let mut delay = Duration::from_secs(1);
        let pid_file = node.dir.join("patroni.pid");
        loop {
            if *stop.borrow() {
                return;
            }
            if self.bootstrap_failed(&node) {
                return;
            }
            let started = Instant::now();
            match process::spawn_tied(self.patroni_command(&node)).await {
                Ok(mut child) => {
                    let pid = child.id();
                    info!(node = node.name, pid, "Patroni started");
                    node.runtime.lock().expect("runtime lock").pid = Some(pid);
                    let _ = std::fs::write(&pid_file, pid.to_string());
                    let (done_tx, mut done_rx) = oneshot::channel();
                    // A plain thread, not tokio's blocking pool: a runtime being dropped
                    // waits for its blocking tasks.
                    std::thread::spawn(move || {
                        let _ = done_tx.send(child.wait());
                    });
                    let stopping = tokio::select! {
                        status = &mut done_rx => {
                            warn!(node = node.name, "Patroni exited: {:?}", status.ok());
                            false
                        }
                        _ = stop.changed() => true,
                    };
                    if stopping {
                        info!(node = node.name, pid, "stopping Patroni");
                        process::signal(pid, Signal::SIGTERM);
                        if tokio::time::timeout(Duration::from_secs(120), &mut done_rx)
                            .await
                            .is_err()
                        {
                            warn!(node = node.name, pid, "Patroni did not stop: SIGKILL");
                            process::signal(pid, Signal::SIGKILL);
                            let _ = done_rx.await;
                        }
                    }
                    let _ = std::fs::remove_file(&pid_file);
                    let mut rt = node.runtime.lock().expect("runtime lock");
                    rt.pid = None;
                    if stopping {
                        return;
                    }
                    drop(rt);
                    if self.bootstrap_failed(&node) {
                        return;
                    }
                    node.runtime.lock().expect("runtime lock").restarts += 1;
                }
                Err(e) => {
                    error!(node = node.name, "cannot start Patroni: {e}");
                    node.runtime.lock().expect("runtime lock").restarts += 1;
                }
            }
            if started.elapsed() > Duration::from_secs(60) {
                delay = Duration::from_secs(1);
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.changed() => return,
            }
            delay = (delay * 2).min(Duration::from_secs(30));
        }
    }

    /// Whether `node` bootstrapped from an archive and that failed: its Patroni is not
    /// (re)started, or it would bootstrap again, forever (see [`super::restore`]).
    fn bootstrap_failed(&self, node: &Node) -> bool {
        let failed = node.record().spec.bootstrap.is_some() && restore::bootstrap_failed(&node.dir);
        if failed {
            warn!(
                node = node.name,
                "the node's bootstrap from an archive failed: Patroni is not restarted"
            );
        }
        failed
    }
}
