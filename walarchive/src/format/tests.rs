//! Unit tests of [`super`].

use super::*;

/// Both zstd paths (one call up to the threshold, streaming above it), lz4 and none.
#[test]
fn read_objects_decode_like_whole_ones() {
    let raw: Vec<u8> = (0..3_000_000u32).map(|i| (i / 7 % 251) as u8).collect();
    let len = raw.len() as u64;
    for (one_shot_max, path) in [(0, "streamed"), (ONE_SHOT_MAX, "one call")] {
        let encode = |claimed: u64, first: &mut dyn FnMut(&[u8]) -> std::io::Result<()>| {
            let mut chunk = vec![0u8; 1 << 16];
            let c = Compression::Zstd(3);
            encode_reader_up_to(
                &mut &raw[..],
                claimed,
                c,
                &mut chunk,
                None,
                first,
                one_shot_max,
            )
        };
        for compression in [
            Compression::Zstd(1),
            Compression::Zstd(3),
            Compression::Lz4,
            Compression::None,
        ] {
            let mut chunk = vec![0u8; 1 << 16];
            let mut seen = 0;
            let obj = encode_reader_up_to(
                &mut &raw[..],
                len,
                compression,
                &mut chunk,
                None,
                |head| {
                    seen = head.len();
                    Ok(())
                },
                one_shot_max,
            )
            .unwrap();
            assert_eq!(seen, 1 << 16, "{path}");
            let (header, back) = decode(&obj.bytes).unwrap();
            assert_eq!(back, raw, "{compression} {path}");
            assert_eq!(header.version, FORMAT_VERSION_BLAKE3, "{compression}");
            assert_eq!(header.digest, Digest::blake3(&raw));
            assert_eq!(header, obj.header);
            assert_eq!(obj.bytes.len(), HEADER_LEN + header.body_len as usize);
            if let Compression::Zstd(_) = compression {
                let whole = super::encode(&raw, compression, None);
                let (a, b) = (obj.bytes.len() as f64, whole.bytes.len() as f64);
                assert!((a / b - 1.0).abs() < 0.02, "{path} {a} vs whole {b}");
            }
        }
        // Shorter or longer than announced: refused.
        for claimed in [len + 1, len - 1] {
            let e = encode(claimed, &mut |_| Ok(())).unwrap_err();
            assert_eq!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof,
                "{claimed} {path}"
            );
        }
        // The first chunk can refuse before anything is encoded.
        let e = encode(len, &mut |_| Err(std::io::Error::other("no"))).unwrap_err();
        assert_eq!(e.to_string(), "no");
        // And the buffers it leaves behind serve the next one.
        assert!(encode(len, &mut |_| Ok(())).is_ok(), "{path}");
    }
}

fn content() -> Vec<u8> {
    b"WAL bytes ".repeat(5000)
}

#[test]
fn round_trip_every_codec() {
    let raw = content();
    for c in [Compression::None, Compression::Lz4, Compression::Zstd(3)] {
        let obj = encode(&raw, c, None);
        assert_eq!(obj.bytes.len(), HEADER_LEN + obj.header.body_len as usize);
        let (h, back) = decode(&obj.bytes).unwrap();
        assert_eq!(back, raw);
        assert_eq!(h.codec, c.id());
        assert_eq!(h.digest, Digest::sha256(&raw));
    }
}

#[test]
fn detects_corruption_anywhere() {
    let raw = content();
    let obj = encode(&raw, Compression::Zstd(1), None).bytes;
    // Truncation.
    assert!(matches!(
        decode(&obj[..obj.len() - 1]),
        Err(FormatError::BodyLength { .. })
    ));
    assert!(matches!(decode(&obj[..10]), Err(FormatError::TooShort(10))));
    // Appended garbage.
    let mut longer = obj.clone();
    longer.push(0);
    assert!(matches!(
        decode(&longer),
        Err(FormatError::BodyLength { .. })
    ));
    // A flipped bit in the stored checksum.
    let mut bad = obj.clone();
    bad[40] ^= 1;
    assert!(matches!(decode(&bad), Err(FormatError::Checksum { .. })));
    // Magic, version, codec.
    let mut bad = obj.clone();
    bad[0] = b'X';
    assert!(matches!(decode(&bad), Err(FormatError::BadMagic)));
    let mut bad = obj.clone();
    bad[8] = 9;
    assert!(matches!(
        decode(&bad),
        Err(FormatError::UnsupportedVersion(9))
    ));
    let mut bad = obj.clone();
    bad[10] = 77;
    assert!(matches!(decode(&bad), Err(FormatError::UnknownCodec(77))));
    // A flipped bit in an uncompressed body is caught by the checksum.
    let mut plain = encode(&raw, Compression::None, None).bytes;
    let n = plain.len();
    plain[n - 3] ^= 0x10;
    assert!(matches!(decode(&plain), Err(FormatError::Checksum { .. })));
}

#[test]
fn header_layout_is_stable() {
    let obj = encode(b"abc", Compression::None, None);
    assert_eq!(&obj.bytes[0..8], b"WALARCH\0");
    assert_eq!(&obj.bytes[8..10], &[1, 0]);
    assert_eq!(obj.bytes[10], 0);
    assert_eq!(&obj.bytes[12..16], &[64, 0, 0, 0]);
    assert_eq!(&obj.bytes[16..24], &3u64.to_le_bytes());
    assert_eq!(&obj.bytes[24..32], &3u64.to_le_bytes());
    assert_eq!(&obj.bytes[64..], b"abc");
    assert_eq!(
        hex::encode(&obj.bytes[32..64]),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

#[test]
fn body_digest_objects_check_the_body_before_decoding() {
    let raw: Vec<u8> = (0..1_000_000u32).map(|i| (i / 5 % 199) as u8).collect();
    for compression in [Compression::Zstd(1), Compression::Lz4, Compression::None] {
        let obj = encode_as(&raw, compression, DigestKind::Sha256OfBody, None);
        assert_eq!(obj.header.version, FORMAT_VERSION_BODY_DIGEST);
        assert_eq!(obj.header.digest_kind(), DigestKind::Sha256OfBody);
        assert_eq!(obj.header.digest, Digest::sha256(&obj.bytes[HEADER_LEN..]));
        let (header, back) = decode(&obj.bytes).unwrap();
        assert_eq!(header, obj.header);
        assert!(back == raw, "{compression}");
        // A flipped bit in the body is a checksum error, found before decoding.
        let mut bad = obj.bytes.clone();
        let mid = HEADER_LEN + (bad.len() - HEADER_LEN) / 2;
        bad[mid] ^= 0x10;
        assert!(
            matches!(
                decode(&bad),
                Err(FormatError::Checksum {
                    kind: DigestKind::Sha256OfBody,
                    ..
                })
            ),
            "{compression}"
        );
    }
    // Version 1 hashes the content.
    let v1 = encode(&raw, Compression::Zstd(1), None);
    assert_eq!(v1.header.digest_kind(), DigestKind::Sha256);
    assert_eq!(v1.header.digest, Digest::sha256(&raw));
}

#[test]
fn blake3_objects_check_the_content() {
    let raw: Vec<u8> = (0..1_000_000u32).map(|i| (i / 3 % 211) as u8).collect();
    for compression in [Compression::Zstd(3), Compression::Lz4, Compression::None] {
        let obj = encode_as(&raw, compression, DigestKind::Blake3, None);
        assert_eq!(&obj.bytes[8..10], &[3, 0]);
        assert_eq!(obj.header.digest_kind(), DigestKind::Blake3);
        assert_eq!(obj.header.digest, Digest::blake3(&raw));
        assert_eq!(
            hex::encode(Digest::blake3(b"abc").0),
            "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
        );
        let (header, back) = decode(&obj.bytes).unwrap();
        assert_eq!(header, obj.header);
        assert!(back == raw, "{compression}");
        // The stored digest of other content, as a re-encoding with another hash would
        // leave it: refused, naming the hash.
        let mut bad = obj.bytes.clone();
        bad[32..64].copy_from_slice(&Digest::sha256(&raw).0);
        let e = decode(&bad).unwrap_err();
        assert!(
            matches!(
                e,
                FormatError::Checksum {
                    kind: DigestKind::Blake3,
                    ..
                }
            ),
            "{compression}"
        );
        assert!(e.to_string().contains("header says blake3 "), "{e}");
        // The same object labelled version 1 is a SHA-256 mismatch.
        let mut v1 = obj.bytes.clone();
        v1[8..10].copy_from_slice(&1u16.to_le_bytes());
        assert!(matches!(
            decode(&v1),
            Err(FormatError::Checksum {
                kind: DigestKind::Sha256,
                ..
            })
        ));
    }
    // A version this build does not know is refused as too new.
    let mut v4 = encode_as(&raw, Compression::Zstd(1), DigestKind::Blake3, None).bytes;
    v4[8..10].copy_from_slice(&4u16.to_le_bytes());
    let e = decode(&v4).unwrap_err();
    assert!(matches!(e, FormatError::UnsupportedVersion(4)));
    assert!(e.to_string().contains("upgrade walarchive"), "{e}");
}

#[test]
fn digest_kinds_and_versions_correspond() {
    for kind in [
        DigestKind::Sha256,
        DigestKind::Sha256OfBody,
        DigestKind::Blake3,
    ] {
        assert_eq!(DigestKind::of_version(kind.version()), Some(kind));
    }
    assert_eq!(DigestKind::of_version(0), None);
    assert!(!DigestKind::Sha256OfBody.of_content());
    assert!(DigestKind::Blake3.of_content() && DigestKind::Sha256.of_content());
}

fn bound(name: &str) -> Binding {
    Binding::new(7_312_345_678_901_234_567, name)
}

/// Bound objects of every kind and codec carry their name and cluster, through every
/// encoding path, and decode to their content.
#[test]
fn bound_objects_carry_their_name_and_cluster() {
    let raw: Vec<u8> = (0..2_000_000u32).map(|i| (i / 9 % 233) as u8).collect();
    let b = bound("wal/00000001/00000000/000000010000000000000058");
    let check = |obj: &EncodedObject| {
        let (header, back) = decode(&obj.bytes).unwrap();
        assert!(back == raw);
        assert_eq!(header.binding.as_ref(), Some(&b));
        assert_eq!(header.header_len, HEADER_LEN + 42 + b.name.len());
        assert_eq!(obj.bytes[11], FLAG_BOUND);
        assert_eq!(header, obj.header);
        // The header alone (as a ranged read gets it) parses.
        assert_eq!(
            ObjectHeader::parse(&obj.bytes[..header.header_len]).unwrap(),
            header
        );
    };
    for kind in [
        DigestKind::Sha256,
        DigestKind::Sha256OfBody,
        DigestKind::Blake3,
    ] {
        for c in [Compression::None, Compression::Lz4, Compression::Zstd(3)] {
            check(&encode_as(&raw, c, kind, Some(&b)));
        }
    }
    for (one_shot_max, c) in [
        (0, Compression::Zstd(1)),
        (ONE_SHOT_MAX, Compression::Zstd(1)),
        (ONE_SHOT_MAX, Compression::Lz4),
    ] {
        let mut chunk = vec![0u8; 1 << 16];
        let obj = encode_reader_up_to(
            &mut &raw[..],
            raw.len() as u64,
            c,
            &mut chunk,
            Some(&b),
            |_| Ok(()),
            one_shot_max,
        )
        .unwrap();
        check(&obj);
    }
    // Rebinding to another cluster rewrites the header in place.
    let mut obj = encode_as(
        &raw,
        Compression::Lz4,
        DigestKind::Blake3,
        Some(&bound("x")),
    );
    obj.set_system_identifier(42);
    let (header, _) = decode(&obj.bytes).unwrap();
    assert_eq!(header.binding, Some(Binding::new(42, "x")));
}

/// Every byte of a bound header is covered: damage anywhere in it, a flag this build does
/// not know, inconsistent lengths, or a bound flag cleared are refused.
#[test]
fn bound_headers_refuse_hostile_input() {
    let raw = content();
    let obj = encode(&raw, Compression::None, Some(&bound("walarchive.repo"))).bytes;
    let header_len = obj.header_len_for_tests();
    for at in 0..header_len {
        let mut bad = obj.clone();
        bad[at] ^= 0x04;
        assert!(
            decode(&bad).is_err(),
            "a flipped bit at {at} went unnoticed"
        );
    }
    let name_at = 74;
    let mut bad = obj.clone();
    bad[name_at] ^= 0x01;
    assert!(matches!(decode(&bad), Err(FormatError::HeaderChecksum)));
    let mut bad = obj.clone();
    bad[64] ^= 0x01;
    assert!(matches!(decode(&bad), Err(FormatError::HeaderChecksum)));
    let mut bad = obj.clone();
    bad[40] ^= 0x01; // the content digest
    assert!(matches!(decode(&bad), Err(FormatError::HeaderChecksum)));
    // An unknown flag.
    let mut bad = obj.clone();
    bad[11] |= 0x80;
    let e = decode(&bad).unwrap_err();
    assert!(matches!(e, FormatError::UnsupportedFlags(0x81)));
    assert!(e.to_string().contains("upgrade walarchive"), "{e}");
    // The bound flag cleared: the header length gives it away.
    let mut bad = obj.clone();
    bad[11] = 0;
    assert!(matches!(decode(&bad), Err(FormatError::BadHeaderLength(_))));
    // A name length that does not fill the header, and a header too short to be bound.
    let mut bad = obj.clone();
    bad[72] = bad[72].wrapping_add(1);
    assert!(matches!(decode(&bad), Err(FormatError::BadHeaderLength(_))));
    let mut bad = obj.clone();
    bad[12..16].copy_from_slice(&80u32.to_le_bytes());
    assert!(matches!(
        decode(&bad),
        Err(FormatError::BadHeaderLength(80))
    ));
    let mut bad = obj.clone();
    bad[12..16].copy_from_slice(&5000u32.to_le_bytes());
    assert!(matches!(
        decode(&bad),
        Err(FormatError::BadHeaderLength(5000))
    ));
    // Cut inside the binding.
    assert!(matches!(
        ObjectHeader::parse(&obj[..100]),
        Err(FormatError::TooShort(100))
    ));
    // A name that is not UTF-8, with a matching header digest.
    let mut bad = obj.clone();
    bad[name_at] = 0xFF;
    let covered = 74 + "walarchive.repo".len();
    let digest = blake3::hash(&bad[..covered]);
    bad[covered..covered + 32].copy_from_slice(digest.as_bytes());
    assert!(matches!(decode(&bad), Err(FormatError::HeaderChecksum)));
    // Unbound objects keep their 64-byte header and still decode.
    let old = encode(&raw, Compression::Lz4, None);
    assert_eq!(old.header.header_len, HEADER_LEN);
    assert_eq!(decode(&old.bytes).unwrap().0.binding, None);
}

trait HeaderLen {
    fn header_len_for_tests(&self) -> usize;
}

impl HeaderLen for Vec<u8> {
    fn header_len_for_tests(&self) -> usize {
        u32::from_le_bytes(self[12..16].try_into().unwrap()) as usize
    }
}
