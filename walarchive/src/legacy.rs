//! Reading the archives of the tools walarchive replaces: wal-e and wal-g.
//!
//! An operator who switches to walarchive keeps a restore window that lives in the old tool's
//! archive (docs/design/migration.md). walarchive reads it, never writes it, and checks what the
//! old format lets it check: for wal-e's lzop objects the lzop container's own header and block
//! checksums ([`lzop`]). What an old format cannot detect is said where it is read, and in
//! the README, rather than papered over.
//!
//! This module holds the decoders and their errors, and [`LegacySource`], the archive opened
//! read-only (wal-e's WAL so far; its base backups and wal-g come in later steps of the design).

pub mod lzop;
pub mod readonly;

use object_store::path::Path;

use crate::format::FormatError;
use crate::retry::{retry, RetryPolicy};
use crate::storage::{self, StorageEnv, StorageError, StorageOptions};
use crate::wal::WalFileName;
use crate::Error;
pub use readonly::ReadOnly;

/// The directory of WAL files in both tools' layouts (format version 005).
pub const WAL_DIR: &str = "wal_005";

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

/// A wal-e or wal-g archive, opened read-only: WAL files are fetched and decoded (with the
/// old format's own checks), never written, never deleted.
#[derive(Debug)]
pub struct LegacySource {
    kind: LegacyKind,
    store: ReadOnly,
    prefix: Path,
    shown_url: String,
    policy: RetryPolicy,
}

impl LegacySource {
    /// Opens the archive of `kind` at `url` (any repository URL walarchive supports), with
    /// the credentials of `env` and `options` as [`storage::open`] takes them.
    pub fn open(
        kind: LegacyKind,
        url: &str,
        options: &StorageOptions,
        env: &StorageEnv,
        policy: &RetryPolicy,
    ) -> Result<Self, Error> {
        if kind == LegacyKind::WalG {
            return Err(Error::Config(format!(
                "legacy source {}: reading wal-g archives is not supported yet (only wal-e's)",
                storage::redact_url(url)
            )));
        }
        let loc = storage::open(url, options, env, policy)?;
        Ok(LegacySource {
            kind,
            store: ReadOnly::new(loc.store),
            prefix: loc.prefix,
            shown_url: storage::redact_url(url),
            policy: *policy,
        })
    }

    /// Which tool wrote the archive.
    pub fn kind(&self) -> LegacyKind {
        self.kind
    }

    /// The archive's URL as it may be shown (redacted).
    pub fn url(&self) -> &str {
        &self.shown_url
    }

    fn key(&self, relative: &str) -> Path {
        Path::from_iter(self.prefix.parts().chain(Path::from(relative).parts()))
    }

    /// The stored key of a WAL file in a wal-e archive, relative to the archive's root.
    pub fn wal_key(&self, name: &WalFileName) -> String {
        format!("{WAL_DIR}/{name}.lzo")
    }

    /// Fetches and decodes the WAL file `name`: its full key and its content, after the lzop
    /// checks but not yet the checks of its content against its name and the repository (the
    /// caller's, as for native WAL). [`Error::NotFound`] if the archive lacks it; a failed
    /// lzop check is [`Error::Corrupt`] naming the key.
    pub async fn get_wal(&self, name: &WalFileName) -> Result<(String, Vec<u8>), Error> {
        let key = self.key(&self.wal_key(name));
        let bytes = retry(&self.policy, &format!("get legacy {key}"), || async {
            self.store.get(&key).await.map_err(StorageError::from)
        })
        .await
        .map_err(|source| match source {
            StorageError::NotFound => Error::NotFound {
                key: key.to_string(),
            },
            source => Error::Storage {
                op: "get",
                key: key.to_string(),
                source,
            },
        })?;
        let content = lzop::decode_all(&bytes).map_err(|e| e.into_error(key.as_ref()))?;
        Ok((key.to_string(), content))
    }

    /// The WAL files of the archive (segments, partial segments, timeline and backup history
    /// files), sorted by name, each with its full key. Other objects under `wal_005/` are
    /// not WAL and are left out.
    pub async fn list_wal(&self) -> Result<Vec<(WalFileName, String)>, Error> {
        use futures::TryStreamExt;
        let dir = self.key(WAL_DIR);
        let items = retry(&self.policy, &format!("list legacy {dir}"), || async {
            self.store
                .list(Some(&dir))
                .try_collect::<Vec<_>>()
                .await
                .map_err(StorageError::from)
        })
        .await
        .map_err(|source| Error::Storage {
            op: "list",
            key: dir.to_string(),
            source,
        })?;
        let mut out: Vec<(WalFileName, String)> = items
            .into_iter()
            .filter_map(|meta| {
                let file = meta.location.filename()?;
                let name = file.strip_suffix(".lzo")?.parse().ok()?;
                // Only files directly in wal_005/, as wal-e writes them.
                (meta.location.parts().count() == dir.parts().count() + 1)
                    .then(|| (name, meta.location.to_string()))
            })
            .collect();
        out.sort();
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
