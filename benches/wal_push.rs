//! `cargo bench --bench wal_push [-- --quick]`
//!
//! Measures what `walarchive wal-push` costs on real PostgreSQL WAL:
//!
//! 1. Generates real WAL: a throwaway PostgreSQL 15 cluster (16 MiB segments,
//!    `archive_mode = off`, `wal_keep_size` large enough that nothing is
//!    recycled), `pgbench -i -s 10`, then a TPC-B-like pgbench write workload
//!    with a checkpoint every 15 s until enough segments are complete. Only
//!    segments written entirely during the pgbench run are used (not the bulk
//!    load, not preallocated files); each one is checked to carry a WAL page
//!    header on every 8 KiB page.
//! 2. Codec throughput, single-threaded and in process, on whole 16 MiB
//!    segments: none, lz4 and zstd levels 1, 2, 3 and 6 (encode and decode
//!    MiB/s of raw WAL, compression ratio), plus the full object format
//!    (codec + BLAKE3 + header, as WAL is stored) at the default level.
//! 3. Whole-process `wal-push`, one process per segment, sequentially, with the
//!    working directory holding `pg_wal/NAME` as PostgreSQL's archiver does,
//!    into a fresh local-directory repository and a fresh bucket on the
//!    harness's local S3 server, with the default codec, zstd:3 and lz4;
//!    `cp` + `sync FILE` of the same files is the reference.
//!
//! Results are printed as Markdown tables (stdout) ready for docs/benchmarks.md;
//! progress goes to stderr. `--quick` uses fewer segments and iterations.

use std::fmt::Write as _;
use std::fs;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testkit::{machine, PgCluster, PgOptions, S3Kind, TestDir};
use walarchive::codec::{self, Compression, DEFAULT_ZSTD_LEVEL};
use walarchive::format;

/// WAL segment size used throughout (PostgreSQL's default).
const SEG_MB: u32 = 16;
const SEG: usize = (SEG_MB as usize) << 20;
/// PostgreSQL's WAL page size (XLOG_BLCKSZ).
const WAL_PAGE: usize = 8192;
const MIB: f64 = 1024.0 * 1024.0;
/// How often the bench forces a checkpoint while pgbench runs. Full-page images
/// after each checkpoint are most of real OLTP WAL; a short interval also makes
/// pgbench produce the segments in about a minute and a half.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(15);

/// How much to do.
struct Plan {
    quick: bool,
    /// Segments to collect and push per configuration.
    segments: usize,
    /// Segments the in-process codec benchmark runs on.
    codec_segments: usize,
    /// Passes over those segments.
    codec_passes: usize,
    /// Upper bound on the pgbench run that generates the WAL.
    max_generate: Duration,
}

fn main() {
    let mut quick = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--quick" => quick = true,
            // cargo passes --bench to harness = false benches.
            "--bench" => {}
            other if other.starts_with('-') => {
                eprintln!("wal_push bench: ignoring unknown option {other}")
            }
            // A filter argument (`cargo bench -- NAME`): nothing to filter here.
            _ => {}
        }
    }
    let plan = if quick {
        Plan {
            quick,
            segments: 16,
            codec_segments: 2,
            codec_passes: 1,
            max_generate: Duration::from_secs(90),
        }
    } else {
        Plan {
            quick,
            segments: 64,
            codec_segments: 8,
            codec_passes: 2,
            max_generate: Duration::from_secs(180),
        }
    };
    let started = Instant::now();

    // 1. Real WAL.
    let work = TestDir::new("walarchive-bench-");
    let wal = collect_segments(&plan, work.path());
    eprintln!(
        "[{:>5.1}s] collected {} segments",
        started.elapsed().as_secs_f64(),
        wal.names.len()
    );

    // 2. Codecs in process.
    let codec_rows = bench_codecs(&plan, work.path(), &wal.names);
    eprintln!(
        "[{:>5.1}s] codec benchmark done",
        started.elapsed().as_secs_f64()
    );

    // 3. Whole-process wal-push.
    let push_rows = bench_push(work.path(), &wal.names);
    eprintln!(
        "[{:>5.1}s] wal-push benchmark done",
        started.elapsed().as_secs_f64()
    );

    print_report(&plan, &wal, &codec_rows, &push_rows, started.elapsed());
}

// ---------------------------------------------------------------------------
// 1. Generating and collecting real WAL
// ---------------------------------------------------------------------------

/// The collected WAL: `<work>/pg_wal/<name>` for each name, in order.
struct Wal {
    names: Vec<String>,
    pg_version: String,
    generate_time: Duration,
    pgbench_tps: Vec<f64>,
    /// zstd-1 ratio of each collected segment (min, median, max).
    ratio_spread: (f64, f64, f64),
}

fn collect_segments(plan: &Plan, work: &Path) -> Wal {
    let keep_mb = (plan.segments as u64 + 64) * u64::from(SEG_MB) * 2;
    let pg = PgCluster::init(PgOptions {
        wal_segsize_mb: SEG_MB,
        extra_conf: format!(
            "# --- wal_push bench ---\n\
             archive_mode = off\n\
             shared_buffers = 128MB\n\
             wal_keep_size = {keep_mb}MB\n\
             max_wal_size = {keep_mb}MB\n\
             min_wal_size = 64MB\n\
             checkpoint_timeout = 30s\n\
             synchronous_commit = off\n"
        ),
        initdb_args: Vec::new(),
        major: None,
    });
    pg.start();
    let pg_version = pg.psql("show server_version");
    eprintln!("PostgreSQL {pg_version}: pgbench -i -s 10 ...");
    pg.pgbench_init(10);

    let segno = |pg: &PgCluster| -> u64 {
        let lsn: u64 = pg
            .psql("select (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint")
            .parse()
            .expect("LSN as a number");
        lsn / SEG as u64
    };
    // Segments strictly after the one current at the end of the bulk load, up
    // to (not including) the one being written when we stop: all complete, all
    // pgbench run WAL.
    let first = segno(&pg) + 1;
    let wanted_end = first + plan.segments as u64; // first segment we don't need
    let t0 = Instant::now();
    let mut tps = Vec::new();
    let mut current = segno(&pg);
    let mut last_checkpoint = Instant::now();
    pg.psql("checkpoint");
    while current < wanted_end && t0.elapsed() < plan.max_generate {
        if last_checkpoint.elapsed() >= CHECKPOINT_EVERY {
            pg.psql("checkpoint");
            last_checkpoint = Instant::now();
        }
        let out = pg.pgbench(&["-n", "-M", "prepared", "-c", "4", "-j", "2", "-T", "5"]);
        if let Some(t) = out
            .lines()
            .find(|l| l.starts_with("tps = "))
            .and_then(|l| l.split_whitespace().nth(2))
            .and_then(|t| t.parse::<f64>().ok())
        {
            tps.push(t);
        }
        current = segno(&pg);
        eprintln!(
            "  pgbench: {:>5.1}s, {} of {} segments complete",
            t0.elapsed().as_secs_f64(),
            current.saturating_sub(first).min(plan.segments as u64),
            plan.segments
        );
    }
    let generate_time = t0.elapsed();
    let end = current.min(wanted_end);
    assert!(
        end >= first + 4,
        "pgbench produced only {} complete segments in {generate_time:?}",
        end.saturating_sub(first)
    );
    if end < wanted_end {
        eprintln!(
            "WARNING: only {} of {} segments within {:?}; benchmarking those",
            end - first,
            plan.segments,
            plan.max_generate
        );
    }
    pg.stop();

    let dest = work.join("pg_wal");
    fs::create_dir(&dest).unwrap();
    let per_log = 0x1_0000_0000u64 / SEG as u64;
    let mut names = Vec::new();
    for s in first..end {
        let name = format!("{:08X}{:08X}{:08X}", 1, s / per_log, s % per_log);
        let src = pg.wal_dir().join(&name);
        fs::copy(&src, dest.join(&name)).unwrap_or_else(|e| panic!("copy {}: {e}", src.display()));
        names.push(name);
    }
    drop(pg);

    // Check: every segment is whole and fully written (a WAL page header with
    // the first page's magic at every 8 KiB), i.e. not zero-filled preallocation.
    let mut ratios = Vec::new();
    for name in &names {
        let raw = fs::read(dest.join(name)).unwrap();
        assert_eq!(raw.len(), SEG, "{name} is not a 16 MiB segment");
        let magic = &raw[..2];
        let pages = raw.chunks(WAL_PAGE).filter(|p| &p[..2] == magic).count();
        assert_eq!(
            pages,
            SEG / WAL_PAGE,
            "{name}: only {pages} pages carry a WAL page header"
        );
        ratios.push(SEG as f64 / Compression::Zstd(1).encode(&raw).len() as f64);
    }
    let mut sorted = ratios.clone();
    sorted.sort_by(f64::total_cmp);
    let ratio_spread = (
        sorted[0],
        sorted[sorted.len() / 2],
        sorted[sorted.len() - 1],
    );
    Wal {
        names,
        pg_version,
        generate_time,
        pgbench_tps: tps,
        ratio_spread,
    }
}

// ---------------------------------------------------------------------------
// 2. Codecs in process
// ---------------------------------------------------------------------------

struct CodecRow {
    label: String,
    raw: u64,
    stored: u64,
    encode: Duration,
    decode: Duration,
}

impl CodecRow {
    fn encode_mibs(&self) -> f64 {
        self.raw as f64 / MIB / self.encode.as_secs_f64()
    }
    fn decode_mibs(&self) -> f64 {
        self.raw as f64 / MIB / self.decode.as_secs_f64()
    }
    fn ratio(&self) -> f64 {
        self.raw as f64 / self.stored as f64
    }
}

const CODECS: [Compression; 6] = [
    Compression::None,
    Compression::Lz4,
    Compression::Zstd(1),
    Compression::Zstd(2),
    Compression::Zstd(3),
    Compression::Zstd(6),
];

fn bench_codecs(plan: &Plan, work: &Path, names: &[String]) -> Vec<CodecRow> {
    let k = plan.codec_segments.min(names.len());
    // Evenly spread over the run.
    let segs: Vec<Vec<u8>> = (0..k)
        .map(|i| fs::read(work.join("pg_wal").join(&names[i * names.len() / k])).unwrap())
        .collect();
    eprintln!("codecs: {k} segments x {} passes", plan.codec_passes);
    let mut rows: Vec<CodecRow> = CODECS
        .iter()
        .map(|c| CodecRow {
            label: codec_label(*c),
            raw: 0,
            stored: 0,
            encode: Duration::ZERO,
            decode: Duration::ZERO,
        })
        .collect();
    let default = Compression::default();
    let mut object_row = CodecRow {
        label: format!(
            "object format as WAL is stored ({}, + BLAKE3 + header)",
            codec_label(default)
        ),
        raw: 0,
        stored: 0,
        encode: Duration::ZERO,
        decode: Duration::ZERO,
    };
    let mut chunk = vec![0u8; walarchive::push::CHUNK];
    // Warm-up (allocator, caches, zstd contexts), not timed.
    for c in CODECS {
        black_box(c.encode(&segs[0]));
    }
    for _ in 0..plan.codec_passes {
        for raw in &segs {
            for (c, row) in CODECS.iter().zip(rows.iter_mut()) {
                let t = Instant::now();
                let body = black_box(c.encode(black_box(raw)));
                row.encode += t.elapsed();
                let t = Instant::now();
                let back =
                    black_box(codec::decode(c.id(), black_box(&body), raw.len()).expect("decode"));
                row.decode += t.elapsed();
                assert!(back == *raw, "{} did not round-trip", row.label);
                row.raw += raw.len() as u64;
                row.stored += body.len() as u64;
            }
            // The path wal-push takes (push::read_and_encode), from memory instead of a file,
            // bound to its name and cluster as wal-push binds it.
            let binding = format::Binding::new(
                7_312_345_678_901_234_567,
                "wal/00000001/00000000/000000010000000000000058",
            );
            let t = Instant::now();
            let obj = black_box(
                format::encode_reader(
                    &mut black_box(&raw[..]),
                    raw.len() as u64,
                    default,
                    &mut chunk,
                    Some(&binding),
                    |_| Ok(()),
                )
                .expect("encode"),
            );
            object_row.encode += t.elapsed();
            let t = Instant::now();
            let (_, back) =
                black_box(format::decode(black_box(&obj.bytes)).expect("format decode"));
            object_row.decode += t.elapsed();
            assert!(back == *raw, "object format did not round-trip");
            object_row.raw += raw.len() as u64;
            object_row.stored += obj.bytes.len() as u64;
        }
    }
    rows.push(object_row);
    rows
}

fn codec_label(c: Compression) -> String {
    match c {
        Compression::None => "none".into(),
        Compression::Lz4 => "lz4".into(),
        Compression::Zstd(l) if l == DEFAULT_ZSTD_LEVEL => format!("zstd:{l} (default)"),
        Compression::Zstd(l) => format!("zstd:{l}"),
    }
}

// ---------------------------------------------------------------------------
// 3. Whole-process wal-push
// ---------------------------------------------------------------------------

struct PushRow {
    target: &'static str,
    label: String,
    segments: usize,
    total: Duration,
    max: Duration,
    raw: u64,
    /// Bytes stored for the pushed segments (None when unknown).
    stored: Option<u64>,
    /// First failure: the command and its exact stderr.
    failure: Option<String>,
}

impl PushRow {
    fn mean_ms(&self) -> f64 {
        self.total.as_secs_f64() * 1000.0 / self.segments.max(1) as f64
    }
}

fn bench_push(work: &Path, names: &[String]) -> Vec<PushRow> {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_walarchive"));
    let mut rows = Vec::new();
    rows.push(push_cp(work, names, "before"));

    let codecs: [(String, Option<&str>); 3] = [
        (
            format!("walarchive, default ({})", Compression::default()),
            None,
        ),
        ("walarchive, zstd:3".into(), Some("zstd:3")),
        ("walarchive, lz4".into(), Some("lz4")),
    ];
    for (label, codec) in &codecs {
        let repo = TestDir::new("walarchive-benchrepo-");
        let url = format!("file://{}", repo.path().display());
        let mut row = push_all(
            &bin,
            work,
            names,
            &url,
            &[],
            *codec,
            "local directory",
            label,
        );
        row.stored = Some(stored_bytes(repo.path(), names));
        rows.push(row);
    }
    let s3 = testkit::s3();
    for (label, codec) in &codecs {
        let bucket = s3.fresh_bucket();
        let url = format!("s3://{bucket}/bench");
        let mut row = push_all(
            &bin,
            work,
            names,
            &url,
            &s3.env(),
            *codec,
            "S3 (local s3s-fs)",
            label,
        );
        if s3.kind == S3Kind::S3sFs {
            row.stored = Some(stored_bytes(&s3.root_dir().join(&bucket), names));
        } else {
            row.target = "S3 (local moto)";
        }
        rows.push(row);
    }
    rows.push(push_cp(work, names, "after"));
    rows
}

/// A command with the caller's walarchive/AWS/Azure settings removed, so only
/// what the bench passes counts.
fn clean_command(program: &Path) -> Command {
    let mut c = Command::new(program);
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("WALARCHIVE_") || k.starts_with("AWS_") || k.starts_with("AZURE_") {
            c.env_remove(&*k);
        }
    }
    c.stdin(Stdio::null());
    c
}

#[allow(clippy::too_many_arguments)]
fn push_all(
    bin: &Path,
    work: &Path,
    names: &[String],
    url: &str,
    env: &[(String, String)],
    codec: Option<&str>,
    target: &'static str,
    label: &str,
) -> PushRow {
    eprintln!("wal-push: {label} -> {target}");
    let mut row = PushRow {
        target,
        label: label.to_string(),
        segments: 0,
        total: Duration::ZERO,
        max: Duration::ZERO,
        raw: 0,
        stored: None,
        failure: None,
    };
    for name in names {
        let rel = format!("pg_wal/{name}");
        let mut c = clean_command(bin);
        c.arg("--repo").arg(url);
        if let Some(codec) = codec {
            c.arg("--compression").arg(codec);
        }
        c.arg("wal-push").arg(&rel).current_dir(work);
        c.envs(env.iter().map(|(k, v)| (k, v)));
        let t = Instant::now();
        let out = c.output().expect("run walarchive");
        let dt = t.elapsed();
        if !out.status.success() {
            let msg =
                format!(
                "`walarchive --repo {url}{} wal-push {rel}` (cwd {}) exited with {}; stderr:\n{}",
                codec.map(|c| format!(" --compression {c}")).unwrap_or_default(),
                work.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            eprintln!("FAILED: {msg}");
            row.failure = Some(msg);
            break;
        }
        row.segments += 1;
        row.total += dt;
        row.max = row.max.max(dt);
        row.raw += SEG as u64;
    }
    row
}

/// Reference: `cp pg_wal/NAME DEST/NAME && sync DEST/NAME`, two processes per segment.
fn push_cp(work: &Path, names: &[String], when: &str) -> PushRow {
    eprintln!("reference: cp + sync ({when})");
    let dest = TestDir::new("walarchive-benchcp-");
    let mut row = PushRow {
        target: "local directory",
        label: format!("`cp` + `sync FILE` (reference, {when})"),
        segments: 0,
        total: Duration::ZERO,
        max: Duration::ZERO,
        raw: 0,
        stored: None,
        failure: None,
    };
    for name in names {
        let to = dest.join(name);
        let t = Instant::now();
        let cp = clean_command(Path::new("cp"))
            .arg(format!("pg_wal/{name}"))
            .arg(&to)
            .current_dir(work)
            .status();
        let sync = clean_command(Path::new("sync"))
            .arg(&to)
            .current_dir(work)
            .status();
        let dt = t.elapsed();
        if !cp.as_ref().is_ok_and(|s| s.success()) || !sync.as_ref().is_ok_and(|s| s.success()) {
            row.failure = Some(format!("cp {cp:?} / sync {sync:?} failed for {name}"));
            break;
        }
        row.segments += 1;
        row.total += dt;
        row.max = row.max.max(dt);
        row.raw += SEG as u64;
    }
    row.stored = Some(stored_bytes(dest.path(), names));
    row
}

/// Total size of the files under `dir` (recursively) named after one of `names`
/// (possibly with a suffix): what the pushed segments occupy.
fn stored_bytes(dir: &Path, names: &[String]) -> u64 {
    let mut total = 0;
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    for e in entries.flatten() {
        let Ok(meta) = e.metadata() else { continue };
        if meta.is_dir() {
            total += stored_bytes(&e.path(), names);
        } else {
            let file = e.file_name().to_string_lossy().into_owned();
            if names.iter().any(|n| file.starts_with(n.as_str())) {
                total += meta.len();
            }
        }
    }
    total
}

// ---------------------------------------------------------------------------
// 4. Report
// ---------------------------------------------------------------------------

fn print_report(
    plan: &Plan,
    wal: &Wal,
    codecs: &[CodecRow],
    pushes: &[PushRow],
    elapsed: Duration,
) {
    let mut s = String::new();
    let n = wal.names.len();
    let tps = if wal.pgbench_tps.is_empty() {
        "?".to_string()
    } else {
        format!(
            "{:.0}",
            wal.pgbench_tps.iter().sum::<f64>() / wal.pgbench_tps.len() as f64
        )
    };
    let _ = writeln!(s, "\n## wal_push benchmark\n");
    let _ = writeln!(
        s,
        "{} UTC; {} (`nproc` = {}); PostgreSQL {}; walarchive {}{}.",
        machine::utc_now(),
        machine::cpu_model(),
        machine::nproc(),
        wal.pg_version,
        env!("CARGO_PKG_VERSION"),
        if plan.quick { "; **--quick run**" } else { "" }
    );
    let _ = writeln!(
        s,
        "WAL: {n} real 16 MiB segments written by pgbench (TPC-B-like, scale 10, 4 clients, ~{tps} tps, \
         full_page_writes on, a checkpoint every {} s) in {:.0} s; zstd:1 ratio per segment min {:.2} / median {:.2} / max {:.2}.\n",
        CHECKPOINT_EVERY.as_secs(),
        wal.generate_time.as_secs_f64(),
        wal.ratio_spread.0,
        wal.ratio_spread.1,
        wal.ratio_spread.2
    );

    let _ = writeln!(
        s,
        "### Codecs (in process, one thread, whole 16 MiB segments)\n"
    );
    let _ = writeln!(
        s,
        "| codec | encode MiB/s | decode MiB/s | ratio (raw/stored) | stored per 16 MiB segment |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|");
    for r in codecs {
        let _ = writeln!(
            s,
            "| {} | {:.0} | {:.0} | {:.2} | {:.2} MiB |",
            r.label,
            r.encode_mibs(),
            r.decode_mibs(),
            r.ratio(),
            r.stored as f64 / (r.raw as f64 / SEG as f64) / MIB
        );
    }
    let samples = codecs.first().map(|r| r.raw / SEG as u64).unwrap_or(0);
    let _ = writeln!(
        s,
        "\n{samples} segment encodes/decodes per codec (encode/decode MiB/s are of raw WAL).\n"
    );
    let find = |label: &str| codecs.iter().find(|r| r.label.starts_with(label));
    if let (Some(z1), Some(z3)) = (find("zstd:1"), find("zstd:3")) {
        let _ = writeln!(
            s,
            "zstd:1 vs zstd:3: encode {:.2}x as fast, decode {:.2}x as fast; zstd:3 output is {:.1}% {} than zstd:1 \
             (ratio {:.2} vs {:.2}).\n",
            z1.encode_mibs() / z3.encode_mibs(),
            z1.decode_mibs() / z3.decode_mibs(),
            (1.0 - z3.stored as f64 / z1.stored as f64).abs() * 100.0,
            if z3.stored <= z1.stored { "smaller" } else { "larger" },
            z3.ratio(),
            z1.ratio()
        );
    }

    let _ = writeln!(
        s,
        "### Whole-process `wal-push` ({n} segments, one process per segment, sequential, as PostgreSQL's archiver)\n"
    );
    let cp_ms: Vec<f64> = pushes
        .iter()
        .filter(|r| r.label.starts_with("`cp`") && r.failure.is_none())
        .map(PushRow::mean_ms)
        .collect();
    let cp_mean = if cp_ms.is_empty() {
        f64::NAN
    } else {
        cp_ms.iter().sum::<f64>() / cp_ms.len() as f64
    };
    let _ = writeln!(
        s,
        "| target | command | WAL MiB/s | segments/s | mean ms/push | max ms | stored | ratio | time vs cp |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in pushes {
        let secs = r.total.as_secs_f64();
        let (stored, ratio) = match r.stored {
            Some(b) if b > 0 && r.segments > 0 => (
                format!("{:.1} MiB", b as f64 / MIB),
                format!("{:.2}", r.raw as f64 / b as f64),
            ),
            _ => ("?".into(), "?".into()),
        };
        let failed = if r.failure.is_some() {
            format!(" **FAILED after {} segments**", r.segments)
        } else {
            String::new()
        };
        let _ = writeln!(
            s,
            "| {} | {}{failed} | {:.0} | {:.1} | {:.1} | {:.0} | {stored} | {ratio} | {:.2}x |",
            r.target,
            r.label,
            r.raw as f64 / MIB / secs,
            r.segments as f64 / secs,
            r.mean_ms(),
            r.max.as_secs_f64() * 1000.0,
            r.mean_ms() / cp_mean
        );
    }
    let _ = writeln!(
        s,
        "\n\"time vs cp\" is mean time per push divided by the mean of the two `cp` + `sync FILE` reference runs \
         ({cp_mean:.1} ms); it is the number to compare across machines. Push times include process start-up, \
         reading and checking the segment, BLAKE3, compression and the durable write/upload. \
         The S3 server runs on the same machine.\n"
    );
    for r in pushes {
        if let Some(f) = &r.failure {
            let _ = writeln!(s, "**Failure** ({} / {}): {f}\n", r.target, r.label);
        }
    }
    let _ = writeln!(s, "Benchmark wall time: {:.0} s.", elapsed.as_secs_f64());
    print!("{s}");
}
