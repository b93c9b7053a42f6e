//! walarchive's engine: the repository format and layout, storage backends, codecs, WAL
//! names, LSNs and timelines, and the push side of PostgreSQL's archive contract.
//!
//! The crate is split so that every decision that protects an archive lives in one place:
//! [`wal`] refuses anything that is not a WAL file before it reaches the store, [`control`]
//! says which cluster a pushed file comes from, [`format`] makes every object verifiable on
//! its own and bound to its name and repository, [`repo`] never overwrites and refuses
//! another cluster's WAL, [`layout`] says which keys are the repository's own, [`retry`] bounds every storage call, and [`push`] acknowledges a segment
//! only once it is durably stored. The read side lives in the `walarchive-restore` crate.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod backup;
pub mod catalog;
pub mod codec;
pub mod config;
pub mod control;
pub mod crypto;
pub mod daemon;
pub mod format;
pub mod history;
pub mod layout;
pub mod legacy;
pub mod lsn;
pub mod manifest;
pub mod metrics;
pub mod pg;
pub mod push;
pub mod pushahead;
pub mod repair;
pub mod repo;
pub mod retention;
pub mod retry;
pub mod shell;
pub mod status;
pub mod storage;
pub mod verify;
pub mod wal;
pub mod walrecord;
pub mod window;

pub use codec::Compression;
pub use lsn::Lsn;
pub use repo::{Descriptor, Repository};
pub use retry::RetryPolicy;
pub use wal::{SegmentName, TimelineId, WalFileName};

use format::FormatError;
use storage::{OpenError, StorageError};

/// Everything that can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A local input file (or name) that is not something walarchive may archive.
    #[error("{path}: {reason}")]
    BadInput {
        /// The file or name concerned.
        path: String,
        /// Why it is refused.
        reason: String,
    },
    /// The name is not a WAL file name.
    #[error(transparent)]
    BadName(#[from] wal::WalNameError),
    /// The object exists with different content.
    #[error("{name} is already archived with different content (stored {stored}, new {new}); refusing to overwrite it: is another server archiving into this repository?")]
    Conflict {
        /// WAL file name.
        name: String,
        /// Digest of the stored content, named by its kind ("blake3 HEX").
        stored: String,
        /// Digest of the content offered, named by its kind.
        new: String,
    },
    /// The WAL belongs to another cluster (or another WAL format) than the repository.
    #[error("{name} does not belong to this repository: its {field} is {wal} but the repository's is {repo} (another cluster's WAL? refusing it)")]
    ForeignCluster {
        /// WAL file name.
        name: String,
        /// Which property differs.
        field: &'static str,
        /// The repository's value.
        repo: String,
        /// The WAL file's value.
        wal: String,
    },
    /// WAL or a backup of another PostgreSQL major version than the repository's (checked
    /// before the system identifier: after `pg_upgrade`, the major is what changed, and what
    /// the user must hear about). A repository holds one major's WAL.
    #[error("{name} is from PostgreSQL {found} but this repository holds PostgreSQL {repo}'s WAL: a repository holds one major version (after pg_upgrade, archive into a new repository and take a new base backup there); refusing it")]
    OtherMajor {
        /// WAL file name, or "the backup".
        name: String,
        /// The repository's major ("16", or the page magic of an unknown one).
        repo: String,
        /// The major of the WAL or server offered.
        found: String,
    },
    /// A segment whose page header contradicts the pg_control of the data directory it is
    /// pushed from.
    #[error("{path}: its {field} is {file} but {data_dir}/global/pg_control says {control} (another cluster's WAL in this data directory, or the wrong --pgdata? refusing it)")]
    NotFromDataDir {
        /// The file pushed.
        path: String,
        /// Which property differs.
        field: &'static str,
        /// The file's value.
        file: String,
        /// pg_control's value.
        control: String,
        /// The data directory.
        data_dir: String,
    },
    /// The repository URL or configuration cannot be used.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// A configuration problem.
    #[error("{0}")]
    Config(String),
    /// A storage operation failed (after retries where retrying made sense).
    #[error("{op} {key}: {source}")]
    Storage {
        /// What was being done.
        op: &'static str,
        /// Object key.
        key: String,
        /// The classified failure.
        source: StorageError,
    },
    /// The object does not exist.
    #[error("{key} is not in the repository")]
    NotFound {
        /// Object key.
        key: String,
    },
    /// The repository has no descriptor: the URL is wrong, or nothing was ever archived.
    #[error("no walarchive repository at {url} (no walarchive.repo object): wrong URL or bucket, or nothing was archived there yet")]
    NoRepository {
        /// The repository URL.
        url: String,
    },
    /// The prefix holds the repository's objects but not its descriptor.
    #[error("{url} holds walarchive objects ({example}, ...) but no descriptor (walarchive.repo): it was deleted or lost, and the repository is not handed to whichever cluster pushes next; rebuild it from the objects with `walarchive --repo {url} repo-repair` (a dry run; add --confirm to write it)")]
    DescriptorMissing {
        /// The repository URL.
        url: String,
        /// One of the objects found.
        example: String,
    },
    /// A repository would be created inside another one, or around one.
    #[error("cannot create a repository at {url}: {relation} (repositories must not nest: the retention of one would take the other's objects for its own); choose another prefix")]
    NestedRepository {
        /// The repository URL.
        url: String,
        /// Where the other repository is.
        relation: String,
    },
    /// `repo-repair`: the repository's objects disagree about its cluster.
    #[error("the repository's objects belong to more than one cluster: their {field} differs ({first}; {second}): not rebuilding its descriptor (remove the other cluster's objects first)")]
    RepairConflict {
        /// Which property differs.
        field: &'static str,
        /// One source and what it says.
        first: String,
        /// Another source and what it says.
        second: String,
    },
    /// A stored object fails verification.
    #[error("{key} is corrupt: {source}")]
    Corrupt {
        /// Object key.
        key: String,
        /// What verification found.
        source: FormatError,
    },
    /// PostgreSQL refused a connection or a query.
    #[error("{0}")]
    Postgres(String),
    /// WAL a backup needs did not reach the repository in time.
    #[error("WAL segment {segment}, which the backup needs, was not archived within {waited:?}: check archive_command and pg_stat_archiver (the backup is incomplete and will not be listed)")]
    WalMissing {
        /// The first missing segment.
        segment: String,
        /// How long walarchive waited.
        waited: std::time::Duration,
    },
    /// A local file-system operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A failure reported by the resident `walarchive daemon` that did the work.
    #[error("{message}")]
    Remote {
        /// The class of the daemon's error.
        kind: ErrorKind,
        /// The daemon's one-line message.
        message: String,
    },
}

/// Coarse classes of [`Error`], which the CLI maps to exit statuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Bad local input: missing file, directory, wrong name, wrong size.
    BadInput,
    /// Already stored with different content.
    Conflict,
    /// Another cluster's WAL, or a repository of another cluster.
    ForeignCluster,
    /// Configuration: URL, scheme, missing repository.
    Config,
    /// Storage unreachable, refused or failing.
    Storage,
    /// The object is not in the repository.
    NotFound,
    /// A stored object fails verification.
    Corrupt,
    /// A local I/O failure.
    LocalIo,
    /// PostgreSQL refused a connection or a query.
    Postgres,
    /// WAL a backup needs is missing from the repository.
    WalMissing,
}

impl Error {
    /// The class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::BadInput { .. } | Error::BadName(_) => ErrorKind::BadInput,
            Error::Conflict { .. } => ErrorKind::Conflict,
            Error::ForeignCluster { .. }
            | Error::OtherMajor { .. }
            | Error::NotFromDataDir { .. }
            | Error::RepairConflict { .. } => ErrorKind::ForeignCluster,
            Error::Open(_)
            | Error::Config(_)
            | Error::NoRepository { .. }
            | Error::DescriptorMissing { .. }
            | Error::NestedRepository { .. } => ErrorKind::Config,
            Error::Storage { .. } => ErrorKind::Storage,
            Error::NotFound { .. } => ErrorKind::NotFound,
            Error::Corrupt { .. } => ErrorKind::Corrupt,
            Error::Io { .. } => ErrorKind::LocalIo,
            Error::Postgres(_) => ErrorKind::Postgres,
            Error::WalMissing { .. } => ErrorKind::WalMissing,
            Error::Remote { kind, .. } => *kind,
        }
    }
}

impl ErrorKind {
    const ALL: [ErrorKind; 10] = [
        ErrorKind::BadInput,
        ErrorKind::Conflict,
        ErrorKind::ForeignCluster,
        ErrorKind::Config,
        ErrorKind::Storage,
        ErrorKind::NotFound,
        ErrorKind::Corrupt,
        ErrorKind::LocalIo,
        ErrorKind::Postgres,
        ErrorKind::WalMissing,
    ];

    /// A stable name (what the daemon's protocol carries).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::BadInput => "bad-input",
            ErrorKind::Conflict => "conflict",
            ErrorKind::ForeignCluster => "foreign-cluster",
            ErrorKind::Config => "config",
            ErrorKind::Storage => "storage",
            ErrorKind::NotFound => "not-found",
            ErrorKind::Corrupt => "corrupt",
            ErrorKind::LocalIo => "local-io",
            ErrorKind::Postgres => "postgres",
            ErrorKind::WalMissing => "wal-missing",
        }
    }

    /// The kind named `name` by [`ErrorKind::as_str`].
    pub fn from_name(name: &str) -> Option<ErrorKind> {
        ErrorKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}
