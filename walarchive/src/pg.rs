//! Connecting to PostgreSQL the way its own tools do.
//!
//! tokio-postgres does not read libpq's environment, and operators expect `PGHOST`,
//! `PGPORT`, `PGUSER`, `PGPASSWORD`, `PGDATABASE` to work as they do for psql (cron jobs and
//! Patroni callbacks set exactly those). A connection string given explicitly wins; the
//! password never appears in logs because only host, port and user are ever printed.

use std::path::Path;

use tokio_postgres::{Client, Config, NoTls};

use crate::Error;

/// libpq's environment variables, read by the binary (the libraries never read the
/// environment); empty values count as unset. `Debug` never shows the password.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct PgEnv {
    /// `PGHOST`.
    pub host: Option<String>,
    /// `PGPORT`.
    pub port: Option<String>,
    /// `PGUSER`, else `USER`.
    pub user: Option<String>,
    /// `PGPASSWORD`.
    pub password: Option<String>,
    /// `PGDATABASE`.
    pub database: Option<String>,
}

impl PgEnv {
    /// The variables as `get` (a lookup in the environment) gives them.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Self {
        let get = |k: &str| get(k).filter(|v| !v.is_empty());
        PgEnv {
            host: get("PGHOST"),
            port: get("PGPORT"),
            user: get("PGUSER").or_else(|| get("USER")),
            password: get("PGPASSWORD"),
            database: get("PGDATABASE"),
        }
    }
}

impl std::fmt::Debug for PgEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgEnv")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("database", &self.database)
            .finish()
    }
}

/// Builds the connection configuration: `conn` (a libpq key=value string or URI) if given,
/// with libpq's environment variables `env` filling what it leaves out.
pub fn config(conn: Option<&str>, env: &PgEnv) -> Result<Config, Error> {
    let mut cfg: Config = match conn {
        Some(c) => c
            .parse()
            .map_err(|e| Error::Config(format!("invalid PostgreSQL connection string: {e}")))?,
        None => Config::new(),
    };
    if cfg.get_hosts().is_empty() {
        let host = env.host.as_deref().unwrap_or("/var/run/postgresql");
        for h in host.split(',') {
            if h.starts_with('/') {
                cfg.host_path(Path::new(h));
            } else {
                cfg.host(h);
            }
        }
    }
    if cfg.get_ports().is_empty() {
        let port = env.port.as_deref().unwrap_or("5432");
        let port: u16 = port
            .parse()
            .map_err(|_| Error::Config(format!("PGPORT is not a port number: {port:?}")))?;
        cfg.port(port);
    }
    if cfg.get_user().is_none() {
        cfg.user(env.user.as_deref().unwrap_or("postgres"));
    }
    if cfg.get_password().is_none() {
        if let Some(p) = &env.password {
            cfg.password(p);
        }
    }
    if cfg.get_dbname().is_none() {
        cfg.dbname(env.database.as_deref().unwrap_or("postgres"));
    }
    cfg.application_name("walarchive");
    Ok(cfg)
}

/// A printable description of where `cfg` connects (never the password).
pub fn describe(cfg: &Config) -> String {
    let host = match cfg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "?".into(),
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    format!("{}@{host}:{port}", cfg.get_user().unwrap_or("?"))
}

/// Connects (without TLS: backups run next to the server) and drives the connection.
pub async fn connect(cfg: &Config) -> Result<Client, Error> {
    let (client, connection) = cfg.connect(NoTls).await.map_err(|e| {
        Error::Postgres(format!(
            "cannot connect to PostgreSQL at {}: {}",
            describe(cfg),
            error_chain(&e)
        ))
    })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("PostgreSQL connection closed: {e}");
        }
    });
    Ok(client)
}

/// A PostgreSQL client error with its causes ("error connecting to server: Connection
/// refused"), or the server's message and hint.
pub fn error_chain(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return match db.hint() {
            Some(h) => format!("{} ({h})", db.message()),
            None => db.message().to_string(),
        };
    }
    let mut msg = e.to_string();
    let mut cur = std::error::Error::source(e);
    while let Some(c) = cur {
        let text = c.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        cur = c.source();
    }
    msg
}
