//! Client-side encryption: the keys and the sealing of object bodies
//! (docs/design/encryption.md, §2-§4).
//!
//! Why it is built this way:
//!
//! * **AES-256-GCM in the STREAM construction** (Hoang, Reyhanitabar, Rogaway, Vizár), byte
//!   for byte `aead::stream::StreamBE32`: the body is cut into chunks of [`CHUNK`] bytes of
//!   plaintext, chunk `i` is sealed under the nonce `prefix (7) || BE32(i) || last (1)`
//!   with the object's header as associated data, and its 16-byte tag follows it. A reordered,
//!   swapped, dropped or appended chunk, or a truncated body, fails authentication (the
//!   counter and the last-chunk flag are in the nonce); a header moved to another body
//!   fails too (the header is the AD). The unit tests prove the equality with the `aead`
//!   crate's own `EncryptorBE32`, which is not used here because it needs a buffer per chunk
//!   and a body is sealed **in place**: an object is whole in memory already (a backup
//!   part, a WAL segment), and encryption must add no second copy of it, only
//!   [`TAG`] bytes per chunk and O(1) working memory.
//! * **A key per object.** A [`DataKey`] (random, 32 bytes, named by a random
//!   [`DataKeyId`]) covers a backup or a WAL log directory; each object gets its own AES key
//!   and nonce prefix by HKDF-SHA256 from the data key and a random 32-byte salt stored in
//!   its header ([`DataKey::object_keys`]). A nonce is therefore never reused under one key,
//!   even if two objects shared a name or a counter went wrong; how data keys are wrapped by
//!   key-encryption keys is step 3 of the design, not this module.
//! * **Nothing secret leaks through `Debug`**: [`Secret`], [`DataKey`] and [`ObjectKeys`]
//!   print ids only, and key bytes are zeroed when dropped (`zeroize`; for the AES key
//!   schedule and the GHASH key inside the cipher, through the `zeroize` features of `aes`
//!   and `polyval` enabled in the workspace's `Cargo.toml`). Errors name chunks and lengths,
//!   never key or plaintext bytes.
//!
//! On failure [`open_in_place`] truncates the buffer to where the sealed body started, so a
//! caller can never hand on a half-opened body by mistake: no byte of plaintext is returned
//! before every chunk was authenticated.

use std::fmt;

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Key, Nonce, Tag};
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

/// Plaintext bytes per chunk (64 KiB: `chunk_log2 = 16` in a version-4 header). The tags
/// cost 16 bytes per chunk (0.024%).
pub const CHUNK: usize = 64 << 10;
/// `log2(CHUNK)`, as the header records it.
pub const CHUNK_LOG2: u8 = 16;
/// The chunk sizes a reader accepts (`chunk_log2` in 12..=24: 4 KiB to 16 MiB).
pub const CHUNK_LOG2_RANGE: std::ops::RangeInclusive<u8> = 12..=24;
/// The AES-GCM tag after each chunk.
pub const TAG: usize = 16;
/// The STREAM nonce prefix: 12-byte GCM nonce less the 4-byte counter and the last flag.
pub const NONCE_PREFIX: usize = 7;
/// The random salt of each object (stored in its header), from which its keys derive.
pub const SALT: usize = 32;

/// HKDF `info` of the AES key and nonce prefix of an object (version-4 format).
const INFO_OBJECT: &[u8] = b"walarchive object v4";
/// HKDF `info` of the key of an object's keyed content digest (version-4 format).
const INFO_DIGEST: &[u8] = b"walarchive digest v4";

/// What can go wrong sealing or opening a body. Never carries key or plaintext bytes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    /// A chunk's tag does not match: the chunk, the header it is bound to, or the order of
    /// the chunks was changed (tampering or damage), or the key is not the one it was
    /// sealed with.
    #[error("authentication failed (tampered or damaged) at chunk {chunk}")]
    Unauthenticated {
        /// The chunk, counted from 0.
        chunk: u64,
    },
    /// The sealed body's length is not one a body of any length seals to (a chunk was cut
    /// short, or the body is empty although even an empty body has one tag).
    #[error(
        "sealed body of {len} bytes is truncated or malformed (not the length of any sealed body in chunks of {chunk} bytes)"
    )]
    BadLength {
        /// The sealed body's length.
        len: u64,
        /// The chunk size it was read with.
        chunk: u64,
    },
    /// More chunks than the 32-bit STREAM counter can number (256 TiB at 64 KiB chunks).
    #[error("body of {len} bytes has more chunks than the STREAM counter allows")]
    TooLong {
        /// The body's length.
        len: u64,
    },
    /// A chunk size outside the accepted range ([`CHUNK_LOG2_RANGE`]).
    #[error("chunk size 2^{0} is not supported (2^12 to 2^24)")]
    ChunkSize(u8),
    /// The operating system's random source failed.
    #[error("no random bytes from the operating system: {0}")]
    Random(String),
}

/// A 256-bit secret key. `Debug` prints `Secret(..)`; the bytes are zeroed on drop.
#[derive(Clone)]
pub struct Secret(Zeroizing<[u8; 32]>);

impl Secret {
    /// Wraps key bytes (from a key source, an unwrapped data key, or the random source).
    pub fn new(bytes: [u8; 32]) -> Secret {
        Secret(Zeroizing::new(bytes))
    }

    /// The key bytes, for the code that derives from or wraps with it.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// The name of a data key: 16 random bytes, shown as 32 lowercase hex digits (the key
/// object `keys/<hex>` and the header of every object sealed with it carry it). Not secret.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DataKeyId(pub [u8; 16]);

impl DataKeyId {
    /// Parses 32 hex digits (either case).
    pub fn parse(s: &str) -> Option<DataKeyId> {
        let mut id = [0u8; 16];
        hex::decode_to_slice(s, &mut id).ok()?;
        Some(DataKeyId(id))
    }
}

impl fmt::Display for DataKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for DataKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DataKeyId({self})")
    }
}

/// A data key: the secret from which the keys of every object of one scope (a backup, a WAL
/// log directory, the history files) derive. `Debug` shows its id only.
#[derive(Clone)]
pub struct DataKey {
    /// Its name.
    pub id: DataKeyId,
    key: Secret,
}

impl DataKey {
    /// A fresh data key with a fresh id, both from the operating system's random source.
    pub fn generate() -> Result<DataKey, CryptoError> {
        let mut id = [0u8; 16];
        fill_random(&mut id)?;
        let mut key = Secret::new([0u8; 32]);
        fill_random(&mut key.0[..])?;
        Ok(DataKey {
            id: DataKeyId(id),
            key,
        })
    }

    /// A data key from its id and bytes (an unwrapped key object).
    pub fn from_parts(id: DataKeyId, key: Secret) -> DataKey {
        DataKey { id, key }
    }

    /// The secret itself, for wrapping it under a key-encryption key.
    pub fn secret(&self) -> &Secret {
        &self.key
    }

    /// The keys of the object whose header carries `salt`: HKDF-SHA256 (RFC 5869) with the
    /// data key as input key material and the salt as salt; `"walarchive object v4"` gives
    /// the AES-256 key and the 7-byte nonce prefix (39 bytes), `"walarchive digest v4"` the
    /// key of the object's keyed BLAKE3 content digest.
    pub fn object_keys(&self, salt: &[u8; SALT]) -> ObjectKeys {
        let hk = Hkdf::<Sha256>::new(Some(salt), self.key.expose());
        let mut okm = Zeroizing::new([0u8; 32 + NONCE_PREFIX]);
        hk.expand(INFO_OBJECT, &mut okm[..])
            .expect("39 bytes is far below HKDF-SHA256's 8160-byte limit");
        let mut digest_key = Zeroizing::new([0u8; 32]);
        hk.expand(INFO_DIGEST, &mut digest_key[..])
            .expect("32 bytes is far below HKDF-SHA256's 8160-byte limit");
        let aead = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&okm[..32]));
        let mut prefix = [0u8; NONCE_PREFIX];
        prefix.copy_from_slice(&okm[32..]);
        ObjectKeys {
            aead,
            prefix,
            digest_key: Secret(digest_key),
        }
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// A fresh random salt for an object's header.
pub fn random_salt() -> Result<[u8; SALT], CryptoError> {
    let mut salt = [0u8; SALT];
    fill_random(&mut salt)?;
    Ok(salt)
}

fn fill_random(buf: &mut [u8]) -> Result<(), CryptoError> {
    getrandom::getrandom(buf).map_err(|e| CryptoError::Random(e.to_string()))
}

/// The keys of one object, derived by [`DataKey::object_keys`]. `Debug` shows nothing.
pub struct ObjectKeys {
    aead: Aes256Gcm,
    prefix: [u8; NONCE_PREFIX],
    digest_key: Secret,
}

impl ObjectKeys {
    /// The key of the object's keyed content digest (`blake3::keyed_hash`).
    pub fn digest_key(&self) -> &[u8; 32] {
        self.digest_key.expose()
    }

    /// The GCM nonce of chunk `i`: `prefix || BE32(i) || last`, as `StreamBE32` builds it.
    fn nonce(&self, i: u32, last: bool) -> Nonce<<Aes256Gcm as aes_gcm::AeadCore>::NonceSize> {
        let mut n = [0u8; 12];
        n[..NONCE_PREFIX].copy_from_slice(&self.prefix);
        n[NONCE_PREFIX..11].copy_from_slice(&i.to_be_bytes());
        n[11] = u8::from(last);
        Nonce::from(n)
    }
}

impl fmt::Debug for ObjectKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ObjectKeys(..)")
    }
}

/// How many chunks a body of `len` bytes is sealed in: at least one (an empty body is one
/// empty last chunk).
fn chunks(len: usize, chunk: usize) -> usize {
    len.div_ceil(chunk).max(1)
}

/// The length a body of `body_len` bytes seals to at [`CHUNK`]-byte chunks:
/// `body_len + 16 * max(1, ceil(body_len / 64 KiB))`.
pub fn sealed_len(body_len: usize) -> usize {
    sealed_len_chunked(body_len, CHUNK)
}

fn sealed_len_chunked(body_len: usize, chunk: usize) -> usize {
    body_len + TAG * chunks(body_len, chunk)
}

/// The length of the body a sealed body of `sealed` bytes opens to, or `None` if no body
/// seals to that length at chunks of `2^chunk_log2` bytes.
pub fn opened_len(sealed: usize, chunk_log2: u8) -> Option<usize> {
    opened_len_chunked(sealed, 1usize << chunk_log2)
}

fn opened_len_chunked(sealed: usize, chunk: usize) -> Option<usize> {
    if sealed < TAG {
        return None;
    }
    let n = sealed.div_ceil(chunk + TAG);
    let body = sealed - n * TAG;
    // The last chunk holds 1..=chunk bytes, or 0 if it is the only one.
    (chunks(body, chunk) == n && sealed_len_chunked(body, chunk) == sealed).then_some(body)
}

/// Seals `buf[start..]` (a compressed body) in place at [`CHUNK`]-byte chunks, with `ad`
/// (the object's whole header) as associated data of every chunk. The `Vec` grows by the
/// tags (reserve [`sealed_len`] beforehand and it does not reallocate); the chunks are moved
/// into place back to front, so no second buffer is used.
pub fn seal_in_place(
    keys: &ObjectKeys,
    ad: &[u8],
    buf: &mut Vec<u8>,
    start: usize,
) -> Result<(), CryptoError> {
    seal_chunked(keys, ad, buf, start, CHUNK)
}

/// Opens `buf[start..]`, sealed at chunks of `2^chunk_log2` bytes ([`CHUNK_LOG2`] for
/// everything walarchive writes), in place, front to back, and truncates the `Vec` to the
/// plaintext. On error the `Vec` is truncated to `start`: nothing unauthenticated remains.
pub fn open_in_place(
    keys: &ObjectKeys,
    ad: &[u8],
    buf: &mut Vec<u8>,
    start: usize,
    chunk_log2: u8,
) -> Result<(), CryptoError> {
    if !CHUNK_LOG2_RANGE.contains(&chunk_log2) {
        return Err(CryptoError::ChunkSize(chunk_log2));
    }
    open_chunked(keys, ad, buf, start, 1usize << chunk_log2)
}

fn seal_chunked(
    keys: &ObjectKeys,
    ad: &[u8],
    buf: &mut Vec<u8>,
    start: usize,
    chunk: usize,
) -> Result<(), CryptoError> {
    let len = buf.len() - start;
    let n = chunks(len, chunk);
    let last_index = u32::try_from(n - 1).map_err(|_| CryptoError::TooLong { len: len as u64 })?;
    buf.resize(start + sealed_len_chunked(len, chunk), 0);
    for i in (0..n).rev() {
        let from = start + i * chunk;
        let plain = if i + 1 == n { len - i * chunk } else { chunk };
        let to = start + i * (chunk + TAG);
        buf.copy_within(from..from + plain, to);
        let nonce = keys.nonce(i as u32, i as u32 == last_index);
        let tag = keys
            .aead
            .encrypt_in_place_detached(&nonce, ad, &mut buf[to..to + plain])
            // aes-gcm refuses only messages over 64 GiB: a chunk is at most 16 MiB.
            .expect("a chunk is far below AES-GCM's length limit");
        buf[to + plain..to + plain + TAG].copy_from_slice(&tag);
    }
    Ok(())
}

fn open_chunked(
    keys: &ObjectKeys,
    ad: &[u8],
    buf: &mut Vec<u8>,
    start: usize,
    chunk: usize,
) -> Result<(), CryptoError> {
    let result = open_chunks(keys, ad, buf, start, chunk);
    match result {
        Ok(len) => buf.truncate(start + len),
        Err(_) => buf.truncate(start),
    }
    result.map(|_| ())
}

fn open_chunks(
    keys: &ObjectKeys,
    ad: &[u8],
    buf: &mut [u8],
    start: usize,
    chunk: usize,
) -> Result<usize, CryptoError> {
    let sealed = buf.len() - start;
    let len = opened_len_chunked(sealed, chunk).ok_or(CryptoError::BadLength {
        len: sealed as u64,
        chunk: chunk as u64,
    })?;
    let n = chunks(len, chunk);
    let last_index = u32::try_from(n - 1).map_err(|_| CryptoError::TooLong { len: len as u64 })?;
    for i in 0..n {
        let from = start + i * (chunk + TAG);
        let plain = if i + 1 == n { len - i * chunk } else { chunk };
        let tag = Tag::clone_from_slice(&buf[from + plain..from + plain + TAG]);
        let nonce = keys.nonce(i as u32, i as u32 == last_index);
        keys.aead
            .decrypt_in_place_detached(&nonce, ad, &mut buf[from..from + plain], &tag)
            .map_err(|_| CryptoError::Unauthenticated { chunk: i as u64 })?;
        buf.copy_within(from..from + plain, start + i * chunk);
    }
    Ok(len)
}

#[cfg(test)]
mod tests;
