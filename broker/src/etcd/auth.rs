//! Turning etcd's authentication on, with one user and role per key prefix: what an operator
//! does with `etcdctl`, done by the single-machine mode and the tests.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::json;

use super::client::EtcdClient;
use super::error::EtcdError;
use super::types::prefix_end;
use crate::secrets::Secret;

/// A user for [`EtcdClient::enable_auth`].
#[derive(Debug, Clone, Copy)]
pub struct EtcdUser<'a> {
    /// Its name (also its role's).
    pub name: &'a str,
    /// Its password.
    pub password: &'a Secret,
    /// The key prefixes its role reads and writes.
    pub prefixes: &'a [&'a str],
}

impl EtcdClient {
    /// Sets up etcd's authentication and turns it on: the user `root` (with `root_password`
    /// and the root role), then each of `users` with a role of the same name that reads and
    /// writes its key prefixes. What an operator does with `etcdctl user add`, `role
    /// grant-permission --prefix` and `auth enable`; used by the single-machine mode and the
    /// tests, on an etcd whose authentication is still off (this client has no credentials).
    pub async fn enable_auth(
        &self,
        root_password: &Secret,
        users: &[EtcdUser<'_>],
    ) -> Result<(), EtcdError> {
        let add =
            |name: &str, password: &Secret| json!({ "name": name, "password": password.expose() });
        self.call("/v3/auth/user/add", &add("root", root_password), false)
            .await?;
        self.call(
            "/v3/auth/user/grant",
            &json!({ "user": "root", "role": "root" }),
            false,
        )
        .await?;
        for u in users {
            self.call("/v3/auth/user/add", &add(u.name, u.password), false)
                .await?;
            self.call("/v3/auth/role/add", &json!({ "name": u.name }), false)
                .await?;
            for p in u.prefixes {
                let perm = json!({
                    "permType": "READWRITE",
                    "key": B64.encode(p.as_bytes()),
                    "range_end": B64.encode(prefix_end(p.as_bytes())),
                });
                self.call(
                    "/v3/auth/role/grant",
                    &json!({ "name": u.name, "perm": perm }),
                    false,
                )
                .await?;
            }
            self.call(
                "/v3/auth/user/grant",
                &json!({ "user": u.name, "role": u.name }),
                false,
            )
            .await?;
        }
        self.call("/v3/auth/enable", &json!({}), false).await?;
        Ok(())
    }
}
