//! Benchmark of the single-machine system (`walarchive-broker dev`): how long provisioning a
//! two-node instance takes (OSB `PUT` until `last_operation` says `succeeded`), and how long a
//! failover takes (SIGKILL of the leader's cell agent, which takes its Patroni and PostgreSQL
//! down like a lost machine, until the first successful write through the router port on
//! the promoted node); then how long a point-in-time clone of a 1 GiB source takes, phase by
//! phase, against the same restore done by hand (`broker/clones.rs`).
//!
//! Not a test: it runs the real processes (etcd, three cell agents, Patroni, PostgreSQL 15,
//! HAProxy) for a few minutes and prints a Markdown table. Run as root (see scripts/setup):
//!
//! ```text
//! cargo bench -p walarchive-broker --bench broker            # 3 repetitions, then clones
//! WALARCHIVE_BENCH_REPS=5 cargo bench -p walarchive-broker --bench broker
//! WALARCHIVE_BENCH_PARTS=clones WALARCHIVE_BENCH_CLONE_SCALE=20 WALARCHIVE_BENCH_CLONE_WAL_MB=256 \
//!     cargo bench -p walarchive-broker --bench broker     # only clones, a smaller run
//! ```
//!
//! `WALARCHIVE_BENCH_PARTS` (`provision,clones` by default) chooses what runs; the clones'
//! part (a 1 GiB source by default) is in `broker/clones.rs`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use walarchive_broker::dev::{write_probe, Dev, DevOptions, PLAN_HA};

#[path = "broker/clones.rs"]
mod clones;

/// The walarchive binary of the same profile as this benchmark's broker binary, built when
/// missing.
fn walarchive_for(broker: &Path) -> PathBuf {
    let dir = broker.parent().expect("target profile directory");
    let bin = dir.join("walarchive");
    if !bin.exists() {
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.args(["build", "--bin", "walarchive"])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        assert!(
            cmd.status().expect("run cargo build").success(),
            "cargo build --bin walarchive failed"
        );
    }
    bin
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// What the run measured: provisioning and failover times, and the clones' report.
type Measured = (Vec<(f64, f64)>, Option<clones::Report>);

async fn run(reps: usize, parts: &str) -> Result<Measured, String> {
    let broker = PathBuf::from(env!("CARGO_BIN_EXE_walarchive-broker"));
    let opts = DevOptions {
        cells: 3,
        walarchive: Some(walarchive_for(&broker)),
        broker_exe: Some(broker),
        ..DevOptions::default()
    };
    let mut dev = Dev::prepare(&opts).map_err(|e| e.to_string())?;
    let result = async {
        dev.start().await.map_err(|e| e.to_string())?;
        let rows = if parts.contains("provision") {
            measure(&mut dev, reps).await?
        } else {
            Vec::new()
        };
        let clones = if parts.contains("clones") {
            Some(clones::measure(&mut dev, clones::Size::from_env()).await?)
        } else {
            None
        };
        Ok((rows, clones))
    }
    .await;
    if result.is_err() {
        eprintln!("logs kept in {}", dev.dir.display());
        std::mem::forget(dev);
        return result;
    }
    dev.stop().await;
    result
}

async fn measure(dev: &mut Dev, reps: usize) -> Result<Vec<(f64, f64)>, String> {
    let osb = dev.osb();
    let mut rows = Vec::new();
    for r in 1..=reps {
        let id = format!("bench-{r}");
        let t0 = Instant::now();
        osb.provision(&id, PLAN_HA)
            .await
            .map_err(|e| e.to_string())?;
        let ok = osb
            .wait_operation(&id, Duration::from_secs(900), |_| {})
            .await
            .map_err(|e| e.to_string())?;
        if !ok {
            return Err(format!("provisioning {id} failed"));
        }
        let provision = t0.elapsed().as_secs_f64();
        let creds = osb
            .bind(&id, &format!("bench-app-{r}"), PLAN_HA)
            .await
            .map_err(|e| e.to_string())?;
        let start = Instant::now();
        while write_probe(&creds.uri, Duration::from_secs(5))
            .await
            .is_err()
        {
            if start.elapsed() > Duration::from_secs(60) {
                return Err(format!("{id}: no write through the router"));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let (cell, leader) = loop {
            if let Some(l) = dev.leader(&id).await {
                break l;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        let old_port = i32::from(leader.ports.pg_port);
        let killed = Instant::now();
        dev.kill_cell(cell);
        let failover = loop {
            if let Ok(port) = write_probe(&creds.uri, Duration::from_secs(2)).await {
                if port != old_port {
                    break killed.elapsed().as_secs_f64();
                }
            }
            if killed.elapsed() > Duration::from_secs(180) {
                return Err(format!("{id}: no failover within 180 s"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        eprintln!("run {r}: provisioning {provision:.1} s, failover {failover:.1} s");
        rows.push((provision, failover));
        dev.restart_cell(cell).await.map_err(|e| e.to_string())?;
        osb.deprovision(&id, PLAN_HA)
            .await
            .map_err(|e| e.to_string())?;
        osb.wait_operation(&id, Duration::from_secs(300), |_| {})
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(rows)
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument is a filter this benchmark ignores.
    let reps: usize = std::env::var("WALARCHIVE_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let parts =
        std::env::var("WALARCHIVE_BENCH_PARTS").unwrap_or_else(|_| "provision,clones".into());
    // A current-thread runtime: the children's death signal is tied to this thread.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let (rows, clones) = match runtime.block_on(run(reps, &parts)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("benchmark failed: {e}");
            std::process::exit(1);
        }
    };
    if let Some(c) = &clones {
        clones::print(c);
    }
    if rows.is_empty() {
        return;
    }
    println!();
    println!("2-node instance (plan ha), 3 cells on one machine; Patroni ttl 10 s, loop_wait 2 s, retry_timeout 4 s, synchronous_mode");
    println!();
    println!(
        "| run | provisioning (PUT → succeeded) | failover (SIGKILL leader's cell → first write) |"
    );
    println!(
        "|----:|-------------------------------:|-----------------------------------------------:|"
    );
    for (i, (p, f)) in rows.iter().enumerate() {
        println!("| {} | {p:.1} s | {f:.1} s |", i + 1);
    }
    let (ps, fs): (Vec<f64>, Vec<f64>) = rows.iter().copied().unzip();
    println!("| median | {:.1} s | {:.1} s |", median(&ps), median(&fs));
}
