use super::*;

use aead::stream::EncryptorBE32;
use sha2::Digest as _;

/// The boundary lengths of the design (§7) around the 64 KiB chunk.
const BOUNDARY: [usize; 8] = [0, 1, 15, 16, 65535, 65536, 65537, 3 * 65536];

fn key(byte: u8) -> DataKey {
    DataKey::from_parts(DataKeyId([byte; 16]), Secret::new([byte; 32]))
}

fn salt(byte: u8) -> [u8; SALT] {
    [byte; SALT]
}

/// Deterministic bytes that are not all alike (a cheap xorshift).
fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

const HEADER: &[u8] = b"a header, as the AD";

/// `HEADER || seal(plain)` at `chunk`-byte chunks.
fn sealed(keys: &ObjectKeys, plain: &[u8], chunk: usize) -> Vec<u8> {
    let mut buf = HEADER.to_vec();
    buf.extend_from_slice(plain);
    seal_chunked(keys, HEADER, &mut buf, HEADER.len(), chunk).unwrap();
    buf
}

fn open(keys: &ObjectKeys, buf: &mut Vec<u8>, chunk: usize) -> Result<(), CryptoError> {
    open_chunked(keys, HEADER, buf, HEADER.len(), chunk)
}

#[test]
fn sealed_len_at_the_boundaries() {
    let expect = [
        (0, 16),
        (1, 17),
        (15, 31),
        (16, 32),
        (65535, 65551),
        (65536, 65552),
        (65537, 65537 + 32),
        (3 * 65536, 3 * 65536 + 48),
    ];
    for (len, sealed) in expect {
        assert_eq!(sealed_len(len), sealed, "body of {len}");
        assert_eq!(opened_len(sealed, CHUNK_LOG2), Some(len), "sealed {sealed}");
    }
    // 1 GiB part: 16384 tags.
    assert_eq!(sealed_len(1 << 30), (1 << 30) + 16 * 16384);
}

#[test]
fn opened_len_refuses_every_length_no_body_seals_to() {
    let chunk = 64;
    let mut valid = std::collections::BTreeSet::new();
    for len in 0..2000 {
        valid.insert(sealed_len_chunked(len, chunk));
    }
    for sealed in 0..1500 {
        let opened = opened_len_chunked(sealed, chunk);
        assert_eq!(opened.is_some(), valid.contains(&sealed), "sealed {sealed}");
        if let Some(len) = opened {
            assert_eq!(sealed_len_chunked(len, chunk), sealed);
        }
    }
    // Shorter than one tag; one full chunk plus a piece shorter than a tag; a full chunk
    // followed by an empty last chunk (never written: a full last chunk carries the flag).
    for sealed in [0, 15, CHUNK + TAG + 1, CHUNK + TAG + 15, CHUNK + 2 * TAG] {
        assert_eq!(opened_len(sealed, CHUNK_LOG2), None, "sealed {sealed}");
    }
}

#[test]
fn round_trip_at_the_boundaries_and_20_mib() {
    let keys = key(1).object_keys(&salt(2));
    let mut lens = BOUNDARY.to_vec();
    lens.push(20 << 20);
    for len in lens {
        let plain = bytes(len, len as u64);
        let mut buf = sealed(&keys, &plain, CHUNK);
        assert_eq!(buf.len(), HEADER.len() + sealed_len(len), "body of {len}");
        assert_eq!(&buf[..HEADER.len()], HEADER, "the header is left alone");
        if len >= 16 {
            assert_ne!(&buf[HEADER.len()..HEADER.len() + 16], &plain[..16]);
        }
        open_in_place(&keys, HEADER, &mut buf, HEADER.len(), CHUNK_LOG2).unwrap();
        assert_eq!(&buf[..HEADER.len()], HEADER);
        assert!(buf[HEADER.len()..] == plain[..], "body of {len}");
    }
}

#[test]
fn public_seal_equals_the_chunked_one_at_64_kib() {
    let keys = key(3).object_keys(&salt(4));
    let plain = bytes(3 * CHUNK + 5, 9);
    let mut public = HEADER.to_vec();
    public.extend_from_slice(&plain);
    seal_in_place(&keys, HEADER, &mut public, HEADER.len()).unwrap();
    assert_eq!(public, sealed(&keys, &plain, CHUNK));
}

/// The construction is exactly `aead::stream::StreamBE32` over AES-256-GCM with the
/// object's key and nonce prefix: the sealed body equals `EncryptorBE32`'s chunks
/// concatenated, at every boundary length.
#[test]
fn seal_equals_aead_stream_encryptor_be32() {
    let dk = key(5);
    let s = salt(6);
    // The same derivation, done here by hand.
    let hk = Hkdf::<Sha256>::new(Some(&s), dk.secret().expose());
    let mut okm = [0u8; 39];
    hk.expand(b"walarchive object v4", &mut okm).unwrap();
    let keys = dk.object_keys(&s);
    for len in BOUNDARY.iter().copied().chain([5 * CHUNK + 1234]) {
        let plain = bytes(len, 77 + len as u64);
        let aead = Aes256Gcm::new_from_slice(&okm[..32]).unwrap();
        let mut enc = EncryptorBE32::from_aead(aead, okm[32..].into());
        let pieces: Vec<&[u8]> = if plain.is_empty() {
            vec![&[]]
        } else {
            plain.chunks(CHUNK).collect()
        };
        let mut expect = Vec::new();
        let (last, rest) = pieces.split_last().unwrap();
        for piece in rest {
            let payload = aead::Payload {
                msg: piece,
                aad: HEADER,
            };
            expect.extend(enc.encrypt_next(payload).unwrap());
        }
        let payload = aead::Payload {
            msg: last,
            aad: HEADER,
        };
        expect.extend(enc.encrypt_last(payload).unwrap());
        let got = sealed(&keys, &plain, CHUNK);
        assert!(got[HEADER.len()..] == expect[..], "body of {len}");
    }
}

/// Known answer computed independently (Python `cryptography` 48: HKDF-SHA256 and AESGCM,
/// the nonces built by hand), so that the derivation and the layout cannot drift: objects
/// already in repositories must stay readable.
#[test]
fn known_answer() {
    let dk = DataKey::from_parts(
        DataKeyId([0; 16]),
        Secret::new(std::array::from_fn(|i| i as u8)),
    );
    let keys = dk.object_keys(&std::array::from_fn(|i| 0x40 + i as u8));
    assert_eq!(
        hex::encode(keys.digest_key()),
        "d2d2378841752dd39d7befcde086fadd0bdae13db4c0390fa6cb155e39d2bffa"
    );
    let ad = b"walarchive test header";
    let plain: Vec<u8> = (0..70000u32).map(|i| ((i * 7) % 251) as u8).collect();
    let mut buf = plain.clone();
    seal_in_place(&keys, ad, &mut buf, 0).unwrap();
    assert_eq!(buf.len(), 70032);
    assert_eq!(hex::encode(&buf[..16]), "2b4542363af953a53aab4f1f10f06fda");
    assert_eq!(
        hex::encode(Sha256::digest(&buf)),
        "112ac51bdaf50ad6a7e30dd7e0fae93d5e4cdfc800945292c761fd9d281e67c0"
    );
    let mut empty = Vec::new();
    seal_in_place(&keys, ad, &mut empty, 0).unwrap();
    assert_eq!(hex::encode(&empty), "9e53411d989a041bdad1040a402a3c20");
    open_in_place(&keys, ad, &mut buf, 0, CHUNK_LOG2).unwrap();
    assert_eq!(buf, plain);
}

/// Every single-bit flip, in every chunk's data and tag, fails at that chunk, and leaves
/// nothing of the body in the buffer. Small chunks make every position cheap to try.
#[test]
fn every_flipped_bit_is_refused_at_its_chunk() {
    let chunk = 32;
    let keys = key(7).object_keys(&salt(8));
    let plain = bytes(3 * chunk + 7, 3);
    let good = sealed(&keys, &plain, chunk);
    for pos in HEADER.len()..good.len() {
        for bit in [0, 3, 7] {
            let mut buf = good.clone();
            buf[pos] ^= 1 << bit;
            let err = open(&keys, &mut buf, chunk).unwrap_err();
            let at = ((pos - HEADER.len()) / (chunk + TAG)) as u64;
            assert_eq!(
                err,
                CryptoError::Unauthenticated { chunk: at },
                "byte {pos}"
            );
            assert_eq!(buf, HEADER, "nothing unauthenticated is left behind");
        }
    }
    // The same at 64 KiB: a bit of the second chunk's data, and of the last tag.
    let keys = key(9).object_keys(&salt(9));
    let good = sealed(&keys, &bytes(2 * CHUNK + 100, 4), CHUNK);
    for (pos, at) in [(HEADER.len() + CHUNK + TAG + 5, 1), (good.len() - 1, 2)] {
        let mut buf = good.clone();
        buf[pos] ^= 0x10;
        let err = open_in_place(&keys, HEADER, &mut buf, HEADER.len(), CHUNK_LOG2).unwrap_err();
        assert_eq!(err, CryptoError::Unauthenticated { chunk: at });
        assert_eq!(
            err.to_string(),
            format!("authentication failed (tampered or damaged) at chunk {at}")
        );
    }
}

#[test]
fn another_header_key_or_salt_is_refused() {
    let chunk = 64;
    let keys = key(10).object_keys(&salt(11));
    let good = sealed(&keys, &bytes(200, 5), chunk);
    // One bit of the associated data (the header).
    for pos in 0..HEADER.len() {
        let mut buf = good.clone();
        buf[pos] ^= 1;
        let mut ad = HEADER.to_vec();
        ad[pos] ^= 1;
        let err = open_chunked(&keys, &ad, &mut buf, HEADER.len(), chunk).unwrap_err();
        assert_eq!(err, CryptoError::Unauthenticated { chunk: 0 });
    }
    // Another data key, the same data key with another salt.
    for other in [
        key(12).object_keys(&salt(11)),
        key(10).object_keys(&salt(12)),
    ] {
        let mut buf = good.clone();
        assert_eq!(
            open(&other, &mut buf, chunk).unwrap_err(),
            CryptoError::Unauthenticated { chunk: 0 }
        );
    }
    // A body read with a chunk size other than it was sealed with.
    let mut buf = good.clone();
    assert!(open(&keys, &mut buf, chunk * 2).is_err());
    let mut buf = good;
    open(&keys, &mut buf, chunk).unwrap();
}

#[test]
fn dropped_appended_swapped_and_truncated_chunks_are_refused() {
    let chunk = 64;
    let c = chunk + TAG;
    let h = HEADER.len();
    let keys = key(13).object_keys(&salt(14));
    // Four full chunks and a short last one.
    let good = sealed(&keys, &bytes(4 * chunk + 10, 6), chunk);
    let n = 5;
    assert_eq!(good.len(), h + 4 * c + 10 + TAG);
    let chunk_at = |buf: &[u8], i: usize| buf[h + i * c..(h + (i + 1) * c).min(buf.len())].to_vec();
    let refuse = |mut buf: Vec<u8>, what: &str| {
        let err = open(&keys, &mut buf, chunk).unwrap_err();
        assert_eq!(buf, HEADER, "{what}: nothing left behind");
        err
    };

    // The last chunk dropped: the new last one was not sealed as last.
    let err = refuse(good[..h + 4 * c].to_vec(), "dropped last");
    assert_eq!(err, CryptoError::Unauthenticated { chunk: 3 });
    // Every full chunk dropped in turn: the chunks after it move down one place.
    for i in 0..n - 1 {
        let mut buf = good[..h + i * c].to_vec();
        buf.extend_from_slice(&good[h + (i + 1) * c..]);
        let err = refuse(buf, "dropped");
        assert_eq!(
            err,
            CryptoError::Unauthenticated { chunk: i as u64 },
            "dropped {i}"
        );
    }
    // Every pair of chunks swapped (the short last one with a full one changes the
    // length: the first chunk out of place fails).
    for i in 0..n - 1 {
        for j in i + 1..n - 1 {
            let mut buf = good.clone();
            let (a, b) = (chunk_at(&good, i), chunk_at(&good, j));
            buf[h + i * c..h + (i + 1) * c].copy_from_slice(&b);
            buf[h + j * c..h + (j + 1) * c].copy_from_slice(&a);
            let err = refuse(buf, "swapped");
            assert_eq!(
                err,
                CryptoError::Unauthenticated { chunk: i as u64 },
                "swapped {i} {j}"
            );
        }
    }
    // A chunk appended after the last (a copy of one, or the last one again).
    for i in [0, n - 1] {
        let mut buf = good.clone();
        buf.extend_from_slice(&chunk_at(&good, i));
        assert!(
            open(&keys, &mut buf, chunk).is_err(),
            "appended copy of {i}"
        );
        assert_eq!(buf, HEADER);
    }
    // A chunk from another object under the same data key (another salt): refused.
    let other_keys = key(13).object_keys(&salt(15));
    let other = sealed(&other_keys, &bytes(4 * chunk + 10, 6), chunk);
    let mut buf = good.clone();
    buf[h + c..h + 2 * c].copy_from_slice(&chunk_at(&other, 1));
    assert_eq!(
        refuse(buf, "foreign"),
        CryptoError::Unauthenticated { chunk: 1 }
    );
    // Truncated by every length from 1 byte to the whole body.
    for cut in 1..=good.len() - h {
        let buf = good[..good.len() - cut].to_vec();
        let err = refuse(buf, "truncated");
        assert!(
            matches!(
                err,
                CryptoError::Unauthenticated { .. } | CryptoError::BadLength { .. }
            ),
            "cut {cut}: {err:?}"
        );
    }
    let err = refuse(HEADER.to_vec(), "empty");
    assert_eq!(
        err,
        CryptoError::BadLength {
            len: 0,
            chunk: chunk as u64
        }
    );
}

#[test]
fn sealing_does_not_reallocate_when_sealed_len_is_reserved() {
    let keys = key(16).object_keys(&salt(17));
    // 4 MiB (64 chunks) in a unit test; the bench seals 64 MiB the same way.
    let len = 4 << 20;
    let mut buf = Vec::with_capacity(HEADER.len() + sealed_len(len));
    buf.extend_from_slice(HEADER);
    buf.resize(HEADER.len() + len, 0xab);
    let (ptr, cap) = (buf.as_ptr(), buf.capacity());
    seal_in_place(&keys, HEADER, &mut buf, HEADER.len()).unwrap();
    assert_eq!((buf.as_ptr(), buf.capacity()), (ptr, cap));
    open_in_place(&keys, HEADER, &mut buf, HEADER.len(), CHUNK_LOG2).unwrap();
    assert_eq!((buf.as_ptr(), buf.capacity()), (ptr, cap));
    assert_eq!(buf.len(), HEADER.len() + len);
    assert!(buf[HEADER.len()..].iter().all(|&b| b == 0xab));
}

#[test]
fn chunk_sizes_outside_the_range_are_refused() {
    let keys = key(18).object_keys(&salt(19));
    for log2 in [0, 11, 25, 63] {
        let mut buf = vec![0; 64];
        assert_eq!(
            open_in_place(&keys, b"", &mut buf, 0, log2),
            Err(CryptoError::ChunkSize(log2))
        );
    }
    // Every accepted size opens what was sealed with it.
    for log2 in CHUNK_LOG2_RANGE {
        let chunk = 1usize << log2;
        // Several chunks where that is cheap, one short one for the largest sizes.
        let plain = bytes((chunk + 3).min((1 << 20) + 3), log2 as u64);
        let mut buf = sealed(&keys, &plain, chunk);
        open_in_place(&keys, HEADER, &mut buf, HEADER.len(), log2).unwrap();
        assert!(buf[HEADER.len()..] == plain[..]);
    }
}

#[test]
fn derivation_separates_objects_and_purposes() {
    let dk = key(20);
    let a = dk.object_keys(&salt(1));
    let b = dk.object_keys(&salt(2));
    assert_ne!(a.prefix, b.prefix);
    assert_ne!(a.digest_key(), b.digest_key());
    // Deterministic: the same data key and salt give the same keys (a reader re-derives).
    let again = dk.object_keys(&salt(1));
    assert_eq!(a.prefix, again.prefix);
    assert_eq!(a.digest_key(), again.digest_key());
    let plain = bytes(100, 1);
    assert_eq!(sealed(&a, &plain, CHUNK), sealed(&again, &plain, CHUNK));
    assert_ne!(sealed(&a, &plain, CHUNK), sealed(&b, &plain, CHUNK));
    // The digest key is not the AES key nor a prefix of its derivation.
    let hk = Hkdf::<Sha256>::new(Some(&salt(1)), dk.secret().expose());
    let mut okm = [0u8; 39];
    hk.expand(INFO_OBJECT, &mut okm).unwrap();
    assert_ne!(&okm[..32], a.digest_key());
}

#[test]
fn generated_keys_and_salts_are_random() {
    let a = DataKey::generate().unwrap();
    let b = DataKey::generate().unwrap();
    assert_ne!(a.id, b.id);
    assert_ne!(a.secret().expose(), b.secret().expose());
    assert_ne!(a.secret().expose(), &[0; 32]);
    assert_ne!(random_salt().unwrap(), random_salt().unwrap());
}

#[test]
fn debug_shows_no_key_bytes() {
    let dk = DataKey::from_parts(
        DataKeyId(*b"0123456789abcdef"),
        Secret::new(std::array::from_fn(|i| 0xa0 + i as u8)),
    );
    let key_hex = hex::encode(dk.secret().expose());
    let keys = dk.object_keys(&salt(3));
    let digest_hex = hex::encode(keys.digest_key());
    let shown = [
        format!("{dk:?}"),
        format!("{dk:#?}"),
        format!("{:?}", dk.secret()),
        format!("{keys:?}"),
        format!("{:?}", Secret::new([0x5a; 32])),
    ];
    for s in &shown {
        for secret in [&key_hex, &digest_hex, &hex::encode([0x5a; 32])] {
            assert!(!s.contains(secret.as_str()), "{s}");
            // Nor as Rust's decimal byte list.
            assert!(!s.contains("160, 161, 162"), "{s}");
            assert!(!s.contains("90, 90, 90"), "{s}");
        }
    }
    assert_eq!(
        shown[0],
        format!("DataKey {{ id: DataKeyId({}), .. }}", dk.id)
    );
    assert_eq!(shown[2], "Secret(..)");
    assert_eq!(shown[3], "ObjectKeys(..)");
}

#[test]
fn data_key_ids_are_32_hex_digits() {
    let id = DataKeyId(std::array::from_fn(|i| i as u8 * 17));
    let s = id.to_string();
    assert_eq!(s, "00112233445566778899aabbccddeeff");
    assert_eq!(DataKeyId::parse(&s), Some(id));
    assert_eq!(DataKeyId::parse(&s.to_uppercase()), Some(id));
    for bad in [
        "",
        "0011",
        &format!("{s}00"),
        "zz112233445566778899aabbccddeeff",
    ] {
        assert_eq!(DataKeyId::parse(bad), None, "{bad}");
    }
}
