//! Command-line interface definition.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Continuous WAL archiving and point-in-time restore for PostgreSQL.
#[derive(Debug, Parser)]
#[command(name = "walarchive", version, after_help = crate::exit::HELP, after_long_help = LONG_HELP)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalOpts,
    #[command(subcommand)]
    pub command: Command,
}

const LONG_HELP: &str = concat!(
    "PostgreSQL settings:\n",
    "  archive_mode = on\n",
    "  archive_command = 'walarchive --config /etc/walarchive.toml wal-push %p'\n",
    "  restore_command = 'walarchive --config /etc/walarchive.toml wal-fetch %f %p'\n",
    "  archive_timeout = 60   # bounds data loss when the server and its disk are lost\n\n",
    "Repository URLs: s3://BUCKET/PREFIX, az://CONTAINER/PREFIX (or azure://), file:///ABS/PATH.\n",
    "Credentials come from the environment (AWS_*, AZURE_*) or the config file's [storage] table.\n\n",
);

/// Options every command takes.
#[derive(Debug, Args)]
pub struct GlobalOpts {
    /// Repository URL (s3://, az://, azure://, file://).
    #[arg(long, global = true, env = "WALARCHIVE_REPO", value_name = "URL")]
    pub repo: Option<String>,
    /// Configuration file (TOML). Default: /etc/walarchive.toml when it exists.
    #[arg(long, global = true, env = "WALARCHIVE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Codec for new objects: zstd, zstd:LEVEL, lz4 or none [default: zstd:1].
    #[arg(
        long,
        global = true,
        env = "WALARCHIVE_COMPRESSION",
        value_name = "CODEC"
    )]
    pub compression: Option<String>,
    /// zstd level, 1-22 (overrides a level given in --compression).
    #[arg(
        long,
        global = true,
        env = "WALARCHIVE_COMPRESSION_LEVEL",
        value_name = "N"
    )]
    pub compression_level: Option<i32>,
    /// Attempts per storage request before giving up on transient failures [default: 6].
    #[arg(long, global = true, env = "WALARCHIVE_RETRIES", value_name = "N")]
    pub retries: Option<u32>,
    /// Time limit of one storage request, in seconds [default: 120].
    #[arg(
        long,
        global = true,
        env = "WALARCHIVE_REQUEST_TIMEOUT",
        value_name = "SECONDS"
    )]
    pub request_timeout: Option<f64>,
    /// More logging (-v debug, -vv trace). WALARCHIVE_LOG takes a tracing filter instead.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only log warnings and errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Archive one WAL file: PostgreSQL's archive_command (`wal-push %p`).
    ///
    /// Exits 0 only once the file is durably stored. A file already archived with the same
    /// content succeeds; with different content it fails (status 4) and nothing is overwritten.
    WalPush {
        /// Path of the WAL file (PostgreSQL's %p, relative to the data directory).
        path: PathBuf,
    },
    /// Restore one WAL file: PostgreSQL's restore_command (`wal-fetch %f %p`).
    ///
    /// Exits 0 when restored, 1 when the repository does not have the file, and above 200
    /// for any other failure, so that PostgreSQL aborts recovery rather than promoting early.
    WalFetch {
        /// WAL file name (PostgreSQL's %f).
        name: String,
        /// Destination path (PostgreSQL's %p).
        dest: PathBuf,
    },
    /// List the archived WAL files.
    WalList {
        /// Only this timeline (decimal).
        #[arg(long)]
        timeline: Option<u32>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show the repository's descriptor (cluster, WAL segment size, format).
    RepoInfo {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

impl Command {
    /// The command's name as typed.
    pub fn name(&self) -> &'static str {
        match self {
            Command::WalPush { .. } => "wal-push",
            Command::WalFetch { .. } => "wal-fetch",
            Command::WalList { .. } => "wal-list",
            Command::RepoInfo { .. } => "repo-info",
        }
    }
}
