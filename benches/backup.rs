//! `cargo bench --bench backup [-- --quick] [-- --scale N] [-- --reps N]`
//!
//! Measures what `walarchive backup-push` and `backup-fetch` cost on a real
//! PostgreSQL data directory, and how much memory they use:
//!
//! 1. One PostgreSQL 15 cluster (16 MiB WAL segments) whose archive_command
//!    pushes every WAL segment into both repositories under test: a fresh
//!    local-directory repository and a fresh bucket on the harness's local S3
//!    server.
//! 2. A small database first (`pgbench -i -s 5`), then the big one
//!    (`pgbench -i -s 70`, about 1.05 GiB of data directory; the small one is
//!    dropped by the reload). After each load: wait until the archiver has
//!    caught up, `CHECKPOINT`, `sync`, measure the data directory with `du`.
//! 3. Per database and target: `backup-push --fast --json`, then
//!    `backup-fetch LATEST --json` into an empty directory, each run as the
//!    postgres OS user under `/usr/bin/time -f %M` (peak RSS of the walarchive
//!    process as reported by wait4; when `/usr/bin/time` is missing, the bench
//!    polls VmHWM in `/proc/<pid>/status` instead and says so). On the big
//!    database, the local-directory push and fetch are repeated with
//!    `--part-size 4` and `--part-size 64`, to show what memory depends on,
//!    and every push and fetch (local directory and S3) with `--parallel 1`
//!    and `--parallel 4` besides the default 2, to show what moving several
//!    parts at once buys and costs.
//!    Each configuration runs three times, round robin (`--reps N`); the
//!    tables give the median wall time and the largest peak RSS.
//! 4. References on the same data, as many runs, medians: `tar -cf -
//!    --exclude=./pg_wal/* . | cat > /dev/null` (what reading the files costs)
//!    and `cp -a` of the
//!    same entries followed by `sync FILE...` of every copied file (what writing
//!    them durably costs; backup-fetch fsyncs every file too).
//!
//! Results are printed as Markdown tables (stdout) ready for docs/benchmarks.md;
//! progress goes to stderr. `--quick` uses scale 2 and scale 10 and one run
//! each, for smoke runs; `--scale N` sets the big database's scale.

use std::fmt::Write as _;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use testkit::{machine, postgres_ids, PgCluster, PgOptions, Repo, S3Kind, Store, TestDir};

const MIB: f64 = 1024.0 * 1024.0;
const GIB: f64 = 1024.0 * MIB;
/// WAL segment size of the cluster (PostgreSQL's default).
const SEG_MB: u32 = 16;
/// walarchive's default `--part-size`, in MiB.
const DEFAULT_PART_MB: u32 = 8;
/// The part sizes tried on the big database (local directory only).
const PART_VARIANTS: [u32; 2] = [4, 64];
/// walarchive's default `--parallel`.
const DEFAULT_PARALLEL: u32 = 2;
/// The other parallelisms tried on the big database (every target).
const PARALLEL_VARIANTS: [u32; 2] = [1, 4];
const GNU_TIME: &str = "/usr/bin/time";

/// How much to do.
struct Plan {
    quick: bool,
    small_scale: u32,
    big_scale: u32,
    /// Runs of each push + fetch (round robin over the configurations).
    reps: usize,
}

fn main() {
    let mut quick = false;
    let mut scale = None;
    let mut reps = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--scale" => {
                scale = Some(
                    args.next()
                        .and_then(|s| s.parse::<u32>().ok())
                        .expect("--scale takes a number"),
                )
            }
            "--reps" => {
                reps = Some(
                    args.next()
                        .and_then(|s| s.parse::<usize>().ok())
                        .filter(|&n| n > 0)
                        .expect("--reps takes a positive number"),
                )
            }
            // cargo passes --bench to harness = false benches.
            "--bench" => {}
            other if other.starts_with('-') => {
                eprintln!("backup bench: ignoring unknown option {other}")
            }
            // A filter argument (`cargo bench -- NAME`): nothing to filter here.
            _ => {}
        }
    }
    let plan = Plan {
        quick,
        small_scale: if quick { 2 } else { 5 },
        big_scale: scale.unwrap_or(if quick { 10 } else { 70 }),
        reps: reps.unwrap_or(if quick { 1 } else { 3 }),
    };
    let started = Instant::now();
    let log = |what: &str| eprintln!("[{:>5.1}s] {what}", started.elapsed().as_secs_f64());

    let ctx = Ctx::new();
    log(&format!("peak RSS method: {}", ctx.rss.describe()));
    let s3 = testkit::s3();
    let s3_label = match s3.kind {
        S3Kind::S3sFs => "S3 (local s3s-fs)",
        S3Kind::Moto => "S3 (local moto)",
    };
    let targets = [
        Target {
            label: "local directory",
            repo: Store::File.fresh(),
        },
        Target {
            label: s3_label,
            repo: Store::S3.fresh(),
        },
    ];

    let archive_command = targets
        .iter()
        .map(|t| {
            format!(
                "{} --repo {} wal-push %p",
                testkit::walarchive_bin().display(),
                t.repo.url
            )
        })
        .collect::<Vec<_>>()
        .join(" && ");
    let pg = PgCluster::init(PgOptions {
        wal_segsize_mb: SEG_MB,
        extra_conf: format!(
            "# --- backup bench ---\n\
             archive_mode = on\n\
             archive_command = '{archive_command}'\n\
             shared_buffers = 128MB\n\
             max_wal_size = 1GB\n\
             min_wal_size = 64MB\n\
             checkpoint_timeout = 30min\n"
        ),
        initdb_args: Vec::new(),
        major: None,
    });
    // The S3 settings reach archive_command through the postmaster's environment.
    pg.start_with_env(&s3.env());
    let pg_version = pg.psql("show server_version");
    log(&format!("PostgreSQL {pg_version} on port {}", pg.port()));

    let mut dbs = Vec::new();
    let mut rows = Vec::new();
    for (scale, variants, parallels) in [
        (plan.small_scale, &[][..], &[][..]),
        (plan.big_scale, &PART_VARIANTS[..], &PARALLEL_VARIANTS[..]),
    ] {
        let db = load(&pg, scale, &log);
        log(&format!(
            "scale {scale}: data directory {:.2} GiB ({:.2} GiB without pg_wal); references ...",
            db.du_total as f64 / GIB,
            db.du_no_wal as f64 / GIB
        ));
        let db = references(&ctx, &pg, plan.reps, db);
        for rep in 1..=plan.reps {
            log(&format!("scale {scale}: run {rep} of {}", plan.reps));
            // In increasing parallelism, the default (no flag) in its place.
            let mut parallelisms: Vec<Option<u32>> = vec![None];
            parallelisms.extend(parallels.iter().map(|&n| Some(n)));
            parallelisms.sort_by_key(|p| p.unwrap_or(DEFAULT_PARALLEL));
            for t in &targets {
                for &parallel in &parallelisms {
                    run_pair(&ctx, &pg, &db, t, None, parallel, &mut rows, &log);
                }
            }
            for &part in variants {
                run_pair(
                    &ctx,
                    &pg,
                    &db,
                    &targets[0],
                    Some(part),
                    None,
                    &mut rows,
                    &log,
                );
            }
        }
        dbs.push(db);
    }
    let repo_sizes: Vec<(String, Option<u64>)> = targets
        .iter()
        .map(|t| {
            let dir = match (&t.repo.dir, s3.kind) {
                (Some(_), _) => Some(t.repo.path()),
                (None, S3Kind::S3sFs) => t
                    .repo
                    .url
                    .strip_prefix("s3://")
                    .and_then(|r| r.split('/').next())
                    .map(|bucket| s3.root_dir().join(bucket)),
                (None, S3Kind::Moto) => None,
            };
            (t.label.to_string(), dir.map(|d| du(&d, false)))
        })
        .collect();
    drop(pg);
    print_report(
        &plan,
        &ctx,
        &pg_version,
        &dbs,
        &rows,
        &repo_sizes,
        started.elapsed(),
    );
}

// ---------------------------------------------------------------------------
// Running walarchive and measuring it
// ---------------------------------------------------------------------------

/// How the peak RSS of a walarchive process is measured.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RssMethod {
    /// `/usr/bin/time -f %M` (the child's ru_maxrss from wait4).
    GnuTime,
    /// Polling `VmHWM` in `/proc/<pid>/status` every 10 ms until the process exits.
    ProcPoll,
}

impl RssMethod {
    fn describe(self) -> &'static str {
        match self {
            RssMethod::GnuTime => {
                "`/usr/bin/time -f %M` (ru_maxrss of the walarchive process, from wait4)"
            }
            RssMethod::ProcPoll => {
                "VmHWM of `/proc/<pid>/status`, polled every 10 ms until the process exits \
                 (`/usr/bin/time` is not installed)"
            }
        }
    }
}

struct Ctx {
    rss: RssMethod,
    /// Scratch space owned by postgres: restore destinations, time/stdout/stderr files.
    scratch: TestDir,
    counter: AtomicU32,
}

impl Ctx {
    fn new() -> Ctx {
        let scratch = TestDir::new_postgres("walarchive-benchbackup-");
        let probe = scratch.join("probe.time");
        let gnu = Command::new(GNU_TIME)
            .args(["-f", "%M"])
            .arg("-o")
            .arg(&probe)
            .arg("true")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
            && fs::read_to_string(&probe).is_ok_and(|t| t.trim().parse::<u64>().is_ok());
        Ctx {
            rss: if gnu {
                RssMethod::GnuTime
            } else {
                RssMethod::ProcPoll
            },
            scratch,
            counter: AtomicU32::new(0),
        }
    }

    fn next_id(&self) -> u32 {
        self.counter.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// One measured walarchive process.
struct Run {
    wall: Duration,
    peak_rss_kib: Option<u64>,
    /// User + system CPU seconds (GNU time only).
    cpu_secs: Option<f64>,
    status: ExitStatus,
    stdout: String,
    stderr: String,
    command: String,
}

impl Run {
    fn json(&self) -> Result<serde_json::Value, String> {
        if !self.status.success() {
            return Err(format!(
                "`{}` exited with {}; stderr:\n{}",
                self.command,
                self.status,
                self.stderr.trim_end()
            ));
        }
        serde_json::from_str(&self.stdout).map_err(|e| {
            format!(
                "`{}`: cannot parse its JSON ({e}); stdout:\n{}\nstderr:\n{}",
                self.command, self.stdout, self.stderr
            )
        })
    }
}

/// Runs the walarchive binary with `args` as the postgres OS user (as a cron job or an
/// operator would, and as archive_command does), with only `env` added to a cleaned
/// environment, and measures it.
fn run_walarchive(ctx: &Ctx, args: &[String], env: &[(String, String)]) -> Run {
    let id = ctx.next_id();
    let bin = testkit::walarchive_bin();
    let out_path = ctx.scratch.join(format!("run-{id}.stdout"));
    let err_path = ctx.scratch.join(format!("run-{id}.stderr"));
    let time_path = ctx.scratch.join(format!("run-{id}.time"));
    let mut c = match ctx.rss {
        RssMethod::GnuTime => {
            let mut c = Command::new(GNU_TIME);
            c.args(["-f", "%M %e %U %S", "-o"])
                .arg(&time_path)
                .arg(&bin);
            c
        }
        RssMethod::ProcPoll => Command::new(&bin),
    };
    c.args(args);
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("WALARCHIVE_")
            || k.starts_with("AWS_")
            || k.starts_with("AZURE_")
            || k.starts_with("PG")
        {
            c.env_remove(&*k);
        }
    }
    c.env("HOME", "/tmp")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(ctx.scratch.path())
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out_path).unwrap())
        .stderr(fs::File::create(&err_path).unwrap());
    let (uid, gid) = postgres_ids();
    c.uid(uid).gid(gid);

    let t = Instant::now();
    let mut child = c.spawn().expect("start walarchive");
    let mut hwm = None;
    let status = match ctx.rss {
        RssMethod::GnuTime => child.wait().expect("wait for walarchive"),
        RssMethod::ProcPoll => loop {
            if let Some(kib) = vm_hwm_kib(child.id()) {
                hwm = Some(hwm.unwrap_or(0).max(kib));
            }
            if let Some(st) = child.try_wait().expect("wait for walarchive") {
                break st;
            }
            std::thread::sleep(Duration::from_millis(10));
        },
    };
    let wall = t.elapsed();
    let (peak_rss_kib, cpu_secs) = match ctx.rss {
        RssMethod::ProcPoll => (hwm, None),
        RssMethod::GnuTime => {
            // On failure GNU time writes "Command exited with non-zero status N" first.
            let text = fs::read_to_string(&time_path).unwrap_or_default();
            let f: Vec<f64> = text
                .lines()
                .last()
                .unwrap_or("")
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            match f[..] {
                [rss, _elapsed, user, sys] => (Some(rss as u64), Some(user + sys)),
                _ => (None, None),
            }
        }
    };
    let read = |p: &Path| String::from_utf8_lossy(&fs::read(p).unwrap_or_default()).into_owned();
    let run = Run {
        wall,
        peak_rss_kib,
        cpu_secs,
        status,
        stdout: read(&out_path),
        stderr: read(&err_path),
        command: format!("walarchive {}", args.join(" ")),
    };
    for p in [&out_path, &err_path, &time_path] {
        let _ = fs::remove_file(p);
    }
    run
}

fn vm_hwm_kib(pid: u32) -> Option<u64> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

// ---------------------------------------------------------------------------
// Databases and references
// ---------------------------------------------------------------------------

struct Target {
    label: &'static str,
    repo: Repo,
}

struct Db {
    scale: u32,
    du_total: u64,
    du_no_wal: u64,
    load_time: Duration,
    /// WAL written by the load (bytes), archived into every repository.
    load_wal: u64,
    /// Time from the end of the load until the archiver had caught up.
    archive_lag: Duration,
    /// `tar -cf - ... | cat > /dev/null` (median of the runs).
    tar: Option<Reference>,
    /// `cp -a` + `sync FILE...` (median of the runs).
    cp: Option<Reference>,
}

struct Reference {
    wall: Duration,
    bytes: u64,
}

fn lsn_bytes(pg: &PgCluster) -> u64 {
    pg.psql("select (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint")
        .parse()
        .expect("LSN as a number")
}

/// `pgbench -i -s scale`, wait for the archiver to catch up, CHECKPOINT, measure.
fn load(pg: &PgCluster, scale: u32, log: &dyn Fn(&str)) -> Db {
    log(&format!("pgbench -i -s {scale} ..."));
    let lsn0 = lsn_bytes(pg);
    let t = Instant::now();
    pg.pgbench_init(scale);
    let load_time = t.elapsed();
    let load_wal = lsn_bytes(pg) - lsn0;
    log(&format!(
        "loaded in {:.0} s ({:.2} GiB of WAL); waiting for the archiver ...",
        load_time.as_secs_f64(),
        load_wal as f64 / GIB
    ));
    let t = Instant::now();
    let last = pg.switch_wal();
    pg.wait_archived(&last, Duration::from_secs(900));
    let archive_lag = t.elapsed();
    pg.psql("checkpoint");
    // Write back what the load left dirty (data files, WAL, repositories), so that it
    // does not compete with the fsyncs of the measured runs.
    let _ = Command::new("sync").status();
    Db {
        scale,
        du_total: du(pg.data_dir(), false),
        du_no_wal: du(pg.data_dir(), true),
        load_time,
        load_wal,
        archive_lag,
        tar: None,
        cp: None,
    }
}

/// `du -s -B1` (disk usage, as `du -sh` shows it), optionally without pg_wal.
fn du(dir: &Path, exclude_wal: bool) -> u64 {
    let mut c = Command::new("du");
    c.args(["-s", "-B1"]);
    if exclude_wal {
        c.arg("--exclude=pg_wal");
    }
    let out = c.arg(dir).output().expect("run du");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn sh(script: &str) -> Result<String, String> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("sh -c {script}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "`{script}` exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The reference timings for `db` (the cluster is idle and checkpointed).
fn references(ctx: &Ctx, pg: &PgCluster, reps: usize, mut db: Db) -> Db {
    let data = testkit::sh_quote(pg.data_dir().to_str().unwrap());
    // What the backup reads: everything but pg_wal's contents. GNU tar does not read
    // file contents when its output is /dev/null, hence the `cat`.
    let mut walls = Vec::new();
    for _ in 0..reps {
        let t = Instant::now();
        match sh(&format!(
            "tar -cf - -C {data} '--exclude=./pg_wal/*' . | cat > /dev/null"
        )) {
            Ok(_) => walls.push(t.elapsed().as_secs_f64()),
            Err(e) => eprintln!("reference tar failed: {e}"),
        }
    }
    db.tar = median(walls).map(|w| Reference {
        wall: Duration::from_secs_f64(w),
        bytes: db.du_no_wal,
    });

    // What the restore writes: the same entries, copied, then each file fsynced.
    let entries: Vec<String> = fs::read_dir(pg.data_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "pg_wal")
        .map(|n| testkit::sh_quote(&n))
        .collect();
    let mut walls = Vec::new();
    let mut bytes = 0;
    for _ in 0..reps {
        let dest = ctx.scratch.join(format!("cp-{}", ctx.next_id()));
        fs::create_dir(&dest).unwrap();
        let dest_q = testkit::sh_quote(dest.to_str().unwrap());
        let t = Instant::now();
        match sh(&format!(
            "cd {data} && cp -a {} {dest_q}/ && find {dest_q} -type f -exec sync {{}} +",
            entries.join(" ")
        )) {
            Ok(_) => {
                walls.push(t.elapsed().as_secs_f64());
                bytes = du(&dest, false);
            }
            Err(e) => eprintln!("reference cp failed: {e}"),
        }
        let _ = fs::remove_dir_all(&dest);
    }
    db.cp = median(walls).map(|w| Reference {
        wall: Duration::from_secs_f64(w),
        bytes,
    });
    db
}

// ---------------------------------------------------------------------------
// backup-push and backup-fetch
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Push,
    Fetch,
}

struct Row {
    op: Op,
    scale: u32,
    target: &'static str,
    part_mb: u32,
    parallel: u32,
    wall: Duration,
    /// Push: original_bytes; fetch: bytes written.
    bytes: u64,
    stored: Option<u64>,
    files: Option<u64>,
    peak_rss_kib: Option<u64>,
    cpu_secs: Option<f64>,
    failure: Option<String>,
    note: Option<String>,
}

#[allow(clippy::too_many_arguments)]
fn run_pair(
    ctx: &Ctx,
    pg: &PgCluster,
    db: &Db,
    target: &Target,
    part: Option<u32>,
    parallel: Option<u32>,
    rows: &mut Vec<Row>,
    log: &dyn Fn(&str),
) {
    let part_mb = part.unwrap_or(DEFAULT_PART_MB);
    let parallel_n = parallel.unwrap_or(DEFAULT_PARALLEL);
    // `--parallel N` (global) only when it is not the default, as an operator would run it.
    let parallel_args: Vec<String> = match parallel {
        Some(n) => vec!["--parallel".into(), n.to_string()],
        None => Vec::new(),
    };
    log(&format!(
        "scale {}: backup-push -> {} (part size {part_mb} MiB, parallel {parallel_n}) ...",
        db.scale, target.label
    ));
    let mut args: Vec<String> = vec!["--repo".into(), target.repo.url.clone()];
    args.extend(parallel_args.iter().cloned());
    args.extend([
        "backup-push".into(),
        "--pg-conn".into(),
        format!("host=127.0.0.1 port={} user=postgres", pg.port()),
        "--fast".into(),
        "--json".into(),
    ]);
    if let Some(p) = part {
        args.push("--part-size".into());
        args.push(p.to_string());
    }
    let run = run_walarchive(ctx, &args, &target.repo.env);
    let mut push = Row {
        op: Op::Push,
        scale: db.scale,
        target: target.label,
        part_mb,
        parallel: parallel_n,
        wall: run.wall,
        bytes: 0,
        stored: None,
        files: None,
        peak_rss_kib: run.peak_rss_kib,
        cpu_secs: run.cpu_secs,
        failure: None,
        note: None,
    };
    let name = match run.json() {
        Ok(v) => {
            push.bytes = v["original_bytes"].as_u64().unwrap_or(0);
            push.stored = v["stored_bytes"].as_u64();
            v["name"].as_str().map(String::from)
        }
        Err(e) => {
            eprintln!("FAILED: {e}");
            push.failure = Some(e);
            None
        }
    };
    log(&format!(
        "  {:.1} s, peak RSS {}",
        push.wall.as_secs_f64(),
        rss_text(push.peak_rss_kib)
    ));
    rows.push(push);
    let Some(name) = name else { return };

    log(&format!(
        "scale {}: backup-fetch LATEST <- {} ...",
        db.scale, target.label
    ));
    let dest = ctx.scratch.join(format!("restore-{}", ctx.next_id()));
    let mut args: Vec<String> = vec!["--repo".into(), target.repo.url.clone()];
    args.extend(parallel_args);
    args.extend([
        "backup-fetch".into(),
        dest.to_str().unwrap().into(),
        "LATEST".into(),
        "--json".into(),
    ]);
    let run = run_walarchive(ctx, &args, &target.repo.env);
    let mut fetch = Row {
        op: Op::Fetch,
        scale: db.scale,
        target: target.label,
        part_mb,
        parallel: parallel_n,
        wall: run.wall,
        bytes: 0,
        stored: None,
        files: None,
        peak_rss_kib: run.peak_rss_kib,
        cpu_secs: run.cpu_secs,
        failure: None,
        note: None,
    };
    match run.json() {
        Ok(v) => {
            fetch.bytes = v["bytes"].as_u64().unwrap_or(0);
            fetch.files = v["files"].as_u64();
            if v["name"].as_str() != Some(name.as_str()) {
                fetch.note = Some(format!(
                    "LATEST was {} instead of the backup just pushed ({name})",
                    v["name"]
                ));
            }
            if !dest.join("global/pg_control").is_file() || !dest.join("PG_VERSION").is_file() {
                fetch.note = Some("restored directory lacks global/pg_control".into());
            }
        }
        Err(e) => {
            eprintln!("FAILED: {e}");
            fetch.failure = Some(e);
        }
    }
    log(&format!(
        "  {:.1} s, peak RSS {}",
        fetch.wall.as_secs_f64(),
        rss_text(fetch.peak_rss_kib)
    ));
    rows.push(fetch);
    let _ = fs::remove_dir_all(&dest);
}

// ---------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------

/// The runs of one configuration.
struct Group<'a> {
    first: &'a Row,
    /// The first successful run (bytes, stored size, files).
    first_ok: Option<&'a Row>,
    runs: usize,
    failed: usize,
    /// Median, min and max wall seconds of the successful runs.
    wall: f64,
    wall_min: f64,
    wall_max: f64,
    /// Median CPU seconds.
    cpu: Option<f64>,
    /// Largest peak RSS of all runs.
    peak_rss_kib: Option<u64>,
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// `rows` of `op` grouped by configuration (scale, target, part size, parallelism), in order.
fn group(rows: &[Row], op: Op) -> Vec<Group<'_>> {
    let mut keys: Vec<(u32, &str, u32, u32)> = Vec::new();
    for r in rows.iter().filter(|r| r.op == op) {
        let k = (r.scale, r.target, r.part_mb, r.parallel);
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    keys.into_iter()
        .map(|k| {
            let runs: Vec<&Row> = rows
                .iter()
                .filter(|r| r.op == op && (r.scale, r.target, r.part_mb, r.parallel) == k)
                .collect();
            let ok: Vec<&Row> = runs
                .iter()
                .copied()
                .filter(|r| r.failure.is_none())
                .collect();
            let walls: Vec<f64> = ok.iter().map(|r| r.wall.as_secs_f64()).collect();
            Group {
                first: runs[0],
                first_ok: ok.first().copied(),
                runs: runs.len(),
                failed: runs.len() - ok.len(),
                wall: median(walls.clone()).unwrap_or(f64::NAN),
                wall_min: walls.iter().copied().fold(f64::INFINITY, f64::min),
                wall_max: walls.iter().copied().fold(0.0, f64::max),
                cpu: median(ok.iter().filter_map(|r| r.cpu_secs).collect()),
                peak_rss_kib: runs.iter().filter_map(|r| r.peak_rss_kib).max(),
            }
        })
        .collect()
}

fn reference(db: &Db, op: Op) -> Option<&Reference> {
    match op {
        Op::Push => db.tar.as_ref(),
        Op::Fetch => db.cp.as_ref(),
    }
}

/// Seconds with two decimals below 10 s, one above.
fn secs_num(secs: f64) -> String {
    if secs < 10.0 {
        format!("{secs:.2}")
    } else {
        format!("{secs:.1}")
    }
}

fn secs_text(secs: f64) -> String {
    format!("{} s", secs_num(secs))
}

fn rss_text(kib: Option<u64>) -> String {
    kib.map(|k| format!("{:.0} MiB", k as f64 / 1024.0))
        .unwrap_or_else(|| "?".into())
}

fn size_text(bytes: u64) -> String {
    if bytes as f64 >= GIB {
        format!("{:.2} GiB", bytes as f64 / GIB)
    } else {
        format!("{:.1} MiB", bytes as f64 / MIB)
    }
}

fn print_report(
    plan: &Plan,
    ctx: &Ctx,
    pg_version: &str,
    dbs: &[Db],
    rows: &[Row],
    repo_sizes: &[(String, Option<u64>)],
    elapsed: Duration,
) {
    let mut s = String::new();
    let _ = writeln!(s, "\n## backup benchmark\n");
    let _ = writeln!(
        s,
        "{} UTC; {} (`nproc` = {}, {}); PostgreSQL {pg_version} (16 MiB WAL segments); \
         walarchive {}, default compression (zstd:1){}.",
        machine::utc_now(),
        machine::cpu_model(),
        machine::nproc(),
        machine::mem_total(),
        env!("CARGO_PKG_VERSION"),
        if plan.quick { "; **--quick run**" } else { "" }
    );
    let _ = writeln!(
        s,
        "Every walarchive command runs as the postgres OS user; peak RSS is measured with {}.\n",
        ctx.rss.describe()
    );

    let _ = writeln!(s, "### Databases\n");
    let _ = writeln!(
        s,
        "| pgbench scale | data directory (`du`) | without pg_wal | backed up (original_bytes) | load time | load WAL, archived to both repositories |"
    );
    let _ = writeln!(s, "|---:|---:|---:|---:|---:|---|");
    for db in dbs {
        let backed_up = rows
            .iter()
            .find(|r| r.op == Op::Push && r.scale == db.scale && r.failure.is_none())
            .map(|r| size_text(r.bytes))
            .unwrap_or_else(|| "?".into());
        let _ = writeln!(
            s,
            "| {} | {} | {} | {backed_up} | {:.0} s | {} (archiver caught up {:.0} s after the load) |",
            db.scale,
            size_text(db.du_total),
            size_text(db.du_no_wal),
            db.load_time.as_secs_f64(),
            size_text(db.load_wal),
            db.archive_lag.as_secs_f64()
        );
    }

    for (op, title) in [
        (
            Op::Push,
            "`backup-push --fast` (reads the data directory, tar, zstd:1, BLAKE3 per file, upload; waits for the WAL)",
        ),
        (
            Op::Fetch,
            "`backup-fetch LATEST` into an empty directory (download, verify, extract, fsync)",
        ),
    ] {
        let _ = writeln!(s, "\n### {title}\n");
        let (runs_note, rss_note) = if plan.reps > 1 {
            (
                format!(", median of {} (min-max)", plan.reps),
                format!(", max of {}", plan.reps),
            )
        } else {
            (String::new(), String::new())
        };
        let (ref_name, extra_head, extra_align) = match op {
            Op::Push => ("tar", " stored | ratio |", "---:|---:|"),
            Op::Fetch => ("cp", " files |", "---:|"),
        };
        let _ = writeln!(
            s,
            "| pgbench scale | target | part size | parallel | wall time{runs_note} | MiB/s |{extra_head} CPU s (user+sys) | peak RSS{rss_note} | time vs {ref_name} |"
        );
        let _ = writeln!(
            s,
            "|---:|---|---:|---:|---:|---:|{extra_align}---:|---:|---:|"
        );
        for g in group(rows, op) {
            let r = g.first_ok.unwrap_or(g.first);
            let db = dbs.iter().find(|d| d.scale == r.scale);
            if g.first_ok.is_none() {
                let cols = if op == Op::Push { 6 } else { 5 };
                let _ = writeln!(
                    s,
                    "| {} | {} | {} MiB | {} | **FAILED** after {:.1} s |{}",
                    r.scale,
                    r.target,
                    r.part_mb,
                    r.parallel,
                    r.wall.as_secs_f64(),
                    " |".repeat(cols)
                );
                continue;
            }
            let secs = g.wall;
            let extra = match op {
                Op::Push => match r.stored {
                    Some(st) if st > 0 => format!(
                        " {} | {:.2} |",
                        size_text(st),
                        r.bytes as f64 / st as f64
                    ),
                    _ => " ? | ? |".into(),
                },
                Op::Fetch => format!(
                    " {} |",
                    r.files
                        .map(|f| f.to_string())
                        .unwrap_or_else(|| "?".into())
                ),
            };
            let vs = db
                .and_then(|d| reference(d, op))
                .map(|rf| format!("{:.2}x", secs / rf.wall.as_secs_f64()))
                .unwrap_or_else(|| "?".into());
            let _ = writeln!(
                s,
                "| {} | {}{} | {} MiB{} | {}{} | {}{} | {:.0} |{extra} {} | {} | {vs} |",
                r.scale,
                r.target,
                if g.failed > 0 {
                    format!(" (**{} of {} runs FAILED**)", g.failed, g.runs)
                } else {
                    String::new()
                },
                r.part_mb,
                if r.part_mb == DEFAULT_PART_MB {
                    " (default)"
                } else {
                    ""
                },
                r.parallel,
                if r.parallel == DEFAULT_PARALLEL {
                    " (default)"
                } else {
                    ""
                },
                secs_text(secs),
                if g.runs > 1 {
                    format!(" ({}-{})", secs_num(g.wall_min), secs_num(g.wall_max))
                } else {
                    String::new()
                },
                r.bytes as f64 / MIB / secs,
                g.cpu
                    .map(|c| format!("{c:.1}"))
                    .unwrap_or_else(|| "?".into()),
                rss_text(g.peak_rss_kib)
            );
        }
    }

    let _ = writeln!(s, "\n### References on the same data\n");
    let _ = writeln!(
        s,
        "| pgbench scale | command | bytes | wall time{} | MiB/s |",
        if plan.reps > 1 {
            format!(", median of {}", plan.reps)
        } else {
            String::new()
        }
    );
    let _ = writeln!(s, "|---:|---|---:|---:|---:|");
    for db in dbs {
        for (label, rf) in [
            (
                "`tar -cf - --exclude=./pg_wal/* . \\| cat > /dev/null`",
                &db.tar,
            ),
            (
                "`cp -a` (all but pg_wal) + `sync FILE...` of every file",
                &db.cp,
            ),
        ] {
            match rf {
                Some(rf) => {
                    let _ = writeln!(
                        s,
                        "| {} | {label} | {} | {} | {:.0} |",
                        db.scale,
                        size_text(rf.bytes),
                        secs_text(rf.wall.as_secs_f64()),
                        rf.bytes as f64 / MIB / rf.wall.as_secs_f64()
                    );
                }
                None => {
                    let _ = writeln!(s, "| {} | {label} | failed | | |", db.scale);
                }
            }
        }
    }
    let _ = writeln!(
        s,
        "\nMiB/s is of the data directory as backed up (original_bytes) per second of (median) wall \
         time, process start-up included; \"time vs tar/cp\" divides the median wall time by the \
         reference's on the same database. The data directory is in the page cache for every run, and the \
         S3 server runs on the same machine. backup-push's wall time includes the immediate \
         checkpoint and waiting until the backup's last WAL segment is archived (walarchive \
         polls from 10 ms up to every 0.5 s). Peak RSS is of the whole walarchive process, runtime included.\n"
    );
    for (label, size) in repo_sizes {
        if let Some(size) = size {
            let _ = writeln!(
                s,
                "Repository on {label} at the end (`du`; its backups above plus all archived WAL): {}.",
                size_text(*size)
            );
        }
    }
    for r in rows {
        if let Some(f) = &r.failure {
            let _ = writeln!(
                s,
                "\n**Failure** (scale {}, {}, {}): {f}",
                r.scale,
                r.target,
                if r.op == Op::Push {
                    "backup-push"
                } else {
                    "backup-fetch"
                }
            );
        }
        if let Some(n) = &r.note {
            let _ = writeln!(s, "\n**Note** (scale {}, {}): {n}", r.scale, r.target);
        }
    }
    let _ = writeln!(s, "\nBenchmark wall time: {:.0} s.", elapsed.as_secs_f64());
    print!("{s}");
}
