//! `verify backup` and `wal-verify`.

use anyhow::Result;
use walarchive_core::Repository;

pub async fn verify_backup(_repo: &Repository, _name: &str, _json: bool) -> Result<u8> {
    anyhow::bail!("verify backup is not implemented yet")
}

pub async fn wal_verify(_repo: &Repository, _json: bool) -> Result<u8> {
    anyhow::bail!("wal-verify is not implemented yet")
}
