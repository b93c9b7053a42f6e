//! [`PgBinder`]: binding credentials as PostgreSQL roles, created through the router.
//!
//! Why this shape:
//!
//! * **Through the router.** The binder connects exactly where applications will connect (the
//!   router host and the instance's port), so it always talks to the current primary and needs
//!   no knowledge of nodes or failovers. A connection that lands on a replica (a failover in
//!   progress) is refused and retried.
//! * **One database, one owner group.** Each instance gets one application database owned by
//!   a `NOLOGIN` group role. Every binding role is a member of the group and logs in with
//!   `role` set to the group (`ALTER ROLE ... SET role`), so tables created by one binding
//!   belong to the group: later bindings can use them, and dropping a binding never drops the
//!   application's data (`REASSIGN OWNED` hands anything left over to the group).
//! * **The password never reaches the server in clear.** The role's password is sent as a
//!   SCRAM-SHA-256 verifier computed here, so statement logs (`log_statement = ddl`) and
//!   `pg_stat_activity` only ever show the verifier. The plain password exists in the broker's
//!   memory and in the credentials returned to the platform, never in a log line.
//! * **Idempotent.** Binding again (after a failure or a lost answer) resets the role's
//!   password; unbinding a role that does not exist succeeds. Concurrent binds of one instance
//!   race only on creating the group and the database, and "already exists" is success.

use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio_postgres::error::SqlState;
use tracing::{info, warn};

use crate::api::{BindError, Binder, BoxFuture};
use crate::config::Secret;
use crate::state::{encode_component, Credentials, InstanceRecord, Store};

/// The superuser the binder connects as.
pub const SUPERUSER: &str = "postgres";

/// Where the binder finds an instance's superuser password.
pub trait SuperuserPassword: Send + Sync + 'static {
    /// The password of `instance`'s `postgres` superuser.
    fn superuser_password<'a>(
        &'a self,
        instance: &'a InstanceRecord,
    ) -> BoxFuture<'a, Result<Secret, BindError>>;
}

/// One password for every instance (tests, or a site with a single shared cluster).
#[derive(Clone)]
pub struct FixedPassword(pub Secret);

impl SuperuserPassword for FixedPassword {
    fn superuser_password<'a>(
        &'a self,
        _instance: &'a InstanceRecord,
    ) -> BoxFuture<'a, Result<Secret, BindError>> {
        Box::pin(async move { Ok(self.0.clone()) })
    }
}

/// The superuser passwords the provisioning worker stored for each instance
/// ([`Store::instance_secrets`]).
#[derive(Clone)]
pub struct StorePasswords(pub Store);

impl SuperuserPassword for StorePasswords {
    fn superuser_password<'a>(
        &'a self,
        instance: &'a InstanceRecord,
    ) -> BoxFuture<'a, Result<Secret, BindError>> {
        Box::pin(async move {
            match self.0.instance_secrets(&instance.id).await {
                Ok(Some(s)) => Ok(Secret::new(s.superuser_password.expose())),
                Ok(None) => Err(BindError::new(format!(
                    "instance {} has no stored secrets",
                    instance.id
                ))),
                Err(e) => Err(BindError {
                    message: format!("reading the secrets of instance {}: {e}", instance.id),
                    source: Some(Box::new(e)),
                }),
            }
        })
    }
}

/// Naming of the objects the binder creates in each instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinderOptions {
    /// The application database of every instance.
    pub database: String,
    /// The `NOLOGIN` role owning it; binding roles are its members.
    pub group_role: String,
    /// Connection timeout of one attempt.
    pub connect_timeout: Duration,
    /// Attempts of one bind or unbind (one second apart), for failovers in progress.
    pub attempts: u32,
}

impl Default for BinderOptions {
    fn default() -> Self {
        BinderOptions {
            database: "app".into(),
            group_role: "app_owner".into(),
            connect_timeout: Duration::from_secs(10),
            attempts: 5,
        }
    }
}

/// The [`Binder`] of a real broker: a PostgreSQL role per binding (see the module docs).
pub struct PgBinder {
    host: String,
    options: BinderOptions,
    passwords: Arc<dyn SuperuserPassword>,
}

impl std::fmt::Debug for PgBinder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgBinder")
            .field("host", &self.host)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// The role name of binding `binding_id`: `b_<id>` when the id is made of lowercase letters,
/// digits, `-` and `_` and fits PostgreSQL's 63-byte limit (GUIDs do), else `h_` and 40 hex
/// digits of the id's SHA-256. Distinct ids always give distinct names.
pub fn role_name(binding_id: &str) -> String {
    let plain = !binding_id.is_empty()
        && binding_id.len() <= 61
        && binding_id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if plain {
        format!("b_{binding_id}")
    } else {
        let digest = Sha256::digest(binding_id.as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        format!("h_{}", &hex[..40])
    }
}

/// `ident` as a quoted SQL identifier.
pub fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// `s` as an SQL string literal (standard_conforming_strings is on since PostgreSQL 9.1).
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The credentials object of a role on `host:port`.
pub fn credentials(
    host: &str,
    port: u16,
    database: &str,
    user: &str,
    password: &str,
) -> Credentials {
    let host_in_url = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    let db = encode_component(database);
    let query: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("user", user)
        .append_pair("password", password)
        .finish();
    Credentials {
        uri: format!(
            "postgres://{}:{}@{host_in_url}:{port}/{db}",
            encode_component(user),
            encode_component(password)
        ),
        jdbc_url: format!("jdbc:postgresql://{host_in_url}:{port}/{db}?{query}"),
        hostname: host.to_string(),
        port,
        name: database.to_string(),
        username: user.to_string(),
        password: password.to_string(),
    }
}

fn db_err(what: &str) -> impl FnOnce(tokio_postgres::Error) -> BindError + '_ {
    move |e| {
        // The server's message (never holds the password: only verifiers are sent).
        let message = match e.as_db_error() {
            Some(d) => format!("{what}: {} ({})", d.message(), d.code().code()),
            None => format!("{what}: {e}"),
        };
        BindError {
            message,
            source: Some(Box::new(e)),
        }
    }
}

/// Success when `r` failed only because the object exists already (a concurrent request).
fn exists_ok(r: Result<u64, tokio_postgres::Error>, what: &str) -> Result<(), BindError> {
    match r {
        Ok(_) => Ok(()),
        Err(e)
            if matches!(
                e.code(),
                Some(c) if *c == SqlState::DUPLICATE_OBJECT
                    || *c == SqlState::DUPLICATE_DATABASE
                    || *c == SqlState::UNIQUE_VIOLATION
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(db_err(what)(e)),
    }
}

impl PgBinder {
    /// A binder reaching instances at `host` (the router host) on their ports.
    pub fn new(
        host: impl Into<String>,
        passwords: Arc<dyn SuperuserPassword>,
        options: BinderOptions,
    ) -> PgBinder {
        PgBinder {
            host: host.into(),
            options,
            passwords,
        }
    }

    /// The options.
    pub fn options(&self) -> &BinderOptions {
        &self.options
    }

    async fn connect(
        &self,
        instance: &InstanceRecord,
        password: &Secret,
        dbname: &str,
    ) -> Result<tokio_postgres::Client, BindError> {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host(&self.host)
            .port(instance.port)
            .user(SUPERUSER)
            .password(password.expose())
            .dbname(dbname)
            .application_name("walarchive-broker")
            .connect_timeout(self.options.connect_timeout);
        let (client, connection) = cfg.connect(tokio_postgres::NoTls).await.map_err(|e| {
            db_err(&format!(
                "connecting to {}:{} as {SUPERUSER}",
                self.host, instance.port
            ))(e)
        })?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let in_recovery: bool = client
            .query_one("select pg_is_in_recovery()", &[])
            .await
            .map_err(db_err("checking the server role"))?
            .get(0);
        if in_recovery {
            return Err(BindError::new(format!(
                "{}:{} leads to a replica (failover in progress?)",
                self.host, instance.port
            )));
        }
        Ok(client)
    }

    async fn retrying<T, F, Fut>(&self, what: &str, mut f: F) -> Result<T, BindError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, BindError>>,
    {
        let attempts = self.options.attempts.max(1);
        let mut n = 1;
        loop {
            match f().await {
                Ok(v) => return Ok(v),
                Err(e) if n < attempts => {
                    warn!(attempt = n, error = %e, "{what} failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    n += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn bind_once(
        &self,
        instance: &InstanceRecord,
        binding_id: &str,
    ) -> Result<Credentials, BindError> {
        let su = self.passwords.superuser_password(instance).await?;
        let o = &self.options;
        let (db, group, role) = (&o.database, &o.group_role, role_name(binding_id));
        let admin = self.connect(instance, &su, "postgres").await?;

        // The group role and the database, once per instance.
        let has_group = admin
            .query_opt("select 1 from pg_roles where rolname = $1", &[group])
            .await
            .map_err(db_err("looking up the group role"))?
            .is_some();
        if !has_group {
            exists_ok(
                admin
                    .execute(&format!("create role {} nologin", quote_ident(group)), &[])
                    .await,
                "creating the group role",
            )?;
        }
        let has_db = admin
            .query_opt("select 1 from pg_database where datname = $1", &[db])
            .await
            .map_err(db_err("looking up the database"))?
            .is_some();
        if !has_db {
            exists_ok(
                admin
                    .execute(
                        &format!(
                            "create database {} owner {}",
                            quote_ident(db),
                            quote_ident(group)
                        ),
                        &[],
                    )
                    .await,
                "creating the database",
            )?;
        }
        // Only the group's members (and superusers) may connect; idempotent, so it also
        // completes a bind interrupted right after creating the database.
        admin
            .batch_execute(&format!(
                "revoke all on database {} from public",
                quote_ident(db)
            ))
            .await
            .map_err(db_err("setting the database's privileges"))?;

        // The binding's role, with a fresh password (re-binding resets it).
        let password = crate::patroni::Secret::generate();
        let verifier = postgres_protocol::password::scram_sha_256(password.expose().as_bytes());
        let exists = admin
            .query_opt("select 1 from pg_roles where rolname = $1", &[&role])
            .await
            .map_err(db_err("looking up the binding role"))?
            .is_some();
        let (r, g) = (quote_ident(&role), quote_ident(group));
        if !exists {
            exists_ok(
                admin
                    .execute(
                        &format!(
                            "create role {r} login password {}",
                            quote_literal(&verifier)
                        ),
                        &[],
                    )
                    .await,
                "creating the binding role",
            )?;
        }
        admin
            .batch_execute(&format!(
                "alter role {r} with login password {pw}; grant {g} to {r}; \
                 alter role {r} set role = {gl}; comment on role {r} is {comment}",
                pw = quote_literal(&verifier),
                gl = quote_literal(group),
                comment = quote_literal(&format!(
                    "walarchive-broker binding {binding_id} of instance {}",
                    instance.id
                )),
            ))
            .await
            .map_err(db_err("configuring the binding role"))?;
        Ok(credentials(
            &self.host,
            instance.port,
            db,
            &role,
            password.expose(),
        ))
    }

    async fn unbind_once(
        &self,
        instance: &InstanceRecord,
        binding_id: &str,
    ) -> Result<(), BindError> {
        let su = self.passwords.superuser_password(instance).await?;
        let role = role_name(binding_id);
        let group = &self.options.group_role;
        let admin = self.connect(instance, &su, "postgres").await?;
        let exists = admin
            .query_opt("select 1 from pg_roles where rolname = $1", &[&role])
            .await
            .map_err(db_err("looking up the binding role"))?
            .is_some();
        if !exists {
            return Ok(());
        }
        let (r, g) = (quote_ident(&role), quote_ident(group));
        // No new sessions, then end the current ones (and wait for them to be gone).
        admin
            .batch_execute(&format!("alter role {r} nologin"))
            .await
            .map_err(db_err("disabling the binding role"))?;
        for _ in 0..50 {
            let left = admin
                .query(
                    "select pg_terminate_backend(pid) from pg_stat_activity where usename = $1",
                    &[&role],
                )
                .await
                .map_err(db_err("terminating the binding's sessions"))?;
            if left.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Ownership and privileges are per database: hand over and drop in each of them.
        let has_group = admin
            .query_opt("select 1 from pg_roles where rolname = $1", &[group])
            .await
            .map_err(db_err("looking up the group role"))?
            .is_some();
        let dbs = admin
            .query(
                "select datname from pg_database where datallowconn order by datname",
                &[],
            )
            .await
            .map_err(db_err("listing the databases"))?;
        for row in dbs {
            let name: String = row.get(0);
            let c = if name == "postgres" {
                None
            } else {
                Some(self.connect(instance, &su, &name).await?)
            };
            let c = c.as_ref().unwrap_or(&admin);
            let reassign = if has_group {
                format!("reassign owned by {r} to {g}; ")
            } else {
                String::new()
            };
            c.batch_execute(&format!("{reassign}drop owned by {r}"))
                .await
                .map_err(db_err("dropping what the binding role owns"))?;
        }
        match admin
            .batch_execute(&format!("drop role if exists {r}"))
            .await
        {
            Ok(()) => Ok(()),
            Err(e) => Err(db_err("dropping the binding role")(e)),
        }
    }
}

impl Binder for PgBinder {
    fn bind<'a>(
        &'a self,
        instance: &'a InstanceRecord,
        binding_id: &'a str,
    ) -> BoxFuture<'a, Result<Credentials, BindError>> {
        Box::pin(async move {
            let c = self
                .retrying("bind", || self.bind_once(instance, binding_id))
                .await?;
            info!(instance = %instance.id, binding = %binding_id, role = %c.username, "binding role ready");
            Ok(c)
        })
    }

    fn unbind<'a>(
        &'a self,
        instance: &'a InstanceRecord,
        binding_id: &'a str,
    ) -> BoxFuture<'a, Result<(), BindError>> {
        Box::pin(async move {
            self.retrying("unbind", || self.unbind_once(instance, binding_id))
                .await?;
            info!(instance = %instance.id, binding = %binding_id, "binding role dropped");
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_are_distinct_and_valid() {
        let guid = "3f2a6c1e-2b7d-4c39-9a0e-5d6f7a8b9c01";
        assert_eq!(role_name(guid), format!("b_{guid}"));
        let upper = role_name("ABC");
        assert!(upper.starts_with("h_") && upper.len() == 42, "{upper}");
        assert_ne!(role_name("abc"), role_name("ABC"));
        assert!(role_name(&"x".repeat(255)).len() <= 63);
    }

    #[test]
    fn quoting_and_credentials() {
        assert_eq!(quote_ident(r#"a"b"#), r#""a""b""#);
        assert_eq!(quote_literal("it's"), "'it''s'");
        let c = credentials("db.example", 30001, "app", "b_x", "p/w+=");
        assert_eq!(c.uri, "postgres://b_x:p%2Fw%2B%3D@db.example:30001/app");
        assert_eq!(
            c.jdbc_url,
            "jdbc:postgresql://db.example:30001/app?user=b_x&password=p%2Fw%2B%3D"
        );
        assert!(!format!("{c:?}").contains("p/w"));
        let v6 = credentials("::1", 5432, "app", "u", "p");
        assert_eq!(v6.uri, "postgres://u:p@[::1]:5432/app");
    }
}
