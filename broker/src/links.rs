//! The dashboard's per-instance links (`dashboard_url`): the URL, its token, and rotating it.
//!
//! Apart from [`crate::dashboard`] so that the OSB API, which hands the links out, does not
//! depend on the pages. The token is a MAC ([`Keyring::mac`]) of the instance's id,
//! incarnation and link generation ([`InstanceRecord::dashboard_generation`]): never stored,
//! never the broker's password, valid for that one incarnation of that one instance, and
//! replaced by incrementing the generation ([`rotate`]).

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::config::BrokerConfig;
use crate::secrets::Keyring;
use crate::state::{InstanceRecord, InstanceState, Store, StoreError};

const LINK_PURPOSE: &str = "dashboard-link";

/// What stays unescaped in a path segment: letters, digits and `-._~`.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `id` as one path segment.
pub fn segment(id: &str) -> String {
    utf8_percent_encode(id, SEGMENT).to_string()
}

/// The path of instance `id`'s dashboard page.
pub fn instance_path(id: &str) -> String {
    format!("/dashboard/instances/{}", segment(id))
}

/// The broker's URL as browsers reach it: `[dashboard] url`, else `http(s)://<listen>`.
pub fn base_url(config: &BrokerConfig) -> String {
    match &config.dashboard.url {
        Some(u) => u.trim_end_matches('/').to_string(),
        None => {
            let scheme = if config.tls.is_some() {
                "https"
            } else {
                "http"
            };
            format!("{scheme}://{}", config.listen)
        }
    }
}

fn message(record: &InstanceRecord) -> Vec<u8> {
    let mut m = record.id.as_bytes().to_vec();
    m.push(0);
    m.extend(record.incarnation.to_be_bytes());
    m.extend(record.dashboard_generation.to_be_bytes());
    m
}

/// The link token of `record`'s current incarnation and generation.
pub fn token(keyring: &Keyring, record: &InstanceRecord) -> String {
    B64.encode(keyring.mac(LINK_PURPOSE, &message(record)))
}

/// Whether `token` is `record`'s current link token (made with the current key or an old
/// one), and the instance is not deleted.
pub fn verify(keyring: &Keyring, record: &InstanceRecord, token: &str) -> bool {
    record.state != InstanceState::Deleted
        && B64
            .decode(token)
            .is_ok_and(|t| keyring.verify_mac(LINK_PURPOSE, &message(record), &t))
}

/// The link that opens `record`'s page (and only it): its `dashboard_url`.
pub fn dashboard_url(config: &BrokerConfig, record: &InstanceRecord) -> String {
    format!(
        "{}/dashboard/open/{}/{}",
        base_url(config),
        segment(&record.id),
        token(&config.keyring(), record)
    )
}

/// `walarchive-broker dashboard-link`: instance `id`'s current link, or with `rotate` a new
/// one (the generation incremented by compare-and-swap: the old link and every session it
/// opened stop working at once). `None`: no such live instance.
pub async fn rotate(
    config: &BrokerConfig,
    store: &Store,
    id: &str,
    rotate: bool,
) -> Result<Option<String>, StoreError> {
    let record = match store.instance(id).await? {
        Some(r) if r.value.state != InstanceState::Deleted => r.value,
        _ => return Ok(None),
    };
    let record = if rotate {
        let r = store
            .update_instance(id, |i| {
                i.dashboard_generation += 1;
                Ok(())
            })
            .await?;
        tracing::info!(instance = %id, generation = r.dashboard_generation, "dashboard link rotated");
        r
    } else {
        record
    };
    Ok(Some(dashboard_url(config, &record)))
}
