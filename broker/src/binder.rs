//! Binding credentials as PostgreSQL roles, created on the instance's leader by its cell.
//!
//! Why this shape:
//!
//! * **Through the leader's cell, never as the superuser over the network.** The superuser
//!   only exists on each node's Unix socket (see [`crate::patroni::NodeConfig::pg_hba`]): a
//!   superuser password that worked through the router would let anyone holding it run
//!   programs as the node's OS user (`COPY ... TO PROGRAM`). So the broker asks the cell of
//!   the current leader (found through the cells, as the worker finds it: that side is
//!   [`crate::cell::CellBinder`]) to create or drop the role, and the cell runs the SQL over
//!   the socket ([`create_role`], [`drop_role`]). A
//!   cell whose node is no longer the leader (a failover in progress) answers 409 and the
//!   broker tries again.
//! * **One database, one owner group.** Each instance gets one application database owned by
//!   a `NOLOGIN` group role. Every binding role is a member of the group and logs in with
//!   `role` set to the group (`ALTER ROLE ... SET role`), so tables created by one binding
//!   belong to the group: later bindings can use them, and dropping a binding never drops the
//!   application's data (`REASSIGN OWNED` hands anything left over to the group).
//! * **Unprivileged.** Binding roles and the group are `NOSUPERUSER NOCREATEDB NOCREATEROLE
//!   NOREPLICATION NOBYPASSRLS` and members of none of PostgreSQL's server-access roles
//!   (`pg_execute_server_program`, `pg_read_server_files`, `pg_write_server_files`), every
//!   time a binding is (re)created.
//! * **The password never leaves the broker in clear.** The role's password is sent to the
//!   cell, and to the server, as a SCRAM-SHA-256 verifier computed here, so statement logs
//!   (`log_statement = ddl`) and `pg_stat_activity` only ever show the verifier. The plain
//!   password exists in the broker's memory and in the credentials returned to the platform
//!   (sealed in etcd), never in a log line.
//! * **Idempotent.** Binding again (after a failure or a lost answer) resets the role's
//!   password; unbinding a role that does not exist succeeds. Concurrent binds of one instance
//!   race only on creating the group and the database, and "already exists" is success.

use std::future::Future;
use std::time::Duration;

use postgres_protocol::escape::{escape_identifier, escape_literal};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio_postgres::error::SqlState;

use crate::api::BindError;
use crate::secrets::Secret;
use crate::state::{encode_component, Credentials, InstanceRecord};

/// PostgreSQL's roles that reach the server's files and programs: never granted to a binding.
pub const SERVER_ROLES: &[&str] = &[
    "pg_execute_server_program",
    "pg_read_server_files",
    "pg_write_server_files",
];

/// The attributes of every role the binder creates.
const UNPRIVILEGED: &str = "nosuperuser nocreatedb nocreaterole noreplication nobypassrls";

/// Naming of the objects the binder creates in each instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinderOptions {
    /// The application database of every instance.
    pub database: String,
    /// The `NOLOGIN` role owning it; binding roles are its members.
    pub group_role: String,
    /// Attempts of one bind or unbind (one second apart), for failovers in progress.
    pub attempts: u32,
}

impl Default for BinderOptions {
    fn default() -> Self {
        BinderOptions {
            database: "app".into(),
            group_role: "app_owner".into(),
            attempts: 5,
        }
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
        read_only_uri: None,
        read_only_port: None,
        uri_multihost: None,
        jdbc_url_multihost: None,
    }
}

/// `host:port` for a URI's authority: an IPv6 address in brackets.
fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Adds the router's read-only port to `c` (the same role and database as `c.uri`, on
/// `port` of the same router host).
pub fn add_read_only(c: &mut Credentials, port: u16) {
    c.read_only_uri = Some(format!(
        "postgres://{}:{}@{}/{}",
        encode_component(&c.username),
        encode_component(&c.password),
        authority(&c.hostname, port),
        encode_component(&c.name),
    ));
    c.read_only_port = Some(port);
}

/// Adds the multi-host URIs to `c`: every node in `nodes` (host as its cell advertises it,
/// PostgreSQL port) directly, for clients that find the primary themselves
/// (`target_session_attrs=read-write`, JDBC's `targetServerType=primary`). Nothing when
/// `nodes` is empty.
pub fn add_multihost(c: &mut Credentials, nodes: &[(String, u16)]) {
    if nodes.is_empty() {
        return;
    }
    let hosts: Vec<String> = nodes.iter().map(|(h, p)| authority(h, *p)).collect();
    let hosts = hosts.join(",");
    let db = encode_component(&c.name);
    c.uri_multihost = Some(format!(
        "postgresql://{}:{}@{hosts}/{db}?target_session_attrs=read-write",
        encode_component(&c.username),
        encode_component(&c.password),
    ));
    let query: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("targetServerType", "primary")
        .append_pair("user", &c.username)
        .append_pair("password", &c.password)
        .finish();
    c.jdbc_url_multihost = Some(format!("jdbc:postgresql://{hosts}/{db}?{query}"));
}

/// The server is not (any more) the primary: the caller asks the leader instead.
#[derive(Debug, thiserror::Error)]
#[error("the server is not the primary")]
pub struct NotLeader;

/// Whether `e` failed because its server is not the primary: a replica, one in recovery
/// (read-only transaction, "cannot connect now"), as opposed to every other refusal.
pub fn not_leader(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if c.is::<NotLeader>() {
            return true;
        }
        if let Some(pg) = c.downcast_ref::<tokio_postgres::Error>() {
            return matches!(pg.code(), Some(code) if *code == SqlState::READ_ONLY_SQL_TRANSACTION
                || *code == SqlState::CANNOT_CONNECT_NOW);
        }
        cause = c.source();
    }
    false
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

/// Whether `name` is a name [`role_name`] gives (`b_...` or `h_...`, at most 63 bytes of
/// lowercase letters, digits, `-` and `_`): what a cell accepts.
pub fn valid_role_name(name: &str) -> bool {
    (name.starts_with("b_") || name.starts_with("h_"))
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Whether `name` is a plain SQL name (`[a-z_][a-z0-9_]*`, at most 63 bytes): the database
/// and the group role.
pub fn valid_object_name(name: &str) -> bool {
    name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// What the broker asks the leader's cell to create: a binding's role.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleRequest {
    /// The instance's application database.
    pub database: String,
    /// The `NOLOGIN` role owning it, of which the binding's role becomes a member.
    pub group: String,
    /// The role's password as a SCRAM-SHA-256 verifier.
    pub verifier: String,
    /// The role's comment (which binding of which instance).
    pub comment: String,
}

impl std::fmt::Debug for RoleRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoleRequest")
            .field("database", &self.database)
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

impl RoleRequest {
    /// Checks what a cell receives: names it can put into SQL unquoted-safe.
    pub fn validate(&self) -> Result<(), String> {
        if !valid_object_name(&self.database) || !valid_object_name(&self.group) {
            return Err("database and group must be [a-z_][a-z0-9_]*, at most 63 bytes".into());
        }
        if !self.verifier.starts_with("SCRAM-SHA-256$") {
            return Err("the password must be a SCRAM-SHA-256 verifier".into());
        }
        Ok(())
    }
}

/// A binding's role on an instance: the request for its cell, and its plain password (for
/// the credentials).
pub fn new_role(
    options: &BinderOptions,
    instance: &InstanceRecord,
    binding_id: &str,
) -> (String, RoleRequest, Secret) {
    let password = Secret::generate();
    let verifier = postgres_protocol::password::scram_sha_256(password.expose().as_bytes());
    let req = RoleRequest {
        database: options.database.clone(),
        group: options.group_role.clone(),
        verifier,
        comment: format!(
            "walarchive-broker binding {binding_id} of instance {}",
            instance.id
        ),
    };
    (role_name(binding_id), req, password)
}

/// Creates (or resets) binding role `role` as `req` says, on the session `admin` (a
/// superuser on the primary), with the group role and the database when missing.
pub async fn create_role(
    admin: &tokio_postgres::Client,
    role: &str,
    req: &RoleRequest,
) -> Result<(), BindError> {
    let (db, group) = (&req.database, &req.group);
    let in_recovery: bool = admin
        .query_one("select pg_is_in_recovery()", &[])
        .await
        .map_err(db_err("checking the server role"))?
        .get(0);
    if in_recovery {
        return Err(BindError {
            message: "the server is a replica".into(),
            source: Some(Box::new(NotLeader)),
        });
    }
    // The group role and the database, once per instance.
    let has_group = admin
        .query_opt("select 1 from pg_roles where rolname = $1", &[group])
        .await
        .map_err(db_err("looking up the group role"))?
        .is_some();
    if !has_group {
        exists_ok(
            admin
                .execute(
                    &format!(
                        "create role {} nologin {UNPRIVILEGED}",
                        escape_identifier(group)
                    ),
                    &[],
                )
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
                        escape_identifier(db),
                        escape_identifier(group)
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
            escape_identifier(db)
        ))
        .await
        .map_err(db_err("setting the database's privileges"))?;

    let exists = admin
        .query_opt("select 1 from pg_roles where rolname = $1", &[&role])
        .await
        .map_err(db_err("looking up the binding role"))?
        .is_some();
    let (r, g) = (escape_identifier(role), escape_identifier(group));
    let pw = escape_literal(&req.verifier);
    if !exists {
        exists_ok(
            admin
                .execute(
                    &format!("create role {r} login {UNPRIVILEGED} password {pw}"),
                    &[],
                )
                .await,
            "creating the binding role",
        )?;
    }
    let server_roles: Vec<String> = SERVER_ROLES.iter().map(|s| escape_identifier(s)).collect();
    admin
        .batch_execute(&format!(
            "alter role {r} with login {UNPRIVILEGED} password {pw}; \
             alter role {g} with nologin {UNPRIVILEGED}; \
             revoke {sr} from {r}, {g}; grant {g} to {r}; \
             alter role {r} set role = {gl}; comment on role {r} is {comment}",
            sr = server_roles.join(", "),
            gl = escape_literal(group),
            comment = escape_literal(&req.comment),
        ))
        .await
        .map_err(db_err("configuring the binding role"))?;
    Ok(())
}

/// Drops binding role `role` (success when it does not exist): no new sessions, the current
/// ones ended, what it owns in every database handed to `group` (when it exists), then the
/// role. `connect(db)` gives a superuser session on database `db` of the same server.
pub async fn drop_role<C, Fut>(
    admin: &tokio_postgres::Client,
    group: &str,
    role: &str,
    connect: C,
) -> Result<(), BindError>
where
    C: Fn(String) -> Fut,
    Fut: Future<Output = Result<tokio_postgres::Client, BindError>>,
{
    let exists = admin
        .query_opt("select 1 from pg_roles where rolname = $1", &[&role])
        .await
        .map_err(db_err("looking up the binding role"))?
        .is_some();
    if !exists {
        return Ok(());
    }
    let (r, g) = (escape_identifier(role), escape_identifier(group));
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
        .query_opt("select 1 from pg_roles where rolname = $1", &[&group])
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
            Some(connect(name).await?)
        };
        let c = c.as_ref().unwrap_or(admin);
        let reassign = if has_group {
            format!("reassign owned by {r} to {g}; ")
        } else {
            String::new()
        };
        c.batch_execute(&format!("{reassign}drop owned by {r}"))
            .await
            .map_err(db_err("dropping what the binding role owns"))?;
    }
    admin
        .batch_execute(&format!("drop role if exists {r}"))
        .await
        .map_err(db_err("dropping the binding role"))
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
        assert_eq!(escape_identifier(r#"a"b"#), r#""a""b""#);
        assert_eq!(escape_literal("it's"), "'it''s'");
        // Backslashes too, whatever standard_conforming_strings says.
        assert_eq!(escape_literal(r"a\b"), r" E'a\\b'");
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

    #[test]
    fn read_only_and_multihost_uris() {
        let mut c = credentials("db.example", 30001, "app", "b_x", "p/w+=@:,&?");
        add_read_only(&mut c, 30002);
        assert_eq!(
            c.read_only_uri.as_deref(),
            Some("postgres://b_x:p%2Fw%2B%3D%40%3A%2C%26%3F@db.example:30002/app")
        );
        assert_eq!(c.read_only_port, Some(30002));
        add_multihost(
            &mut c,
            &[("10.0.0.1".into(), 5432), ("fd00::2".into(), 5433)],
        );
        assert_eq!(
            c.uri_multihost.as_deref(),
            Some(
                "postgresql://b_x:p%2Fw%2B%3D%40%3A%2C%26%3F@10.0.0.1:5432,[fd00::2]:5433/app\
                 ?target_session_attrs=read-write"
            )
        );
        assert_eq!(
            c.jdbc_url_multihost.as_deref(),
            Some(
                "jdbc:postgresql://10.0.0.1:5432,[fd00::2]:5433/app?targetServerType=primary\
                 &user=b_x&password=p%2Fw%2B%3D%40%3A%2C%26%3F"
            )
        );
        // libpq's parser (as tokio-postgres implements it) reads back every host, the user
        // and the password.
        let cfg: tokio_postgres::Config = c.uri_multihost.as_deref().unwrap().parse().unwrap();
        assert_eq!(cfg.get_user(), Some("b_x"));
        assert_eq!(cfg.get_password(), Some("p/w+=@:,&?".as_bytes()));
        assert_eq!(cfg.get_ports(), &[5432, 5433]);
        assert_eq!(
            cfg.get_target_session_attrs(),
            tokio_postgres::config::TargetSessionAttrs::ReadWrite
        );
        let hosts: Vec<String> = cfg
            .get_hosts()
            .iter()
            .map(|h| match h {
                tokio_postgres::config::Host::Tcp(h) => h.clone(),
                _ => panic!("a TCP host"),
            })
            .collect();
        assert_eq!(hosts, ["10.0.0.1", "fd00::2"]);
        let mut v6 = credentials("fd00::1", 30001, "app", "u", "p");
        add_read_only(&mut v6, 30002);
        assert_eq!(
            v6.read_only_uri.as_deref(),
            Some("postgres://u:p@[fd00::1]:30002/app")
        );
        // No node known: no multi-host URIs.
        add_multihost(&mut v6, &[]);
        assert_eq!((v6.uri_multihost, v6.jdbc_url_multihost), (None, None));
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("p/w") && !dbg.contains("p%2Fw"), "{dbg}");
        // An old binding record (no new fields) still decodes.
        let old: Credentials = serde_json::from_value(serde_json::json!({
            "uri": "postgres://u:p@h:1/app", "jdbcUrl": "jdbc:postgresql://h:1/app",
            "hostname": "h", "port": 1, "name": "app", "username": "u", "password": "p",
        }))
        .unwrap();
        assert_eq!((old.read_only_port, old.uri_multihost), (None, None));
    }
}
