//! The lzop reader on files made by Debian's real `lzop` 1.04
//! (`walarchive/tests/fixtures/legacy/make.sh`).

use std::io::Read;

use sha2::{Digest, Sha256};

use super::*;

const TEXT: &[u8] = include_bytes!("../../../tests/fixtures/legacy/text.txt");
const TEXT_LZO: &[u8] = include_bytes!("../../../tests/fixtures/legacy/text.lzo");
const TEXT_9_LZO: &[u8] = include_bytes!("../../../tests/fixtures/legacy/text-9.lzo");
const TEXT_CRC32_LZO: &[u8] = include_bytes!("../../../tests/fixtures/legacy/text-crc32.lzo");
const RANDOM: &[u8] = include_bytes!("../../../tests/fixtures/legacy/random.bin");
const RANDOM_LZO: &[u8] = include_bytes!("../../../tests/fixtures/legacy/random.lzo");
const SEGMENT_LZO: &[u8] = include_bytes!("../../../tests/fixtures/legacy/segment.lzo");
const SHA256SUMS: &str = include_str!("../../../tests/fixtures/legacy/SHA256SUMS");

/// lzop 1.04's header length with an empty name (every fixture's).
const HEADER_LEN: usize = 38;

fn sha256_of_fixture(name: &str) -> String {
    SHA256SUMS
        .lines()
        .find_map(|l| {
            let (digest, file) = l.split_once("  ")?;
            (file == name).then(|| digest.to_string())
        })
        .unwrap_or_else(|| panic!("{name} not in SHA256SUMS"))
}

fn sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn block_header(file: &[u8], at: usize) -> (u32, u32) {
    let ulen = u32::from_be_bytes(file[at..at + 4].try_into().unwrap());
    let clen = u32::from_be_bytes(file[at + 4..at + 8].try_into().unwrap());
    (ulen, clen)
}

fn corrupt_what(r: Result<Vec<u8>, LegacyError>) -> (Option<u64>, String) {
    match r {
        Err(LegacyError::Corrupt { block, what }) => (block, what),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

/// Sets a header field (at `offset`, within the checksummed part) and recomputes the header
/// checksum, as a writer with that setting would have.
fn with_header_field(file: &[u8], offset: usize, bytes: &[u8]) -> Vec<u8> {
    let mut f = file.to_vec();
    f[offset..offset + bytes.len()].copy_from_slice(bytes);
    let sum = adler32(&f[9..HEADER_LEN - 4]);
    f[HEADER_LEN - 4..HEADER_LEN].copy_from_slice(&sum.to_be_bytes());
    f
}

#[test]
fn fixtures_are_what_make_sh_says() {
    assert_eq!(sha256(TEXT), sha256_of_fixture("text.txt"));
    assert_eq!(sha256(RANDOM), sha256_of_fixture("random.bin"));
}

#[test]
fn text_decodes_to_the_original() {
    assert_eq!(decode_all(TEXT_LZO).unwrap(), TEXT);
    let r = LzopReader::new(TEXT_LZO).unwrap();
    assert_eq!(
        r.header(),
        Header {
            version: 0x1040,
            method: 1,
            flags: 0x0300_000d
        }
    );
}

#[test]
fn lzop_minus_9_and_crc32_variants_decode() {
    let h9 = LzopReader::new(TEXT_9_LZO).unwrap().header();
    assert_eq!(h9.method, 3, "lzop -9 is LZO1X-999");
    assert_eq!(decode_all(TEXT_9_LZO).unwrap(), TEXT);

    let hc = LzopReader::new(TEXT_CRC32_LZO).unwrap().header();
    assert_eq!(hc.flags & (F_CRC32_D | F_H_CRC32), F_CRC32_D | F_H_CRC32);
    assert_eq!(hc.flags & F_ADLER32_D, 0);
    assert_eq!(decode_all(TEXT_CRC32_LZO).unwrap(), TEXT);
}

#[test]
fn stored_blocks_decode() {
    let (ulen, clen) = block_header(RANDOM_LZO, HEADER_LEN);
    assert_eq!((ulen, clen), (RANDOM.len() as u32, RANDOM.len() as u32));
    assert_eq!(decode_all(RANDOM_LZO).unwrap(), RANDOM);
    // A stored block's data is covered by the adler32 of the uncompressed data alone.
    let mut bad = RANDOM_LZO.to_vec();
    bad[HEADER_LEN + 12 + 1000] ^= 0x01;
    let (block, what) = corrupt_what(decode_all(&bad));
    assert_eq!(block, Some(0));
    assert!(
        what.starts_with("adler32 of uncompressed data mismatch"),
        "{what}"
    );
}

#[test]
fn real_wal_segment_round_trips() {
    let name = include_str!("../../../tests/fixtures/legacy/segment.name").trim();
    assert_eq!(name.len(), 24);
    let decoded = decode_all(SEGMENT_LZO).unwrap();
    assert_eq!(decoded.len(), 1024 * 1024);
    assert_eq!(sha256(&decoded), sha256_of_fixture("segment"));
    // PostgreSQL 15's page magic, and the long header's segment size field: a real segment.
    assert_eq!(u16::from_le_bytes([decoded[0], decoded[1]]), 0xD110);
    assert_eq!(
        u32::from_le_bytes(decoded[32..36].try_into().unwrap()),
        1024 * 1024
    );
    // Four 256 KiB blocks.
    assert_eq!(block_header(SEGMENT_LZO, HEADER_LEN).0, 256 * 1024);

    // The streaming reader gives the same bytes through small, odd-sized reads.
    let mut r = LzopReader::new(SEGMENT_LZO).unwrap();
    let mut streamed = Vec::new();
    let mut buf = [0u8; 4093];
    loop {
        let n = r.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        streamed.extend_from_slice(&buf[..n]);
    }
    assert_eq!(streamed, decoded);
    assert_eq!(r.read(&mut buf).unwrap(), 0, "stays at the end");
}

/// Every single-byte change anywhere in the file is an error (header fields: adler32 or crc32
/// of the header; the checksum itself, block lengths, block checksums, LZO data: a stream
/// error, a wrong length or the checksum of the uncompressed data; the end marker), except
/// changes that cannot alter the output: LZO's end-of-stream instruction (`0x11 0x00 0x00`)
/// carries two "trailing literals" bits in its last-but-one byte that every LZO1X decoder,
/// liblzo's included, ignores at the end. Those flips decode to the original bytes, and the
/// test requires exactly that; it returns where they were.
fn every_flip_is_detected(
    file: &[u8],
    original: &[u8],
    offsets: impl Iterator<Item = usize>,
) -> Vec<(usize, u8)> {
    let mut harmless = Vec::new();
    let mut tried = 0;
    for at in offsets {
        for mask in [0x01u8, 0x02, 0x80, 0xff] {
            let mut bad = file.to_vec();
            bad[at] ^= mask;
            match decode_all(&bad) {
                Err(e) => assert!(e.is_corrupt(), "offset {at} mask {mask:#x}: {e:?}"),
                Ok(out) => {
                    assert!(
                        out == original,
                        "offset {at} mask {mask:#x} decoded to other bytes without an error"
                    );
                    harmless.push((at, mask));
                    continue;
                }
            }
            // The streaming reader agrees.
            let streamed = LzopReader::new(&bad[..]).and_then(|mut r| {
                let mut v = Vec::new();
                r.read_to_end(&mut v).map_err(LegacyError::from_io)?;
                Ok(v)
            });
            assert!(streamed.is_err(), "offset {at}: the reader returned Ok");
            tried += 1;
        }
    }
    assert!(tried > 0);
    harmless
}

#[test]
fn every_single_byte_flip_is_detected() {
    for file in [TEXT_LZO, TEXT_9_LZO, TEXT_CRC32_LZO] {
        let harmless = every_flip_is_detected(file, TEXT, 0..file.len());
        // One block, then the 4-byte end marker: the LZO stream ends 4 bytes before the file,
        // with 0x11 0x00 0x00; only the two low bits of its middle byte are ignored.
        let n = file.len();
        assert_eq!(&file[n - 7..n - 4], &[0x11, 0, 0]);
        assert_eq!(harmless, vec![(n - 6, 0x01), (n - 6, 0x02)]);
    }
    // The stored block: the headers, the end, and a stride through the data.
    let n = RANDOM_LZO.len();
    let harmless = every_flip_is_detected(
        RANDOM_LZO,
        RANDOM,
        (0..64).chain((64..n - 64).step_by(97)).chain(n - 64..n),
    );
    assert_eq!(harmless, vec![]);
}

#[test]
fn a_flip_in_the_lzo_data_of_a_later_block_names_that_block() {
    // The corrupt-block recipe of the design (§0, §6.2): a byte inside block 1's LZO data.
    let (_, clen0) = block_header(SEGMENT_LZO, HEADER_LEN);
    let b1 = HEADER_LEN + 12 + clen0 as usize;
    let (_, clen1) = block_header(SEGMENT_LZO, b1);
    let mut bad = SEGMENT_LZO.to_vec();
    bad[b1 + 12 + clen1 as usize / 2] ^= 0x5a;
    let (block, what) = corrupt_what(decode_all(&bad));
    assert_eq!(block, Some(1), "{what}");
    // The streaming reader returns block 0 and then fails, and keeps failing.
    let mut r = LzopReader::new(&bad[..]).unwrap();
    let mut first = vec![0u8; 256 * 1024];
    r.read_exact(&mut first).unwrap();
    let e = r.read(&mut [0u8; 16]).unwrap_err();
    assert!(
        matches!(
            LegacyError::from_io(e),
            LegacyError::Corrupt { block: Some(1), .. }
        ),
        "block 1 named"
    );
    assert!(
        r.read(&mut [0u8; 16]).is_err(),
        "no clean end after an error"
    );
}

#[test]
fn huge_block_lengths_are_refused_before_allocating() {
    for ulen in [u32::MAX, MAX_BLOCK + 1] {
        let mut bad = TEXT_LZO.to_vec();
        bad[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&ulen.to_be_bytes());
        let mut r = LzopReader::new(&bad[..]).unwrap();
        let e = LegacyError::from_io(r.read(&mut [0u8; 16]).unwrap_err());
        assert!(
            matches!(&e, LegacyError::Corrupt { block: Some(0), what } if what.contains("exceeds lzop's maximum")),
            "{e}"
        );
        assert_eq!(r.out.capacity(), 0, "nothing allocated for the block");
        assert_eq!(r.compressed.capacity(), 0);
    }
    // A length within lzop's maximum on a short file: only what the file holds is read.
    let mut bad = TEXT_LZO.to_vec();
    bad[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&MAX_BLOCK.to_be_bytes());
    bad[HEADER_LEN + 4..HEADER_LEN + 8].copy_from_slice(&(MAX_BLOCK - 1).to_be_bytes());
    let mut r = LzopReader::new(&bad[..]).unwrap();
    let e = LegacyError::from_io(r.read(&mut [0u8; 16]).unwrap_err());
    assert!(e.to_string().contains("truncated"), "{e}");
    assert!(
        r.compressed.capacity() < 64 * 1024,
        "{}",
        r.compressed.capacity()
    );
    assert_eq!(r.out.capacity(), 0);
    // A compressed length above the block length.
    let mut bad = TEXT_LZO.to_vec();
    bad[HEADER_LEN + 4..HEADER_LEN + 8].copy_from_slice(&(TEXT.len() as u32 + 1).to_be_bytes());
    let (_, what) = corrupt_what(decode_all(&bad));
    assert!(what.contains("exceeds the block length"), "{what}");
}

#[test]
fn missing_end_marker_and_every_truncation_are_refused() {
    let n = TEXT_LZO.len();
    assert_eq!(&TEXT_LZO[n - 4..], &[0, 0, 0, 0], "the end marker");
    let (block, what) = corrupt_what(decode_all(&TEXT_LZO[..n - 4]));
    assert_eq!(
        (block, what.as_str()),
        (Some(1), "truncated: no end marker")
    );
    // Cut at a block boundary of a multi-block file: still refused.
    let (_, clen0) = block_header(SEGMENT_LZO, HEADER_LEN);
    let cut = HEADER_LEN + 12 + clen0 as usize;
    let (block, what) = corrupt_what(decode_all(&SEGMENT_LZO[..cut]));
    assert_eq!(
        (block, what.as_str()),
        (Some(1), "truncated: no end marker")
    );
    // Every shorter prefix.
    for len in 0..n {
        let e = decode_all(&TEXT_LZO[..len]).unwrap_err();
        assert!(e.is_corrupt(), "prefix {len}: {e:?}");
    }
}

#[test]
fn bytes_after_the_end_marker_are_refused() {
    let mut bad = TEXT_LZO.to_vec();
    bad.push(0);
    let (_, what) = corrupt_what(decode_all(&bad));
    assert_eq!(what, "bytes after the end marker");
}

#[test]
fn not_lzop_and_unsupported_features() {
    let (block, what) = corrupt_what(decode_all(b"\x28\xb5\x2f\xfd zstd, not lzop"));
    assert_eq!(block, None);
    assert!(what.contains("bad magic"), "{what}");
    assert!(decode_all(b"").is_err());

    // Offsets in lzop 1.04's header: method at 15, flags at 17..21.
    let method_zlib = with_header_field(TEXT_LZO, 15, &[128]);
    assert!(
        matches!(decode_all(&method_zlib), Err(LegacyError::Unsupported(m)) if m.contains("method 128"))
    );
    let mut flags = u32::from_be_bytes(TEXT_LZO[17..21].try_into().unwrap());
    flags |= F_H_EXTRA_FIELD;
    let extra = with_header_field(TEXT_LZO, 17, &flags.to_be_bytes());
    assert!(matches!(
        decode_all(&extra),
        Err(LegacyError::Unsupported(m)) if m.contains("extra header field")
    ));
    // A valid checksum with a valid change (another mtime) still decodes: the helper is sound.
    let mtime = with_header_field(TEXT_LZO, 25, &[1, 2, 3, 4]);
    assert_eq!(decode_all(&mtime).unwrap(), TEXT);
}

#[test]
fn errors_name_the_key_and_map_to_corrupt() {
    let mut bad = TEXT_LZO.to_vec();
    bad[HEADER_LEN + 8] ^= 0x01; // the block's adler32
    let e = decode_all(&bad)
        .unwrap_err()
        .into_error("wal_005/000000010000000000000003.lzo");
    assert_eq!(e.kind(), crate::ErrorKind::Corrupt);
    let msg = e.to_string();
    assert!(
        msg.starts_with("wal_005/000000010000000000000003.lzo is corrupt: lzop block 0: adler32 of uncompressed data mismatch"),
        "{msg}"
    );
    let io = LegacyError::Io(std::io::Error::other("connection reset")).into_error("k");
    assert_eq!(io.kind(), crate::ErrorKind::LocalIo);
}

#[test]
fn flips_in_every_block_header_of_a_multi_block_file_are_detected() {
    // The 12 bytes (ulen, clen, adler32) before each of the segment's four blocks, and its
    // end marker: a damaged length misaligns everything after it, and must still be caught.
    let mut offsets = Vec::new();
    let mut at = HEADER_LEN;
    loop {
        if SEGMENT_LZO[at..at + 4] == [0, 0, 0, 0] {
            offsets.extend(at..at + 4);
            break;
        }
        let (_, clen) = block_header(SEGMENT_LZO, at);
        offsets.extend(at..at + 12);
        at += 12 + clen as usize;
    }
    assert_eq!(offsets.len(), 4 * 12 + 4);
    let original = decode_all(SEGMENT_LZO).unwrap();
    for at in offsets {
        for mask in [0x01u8, 0x80] {
            let mut bad = SEGMENT_LZO.to_vec();
            bad[at] ^= mask;
            let e = decode_all(&bad).expect_err(&format!("offset {at} mask {mask:#x}"));
            assert!(e.is_corrupt(), "offset {at}: {e:?}");
        }
    }
    assert_eq!(original.len(), 1024 * 1024);
}
