//! The lzop container, as wal-e (`lzop --stdout`) and old wal-g wrote every object.
//!
//! lzop's own checks are the only integrity wal-e's objects carry (the store keeps no digest),
//! so every one of them is enforced: the header checksum (adler32, or crc32 with `H_CRC32`),
//! each block's checksum of its uncompressed data (adler32 by default, crc32 with `--crc32`),
//! the checksum of the compressed data where the writer asked for one, the LZO stream's own
//! consistency and the block lengths, and the end marker (a file cut at a block boundary is
//! refused, not taken for a shorter one). Bytes after the end marker are refused too.
//!
//! What lzop cannot detect: a whole object replaced by another valid lzop file (names are not
//! bound: for WAL, walarchive's page-header check against the name catches it), and, in a file
//! written with `lzop -F` (no data checksums; wal-e never does), any damage inside a stored
//! block or an LZO stream damage that still decodes to the right length. Every single-byte
//! change of a default file is detected (the tests flip every byte of a fixture).
//!
//! Memory is bounded: blocks are decoded one at a time, and a block length above lzop's own
//! maximum (64 MiB) is refused before anything is allocated; the compressed bytes are read
//! as they arrive, so a damaged length on a short file allocates only what the file holds.
//! LZO1X is decoded by the `lzo` crate (bounds-checked, no `unsafe`, output capped by the
//! block's length); `lzokay-native`, which the design first named, indexes and subtracts
//! with unchecked values from the stream and does not bound its output, so a damaged block
//! could panic it or make it grow without limit.
//!
//! Layout (big-endian): magic, version, library version, version needed (≥ 0.940), method,
//! level (≥ 0.940), flags, filter (if `H_FILTER`), mode, mtime low, mtime high (≥ 0.940),
//! name length and name, header checksum; then blocks `ulen, clen, [d-checksums],
//! [c-checksums if clen < ulen], data` until `ulen == 0`.

use std::io::{self, Read};

use super::LegacyError;

/// lzop's magic.
pub const MAGIC: [u8; 9] = [0x89, 0x4c, 0x5a, 0x4f, 0x00, 0x0d, 0x0a, 0x1a, 0x0a];

/// lzop's largest block (`MAX_BLOCK_SIZE`): no lzop ever wrote a longer one.
pub const MAX_BLOCK: u32 = 64 * 1024 * 1024;

/// The newest format this reader (and lzop 1.04, the last release) knows.
const LZOP_VERSION: u16 = 0x1040;

const F_ADLER32_D: u32 = 0x0000_0001;
const F_ADLER32_C: u32 = 0x0000_0002;
const F_H_EXTRA_FIELD: u32 = 0x0000_0040;
const F_CRC32_D: u32 = 0x0000_0100;
const F_CRC32_C: u32 = 0x0000_0200;
const F_H_FILTER: u32 = 0x0000_0800;
const F_H_CRC32: u32 = 0x0000_1000;
/// lzop's `F_MASK | F_OS_MASK | F_CS_MASK`: any other bit is reserved.
const F_KNOWN: u32 = 0x0000_3fff | 0xff00_0000 | 0x00f0_0000;

/// lzop's methods that are LZO1X (1X-1, 1X-1(15), 1X-999): one decoder reads them all.
const LZO1X_METHODS: [u8; 3] = [1, 2, 3];

fn corrupt(block: Option<u64>, what: impl Into<String>) -> LegacyError {
    LegacyError::Corrupt {
        block,
        what: what.into(),
    }
}

fn crc32(data: &[u8]) -> u32 {
    crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32IsoHdlc, data) as u32
}

fn adler32(data: &[u8]) -> u32 {
    let mut h = adler32::RollingAdler32::new();
    h.update_buffer(data);
    h.hash()
}

/// Reads exactly `buf.len()` bytes; a short read is `what` of `block` being truncated.
fn read_exact<R: Read>(
    r: &mut R,
    buf: &mut [u8],
    block: Option<u64>,
    what: &str,
) -> Result<(), LegacyError> {
    r.read_exact(buf).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            corrupt(block, format!("truncated in {what}"))
        } else {
            LegacyError::Io(e)
        }
    })
}

/// The fields of an lzop header this reader acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The lzop version that wrote the file.
    pub version: u16,
    /// 1, 2 or 3: LZO1X-1, LZO1X-1(15), LZO1X-999.
    pub method: u8,
    /// The flags word (checksums, OS, character set).
    pub flags: u32,
}

/// Reads one header from `r`, checks its checksum, and records what it hashed.
struct HeaderReader<'a, R> {
    inner: &'a mut R,
    hashed: Vec<u8>,
}

impl<R: Read> HeaderReader<'_, R> {
    fn bytes<const N: usize>(&mut self, what: &str) -> Result<[u8; N], LegacyError> {
        let mut b = [0u8; N];
        read_exact(self.inner, &mut b, None, what)?;
        self.hashed.extend_from_slice(&b);
        Ok(b)
    }
    fn u8(&mut self, what: &str) -> Result<u8, LegacyError> {
        Ok(self.bytes::<1>(what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16, LegacyError> {
        Ok(u16::from_be_bytes(self.bytes(what)?))
    }
    fn u32(&mut self, what: &str) -> Result<u32, LegacyError> {
        Ok(u32::from_be_bytes(self.bytes(what)?))
    }
}

fn read_header<R: Read>(inner: &mut R) -> Result<Header, LegacyError> {
    let mut magic = [0u8; 9];
    read_exact(inner, &mut magic, None, "the magic")?;
    if magic != MAGIC {
        return Err(corrupt(None, "not an lzop file (bad magic)"));
    }
    let mut h = HeaderReader {
        inner,
        hashed: Vec::with_capacity(64),
    };
    let version = h.u16("the version")?;
    let _lib_version = h.u16("the library version")?;
    if version >= 0x0940 {
        let needed = h.u16("the version needed")?;
        if needed > LZOP_VERSION {
            return Err(LegacyError::Unsupported(format!(
                "needs lzop version {needed:#06x} to extract"
            )));
        }
    }
    let method = h.u8("the method")?;
    if version >= 0x0940 {
        let _level = h.u8("the level")?;
    }
    let flags = h.u32("the flags")?;
    if flags & F_H_FILTER != 0 {
        let _filter = h.u32("the filter")?;
    }
    let _mode = h.u32("the mode")?;
    let _mtime_low = h.u32("the mtime")?;
    if version >= 0x0940 {
        let _mtime_high = h.u32("the mtime")?;
    }
    let name_len = h.u8("the name length")?;
    let mut name = vec![0u8; usize::from(name_len)];
    read_exact(h.inner, &mut name, None, "the name")?;
    h.hashed.extend_from_slice(&name);

    let mut stored = [0u8; 4];
    read_exact(h.inner, &mut stored, None, "the header checksum")?;
    let stored = u32::from_be_bytes(stored);
    let (kind, actual) = if flags & F_H_CRC32 != 0 {
        ("crc32", crc32(&h.hashed))
    } else {
        ("adler32", adler32(&h.hashed))
    };
    if stored != actual {
        return Err(corrupt(
            None,
            format!("{kind} checksum mismatch (stored {stored:08x}, computed {actual:08x})"),
        ));
    }
    // Checked only once the checksum vouches for the fields: a damaged field is "corrupt",
    // a genuine one we cannot read is "unsupported".
    if version < 0x0900 {
        return Err(LegacyError::Unsupported(format!(
            "lzop version {version:#06x} (before 0.90)"
        )));
    }
    if !LZO1X_METHODS.contains(&method) {
        return Err(LegacyError::Unsupported(format!(
            "compression method {method}"
        )));
    }
    if flags & !F_KNOWN != 0 {
        return Err(LegacyError::Unsupported(format!(
            "reserved flag bits {:#010x}",
            flags & !F_KNOWN
        )));
    }
    if flags & F_H_FILTER != 0 {
        return Err(LegacyError::Unsupported("a filter".into()));
    }
    if flags & F_H_EXTRA_FIELD != 0 {
        return Err(LegacyError::Unsupported("an extra header field".into()));
    }
    Ok(Header {
        version,
        method,
        flags,
    })
}

/// Decodes an lzop file block by block: an [`io::Read`] of the original bytes in bounded
/// memory (one block, at most 64 MiB; wal-e's are 256 KiB).
///
/// A failed check is returned by `read` as an [`io::ErrorKind::InvalidData`] error holding a
/// [`LegacyError`] ([`LegacyError::from_io`] recovers it). Nothing is returned from a block
/// before all of its checks have passed.
pub struct LzopReader<R> {
    inner: R,
    header: Header,
    /// The next block's index.
    block: u64,
    /// The current block's decoded bytes, and how many were returned.
    out: Vec<u8>,
    pos: usize,
    /// The current block's compressed bytes.
    compressed: Vec<u8>,
    done: bool,
    /// A check failed: every later read fails too (never a clean end after an error).
    failed: bool,
}

impl<R: Read> LzopReader<R> {
    /// Reads and checks the header.
    pub fn new(mut inner: R) -> Result<Self, LegacyError> {
        let header = read_header(&mut inner)?;
        Ok(LzopReader {
            inner,
            header,
            block: 0,
            out: Vec::new(),
            pos: 0,
            compressed: Vec::new(),
            done: false,
            failed: false,
        })
    }

    /// The file's header.
    pub fn header(&self) -> Header {
        self.header
    }

    fn u32(&mut self, what: &str) -> Result<u32, LegacyError> {
        let mut b = [0u8; 4];
        read_exact(&mut self.inner, &mut b, Some(self.block), what)?;
        Ok(u32::from_be_bytes(b))
    }

    /// Decodes and checks the next block into `self.out`; `Ok(false)` at the end marker.
    fn next_block(&mut self) -> Result<bool, LegacyError> {
        let block = Some(self.block);
        let flags = self.header.flags;
        let mut first = [0u8; 4];
        let n = read_full(&mut self.inner, &mut first)?;
        if n < 4 {
            return Err(corrupt(block, "truncated: no end marker"));
        }
        let ulen = u32::from_be_bytes(first);
        if ulen == 0 {
            let mut extra = [0u8; 1];
            if read_full(&mut self.inner, &mut extra)? != 0 {
                return Err(corrupt(block, "bytes after the end marker"));
            }
            return Ok(false);
        }
        if ulen > MAX_BLOCK {
            return Err(corrupt(
                block,
                format!("block length {ulen} exceeds lzop's maximum of {MAX_BLOCK}"),
            ));
        }
        let clen = self.u32("the compressed length")?;
        if clen > ulen {
            return Err(corrupt(
                block,
                format!("compressed length {clen} exceeds the block length {ulen}"),
            ));
        }
        let adler_d = (flags & F_ADLER32_D != 0)
            .then(|| self.u32("the checksum"))
            .transpose()?;
        let crc_d = (flags & F_CRC32_D != 0)
            .then(|| self.u32("the checksum"))
            .transpose()?;
        let compressed = clen < ulen;
        let adler_c = (compressed && flags & F_ADLER32_C != 0)
            .then(|| self.u32("the checksum"))
            .transpose()?;
        let crc_c = (compressed && flags & F_CRC32_C != 0)
            .then(|| self.u32("the checksum"))
            .transpose()?;

        // Read as the bytes arrive: a damaged clen on a short file allocates only what is there.
        self.compressed.clear();
        (&mut self.inner)
            .take(u64::from(clen))
            .read_to_end(&mut self.compressed)?;
        if self.compressed.len() != clen as usize {
            return Err(corrupt(block, "truncated in the block's data"));
        }
        check(block, "adler32 of compressed data", adler_c, || {
            adler32(&self.compressed)
        })?;
        check(block, "crc32 of compressed data", crc_c, || {
            crc32(&self.compressed)
        })?;

        if compressed {
            self.out.clear();
            self.out.resize(ulen as usize, 0);
            let n = lzo::decompress_into(&self.compressed, &mut self.out)
                .map_err(|e| corrupt(block, format!("LZO data does not decode ({e})")))?;
            if n != ulen as usize {
                return Err(corrupt(
                    block,
                    format!("LZO data decodes to {n} bytes, the block header says {ulen}"),
                ));
            }
        } else {
            // Stored: lzop keeps incompressible blocks as they are.
            std::mem::swap(&mut self.out, &mut self.compressed);
        }
        check(block, "adler32 of uncompressed data", adler_d, || {
            adler32(&self.out)
        })?;
        check(block, "crc32 of uncompressed data", crc_d, || {
            crc32(&self.out)
        })?;
        self.pos = 0;
        self.block += 1;
        Ok(true)
    }
}

/// Reads until `buf` is full or the stream ends; the count read.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<usize, LegacyError> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(LegacyError::Io(e)),
        }
    }
    Ok(n)
}

fn check(
    block: Option<u64>,
    what: &str,
    stored: Option<u32>,
    actual: impl FnOnce() -> u32,
) -> Result<(), LegacyError> {
    match stored {
        Some(stored) => {
            let actual = actual();
            if stored == actual {
                Ok(())
            } else {
                Err(corrupt(
                    block,
                    format!("{what} mismatch (stored {stored:08x}, computed {actual:08x})"),
                ))
            }
        }
        None => Ok(()),
    }
}

impl<R: Read> Read for LzopReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.out.len() {
            if self.done || buf.is_empty() {
                return Ok(0);
            }
            if self.failed {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "an earlier lzop block failed its checks",
                ));
            }
            let more = self.next_block().inspect_err(|_| self.failed = true)?;
            if !more {
                self.done = true;
                self.out.clear();
                self.pos = 0;
                return Ok(0);
            }
        }
        let n = buf.len().min(self.out.len() - self.pos);
        buf[..n].copy_from_slice(&self.out[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Decodes a whole lzop file held in memory (a WAL segment, a history file), every check
/// included.
pub fn decode_all(bytes: &[u8]) -> Result<Vec<u8>, LegacyError> {
    let mut reader = LzopReader::new(bytes)?;
    let mut out = Vec::new();
    while reader.next_block()? {
        out.extend_from_slice(&reader.out);
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
