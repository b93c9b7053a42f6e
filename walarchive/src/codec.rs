//! Compression codecs.
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
