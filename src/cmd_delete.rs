//! `delete` and `backup-mark`: retention.

use anyhow::Result;
use walarchive_core::Repository;

use crate::cli::DeleteCommand;

pub async fn delete(_repo: &Repository, _what: &DeleteCommand) -> Result<u8> {
    anyhow::bail!("delete is not implemented yet")
}

pub async fn backup_mark(_repo: &Repository, _name: &str, _unmark: bool) -> Result<u8> {
    anyhow::bail!("backup-mark is not implemented yet")
}
