//! The self-describing object format.
//!
//! Every object walarchive stores starts with a fixed 64-byte header, so any object can be
//! decoded and verified with a single GET, whatever codec or version wrote it, and so
//! corruption (a truncated upload, a flipped bit, a foreign file dropped into the bucket) is
//! always detected on read instead of being replayed into a database:
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0  | 8  | magic `WALARCH\0` |
//! | 8  | 2  | format version (little-endian u16, currently 1) |
//! | 10 | 1  | codec: 0 none, 1 lz4 (block), 2 zstd (frame) |
//! | 11 | 1  | flags (0; reserved) |
//! | 12 | 4  | header length in bytes (64; later versions may append fields) |
//! | 16 | 8  | uncompressed length |
//! | 24 | 8  | body (compressed) length |
//! | 32 | 32 | digest: what it covers, and with which hash, depends on the version (below) |
//!
//! The body follows the header. A reader checks the magic, version, header length, body
//! length, decodes the body and compares length and digest before returning any byte.
//!
//! Three versions, one layout: they differ only in the digest.
//!
//! * Version 1: SHA-256 of the uncompressed content. Descriptors, manifests and backup
//!   labels, and WAL files archived before version 3.
//! * Version 2: SHA-256 of the body as stored, for base backup parts: every file in them
//!   already carries its own digest in the backup's manifest, checked on restore and by
//!   verification, so hashing the uncompressed parts as well was a second pass over every
//!   byte of the data directory (a large share of backup-push's and backup-fetch's CPU; see
//!   docs/benchmarks.md), where the body is a small fraction of it. A version-2 body is
//!   checked before it is decompressed: a damaged object never reaches the decoder.
//! * Version 3: BLAKE3 of the uncompressed content, for every file `wal-push` archives
//!   (segments, history files, backup history files, partial segments). WAL needs a digest of the
//!   content, not of the body: a re-pushed segment is compared with the stored one by
//!   content, whatever codec either was written with, and a segment pushed ahead or
//!   prefetched is checked against its digest on disk. SHA-256 of every segment was a large
//!   share of the archiver's CPU; BLAKE3 is several times faster on one core and as strong a
//!   hash, which made archiving faster (figures in docs/benchmarks.md, "Hashing and the
//!   object format").
//!
//! A reader that does not know a version refuses its objects as too new (upgrade
//! walarchive) instead of calling them corrupt: readers must be upgraded before writers
//! (a standby's restore_command before its primary's archive_command).
//!
//! # Binding: what an object is, not only what it holds
//!
//! A digest proves an object intact, not that it is the object its name says: segment
//! …57's intact object copied over …58's, or another cluster's …58, verified, and
//! PostgreSQL, handed it, ended recovery early and promoted with data missing. So every
//! object walarchive writes is *bound*: flag bit 0 (`0x01`) is set and the header goes on
//! after the 64 bytes (its length is in `header length`, which was made for this):
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 64 | 8 | the repository's system identifier (little-endian u64) |
//! | 72 | 2 | name length N (little-endian u16) |
//! | 74 | N | the object's name: its key relative to the repository root (UTF-8), e.g. `wal/00000001/00000000/000000010000000000000058` |
//! | 74 + N | 32 | BLAKE3 of the header's bytes 0 .. 74 + N |
//!
//! The header digest covers the whole header, the content digest at offset 32 included, so
//! name, cluster and content are bound together: an object read under another key, or in a
//! repository of another cluster, is refused as corrupt ([`FormatError::WrongName`],
//! [`FormatError::WrongSystem`]: the repository checks both on every read). The name is
//! relative, so a repository copied to another prefix or bucket stays valid. The body still
//! starts at `header length`, so readers that predate binding read bound objects as before
//! (without the new checks); objects written before binding (flag 0) stay readable with the
//! checks they allow (for WAL, the first page header is checked against the name and the
//! repository on every restore). A flag bit this build does not know is refused as too new.

use sha2::{Digest as _, Sha256};

use crate::codec::{self, CodecId, Compression, Pool};

/// Object magic.
pub const MAGIC: [u8; 8] = *b"WALARCH\0";
/// Format version whose digest is the SHA-256 of the uncompressed content (descriptors,
/// manifests, backup labels).
pub const FORMAT_VERSION: u16 = 1;
/// Format version whose digest is the SHA-256 of the body as stored (backup parts).
pub const FORMAT_VERSION_BODY_DIGEST: u16 = 2;
/// Format version whose digest is the BLAKE3 of the uncompressed content (WAL).
pub const FORMAT_VERSION_BLAKE3: u16 = 3;
/// Size of the fixed header; a bound object's header goes on after it.
pub const HEADER_LEN: usize = 64;
/// Flag bit: the header carries a [`Binding`] after the fixed 64 bytes.
pub const FLAG_BOUND: u8 = 0x01;
/// Longest header accepted (a bound object's name is at most this minus the fixed parts).
pub const MAX_HEADER_LEN: usize = 4096;
/// Bytes a binding adds to the header besides its name: system identifier, name length,
/// header digest.
const BINDING_FIXED: usize = 8 + 2 + 32;

/// What a bound object is: its name (key relative to the repository root) in the
/// repository of a cluster (see the module documentation).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Binding {
    /// The repository's system identifier.
    pub system_identifier: u64,
    /// The object's key relative to the repository root.
    pub name: String,
}

impl Binding {
    /// The binding of the object `name` in the repository of `system_identifier`.
    pub fn new(system_identifier: u64, name: &str) -> Binding {
        Binding {
            system_identifier,
            name: name.to_string(),
        }
    }

    /// The header length of an object bound so.
    fn header_len(&self) -> usize {
        HEADER_LEN + BINDING_FIXED + self.name.len()
    }
}

/// A 32-byte digest (SHA-256 or BLAKE3: see [`DigestKind`]).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// The SHA-256 of `data`.
    pub fn sha256(data: &[u8]) -> Self {
        Digest(Sha256::digest(data).into())
    }

    /// The BLAKE3 of `data`.
    pub fn blake3(data: &[u8]) -> Self {
        Digest(*blake3::hash(data).as_bytes())
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl std::fmt::Debug for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "digest:{self}")
    }
}

/// What an object's digest covers, and with which hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DigestKind {
    /// SHA-256 of the uncompressed content (version 1).
    Sha256,
    /// SHA-256 of the body as stored (version 2).
    Sha256OfBody,
    /// BLAKE3 of the uncompressed content (version 3).
    Blake3,
}

impl DigestKind {
    /// The kind of digest objects of format `version` carry (`None`: a version this build
    /// does not know).
    pub fn of_version(version: u16) -> Option<DigestKind> {
        match version {
            FORMAT_VERSION => Some(DigestKind::Sha256),
            FORMAT_VERSION_BODY_DIGEST => Some(DigestKind::Sha256OfBody),
            FORMAT_VERSION_BLAKE3 => Some(DigestKind::Blake3),
            _ => None,
        }
    }

    /// The format version whose objects carry this kind of digest.
    pub fn version(self) -> u16 {
        match self {
            DigestKind::Sha256 => FORMAT_VERSION,
            DigestKind::Sha256OfBody => FORMAT_VERSION_BODY_DIGEST,
            DigestKind::Blake3 => FORMAT_VERSION_BLAKE3,
        }
    }

    /// Whether the digest covers the uncompressed content (rather than the body).
    pub fn of_content(self) -> bool {
        self != DigestKind::Sha256OfBody
    }

    /// This kind's digest of `data` (the content or the body, as [`DigestKind::of_content`]
    /// says).
    pub fn digest(self, data: &[u8]) -> Digest {
        match self {
            DigestKind::Sha256 | DigestKind::Sha256OfBody => Digest::sha256(data),
            DigestKind::Blake3 => Digest::blake3(data),
        }
    }
}

impl std::fmt::Display for DigestKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DigestKind::Sha256 => "sha256",
            DigestKind::Sha256OfBody => "sha256 of the body",
            DigestKind::Blake3 => "blake3",
        })
    }
}

/// The parsed header of a stored object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectHeader {
    /// Format version.
    pub version: u16,
    /// Codec of the body.
    pub codec: CodecId,
    /// Header length (offset of the body).
    pub header_len: usize,
    /// Uncompressed content length.
    pub raw_len: u64,
    /// Body length.
    pub body_len: u64,
    /// The digest [`ObjectHeader::digest_kind`] says.
    pub digest: Digest,
    /// What the object is bound to (none for objects written before binding).
    pub binding: Option<Binding>,
}

/// Why bytes are not a valid walarchive object.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// Shorter than a header.
    #[error("object is {0} bytes, shorter than a walarchive header")]
    TooShort(usize),
    /// Magic mismatch: not written by walarchive.
    #[error("not a walarchive object (bad magic)")]
    BadMagic,
    /// A format version this build cannot read.
    #[error(
        "object format version {0} is newer than this walarchive understands (upgrade walarchive)"
    )]
    UnsupportedVersion(u16),
    /// Unknown codec byte.
    #[error("unknown codec byte {0}")]
    UnknownCodec(u8),
    /// Header length field out of range.
    #[error("invalid header length {0}")]
    BadHeaderLength(u32),
    /// The body is not as long as the header says: truncated or appended to.
    #[error("body is {actual} bytes but the header says {expected} (truncated object?)")]
    BodyLength {
        /// Header's body length.
        expected: u64,
        /// Actual body length.
        actual: u64,
    },
    /// The body does not decode.
    #[error(transparent)]
    Decode(#[from] codec::DecodeError),
    /// Flag bits this build does not know.
    #[error(
        "object flags 0x{0:02X} are newer than this walarchive understands (upgrade walarchive)"
    )]
    UnsupportedFlags(u8),
    /// A bound header whose own digest does not match: damaged (or altered) header.
    #[error("its header (name, system identifier, lengths, digest) fails its checksum: damaged or altered")]
    HeaderChecksum,
    /// A bound object read under another name than its own.
    #[error("it is the object of {stored}, stored under another name (copied or renamed?)")]
    WrongName {
        /// The name the object is bound to.
        stored: String,
    },
    /// A bound object of another cluster's repository.
    #[error("it belongs to the repository of system identifier {object}, but this repository's is {repository} (another cluster's object?)")]
    WrongSystem {
        /// The system identifier the object is bound to.
        object: u64,
        /// The repository's.
        repository: u64,
    },
    /// A bound object of another cluster than the data directory's it is fetched for (the
    /// identity was taken from the data directory's pg_control, not the descriptor: which
    /// cluster the repository holds is not known, so it is not claimed).
    #[error("it belongs to the repository of system identifier {object}, but the data directory {data_dir} is of system identifier {cluster} (global/pg_control): the wrong repository, or the wrong data directory?")]
    NotTheDataDirectorys {
        /// The system identifier the object is bound to.
        object: u64,
        /// The data directory's.
        cluster: u64,
        /// The data directory.
        data_dir: String,
    },
    /// Content that is not what its name says (a WAL segment whose page header disagrees with
    /// its name or the repository, a history file that does not parse).
    #[error("{0}")]
    Content(String),
    /// Checksum mismatch.
    #[error("checksum mismatch: header says {kind} {expected}, the object has {actual}")]
    Checksum {
        /// What the digest covers.
        kind: DigestKind,
        /// Header's digest.
        expected: Digest,
        /// Digest of the object's content (or body).
        actual: Digest,
    },
}

impl ObjectHeader {
    /// Parses and checks the header at the start of `buf`.
    pub fn parse(buf: &[u8]) -> Result<Self, FormatError> {
        if buf.len() < HEADER_LEN {
            return Err(FormatError::TooShort(buf.len()));
        }
        if buf[0..8] != MAGIC {
            return Err(FormatError::BadMagic);
        }
        let version = u16::from_le_bytes([buf[8], buf[9]]);
        if DigestKind::of_version(version).is_none() {
            return Err(FormatError::UnsupportedVersion(version));
        }
        let codec = CodecId::from_byte(buf[10]).ok_or(FormatError::UnknownCodec(buf[10]))?;
        let flags = buf[11];
        if flags & !FLAG_BOUND != 0 {
            return Err(FormatError::UnsupportedFlags(flags));
        }
        let header_len = u32::from_le_bytes(buf[12..16].try_into().expect("4 bytes"));
        if (header_len as usize) < HEADER_LEN || header_len as usize > MAX_HEADER_LEN {
            return Err(FormatError::BadHeaderLength(header_len));
        }
        let header_len = header_len as usize;
        let binding = if flags & FLAG_BOUND != 0 {
            Some(Self::parse_binding(buf, header_len)?)
        } else if header_len != HEADER_LEN {
            // No version ever wrote an unbound header of another length: a bound object
            // whose flag was damaged.
            return Err(FormatError::BadHeaderLength(header_len as u32));
        } else {
            None
        };
        Ok(ObjectHeader {
            version,
            codec,
            header_len,
            raw_len: u64::from_le_bytes(buf[16..24].try_into().expect("8 bytes")),
            body_len: u64::from_le_bytes(buf[24..32].try_into().expect("8 bytes")),
            digest: Digest(buf[32..64].try_into().expect("32 bytes")),
            binding,
        })
    }

    /// The binding after the fixed header of a bound object whose header is `header_len`
    /// bytes: its fields must fill the header exactly and its digest must match.
    fn parse_binding(buf: &[u8], header_len: usize) -> Result<Binding, FormatError> {
        if header_len < HEADER_LEN + BINDING_FIXED {
            return Err(FormatError::BadHeaderLength(header_len as u32));
        }
        if buf.len() < header_len {
            return Err(FormatError::TooShort(buf.len()));
        }
        let name_len = usize::from(u16::from_le_bytes([buf[72], buf[73]]));
        if HEADER_LEN + BINDING_FIXED + name_len != header_len {
            return Err(FormatError::BadHeaderLength(header_len as u32));
        }
        let covered = 74 + name_len;
        if *blake3::hash(&buf[..covered]).as_bytes() != buf[covered..header_len] {
            return Err(FormatError::HeaderChecksum);
        }
        let name = std::str::from_utf8(&buf[74..covered])
            .map_err(|_| FormatError::HeaderChecksum)?
            .to_string();
        Ok(Binding {
            system_identifier: u64::from_le_bytes(buf[64..72].try_into().expect("8 bytes")),
            name,
        })
    }

    /// What [`ObjectHeader::digest`] covers, and with which hash.
    pub fn digest_kind(&self) -> DigestKind {
        DigestKind::of_version(self.version).expect("parse accepts known versions only")
    }

    /// The `kind` digest (a content digest) of this object, whose verified content is
    /// `content`: the header's own when it is of that kind, computed otherwise (an object
    /// written with another hash).
    pub fn content_digest(&self, kind: DigestKind, content: &[u8]) -> Digest {
        debug_assert!(kind.of_content(), "{kind} does not cover the content");
        if self.digest_kind() == kind {
            self.digest
        } else {
            kind.digest(content)
        }
    }

    /// The header's bytes (`header_len` of them).
    fn to_bytes(&self) -> Vec<u8> {
        let mut h = vec![0u8; self.header_len];
        self.write_to(&mut h);
        h
    }

    /// Writes the header into `h`, which is `header_len` bytes long.
    fn write_to(&self, h: &mut [u8]) {
        debug_assert_eq!(h.len(), self.header_len);
        h[0..8].copy_from_slice(&MAGIC);
        h[8..10].copy_from_slice(&self.version.to_le_bytes());
        h[10] = self.codec as u8;
        h[11] = if self.binding.is_some() {
            FLAG_BOUND
        } else {
            0
        };
        h[12..16].copy_from_slice(&(self.header_len as u32).to_le_bytes());
        h[16..24].copy_from_slice(&self.raw_len.to_le_bytes());
        h[24..32].copy_from_slice(&self.body_len.to_le_bytes());
        h[32..64].copy_from_slice(&self.digest.0);
        if let Some(b) = &self.binding {
            let covered = 74 + b.name.len();
            h[64..72].copy_from_slice(&b.system_identifier.to_le_bytes());
            h[72..74].copy_from_slice(&(b.name.len() as u16).to_le_bytes());
            h[74..covered].copy_from_slice(b.name.as_bytes());
            let digest = blake3::hash(&h[..covered]);
            h[covered..].copy_from_slice(digest.as_bytes());
        }
    }

    /// The header length of an object bound by `binding` (or not).
    fn len_for(binding: Option<&Binding>) -> usize {
        binding.map_or(HEADER_LEN, Binding::header_len)
    }
}

/// An encoded object, ready to upload.
#[derive(Debug)]
pub struct EncodedObject {
    /// Header followed by body.
    pub bytes: Vec<u8>,
    /// The header written.
    pub header: ObjectHeader,
}

impl EncodedObject {
    /// Binds the object to the repository of `system_identifier` instead (its header is
    /// rewritten in place; a push learns a segment's cluster from its page header while the
    /// object is being encoded). No effect on an unbound object.
    pub fn set_system_identifier(&mut self, system_identifier: u64) {
        if let Some(b) = &mut self.header.binding {
            b.system_identifier = system_identifier;
            let len = self.header.header_len;
            self.header.write_to(&mut self.bytes[..len]);
        }
    }
}

/// Encodes `raw` with `compression` into a self-describing object of version 1 (SHA-256 of
/// the content), bound by `binding`: descriptors, manifests, backup labels.
pub fn encode(raw: &[u8], compression: Compression, binding: Option<&Binding>) -> EncodedObject {
    encode_as(raw, compression, DigestKind::Sha256, binding)
}

/// Encodes `raw` with `compression` into an object whose digest is of `kind`, bound by
/// `binding` (none: an object as written before binding, for tests of older repositories):
/// the version follows from the kind. [`DigestKind::Sha256OfBody`] is for content whose
/// integrity is also checked another way (the files of a backup part, each with its digest
/// in the manifest): it hashes the (small) compressed body instead of the content.
pub fn encode_as(
    raw: &[u8],
    compression: Compression,
    kind: DigestKind,
    binding: Option<&Binding>,
) -> EncodedObject {
    let version = kind.version();
    let content = kind.of_content().then(|| kind.digest(raw));
    compression.encode_then(raw, |body| {
        let digest = content.unwrap_or_else(|| kind.digest(body));
        assemble(raw.len(), compression, body, version, digest, binding)
    })
}

/// Header (with `digest` and `binding`) followed by `body`.
fn assemble(
    raw_len: usize,
    compression: Compression,
    body: &[u8],
    version: u16,
    digest: Digest,
    binding: Option<&Binding>,
) -> EncodedObject {
    let header_len = ObjectHeader::len_for(binding);
    let header = ObjectHeader {
        version,
        codec: compression.id(),
        header_len,
        raw_len: raw_len as u64,
        body_len: body.len() as u64,
        digest,
        binding: binding.cloned(),
    };
    let mut bytes = Vec::with_capacity(header_len + body.len());
    bytes.extend_from_slice(&header.to_bytes());
    bytes.extend_from_slice(body);
    EncodedObject { bytes, header }
}

/// Encodes content read from `reader`, which must yield exactly `len` bytes, with
/// `compression`, into an object of version 3 (BLAKE3 of the content): how WAL is stored.
///
/// zstd at level 1 (the default) streams the content through in chunks of `chunk.len()`
/// bytes, hashed and compressed as they come, with the level's own window (512 KiB): memory
/// per segment being encoded is one chunk, the window and the compressed object. At higher
/// levels, content up to 16 MiB (a default WAL segment, and every smaller segment size) is
/// read whole into a reused buffer, hashed, and compressed in one call; larger content
/// streams. At level 1 streaming costs little CPU against one call and saves the 16 MiB
/// read buffer per segment; at level 3 it costs more, so there one call is kept (figures in
/// docs/benchmarks.md, "Memory of wal-push and backups"). lz4's block format and
/// `none` need the whole content, which is read first. `first` sees the first chunk before
/// anything is hashed or encoded (to refuse a file early); an error from it is returned as
/// is.
///
/// The object is bound by `binding`; its header's space is reserved before the body is
/// written, so binding costs no copy of the object.
pub fn encode_reader<R: std::io::Read>(
    reader: &mut R,
    len: u64,
    compression: Compression,
    chunk: &mut [u8],
    binding: Option<&Binding>,
    first: impl FnOnce(&[u8]) -> std::io::Result<()>,
) -> std::io::Result<EncodedObject> {
    let one_shot_max = match compression {
        Compression::Zstd(level) if level <= STREAMED_LEVEL_MAX => 0,
        _ => ONE_SHOT_MAX,
    };
    encode_reader_up_to(
        reader,
        len,
        compression,
        chunk,
        binding,
        first,
        one_shot_max,
    )
}

/// zstd levels up to this one always stream (see [`encode_reader`]).
const STREAMED_LEVEL_MAX: i32 = 1;

/// [`encode_reader`], compressing content up to `one_shot_max` bytes in one call.
fn encode_reader_up_to<R: std::io::Read>(
    reader: &mut R,
    len: u64,
    compression: Compression,
    chunk: &mut [u8],
    binding: Option<&Binding>,
    first: impl FnOnce(&[u8]) -> std::io::Result<()>,
    one_shot_max: u64,
) -> std::io::Result<EncodedObject> {
    use std::io::{Error, ErrorKind};
    let changed = || {
        Error::new(
            ErrorKind::UnexpectedEof,
            "the file changed size while being read",
        )
    };
    let level = match compression {
        Compression::Zstd(level) if len > one_shot_max => level,
        _ => return encode_whole(reader, len, compression, chunk.len(), binding, first),
    };
    let read_full = |reader: &mut R, buf: &mut [u8]| -> std::io::Result<usize> {
        let mut n = 0;
        while n < buf.len() {
            match reader.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    };
    let header_len = ObjectHeader::len_for(binding);
    let mut out = Vec::with_capacity(header_len + (len as usize) / 8);
    out.resize(header_len, 0);
    let mut hasher = blake3::Hasher::new();
    let mut bytes = codec::zstd_stream(out, level, len, |encoder| {
        let mut total = 0u64;
        let mut first = Some(first);
        loop {
            let n = read_full(reader, chunk)?;
            if let Some(first) = first.take() {
                first(&chunk[..n])?;
            }
            if n == 0 {
                break;
            }
            total += n as u64;
            if total > len {
                return Err(changed());
            }
            hasher.update(&chunk[..n]);
            encoder.write_all(&chunk[..n])?;
            if n < chunk.len() {
                break;
            }
        }
        if total != len {
            return Err(changed());
        }
        Ok(())
    })?;
    // Grown by doubling while compressing: up to twice the object. Segments wait here for
    // an upload slot, several at a time, so each holds only its own size.
    bytes.shrink_to_fit();
    let header = ObjectHeader {
        version: FORMAT_VERSION_BLAKE3,
        codec: compression.id(),
        header_len,
        raw_len: len,
        body_len: (bytes.len() - header_len) as u64,
        digest: Digest(*hasher.finalize().as_bytes()),
        binding: binding.cloned(),
    };
    header.write_to(&mut bytes[..header_len]);
    Ok(EncodedObject { bytes, header })
}

/// Content up to this size is read whole and compressed in one call (see
/// [`encode_reader`]); larger content streams.
const ONE_SHOT_MAX: u64 = 16 << 20;

/// Read buffers of [`encode_whole`] (content up to [`ONE_SHOT_MAX`]), reused: as many as
/// segments were ever encoded at once.
static WHOLE_INPUTS: Pool<Vec<u8>> = Pool::new();

/// The path of [`encode_reader`] that reads the content whole (zstd up to the one-call
/// threshold, lz4 and none always), then encodes it with [`encode_as`]: the first
/// `head_len` bytes go to `first` before anything is hashed or encoded.
fn encode_whole<R: std::io::Read>(
    reader: &mut R,
    len: u64,
    compression: Compression,
    head_len: usize,
    binding: Option<&Binding>,
    first: impl FnOnce(&[u8]) -> std::io::Result<()>,
) -> std::io::Result<EncodedObject> {
    use std::io::{Error, ErrorKind, Read};
    // Only buffers of at most a default segment are kept for the next one.
    let pooled = len <= ONE_SHOT_MAX;
    let mut input = if pooled {
        WHOLE_INPUTS.take()
    } else {
        Vec::new()
    };
    let result = (|| {
        input.clear();
        input.reserve(len as usize + 1);
        reader.take(len + 1).read_to_end(&mut input)?;
        if input.len() as u64 != len {
            return Err(Error::new(
                ErrorKind::UnexpectedEof,
                "the file changed size while being read",
            ));
        }
        first(&input[..input.len().min(head_len)])?;
        Ok(encode_as(&input, compression, DigestKind::Blake3, binding))
    })();
    if pooled {
        WHOLE_INPUTS.give(input);
    }
    result
}

/// Decodes and verifies a whole stored object, returning its content.
pub fn decode(object: &[u8]) -> Result<(ObjectHeader, Vec<u8>), FormatError> {
    let header = ObjectHeader::parse(object)?;
    let body = &object[header.header_len.min(object.len())..];
    if body.len() as u64 != header.body_len {
        return Err(FormatError::BodyLength {
            expected: header.body_len,
            actual: body.len() as u64,
        });
    }
    let raw_len = usize::try_from(header.raw_len).map_err(|_| FormatError::BodyLength {
        expected: header.body_len,
        actual: body.len() as u64,
    })?;
    let kind = header.digest_kind();
    let check = |data: &[u8]| {
        let actual = kind.digest(data);
        if actual == header.digest {
            Ok(())
        } else {
            Err(FormatError::Checksum {
                kind,
                expected: header.digest,
                actual,
            })
        }
    };
    if !kind.of_content() {
        check(body)?;
        let raw = codec::decode(header.codec, body, raw_len)?;
        return Ok((header, raw));
    }
    let raw = codec::decode(header.codec, body, raw_len)?;
    check(&raw)?;
    Ok((header, raw))
}

#[cfg(test)]
mod tests;
