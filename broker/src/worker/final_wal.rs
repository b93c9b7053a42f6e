//! A deprovision archives everything first (design §2.3, R7).
//!
//! A clean stop of a primary does switch WAL (PostgreSQL's shutdown checkpoint, with
//! archiving on) and gives the archiver one last round, but nothing waits for that round to
//! succeed: it tries each file three times and gives up, and a stop that is not clean (the
//! cell SIGKILLs a Patroni that did not stop in two minutes, then shuts PostgreSQL down
//! immediately) archives nothing more. Either way up to `archive_timeout` of a deleted
//! instance's last commits could be missing, and nobody would know where its archive ends.
//! So before its nodes go, the leader switches WAL and waits (bounded by the cell) until
//! the archiver has that segment; the switch LSN is recorded as
//! [`InstanceRecord::final_lsn`], which is also what makes this step happen once: a pass
//! after a broker restart finds it set and skips (derived from the record, not memory).

use tracing::{info, warn};

use super::{Inner, Step};
use crate::state::{InstanceRecord, OperationRecord};

impl Inner {
    /// Switches WAL on `inst`'s leader, if it has one, and records the switch LSN once its
    /// segment is archived. Never blocks the deprovision beyond the cell's bound (twice the
    /// nodes' `archive_timeout`, at most two minutes): a switch that fails or is not archived
    /// in time leaves one warning in the log and the deprovision goes on.
    pub(super) async fn archive_final_wal(
        &self,
        op: &OperationRecord,
        inst: &InstanceRecord,
    ) -> Result<(), Step> {
        if inst.final_lsn.is_some() || inst.nodes.is_empty() {
            return Ok(());
        }
        let seen = self.observe(inst).await;
        let Some(leader) = seen.leader().map(|l| l.name.clone()) else {
            info!(instance = %inst.id, "no leader: no WAL to switch before removing the nodes");
            return Ok(());
        };
        let Some(cell) = inst
            .nodes
            .iter()
            .find(|n| n.name == leader)
            .and_then(|n| self.cell(&n.cell))
        else {
            return Ok(());
        };
        self.store
            .set_progress(
                &op.instance_id,
                &op.id,
                "archiving the last WAL before removing the nodes",
            )
            .await?;
        match cell.client.switch_wal(&leader).await {
            Ok(s) if s.archived => {
                self.store
                    .transition(&op.instance_id, &op.id, |i, _| {
                        i.final_lsn.get_or_insert_with(|| s.lsn.clone());
                        Ok(())
                    })
                    .await?;
                info!(instance = %inst.id, node = %leader, lsn = %s.lsn, segment = %s.segment,
                      "the last WAL is archived");
            }
            Ok(s) => {
                warn!(instance = %inst.id, node = %leader, lsn = %s.lsn, segment = %s.segment,
                      "the last WAL segment was not archived in time; removing the nodes anyway: \
                       commits up to this LSN may be missing from the archive");
            }
            Err(e) => {
                warn!(instance = %inst.id, node = %leader,
                      "could not switch WAL before removing the nodes ({e}); \
                       the last commits may be missing from the archive");
            }
        }
        Ok(())
    }
}
