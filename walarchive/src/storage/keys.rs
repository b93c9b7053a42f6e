//! Which `[storage]` keys the configuration file may hold.
//!
//! The table is handed to object_store's builders (and to the Swift store) by prefix, and
//! each ignores what it does not know: a typo (`aws_endpont`) would silently fall back to a
//! default, here AWS's own endpoint, with the credentials signing requests to it. So every
//! key must be one a backend reads; an unknown one is refused with the nearest valid key.

use object_store::aws::AmazonS3ConfigKey;
use object_store::azure::AzureConfigKey;
use object_store::gcp::GoogleConfigKey;

use super::{Backend, StorageOptions};

impl StorageOptions {
    /// Refuses a key that no backend reads: a typo (`aws_endpont`) would otherwise be
    /// ignored silently, and requests would go, signed, to the default endpoint. Valid keys
    /// are object_store's configuration keys with their backend's prefix (`aws_`, `azure_`,
    /// `google_`) and the Swift settings (`os_*`, `swift_*`, `st_*`), in lower case.
    pub fn check_keys(&self) -> Result<(), UnknownKey> {
        match self.0.keys().find(|k| !is_known_key(k)) {
            None => Ok(()),
            Some(key) => Err(UnknownKey {
                key: key.clone(),
                suggestion: suggest_key(key),
            }),
        }
    }
}

impl StorageOptions {
    /// Refuses a key that belongs to another backend than `backend`'s (`azure_*` with an
    /// `s3://` URL): it would be ignored, and whatever it was meant to set (an account, an
    /// endpoint, credentials) silently left at its default.
    pub fn check_backend(&self, backend: Backend) -> Result<(), String> {
        // Keys no backend reads are `check_keys`' to refuse (with a suggestion).
        for key in self.0.keys() {
            let Some(owner) = key_backend(key) else {
                continue;
            };
            if owner != backend {
                let owner = owner.name();
                return Err(format!(
                    "[storage] key {key:?} is for the {owner} backend, but the repository is {}: remove it or fix the URL",
                    backend.name()
                ));
            }
        }
        Ok(())
    }
}

/// The backend that reads `key`, by its prefix.
fn key_backend(key: &str) -> Option<Backend> {
    if key.starts_with("aws_") {
        Some(Backend::S3)
    } else if key.starts_with("azure_") {
        Some(Backend::Azure)
    } else if key.starts_with("google_") {
        Some(Backend::Gcs)
    } else if SWIFT_KEYS.contains(&key) {
        Some(Backend::Swift)
    } else {
        None
    }
}

/// A `[storage]` key no backend reads.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown key {key:?} in [storage]{}; valid keys are object_store's configuration keys \
     (aws_*, azure_*, google_*) and the Swift settings (os_*, swift_*, st_*), in lower case",
    match suggestion { Some(s) => format!(": did you mean {s:?}?"), None => String::new() }
)]
pub struct UnknownKey {
    /// The key as written.
    pub key: String,
    /// The nearest valid key, when one is near.
    pub suggestion: Option<String>,
}

/// Whether a backend reads `key` (see [`StorageOptions::check_keys`]).
fn is_known_key(key: &str) -> bool {
    if key.starts_with("aws_") {
        key.parse::<AmazonS3ConfigKey>().is_ok()
    } else if key.starts_with("azure_") {
        key.parse::<AzureConfigKey>().is_ok()
    } else if key.starts_with("google_") {
        key.parse::<GoogleConfigKey>().is_ok()
    } else {
        SWIFT_KEYS.contains(&key)
    }
}

/// The Swift settings `swift::SwiftStore::from_settings` reads, by their environment names
/// in lower case.
const SWIFT_KEYS: &[&str] = &[
    "os_application_credential_id",
    "os_application_credential_name",
    "os_application_credential_secret",
    "os_auth_token",
    "os_auth_type",
    "os_auth_url",
    "os_auth_version",
    "os_default_domain_id",
    "os_default_domain_name",
    "os_endpoint_type",
    "os_identity_api_version",
    "os_interface",
    "os_password",
    "os_project_domain_id",
    "os_project_domain_name",
    "os_project_id",
    "os_project_name",
    "os_region_name",
    "os_storage_url",
    "os_tenant_id",
    "os_tenant_name",
    "os_user_domain_id",
    "os_user_domain_name",
    "os_user_id",
    "os_username",
    "st_auth",
    "st_key",
    "st_user",
    "swift_auth_version",
    "swift_authurl",
    "swift_endpoint_type",
    "swift_password",
    "swift_region",
    "swift_segment_size",
    "swift_tenant",
    "swift_tenant_id",
    "swift_user",
];

/// Keys offered as suggestions besides [`SWIFT_KEYS`]: object_store's (0.14) canonical
/// names. Only suggestions: validity is decided by object_store's own parsers.
const SUGGESTED_KEYS: &[&str] = &[
    "aws_access_key_id",
    "aws_secret_access_key",
    "aws_session_token",
    "aws_region",
    "aws_default_region",
    "aws_endpoint",
    "aws_endpoint_url",
    "aws_endpoint_url_s3",
    "aws_endpoint_url_sts",
    "aws_allow_http",
    "aws_virtual_hosted_style_request",
    "aws_s3_express",
    "aws_imdsv1_fallback",
    "aws_metadata_endpoint",
    "aws_unsigned_payload",
    "aws_checksum_algorithm",
    "aws_container_credentials_relative_uri",
    "aws_container_credentials_full_uri",
    "aws_container_authorization_token_file",
    "aws_web_identity_token_file",
    "aws_role_arn",
    "aws_role_session_name",
    "aws_skip_signature",
    "aws_copy_if_not_exists",
    "aws_conditional_put",
    "aws_disable_tagging",
    "aws_disable_bulk_delete",
    "aws_request_payer",
    "aws_server_side_encryption",
    "aws_sse_kms_key_id",
    "aws_sse_bucket_key_enabled",
    "aws_sse_customer_key_base64",
    "aws_proxy_url",
    "aws_timeout",
    "aws_connect_timeout",
    "azure_storage_account_name",
    "azure_storage_account_key",
    "azure_storage_sas_key",
    "azure_storage_token",
    "azure_storage_client_id",
    "azure_storage_client_secret",
    "azure_storage_tenant_id",
    "azure_storage_authority_host",
    "azure_storage_endpoint",
    "azure_storage_use_emulator",
    "azure_storage_encryption_key",
    "azure_federated_token_file",
    "azure_msi_endpoint",
    "azure_msi_resource_id",
    "azure_object_id",
    "azure_use_azure_cli",
    "azure_skip_signature",
    "azure_disable_tagging",
    "azure_allow_http",
    "azure_proxy_url",
    "google_service_account",
    "google_service_account_key",
    "google_application_credentials",
    "google_bearer_token",
    "google_skip_signature",
    "google_proxy_url",
];

/// The valid key nearest to `key` (case aside, a few edits away), if any.
fn suggest_key(key: &str) -> Option<String> {
    let lower = key.to_ascii_lowercase();
    if lower != key && is_known_key(&lower) {
        return Some(lower);
    }
    SUGGESTED_KEYS
        .iter()
        .chain(SWIFT_KEYS)
        .map(|k| (strsim::damerau_levenshtein(&lower, k), *k))
        .filter(|(d, k)| *d <= (k.len() / 4).clamp(1, 3))
        .min()
        .map(|(_, k)| k.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_storage_keys_are_refused_with_the_nearest_one() {
        let opts = |k: &str| StorageOptions([(k.to_string(), "v".to_string())].into());
        for k in SUGGESTED_KEYS.iter().chain(SWIFT_KEYS) {
            assert!(is_known_key(k), "{k} is suggested but not valid");
        }
        for k in [
            "aws_endpoint",
            "aws_endpoint_url",
            "aws_timeout",
            "google_service_account",
        ] {
            assert_eq!(opts(k).check_keys(), Ok(()), "{k}");
        }
        for (key, near) in [
            ("aws_endpont", Some("aws_endpoint")),
            ("aws_secret_acess_key", Some("aws_secret_access_key")),
            ("AWS_REGION", Some("aws_region")),
            ("os_pasword", Some("os_password")),
            (
                "azure_storage_acount_key",
                Some("azure_storage_account_key"),
            ),
            // Known to object_store without the prefix, but walarchive reads aws_* only.
            ("endpoint", None),
            ("compression", None),
        ] {
            let e = opts(key).check_keys().unwrap_err();
            assert_eq!(e.suggestion.as_deref(), near, "{key}");
            let text = e.to_string();
            assert!(text.contains(&format!("{key:?}")), "{text}");
            if let Some(near) = near {
                assert!(text.contains(&format!("did you mean {near:?}?")), "{text}");
            }
        }
    }
}
