//! Compression codecs, and the reused zstd contexts and buffers that encode objects.
//!
//! WAL compresses well and cheaply, and the network is usually the bottleneck, so every
//! object is compressed by default. The codec is recorded in each object's header rather
//! than in its name or in configuration, so changing the setting never strands old objects:
//! a reader always decodes with whatever codec wrote the object.

use std::fmt;
use std::str::FromStr;

/// Default zstd level. Level 1 was chosen by `cargo bench --bench wal_push`: on real
/// pgbench WAL it compresses within a few percent of level 3 at noticeably higher speed
/// (see the codec table in docs/benchmarks.md).
pub const DEFAULT_ZSTD_LEVEL: i32 = 1;

/// A compression codec with its level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// Stored as is.
    None,
    /// LZ4 block format: the fastest, least compact.
    Lz4,
    /// Zstandard at the given level (1..=22).
    Zstd(i32),
}

impl Default for Compression {
    fn default() -> Self {
        Compression::Zstd(DEFAULT_ZSTD_LEVEL)
    }
}

/// The codec byte stored in object headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum CodecId {
    /// No compression.
    None = 0,
    /// LZ4 block format.
    Lz4 = 1,
    /// Zstandard frame.
    Zstd = 2,
}

impl CodecId {
    /// The codec for a header byte, if known.
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            0 => Some(CodecId::None),
            1 => Some(CodecId::Lz4),
            2 => Some(CodecId::Zstd),
            _ => None,
        }
    }

    /// Lower-case name, as in configuration.
    pub fn name(self) -> &'static str {
        match self {
            CodecId::None => "none",
            CodecId::Lz4 => "lz4",
            CodecId::Zstd => "zstd",
        }
    }
}

/// A codec name or level that walarchive does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown compression {0:?} (expected zstd, zstd:LEVEL with LEVEL 1-22, lz4 or none)")]
pub struct CompressionParseError(pub String);

/// A body that does not decode with its codec.
#[derive(Debug, thiserror::Error)]
#[error("{codec} body does not decode: {reason}")]
pub struct DecodeError {
    /// Codec named by the header.
    pub codec: &'static str,
    /// What went wrong.
    pub reason: String,
}

impl Compression {
    /// The codec byte for object headers.
    pub fn id(self) -> CodecId {
        match self {
            Compression::None => CodecId::None,
            Compression::Lz4 => CodecId::Lz4,
            Compression::Zstd(_) => CodecId::Zstd,
        }
    }

    /// A codec with an explicit level; the level only matters for zstd.
    pub fn with_level(self, level: Option<i32>) -> Result<Self, CompressionParseError> {
        match (self, level) {
            (Compression::Zstd(_), Some(l)) if (1..=22).contains(&l) => Ok(Compression::Zstd(l)),
            (Compression::Zstd(_), Some(l)) => Err(CompressionParseError(format!("zstd:{l}"))),
            (c, _) => Ok(c),
        }
    }

    /// Compresses `raw`.
    pub fn encode(self, raw: &[u8]) -> Vec<u8> {
        match self {
            Compression::None => raw.to_vec(),
            Compression::Lz4 => lz4_flex::block::compress(raw),
            Compression::Zstd(level) => {
                // Compressing an in-memory buffer cannot fail for a valid level.
                zstd::bulk::compress(raw, level).expect("zstd compression of a memory buffer")
            }
        }
    }

    /// Compresses `raw` and hands the body to `then`. zstd compresses with a pooled
    /// context into a pooled buffer (no allocation per object); the others into a new buffer.
    pub fn encode_then<T>(self, raw: &[u8], then: impl FnOnce(&[u8]) -> T) -> T {
        match self {
            Compression::Zstd(level) => with_zstd_body(raw, level, then)
                // Compressing an in-memory buffer cannot fail for a valid level.
                .expect("zstd compression of a memory buffer"),
            other => then(&other.encode(raw)),
        }
    }
}

/// Decompresses `body` written by `codec`, expecting exactly `raw_len` bytes.
pub fn decode(codec: CodecId, body: &[u8], raw_len: usize) -> Result<Vec<u8>, DecodeError> {
    let fail = |reason: String| DecodeError {
        codec: codec.name(),
        reason,
    };
    let out = match codec {
        CodecId::None => body.to_vec(),
        CodecId::Lz4 => {
            lz4_flex::block::decompress(body, raw_len).map_err(|e| fail(e.to_string()))?
        }
        CodecId::Zstd => zstd::bulk::decompress(body, raw_len).map_err(|e| fail(e.to_string()))?,
    };
    if out.len() != raw_len {
        return Err(fail(format!(
            "decoded {} bytes, header says {raw_len}",
            out.len()
        )));
    }
    Ok(out)
}

/// Compresses `raw` with zstd at `level` in one call, with a pooled context into a pooled
/// buffer, and hands the body to `then`. Allocating a context and a buffer of the
/// compression bound per object (what `zstd::bulk` does) left the allocator holding freed
/// blocks of every thread that ever compressed: backup-push's peak RSS was 10 MiB above its
/// part buffers.
fn with_zstd_body<T>(raw: &[u8], level: i32, then: impl FnOnce(&[u8]) -> T) -> std::io::Result<T> {
    let mut body = ZSTD_BODIES.take();
    let result = (|| {
        let mut ctx = ZstdContext::take();
        let cctx = ctx.get();
        let zstd_err = |code| std::io::Error::other(zstd::zstd_safe::get_error_name(code));
        cctx.set_parameter(zstd::zstd_safe::CParameter::CompressionLevel(level))
            .map_err(zstd_err)?;
        cctx.set_parameter(zstd::zstd_safe::CParameter::ContentSizeFlag(true))
            .map_err(zstd_err)?;
        body.clear();
        body.reserve(zstd::zstd_safe::compress_bound(raw.len()));
        cctx.compress2(&mut body, raw).map_err(zstd_err)?;
        Ok(then(&body))
    })();
    ZSTD_BODIES.give(body);
    result
}

/// Compression buffers of [`with_zstd_body`], reused: as many as objects were ever
/// compressed at once.
static ZSTD_BODIES: Pool<Vec<u8>> = Pool::new();

/// Values (buffers, compression contexts) reused from one object to the next: a pool keeps
/// as many as were ever in use at once, instead of leaving the allocator to keep what each
/// thread freed.
pub(crate) struct Pool<T>(std::sync::Mutex<Vec<T>>);

impl<T: Default> Pool<T> {
    pub(crate) const fn new() -> Pool<T> {
        Pool(std::sync::Mutex::new(Vec::new()))
    }

    /// A pooled value, or a new one.
    pub(crate) fn take(&self) -> T {
        let mut pooled = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        pooled.pop().unwrap_or_default()
    }

    pub(crate) fn give(&self, value: T) {
        let mut pooled = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        pooled.push(value);
    }
}

/// A zstd compression context, taken from a pool and given back when dropped.
///
/// A context holds the level's tables and, streaming, its window, allocated on first use.
/// Creating one per segment had the allocator keep those freed blocks around in its
/// per-thread arenas (when streams used a 16 MiB window, a daemon's peak RSS rose from 69 to
/// 153 MiB); reusing contexts (and the encoders' buffers) keeps exactly as many as
/// segments were ever compressed at once (`--parallel`).
struct ZstdContext(Option<zstd::zstd_safe::CCtx<'static>>);

static ZSTD_CONTEXTS: Pool<zstd::zstd_safe::CCtx<'static>> = Pool::new();

impl ZstdContext {
    fn take() -> ZstdContext {
        let mut ctx = ZSTD_CONTEXTS.take();
        // Parameters from the previous user (level, window) are set again by the caller.
        let _ = ctx.reset(zstd::zstd_safe::ResetDirective::SessionAndParameters);
        ZstdContext(Some(ctx))
    }

    fn get(&mut self) -> &mut zstd::zstd_safe::CCtx<'static> {
        self.0.as_mut().expect("present until dropped")
    }
}

impl Drop for ZstdContext {
    fn drop(&mut self) {
        if let Some(ctx) = self.0.take() {
            ZSTD_CONTEXTS.give(ctx);
        }
    }
}

/// Compresses a stream of `len` bytes with zstd at `level`, appended to `out` (which may
/// already hold a header's reserved space), with a pooled context: `write` writes the
/// content into the encoder. Returns `out` with the compressed body after what it held.
pub(crate) fn zstd_stream(
    out: Vec<u8>,
    level: i32,
    len: u64,
    write: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>,
) -> std::io::Result<Vec<u8>> {
    let mut ctx = ZstdContext::take();
    let mut encoder = zstd::stream::write::Encoder::with_context(out, ctx.get());
    encoder.set_parameter(zstd::stream::raw::CParameter::CompressionLevel(level))?;
    // The level's own parameters for this size (window, tables), as a one-call compression
    // of the same content would choose them.
    encoder.set_pledged_src_size(Some(len))?;
    encoder.include_contentsize(true)?;
    write(&mut encoder)?;
    encoder.finish()
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Compression::None => f.write_str("none"),
            Compression::Lz4 => f.write_str("lz4"),
            Compression::Zstd(l) => write!(f, "zstd:{l}"),
        }
    }
}

impl FromStr for Compression {
    type Err = CompressionParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || CompressionParseError(s.to_string());
        let (name, level) = match s.split_once(':') {
            Some((n, l)) => (n, Some(l.parse::<i32>().map_err(|_| err())?)),
            None => (s, None),
        };
        let codec = match name.to_ascii_lowercase().as_str() {
            "zstd" => Compression::Zstd(DEFAULT_ZSTD_LEVEL),
            "lz4" if level.is_none() => Compression::Lz4,
            "none" if level.is_none() => Compression::None,
            _ => return Err(err()),
        };
        codec.with_level(level).map_err(|_| err())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        (0..100_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect()
    }

    #[test]
    fn every_codec_round_trips() {
        let raw = sample();
        for c in [
            Compression::None,
            Compression::Lz4,
            Compression::Zstd(1),
            Compression::Zstd(19),
        ] {
            let body = c.encode(&raw);
            assert_eq!(decode(c.id(), &body, raw.len()).unwrap(), raw, "{c}");
        }
    }

    #[test]
    fn wrong_length_or_garbage_is_an_error() {
        let raw = sample();
        for c in [Compression::None, Compression::Lz4, Compression::Zstd(3)] {
            let body = c.encode(&raw);
            assert!(decode(c.id(), &body, raw.len() - 1).is_err(), "{c} short");
            assert!(
                decode(c.id(), &body[..body.len() / 2], raw.len()).is_err(),
                "{c} truncated"
            );
        }
    }

    #[test]
    fn parses_names() {
        assert_eq!(
            "zstd".parse::<Compression>().unwrap(),
            Compression::Zstd(DEFAULT_ZSTD_LEVEL)
        );
        assert_eq!(
            "zstd:7".parse::<Compression>().unwrap(),
            Compression::Zstd(7)
        );
        assert_eq!("LZ4".parse::<Compression>().unwrap(), Compression::Lz4);
        assert_eq!("none".parse::<Compression>().unwrap(), Compression::None);
        for bad in ["gzip", "zstd:0", "zstd:23", "zstd:x", "lz4:3", ""] {
            assert!(bad.parse::<Compression>().is_err(), "{bad}");
        }
        assert_eq!(Compression::Zstd(3).to_string(), "zstd:3");
    }
}
