//! The read-only router port: a second reservation per instance, given after creation.
//!
//! Why not in the instance's creation transaction, like its first port: instances recorded
//! before read-only ports existed need one too, so the worker gives it (to new and old
//! instances alike) by the same create-if-absent on `ports/<port>`, then records it on the
//! instance by compare-and-swap. A worker that stops between the two leaves the reservation
//! with the instance's id in it; the next attempt takes that one again instead of leaking it.
//! A deprovision releases it with the first ([`Store::finish_operation`]).

use std::ops::RangeInclusive;

use super::model::InstanceState;
use super::{Store, StoreError};

impl Store {
    /// Gives instance `id` a read-only port from `range` if it is live and has none: the
    /// port given, or `None` when nothing was to be done (no such instance, deleted or being
    /// deleted, or it has one already).
    pub async fn give_read_only_port(
        &self,
        id: &str,
        range: RangeInclusive<u16>,
    ) -> Result<Option<u16>, StoreError> {
        let Some(inst) = self.instance(id).await? else {
            return Ok(None);
        };
        let inst = inst.value;
        if inst.read_only_port.is_some() || !live(inst.state) {
            return Ok(None);
        }
        let prefix = format!("{}/ports/", self.prefix);
        let reserved = self.etcd.get_prefix(prefix.as_bytes()).await?;
        let owned = reserved.iter().find_map(|kv| {
            let port: u16 = kv.key_str()[prefix.len()..].parse().ok()?;
            (kv.value == id.as_bytes() && port != inst.port).then_some(port)
        });
        let port = match owned {
            Some(p) => p,
            None => self.allocate_port(id, range).await?,
        };
        // Recorded only on a live instance without one (no write otherwise: a tombstone
        // keeps its revision).
        let mut theirs = None;
        let r = self
            .update_instance(id, |i| {
                if !live(i.state) || i.read_only_port.is_some() {
                    theirs = Some(i.read_only_port.filter(|_| live(i.state)));
                    return Err(StoreError::Refused("no read-only port to give".into()));
                }
                i.read_only_port = Some(port);
                Ok(())
            })
            .await;
        match r {
            Ok(_) => Ok(Some(port)),
            // Deleted meanwhile, or another broker gave it one first (this one, or another).
            Err(StoreError::Refused(_)) | Err(StoreError::NotFound { .. }) => {
                if theirs.flatten() != Some(port) {
                    self.release_port(port, id).await?;
                }
                Ok(None)
            }
            // The reservation stays: the next attempt takes it again.
            Err(e) => Err(e),
        }
    }
}

fn live(state: InstanceState) -> bool {
    !matches!(
        state,
        InstanceState::Deprovisioning | InstanceState::Deleted
    )
}
