//! `cargo bench -p walarchive --bench crypto [-- [--quick] [FILE...]]`
//!
//! What client-side encryption costs next to compression (issue 19's target: archiving and
//! backups at most 10% slower with encryption on, at zstd:1), in process, on one thread:
//!
//! 1. The data: 64 MiB, from the files named (real WAL segments, say `pg_wal/0000...`, read
//!    in order and repeated up to 64 MiB), else generated (8 KiB pages, each a run of
//!    records that repeat with small changes and some random bytes, compressing about as
//!    well as OLTP WAL; the figures for real WAL are the ones to quote).
//! 2. zstd:1 compression of it in 16 MiB pieces (as WAL segments are compressed): MiB/s of
//!    input and the ratio.
//! 3. `crypto::seal_in_place` and `open_in_place` of the whole 64 MiB at 64 KiB chunks (the
//!    AEAD's raw throughput), and of the compressed pieces (what an encrypted repository
//!    actually seals: compress, then encrypt), with the derivation of one object's keys.
//! 4. The overhead: sealing the compressed pieces as a share of compressing them.
//!
//! Best of several passes per row (fewer with `--quick`). Prints a Markdown table.

use std::hint::black_box;
use std::time::{Duration, Instant};

use walarchive::codec::Compression;
use walarchive::crypto::{self, DataKey, CHUNK_LOG2};

const MIB: f64 = 1024.0 * 1024.0;
const TOTAL: usize = 64 << 20;
const PIECE: usize = 16 << 20;
const HEADER: &[u8] = &[0x57; 160];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let files: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let passes = if quick { 2 } else { 5 };

    let (data, source) = if files.is_empty() {
        (generated(TOTAL), "generated WAL-like pages".to_string())
    } else {
        let mut data = Vec::with_capacity(TOTAL);
        let mut names = Vec::new();
        while data.len() < TOTAL {
            for f in &files {
                let bytes = std::fs::read(f).unwrap_or_else(|e| panic!("{f}: {e}"));
                let take = bytes.len().min(TOTAL - data.len());
                data.extend_from_slice(&bytes[..take]);
                let name = f.rsplit('/').next().unwrap_or(f).to_string();
                if !names.contains(&name) {
                    names.push(name);
                }
                if data.len() == TOTAL {
                    break;
                }
            }
        }
        (
            data,
            format!("{} file(s): {}", names.len(), names.join(", ")),
        )
    };
    eprintln!("data: 64 MiB of {source}; {passes} passes per row");

    let zstd1 = Compression::Zstd(1);
    let (t_zstd, bodies) = best(passes, || {
        data.chunks(PIECE)
            .map(|p| zstd1.encode(p))
            .collect::<Vec<_>>()
    });
    let compressed: usize = bodies.iter().map(Vec::len).sum();

    let dk = DataKey::generate().expect("random data key");
    let salt = crypto::random_salt().expect("random salt");
    let (t_derive, _) = best(passes, || {
        for _ in 0..1000 {
            black_box(dk.object_keys(black_box(&salt)));
        }
    });
    let keys = dk.object_keys(&salt);

    // The whole 64 MiB, sealed and opened in one buffer (reserved once: no reallocation).
    let mut buf = Vec::with_capacity(HEADER.len() + crypto::sealed_len(TOTAL));
    let mut t_seal = Duration::MAX;
    let mut t_open = Duration::MAX;
    for _ in 0..passes {
        buf.clear();
        buf.extend_from_slice(HEADER);
        buf.extend_from_slice(&data);
        let t = Instant::now();
        crypto::seal_in_place(&keys, HEADER, &mut buf, HEADER.len()).unwrap();
        t_seal = t_seal.min(t.elapsed());
        let t = Instant::now();
        crypto::open_in_place(&keys, HEADER, &mut buf, HEADER.len(), CHUNK_LOG2).unwrap();
        t_open = t_open.min(t.elapsed());
        assert!(buf[HEADER.len()..] == data[..]);
    }

    // The compressed pieces, each with its own object keys, as objects are sealed.
    let mut piece_bufs: Vec<Vec<u8>> = bodies
        .iter()
        .map(|b| Vec::with_capacity(HEADER.len() + crypto::sealed_len(b.len())))
        .collect();
    let mut t_seal_c = Duration::MAX;
    let mut t_open_c = Duration::MAX;
    for _ in 0..passes {
        for (pb, body) in piece_bufs.iter_mut().zip(&bodies) {
            pb.clear();
            pb.extend_from_slice(HEADER);
            pb.extend_from_slice(body);
        }
        let t = Instant::now();
        for pb in &mut piece_bufs {
            let keys = dk.object_keys(&salt);
            crypto::seal_in_place(&keys, HEADER, pb, HEADER.len()).unwrap();
        }
        t_seal_c = t_seal_c.min(t.elapsed());
        let t = Instant::now();
        for pb in &mut piece_bufs {
            let keys = dk.object_keys(&salt);
            crypto::open_in_place(&keys, HEADER, pb, HEADER.len(), CHUNK_LOG2).unwrap();
        }
        t_open_c = t_open_c.min(t.elapsed());
    }

    let mibs = |bytes: usize, t: Duration| bytes as f64 / MIB / t.as_secs_f64();
    println!("Encryption next to compression, one thread, 64 MiB of {source}");
    println!();
    println!("| row | MiB/s | time (ms) | notes |");
    println!("|---|---:|---:|---|");
    println!(
        "| zstd:1 compress (16 MiB pieces) | {:.0} of input | {:.1} | ratio {:.2} ({:.1} MiB stored) |",
        mibs(TOTAL, t_zstd),
        ms(t_zstd),
        TOTAL as f64 / compressed as f64,
        compressed as f64 / MIB
    );
    println!(
        "| seal 64 MiB at 64 KiB chunks (AES-256-GCM STREAM) | {:.0} | {:.1} | in place |",
        mibs(TOTAL, t_seal),
        ms(t_seal)
    );
    println!(
        "| open 64 MiB at 64 KiB chunks | {:.0} | {:.1} | in place |",
        mibs(TOTAL, t_open),
        ms(t_open)
    );
    println!(
        "| seal the zstd:1 bodies | {:.0} of body, {:.0} of input | {:.2} | {:.1}% of compressing |",
        mibs(compressed, t_seal_c),
        mibs(TOTAL, t_seal_c),
        ms(t_seal_c),
        100.0 * t_seal_c.as_secs_f64() / t_zstd.as_secs_f64()
    );
    println!(
        "| open the zstd:1 bodies | {:.0} of body | {:.2} | |",
        mibs(compressed, t_open_c),
        ms(t_open_c)
    );
    println!(
        "| derive one object's keys (HKDF-SHA256) | | {:.4} | per object |",
        ms(t_derive) / 1000.0
    );
    println!();
    println!(
        "zstd:1 then seal: {:.0} MiB/s of input against {:.0} for zstd:1 alone ({:.1}% slower).",
        mibs(TOTAL, t_zstd + t_seal_c),
        mibs(TOTAL, t_zstd),
        100.0 * (1.0 - t_zstd.as_secs_f64() / (t_zstd + t_seal_c).as_secs_f64())
    );
}

fn ms(t: Duration) -> f64 {
    t.as_secs_f64() * 1000.0
}

/// The fastest of `passes` runs of `f`, and the last result.
fn best<T>(passes: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut fastest = Duration::MAX;
    let mut out = None;
    for _ in 0..passes {
        let t = Instant::now();
        let r = black_box(f());
        fastest = fastest.min(t.elapsed());
        out = Some(r);
    }
    (fastest, out.expect("at least one pass"))
}

/// 8 KiB pages of records that repeat with small changes, with some random bytes: roughly
/// the compressibility of OLTP WAL (not a substitute for it).
fn generated(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let record: Vec<u8> = (0..200).map(|i| (i * 31 % 256) as u8).collect();
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        // Page header.
        out.extend_from_slice(&[0x10, 0xd1, 0x05, 0x00]);
        out.extend_from_slice(&(out.len() as u64).to_le_bytes());
        while out.len() % 8192 < 8192 - 256 && out.len() < len {
            let r = next();
            out.extend_from_slice(&r.to_le_bytes()[..4]);
            let take = 40 + (r >> 32) as usize % 160;
            out.extend_from_slice(&record[..take]);
            if r % 4 == 0 {
                out.extend_from_slice(&next().to_le_bytes());
                out.extend_from_slice(&next().to_le_bytes());
            }
        }
        let pad = (8192 - out.len() % 8192) % 8192;
        out.resize(out.len() + pad, 0);
    }
    out.truncate(len);
    out
}
