//! Reading the archives of the tools walarchive replaces: wal-e and wal-g.
//!
//! An operator who switches to walarchive keeps a restore window that lives in the old tool's
//! archive (docs/design/migration.md). walarchive reads it, never writes it, and checks what the
//! old format lets it check: for wal-e's lzop objects the lzop container's own header and block
//! checksums ([`lzop`]). What an old format cannot detect is said where it is read, and in
//! the README, rather than papered over.
//!
//! This module holds the pieces that do not depend on storage: the decoders and their errors.

pub mod lzop;

use crate::format::FormatError;

/// Which tool wrote a legacy archive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LegacyKind {
    /// wal-e: `wal_005/` and `basebackups_005/`, every object an lzop container.
    WalE,
    /// wal-g: the same layout, with lz4, zstd, brotli, lzma or lzop objects.
    WalG,
}

impl LegacyKind {
    /// The name used on the command line and in messages (`wal-e`, `wal-g`).
    pub fn as_str(self) -> &'static str {
        match self {
            LegacyKind::WalE => "wal-e",
            LegacyKind::WalG => "wal-g",
        }
    }
}

impl std::fmt::Display for LegacyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a legacy object cannot be decoded.
#[derive(Debug, thiserror::Error)]
pub enum LegacyError {
    /// The object fails one of its format's checks: damaged, truncated or altered.
    #[error("{}{what}", block.map(|b| format!("lzop block {b}: ")).unwrap_or_else(|| "lzop header: ".into()))]
    Corrupt {
        /// The block concerned (counted from 0), or `None` for the file header.
        block: Option<u64>,
        /// Which check failed.
        what: String,
    },
    /// A valid file using a feature the old tools never wrote and this reader does not decode
    /// (an lzop filter, an extra header field, a method other than LZO1X).
    #[error("lzop: {0} (not written by wal-e or wal-g; not supported)")]
    Unsupported(String),
    /// Reading the underlying stream failed (not a property of the object).
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl LegacyError {
    /// Recovers the [`LegacyError`] that a decoder's [`std::io::Read`] implementation wrapped
    /// in an `io::Error`; any other I/O error stays [`LegacyError::Io`].
    pub fn from_io(e: std::io::Error) -> Self {
        if e.get_ref().is_some_and(|inner| inner.is::<LegacyError>()) {
            let inner = e.into_inner().expect("checked above");
            match inner.downcast::<LegacyError>() {
                Ok(legacy) => *legacy,
                Err(other) => LegacyError::Io(std::io::Error::other(other)),
            }
        } else {
            LegacyError::Io(e)
        }
    }

    /// Whether the object itself is at fault (exit status 8, `wal-fetch` 208), as opposed
    /// to the stream it was read from.
    pub fn is_corrupt(&self) -> bool {
        matches!(
            self,
            LegacyError::Corrupt { .. } | LegacyError::Unsupported(_)
        )
    }

    /// The engine's error for the legacy object `key`: [`crate::Error::Corrupt`] naming the
    /// key and the failed check, or [`crate::Error::Io`].
    pub fn into_error(self, key: &str) -> crate::Error {
        match self {
            LegacyError::Io(source) => crate::Error::Io {
                context: format!("reading legacy object {key}"),
                source,
            },
            other => crate::Error::Corrupt {
                key: key.to_string(),
                source: FormatError::Content(other.to_string()),
            },
        }
    }
}

impl From<LegacyError> for std::io::Error {
    fn from(e: LegacyError) -> Self {
        match e {
            LegacyError::Io(io) => io,
            other => std::io::Error::new(std::io::ErrorKind::InvalidData, other),
        }
    }
}
