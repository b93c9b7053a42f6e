//! Where the records live under the store's prefix (the key layout of [`crate::state`]).

use super::model::InstanceContext;
use super::{ClaimKind, Store};

/// Percent-encodes everything outside RFC 3986's unreserved characters: for etcd key
/// components here, and for the user info and database of the URIs bindings return.
pub fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Store {
    /// `<prefix>/instances/<id>`
    pub fn instance_key(&self, id: &str) -> String {
        format!("{}/instances/{}", self.prefix, encode_component(id))
    }

    /// `<prefix>/operations/<instance_id>`
    pub fn operation_key(&self, instance_id: &str) -> String {
        format!(
            "{}/operations/{}",
            self.prefix,
            encode_component(instance_id)
        )
    }

    /// `<prefix>/bindings/<instance_id>/` (prefix of the instance's bindings)
    pub fn bindings_prefix(&self, instance_id: &str) -> String {
        format!(
            "{}/bindings/{}/",
            self.prefix,
            encode_component(instance_id)
        )
    }

    /// `<prefix>/bindings/<instance_id>/<binding_id>`
    pub fn binding_key(&self, instance_id: &str, binding_id: &str) -> String {
        format!(
            "{}{}",
            self.bindings_prefix(instance_id),
            encode_component(binding_id)
        )
    }

    /// `<prefix>/secrets/<instance_id>`
    pub fn secrets_key(&self, instance_id: &str) -> String {
        format!("{}/secrets/{}", self.prefix, encode_component(instance_id))
    }

    /// `<prefix>/claims/<instance_id>` (operations), `.../<instance_id>/backup` (backups) or
    /// `.../<instance_id>/purge` (purges of its deleted incarnations' archives:
    /// encoded ids hold no `/`, so no instance's key is another's).
    pub fn claim_key(&self, instance_id: &str, kind: ClaimKind) -> String {
        let key = format!("{}/claims/{}", self.prefix, encode_component(instance_id));
        match kind {
            ClaimKind::Operations => key,
            ClaimKind::Backups => key + "/backup",
            ClaimKind::Purge => key + "/purge",
        }
    }

    /// `<prefix>/ports/<port>`
    pub fn port_key(&self, port: u16) -> String {
        format!("{}/ports/{port}", self.prefix)
    }

    /// `<prefix>/catalog/<org>/<space>/<name>/` (prefix of the instances with that name)
    pub fn catalog_prefix(&self, org: &str, space: &str, name: &str) -> String {
        format!(
            "{}/catalog/{}/{}/{}/",
            self.prefix,
            encode_component(org),
            encode_component(space),
            encode_component(name)
        )
    }

    /// `.../<instance_id>` for the first incarnation, `.../<instance_id>/<n>` for later ones
    /// (encoded ids hold no `/`, so the keys of different ids and incarnations never collide).
    pub(super) fn catalog_key(
        &self,
        ctx: &InstanceContext,
        instance_id: &str,
        incarnation: u32,
    ) -> Option<String> {
        let name = ctx.instance_name.as_deref()?;
        let mut key = format!(
            "{}{}",
            self.catalog_prefix(&ctx.organization_guid, &ctx.space_guid, name),
            encode_component(instance_id)
        );
        if incarnation > 1 {
            key.push_str(&format!("/{incarnation}"));
        }
        Some(key)
    }

    /// Where earlier versions kept the entry of incarnation `n >= 2`: `.../<instance_id>%2F<n>`
    /// (unambiguous only while ids could not hold `/`, which they could not then).
    pub(super) fn legacy_catalog_key(
        &self,
        ctx: &InstanceContext,
        instance_id: &str,
        incarnation: u32,
    ) -> Option<String> {
        let name = ctx.instance_name.as_deref()?;
        (incarnation > 1 && !instance_id.contains('/')).then(|| {
            format!(
                "{}{}",
                self.catalog_prefix(&ctx.organization_guid, &ctx.space_guid, name),
                encode_component(&format!("{instance_id}/{incarnation}"))
            )
        })
    }
}
