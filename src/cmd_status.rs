//! `status`: archiving lag against the recovery point objective, and metrics.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use walarchive_core::Repository;

/// Options of `status`.
pub struct StatusArgs {
    pub pgdata: Option<PathBuf>,
    pub conn: tokio_postgres::Config,
    pub rpo: Duration,
    pub json: bool,
    pub prometheus: bool,
}

pub async fn status(_repo: &Repository, _args: &StatusArgs) -> Result<u8> {
    anyhow::bail!("status is not implemented yet")
}
