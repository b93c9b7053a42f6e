//! A recovered instance's bindings made to work again (design §4.2 step 3).
//!
//! Why: an instance re-created from its own archive has the roles that were in its last
//! archived WAL, but a binding made after that segment (or a password reset) is not there.
//! The platform's bindings must keep working with the URIs it already holds, so every
//! recorded binding's role is put again on the promoted leader with its recorded password
//! (the cell creates the role or resets it; doing it twice does no harm).

use tracing::{info, warn};

use super::{CellInfo, Inner, Step, INTERNAL};
use crate::binder::{role_name, valid_role_name, BinderOptions, RoleRequest};
use crate::state::{BindingState, InstanceRecord, OperationRecord};

impl Inner {
    /// Puts the role of every created binding of `inst` on `leader` with its recorded
    /// password; the number of roles put.
    pub(super) async fn reapply_bindings(
        &self,
        op: &OperationRecord,
        inst: &InstanceRecord,
        leader: &str,
        cell: &CellInfo,
    ) -> Result<usize, Step> {
        let bindings = self.store.bindings(&inst.id).await?;
        let options = BinderOptions::default();
        let mut put = 0;
        for b in bindings {
            let b = b.value;
            if b.state != BindingState::Created {
                continue;
            }
            let Some(creds) = &b.credentials else {
                warn!(instance = %inst.id, binding = %b.binding_id, "a created binding has no credentials recorded");
                continue;
            };
            // The role the platform's URI names (the binding's role name, as the binder made it).
            let role = creds.username.clone();
            if !valid_role_name(&role) {
                warn!(instance = %inst.id, binding = %b.binding_id, expected = %role_name(&b.binding_id),
                      "a binding's recorded user is not a binding role's name");
                return Err(Step::Fail(INTERNAL.into()));
            }
            let req = RoleRequest {
                database: options.database.clone(),
                group: options.group_role.clone(),
                verifier: postgres_protocol::password::scram_sha_256(creds.password.as_bytes()),
                comment: format!(
                    "walarchive-broker binding {} of instance {}",
                    b.binding_id, inst.id
                ),
            };
            cell.client
                .put_role(leader, &role, &req)
                .await
                .map_err(|e| {
                    Step::retry(
                        Some("recovered".into()),
                        "a binding's role could not be put back on the recovered instance",
                        format_args!("node {leader}, binding {}: {e}", b.binding_id),
                    )
                })?;
            info!(instance = %op.instance_id, binding = %b.binding_id, "binding role re-applied");
            put += 1;
        }
        Ok(put)
    }
}
