//! The clone benchmark (design §6.4): how long a point-in-time clone takes through the broker,
//! split into its phases, against the same restore done by hand, so that the broker's own
//! cost (placement, Patroni's bootstrap, polling, roles, routing) is a number, not a guess.
//!
//! A one-node source is provisioned and filled with `pgbench -i -s SCALE` (70, about 1 GiB, by
//! default), backed up, then given WAL_MB of WAL (1024 by default) by updates of
//! `pgbench_accounts` in transactions of 100 000 rows; the time half-way through that WAL is
//! noted. Two-node clones are then made at the latest point and at that time (`PUT` until
//! `last_operation` says `succeeded`), their phases read from the descriptions (polled every
//! second, as a platform does): base-backup restore, WAL replay, the clone's first backup,
//! replicas and routing. The same backup and target are then restored by hand: `walarchive
//! backup-fetch --target-… --target-action promote` and `pg_ctl start` until
//! `pg_is_in_recovery()` is false.
//!
//! `WALARCHIVE_BENCH_CLONE_SCALE` and `WALARCHIVE_BENCH_CLONE_WAL_MB` make a smaller run.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use walarchive_broker::dev::{Dev, PLAN_HA, PLAN_SINGLE};
use walarchive_broker::state::Credentials;

/// How big a run is.
#[derive(Clone, Copy, Debug)]
pub struct Size {
    /// `pgbench -i -s`.
    pub scale: u32,
    /// WAL written after the source's backup, in MiB.
    pub wal_mib: u64,
}

impl Size {
    /// From the environment (see the module docs).
    pub fn from_env() -> Size {
        let var = |k: &str, d: u64| {
            std::env::var(k)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(d)
        };
        Size {
            scale: var("WALARCHIVE_BENCH_CLONE_SCALE", 70) as u32,
            wal_mib: var("WALARCHIVE_BENCH_CLONE_WAL_MB", 1024),
        }
    }
}

/// One clone and its restore by hand, in seconds.
#[derive(Debug)]
pub struct Row {
    /// "latest" or the time.
    pub target: String,
    /// PUT → succeeded.
    pub total: f64,
    /// Base-backup restore (from the PUT), WAL replay, the clone's first backup, replicas and
    /// routing.
    pub phases: [f64; 4],
    /// By hand: backup-fetch, then PostgreSQL's recovery until it is promoted.
    pub hand: (f64, f64),
}

/// What the run measured.
#[derive(Debug)]
pub struct Report {
    /// The size asked for.
    pub size: Size,
    /// `pg_database_size` of the source after `pgbench -i`.
    pub data_bytes: i64,
    /// WAL written after the backup.
    pub wal_bytes: i64,
    /// The clones.
    pub rows: Vec<Row>,
}

const SOURCE: &str = "clone-src";

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// `program` run as the nodes' OS user.
fn as_node_user(dev: &Dev, program: &str) -> Command {
    if !is_root() {
        Command::new(program)
    } else {
        let mut c = Command::new("runuser");
        c.args(["-u", dev.node_user(), "--", program]);
        c
    }
}

/// Whether this process runs as root (then the nodes run as `postgres`, see `Dev::prepare`).
fn is_root() -> bool {
    // /proc/self/status's Uid line: real, effective, ...
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// Runs `cmd` to its end; its stderr's end when it fails.
fn run(what: &str, cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{what}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&out.stderr);
    let tail: Vec<&str> = text.lines().rev().take(10).collect();
    Err(format!(
        "{what}: {}: {}",
        out.status,
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    ))
}

/// `pgbench` through the binding (the password in the environment, not the command line).
fn pgbench(creds: &Credentials, args: &[&str]) -> Result<(), String> {
    run(
        "pgbench",
        Command::new("pgbench")
            .args(args)
            .env("PGHOST", &creds.hostname)
            .env("PGPORT", creds.port.to_string())
            .env("PGUSER", &creds.username)
            .env("PGDATABASE", &creds.name)
            .env("PGPASSWORD", &creds.password),
    )
}

async fn connect(creds: &Credentials) -> Result<tokio_postgres::Client, String> {
    let (client, conn) = tokio_postgres::connect(&creds.uri, tokio_postgres::NoTls)
        .await
        .map_err(err)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Provisions `id` with `parameters` and waits for it: the 202's body and the descriptions
/// seen, with when (seconds after the PUT), then the total.
async fn provision(
    dev: &Dev,
    id: &str,
    plan: &str,
    parameters: Value,
) -> Result<(Value, Vec<(f64, String)>, f64), String> {
    let osb = dev.osb();
    let t0 = Instant::now();
    let body = osb
        .provision_with(id, plan, parameters)
        .await
        .map_err(err)?;
    let mut seen = Vec::new();
    let ok = osb
        .wait_operation(id, Duration::from_secs(3600), |d| {
            seen.push((t0.elapsed().as_secs_f64(), d.to_string()))
        })
        .await
        .map_err(err)?;
    let total = t0.elapsed().as_secs_f64();
    if !ok {
        return Err(format!(
            "provisioning {id} failed: {:?}; logs in {}",
            seen.last(),
            dev.dir.display()
        ));
    }
    Ok((body, seen, total))
}

async fn deprovision(dev: &Dev, id: &str, plan: &str) -> Result<(), String> {
    let osb = dev.osb();
    osb.deprovision(id, plan).await.map_err(err)?;
    osb.wait_operation(id, Duration::from_secs(600), |_| {})
        .await
        .map_err(err)
        .map(|_| ())
}

/// The phase a description belongs to: 0 base-backup restore, 1 WAL replay, 2 the clone's
/// first backup, 3 replicas and routing.
fn phase(desc: &str) -> usize {
    if desc.contains("taking the clone's first backup") {
        2
    } else if desc.starts_with("clone promoted") || desc.starts_with("The clone of") {
        3
    } else if desc.contains("replaying WAL") || desc.contains("finishing its bootstrap") {
        1
    } else {
        0
    }
}

/// WAL written since `from` (an LSN).
async fn written(db: &tokio_postgres::Client, from: &str) -> Result<i64, String> {
    let r = db
        .query_one(
            "select pg_wal_lsn_diff(pg_current_wal_lsn(), $1::text::pg_lsn)::bigint",
            &[&from],
        )
        .await
        .map_err(err)?;
    Ok(r.get(0))
}

/// Each phase's duration from the descriptions seen (a phase shorter than the poll interval
/// may be missed: it then counts in the next).
fn phases(seen: &[(f64, String)], total: f64) -> [f64; 4] {
    let mut start = [f64::NAN; 5];
    start[0] = 0.0;
    start[4] = total;
    for (t, d) in seen {
        let p = phase(d);
        if p > 0 && start[p].is_nan() {
            start[p] = *t;
        }
    }
    // A phase not seen starts where the next one does.
    for p in (1..4).rev() {
        if start[p].is_nan() {
            start[p] = start[p + 1];
        }
    }
    let mut out = [0.0; 4];
    for p in 0..4 {
        out[p] = (start[p + 1] - start[p]).max(0.0);
    }
    out
}

/// Restores `backup` of `repo` at `target` by hand into a fresh directory and starts it
/// until it is promoted: (backup-fetch, recovery) in seconds.
fn by_hand(
    dev: &Dev,
    n: usize,
    repo: &str,
    backup: &str,
    target: [&str; 2],
) -> Result<(f64, f64), String> {
    let walarchive = dev.dir.join("bin").join("walarchive");
    let dir = dev.dir.join(format!("by-hand-{n}"));
    let data = dir.join("data");
    let path = |p: &Path| p.display().to_string();
    std::fs::create_dir(&dir).map_err(err)?;
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .map_err(err)?;
    if is_root() {
        run(
            "chown",
            Command::new("chown").args([dev.node_user(), &path(&dir)]),
        )?;
    }
    std::fs::write(
        dev.dir.join(format!("by-hand-{n}.hba")),
        "local all all trust\n",
    )
    .map_err(err)?;
    let t0 = Instant::now();
    run(
        "backup-fetch",
        as_node_user(dev, &path(&walarchive))
            .args(["--repo", repo, "backup-fetch", target[0], target[1]])
            .args(["--target-action", "promote", &path(&data), backup]),
    )?;
    let fetched = t0.elapsed().as_secs_f64();
    let port = {
        let l = std::net::TcpListener::bind(("127.0.0.1", 0)).map_err(err)?;
        l.local_addr().map_err(err)?.port()
    };
    // Its own port, socket and pg_hba; nothing archived into the source's repository.
    let options = format!(
        "-p {port} -c listen_addresses='' -c unix_socket_directories='{}' -c archive_mode=off -c hba_file='{}'",
        path(&dir),
        path(&dev.dir.join(format!("by-hand-{n}.hba")))
    );
    let pg = Path::new("/usr/lib/postgresql/15/bin");
    run(
        "pg_ctl start",
        as_node_user(dev, &path(&pg.join("pg_ctl")))
            .args(["-D", &path(&data), "-l", &path(&dir.join("log"))])
            .args(["-o", &options, "-t", "3600", "start"]),
    )?;
    let result = loop {
        let out = as_node_user(dev, &path(&pg.join("psql")))
            .args(["-h", &path(&dir), "-p", &port.to_string(), "-d", "postgres"])
            .args(["-Atc", "select pg_is_in_recovery()"])
            .output()
            .map_err(err)?;
        if String::from_utf8_lossy(&out.stdout).trim() == "f" {
            break Ok((fetched, t0.elapsed().as_secs_f64() - fetched));
        }
        if t0.elapsed() > Duration::from_secs(3600) {
            break Err(format!("the restore by hand in {} never ended", path(&dir)));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = as_node_user(dev, &path(&pg.join("pg_ctl")))
        .args(["-D", &path(&data), "-m", "immediate", "stop"])
        .output();
    if result.is_ok() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

/// The whole clone benchmark on a started `dev` (see the module docs).
pub async fn measure(dev: &mut Dev, size: Size) -> Result<Report, String> {
    let osb = dev.osb();
    eprintln!("clones: provisioning the source");
    provision(dev, SOURCE, PLAN_SINGLE, json!({})).await?;
    let creds = osb
        .bind(SOURCE, "clone-src-app", PLAN_SINGLE)
        .await
        .map_err(err)?;
    let t = Instant::now();
    eprintln!("clones: pgbench -i -s {}", size.scale);
    pgbench(&creds, &["-i", "-q", "-s", &size.scale.to_string()])?;
    let db = connect(&creds).await?;
    let data_bytes: i64 = db
        .query_one("select pg_database_size(current_database())", &[])
        .await
        .map_err(err)?
        .get(0);
    eprintln!(
        "clones: {} MiB loaded in {:.1} s; base backup",
        data_bytes >> 20,
        t.elapsed().as_secs_f64()
    );
    let (cell, node) = dev.leader(SOURCE).await.ok_or("the source has no leader")?;
    let backup = dev.cells[cell]
        .client()
        .map_err(err)?
        .backup(&node.name)
        .await
        .map_err(err)?;
    eprintln!(
        "clones: backup {} in {:.1} s; writing {} MiB of WAL",
        backup.summary["name"], backup.seconds, size.wal_mib
    );

    // WAL after the backup: updates of 100 000 accounts a transaction, round the table.
    let lsn0: String = db
        .query_one("select pg_current_wal_lsn()::text", &[])
        .await
        .map_err(err)?
        .get(0);
    let accounts = size.scale as i32 * 100_000;
    let target = (size.wal_mib as i64) << 20;
    let mut next = 1i32;
    let mut mid = None;
    let t = Instant::now();
    loop {
        let w = written(&db, &lsn0).await?;
        if mid.is_none() && w >= target / 2 {
            // RFC 3339 for the broker, PostgreSQL's own form for backup-fetch by hand
            // (PostgreSQL 15 refuses the former in recovery_target_time).
            let r = db
                .query_one(
                    "select to_char(t, 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), to_char(t, 'YYYY-MM-DD HH24:MI:SS.MS+00') \
                     from (select clock_timestamp() at time zone 'utc' as t) n",
                    &[],
                )
                .await
                .map_err(err)?;
            let (rfc, pg): (String, String) = (r.get(0), r.get(1));
            eprintln!("clones: {} MiB of WAL at {rfc}", w >> 20);
            mid = Some((rfc, pg));
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }
        if w >= target {
            break;
        }
        db.execute(
            "update pgbench_accounts set abalance = abalance + 1 where aid between $1 and $2",
            &[&next, &(next + 99_999)],
        )
        .await
        .map_err(err)?;
        next += 100_000;
        if next > accounts {
            next = 1;
        }
    }
    let wal_bytes = written(&db, &lsn0).await?;
    eprintln!(
        "clones: {} MiB of WAL in {:.1} s",
        wal_bytes >> 20,
        t.elapsed().as_secs_f64()
    );
    // Cloning "the latest point" means the end of that WAL: wait until all but its last
    // segment is archived (the last one is switched by the broker).
    let t = Instant::now();
    loop {
        let r = db
            .query_one(
                "select coalesce(last_archived_wal, '') >= pg_walfile_name(pg_current_wal_lsn() - 1048576) from pg_stat_archiver",
                &[],
            )
            .await
            .map_err(err)?;
        if r.get::<_, bool>(0) {
            break;
        }
        if t.elapsed() > Duration::from_secs(600) {
            return Err("the source's WAL was not archived within 10 minutes".into());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(
        "clones: archived {:.1} s after the WAL's end",
        t.elapsed().as_secs_f64()
    );
    drop(db);
    let mid = mid.expect("half-way through");
    let repo = format!("file://{}/repo/{SOURCE}", dev.dir.display());

    let mut rows = Vec::new();
    for (n, at) in [None, Some(mid)].into_iter().enumerate() {
        let id = format!("clone-{n}");
        let mut p = json!({"clone-from": SOURCE});
        if let Some((at, _)) = &at {
            p["clone-at"] = json!(at);
        }
        eprintln!(
            "clones: {id} at {}",
            at.as_ref().map_or("the latest point", |a| a.0.as_str())
        );
        let (body, seen, total) = provision(dev, &id, PLAN_HA, p).await?;
        for (t, d) in &seen {
            eprintln!("  [{t:>6.1} s] {d}");
        }
        let of = &body["metadata"]["attributes"]["clone_of"];
        let (Some(backup), Some(lsn)) = (of["backup"].as_str(), of["at"]["lsn"].as_str()) else {
            return Err(format!("{id}: no backup or LSN in the 202: {body}"));
        };
        let phases = phases(&seen, total);
        deprovision(dev, &id, PLAN_HA).await?;
        let hand_target = match &at {
            Some((_, pg)) => ["--target-time", pg.as_str()],
            None => ["--target-lsn", lsn],
        };
        eprintln!("clones: by hand, {} {}", hand_target[0], hand_target[1]);
        let hand = by_hand(dev, n, &repo, backup, hand_target)?;
        eprintln!(
            "clones: broker {total:.1} s ({phases:.1?}), by hand {:.1} + {:.1} s",
            hand.0, hand.1
        );
        rows.push(Row {
            target: at.map_or_else(|| format!("latest (LSN {lsn})"), |a| a.0),
            total,
            phases,
            hand,
        });
    }
    Ok(Report {
        size,
        data_bytes,
        wal_bytes,
        rows,
    })
}

/// The report as Markdown.
pub fn print(r: &Report) {
    println!();
    println!(
        "Clones: a one-node source, `pgbench -i -s {}` ({} MiB), {} MiB of WAL after its base backup; two-node clones (plan ha)",
        r.size.scale,
        r.data_bytes >> 20,
        r.wal_bytes >> 20
    );
    println!();
    println!("| clone at | PUT → succeeded | base-backup restore | WAL replay | clone's first backup | replicas, routing | by hand: backup-fetch | by hand: recovery | by hand | overhead to promotion | overhead |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for row in &r.rows {
        let [b, w, f, rep] = row.phases;
        let hand = row.hand.0 + row.hand.1;
        println!(
            "| {} | {:.1} s | {b:.1} s | {w:.1} s | {f:.1} s | {rep:.1} s | {:.1} s | {:.1} s | {hand:.1} s | {:.1} s | {:.1} s |",
            row.target,
            row.total,
            row.hand.0,
            row.hand.1,
            b + w - hand,
            row.total - hand
        );
    }
}
