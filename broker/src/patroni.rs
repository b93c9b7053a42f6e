//! Patroni configuration for one PostgreSQL node of an instance.
//!
//! Patroni (3.0.2 here) does the hard part of high availability: leader election through etcd,
//! promotion, pg_rewind and re-cloning. The broker's job is to hand it a configuration in which
//! every node of an instance archives into the instance's walarchive repository, and in which a
//! new replica is cloned from that repository's newest base backup (walarchive `backup-fetch`)
//! before falling back to `pg_basebackup` from the leader, so that adding a node does not load
//! the leader when a backup exists.
//!
//! The file is written as JSON, which YAML parsers read as YAML, so no YAML library is needed.
//! It holds the database passwords, so the cell writes it with mode 0600 for the postgres user:
//! passwords never travel on a command line.
//!
//! Settings that are the same on every node (timeouts, `wal_level`, synchronous mode...) go
//! into `bootstrap.dcs`, which Patroni stores in etcd when the first node initialises the
//! cluster; settings that name paths on the node's own machine (`archive_command`,
//! `restore_command`) go into the local `postgresql` section, which Patroni merges over them.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub mod bootstrap;
use serde_json::{json, Value};
use walarchive::shell::{quote, QuoteError};

use bootstrap::{BootstrapSpec, RESTORE_BOOTSTRAP_SCRIPT, RESTORE_POST_BOOTSTRAP_SCRIPT};

// The type of the passwords below; re-exported for the test harness, which names it here.
pub use crate::secrets::Secret;

/// Patroni's failure-detection timing (seconds), stored in etcd at bootstrap.
///
/// Patroni requires `loop_wait + 2 * retry_timeout <= ttl`; a leader is replaced about `ttl`
/// seconds after it vanished.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DcsTiming {
    /// Leader key lease time.
    pub ttl: u32,
    /// Seconds between two runs of Patroni's HA loop.
    pub loop_wait: u32,
    /// How long Patroni retries etcd and PostgreSQL operations before giving up.
    pub retry_timeout: u32,
    /// A replica lagging more bytes than this is not promoted.
    pub maximum_lag_on_failover: u64,
}

impl Default for DcsTiming {
    fn default() -> Self {
        DcsTiming {
            ttl: 30,
            loop_wait: 10,
            retry_timeout: 10,
            maximum_lag_on_failover: 1 << 20,
        }
    }
}

/// How Patroni reaches an etcd that speaks TLS: files on the node's machine, readable by
/// the node's OS user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdTls {
    /// CA of etcd's server certificate.
    pub ca_file: PathBuf,
    /// Client certificate (when etcd requires one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// Its key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
}

/// Patroni's etcd user, when etcd's authentication is on. `Debug` hides the password.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdCredentials {
    /// The user.
    pub username: String,
    /// Its password.
    pub password: Secret,
}

/// Everything needed to write one node's Patroni configuration.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Patroni `scope`: the instance's name (all nodes of an instance share it).
    pub scope: String,
    /// Patroni `namespace`: etcd key prefix, e.g. `/walarchive-broker/patroni/`.
    pub namespace: String,
    /// Patroni `name`: this node's member name.
    pub node_name: String,
    /// etcd client endpoints (`host:port`).
    pub etcd_hosts: Vec<String>,
    /// TLS towards etcd (`https`), if etcd speaks it.
    pub etcd_tls: Option<EtcdTls>,
    /// Patroni's etcd user, if etcd's authentication is on.
    pub etcd_credentials: Option<EtcdCredentials>,
    /// Address the other nodes and the routers reach this node at.
    pub host: String,
    /// Other hosts allowed to replicate from this node (the instance's other cells).
    pub peer_hosts: Vec<String>,
    /// PostgreSQL port.
    pub pg_port: u16,
    /// Patroni REST API port.
    pub api_port: u16,
    /// The node directory (`<data_root>/<node_name>`).
    pub node_dir: PathBuf,
    /// PostgreSQL's Unix-socket directory: short and the same for every node of the cell
    /// (socket paths are limited to 107 bytes; the socket's name holds the port).
    pub socket_dir: PathBuf,
    /// PostgreSQL binaries (`pg_ctl`, `initdb`, ...).
    pub pg_bin_dir: PathBuf,
    /// The walarchive executable (must be executable by the postgres user).
    pub walarchive: PathBuf,
    /// The instance's repository URL.
    pub repository: String,
    /// `archive_timeout` in seconds.
    pub archive_timeout: u32,
    /// Patroni `synchronous_mode`.
    pub synchronous: bool,
    /// PostgreSQL's `synchronous_commit`, when not its default (a local parameter: Patroni
    /// applies it on reload).
    pub synchronous_commit: Option<String>,
    /// Failure-detection timing.
    pub timing: DcsTiming,
    /// `initdb --wal-segsize` in MiB (PostgreSQL's default, 16, when `None`).
    pub wal_segsize_mb: Option<u32>,
    /// Password of the `postgres` superuser.
    pub superuser_password: Secret,
    /// Password of the `replicator` replication user.
    pub replication_password: Secret,
    /// Password of the `rewinder` user pg_rewind connects to the leader as (instances
    /// created before it existed have none: they rewind as the superuser, which the network
    /// no longer reaches, so a failed-over node of theirs is cloned afresh instead).
    pub rewind_password: Option<Secret>,
    /// OS users that may act as the superuser over the Unix socket (peer authentication):
    /// the nodes' user and the cell agent's.
    pub ident_users: Vec<String>,
    /// Password protecting Patroni's REST API's unsafe endpoints (user `patroni`).
    pub restapi_password: Secret,
    /// Bootstrap the cluster from another repository instead of `initdb` ([`bootstrap`]).
    pub bootstrap: Option<BootstrapSpec>,
}

/// The superuser's name.
pub const SUPERUSER: &str = "postgres";
/// The replication user's name.
pub const REPLICATION_USER: &str = "replicator";
/// The REST API user's name.
pub const RESTAPI_USER: &str = "patroni";
/// The user pg_rewind connects to the leader as (Patroni grants it what pg_rewind reads).
pub const REWIND_USER: &str = "rewinder";
/// The pg_ident.conf map of the OS users that may act as the superuser locally.
pub const IDENT_MAP: &str = "walarchive";
/// File name of the replica-creation wrapper in the node directory.
pub const REPLICA_FETCH_SCRIPT: &str = "replica-fetch.sh";
/// File name of Patroni's `on_role_change` callback in the node directory.
pub const ROLE_CHANGE_SCRIPT: &str = "on-role-change.sh";

impl NodeConfig {
    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.node_dir.join("data")
    }

    /// `archive_command` for PostgreSQL.
    pub fn archive_command(&self) -> Result<String, QuoteError> {
        Ok(format!(
            "{} --repo {} wal-push %p",
            quote(&self.walarchive.display().to_string())?,
            quote(&self.repository)?
        ))
    }

    /// `restore_command` for PostgreSQL.
    pub fn restore_command(&self) -> Result<String, QuoteError> {
        Ok(format!(
            "{} --repo {} wal-fetch %f %p",
            quote(&self.walarchive.display().to_string())?,
            quote(&self.repository)?
        ))
    }

    /// Patroni's `etcd3` section.
    fn etcd3(&self) -> Value {
        let mut etcd = json!({"hosts": self.etcd_hosts});
        if let Some(t) = &self.etcd_tls {
            etcd["protocol"] = "https".into();
            etcd["cacert"] = t.ca_file.display().to_string().into();
            if let (Some(c), Some(k)) = (&t.cert_file, &t.key_file) {
                etcd["cert"] = c.display().to_string().into();
                etcd["key"] = k.display().to_string().into();
            }
        }
        if let Some(c) = &self.etcd_credentials {
            etcd["username"] = c.username.clone().into();
            etcd["password"] = c.password.expose().into();
        }
        etcd
    }

    /// The `listen` value: the node's host and, when that is not loopback, 127.0.0.1 too
    /// (Patroni connects to its PostgreSQL through the first address).
    fn listen(&self, port: u16) -> String {
        if is_loopback(&self.host) {
            format!("127.0.0.1:{port}")
        } else {
            format!("127.0.0.1,{}:{port}", self.host)
        }
    }

    /// pg_hba.conf lines (first match wins):
    ///
    /// * the superuser only over the Unix socket, for the node's own OS user and the cell
    ///   agent (peer authentication): Patroni, backups and the cell's binding requests run
    ///   there. No password opens it over the network, through the router least of all:
    ///   `COPY ... TO PROGRAM` would run anything as the node's OS user;
    /// * replication, and pg_rewind's user, only from the instance's other nodes;
    /// * those roles refused from anywhere else, and every other role (the bindings', which
    ///   come through routers whose addresses the cell does not know) with a password.
    ///
    /// A router on the same machine as a node must connect from an address of its own
    /// (`router.source_address`), or it would pass for that node.
    pub fn pg_hba(&self) -> Vec<String> {
        let mut hba = vec![
            format!("local all {SUPERUSER} peer map={IDENT_MAP}"),
            format!("local replication {SUPERUSER} peer map={IDENT_MAP}"),
            "local all all reject".to_string(),
        ];
        let mut peers = self.peer_hosts.clone();
        peers.sort();
        peers.dedup();
        for h in &peers {
            let cidr = host_cidr(h);
            hba.push(format!(
                "host replication {REPLICATION_USER} {cidr} scram-sha-256"
            ));
            if self.rewind_password.is_some() {
                hba.push(format!("host postgres {REWIND_USER} {cidr} scram-sha-256"));
            }
        }
        for net in ["0.0.0.0/0", "::/0"] {
            hba.push(format!(
                "host all {SUPERUSER},{REPLICATION_USER},{REWIND_USER} {net} reject"
            ));
            hba.push(format!("host replication all {net} reject"));
        }
        for net in ["0.0.0.0/0", "::/0"] {
            hba.push(format!("host all all {net} scram-sha-256"));
        }
        hba
    }

    /// pg_ident.conf lines: the OS users that act as the superuser over the socket.
    pub fn pg_ident(&self) -> Vec<String> {
        let mut users = self.ident_users.clone();
        users.sort();
        users.dedup();
        users
            .iter()
            .map(|u| format!("{IDENT_MAP} {u} {SUPERUSER}"))
            .collect()
    }

    fn authentication(&self) -> Value {
        let mut a = json!({
            "superuser": {"username": SUPERUSER, "password": self.superuser_password.expose()},
            "replication": {"username": REPLICATION_USER, "password": self.replication_password.expose()},
        });
        if let Some(pw) = &self.rewind_password {
            a["rewind"] = json!({"username": REWIND_USER, "password": pw.expose()});
        }
        a
    }

    /// The Patroni configuration document.
    pub fn to_value(&self) -> Result<Value, QuoteError> {
        let t = &self.timing;
        let mut initdb = vec![json!({"encoding": "UTF8"}), json!("data-checksums")];
        if let Some(mb) = self.wal_segsize_mb {
            initdb.push(json!({"wal-segsize": mb.to_string()}));
        }
        let node_dir = self.node_dir.display().to_string();
        let mut v = json!({
            "scope": self.scope,
            "namespace": self.namespace,
            "name": self.node_name,
            "log": {"level": "INFO"},
            "restapi": {
                "listen": self.listen(self.api_port),
                "connect_address": format!("{}:{}", self.host, self.api_port),
                "authentication": {
                    "username": RESTAPI_USER,
                    "password": self.restapi_password.expose(),
                },
            },
            "etcd3": self.etcd3(),
            "bootstrap": {
                "dcs": {
                    "ttl": t.ttl,
                    "loop_wait": t.loop_wait,
                    "retry_timeout": t.retry_timeout,
                    "maximum_lag_on_failover": t.maximum_lag_on_failover,
                    "synchronous_mode": self.synchronous,
                    "postgresql": {
                        "use_pg_rewind": true,
                        "use_slots": true,
                        "remove_data_directory_on_rewind_failure": true,
                        "remove_data_directory_on_diverged_timelines": true,
                        "parameters": {
                            "wal_level": "replica",
                            "archive_mode": "on",
                            "archive_timeout": self.archive_timeout,
                            "max_wal_senders": 10,
                            "max_replication_slots": 10,
                            "hot_standby": "on",
                            "wal_log_hints": "on",
                        },
                    },
                },
                "initdb": initdb,
            },
            "postgresql": {
                "listen": self.listen(self.pg_port),
                "connect_address": format!("{}:{}", self.host, self.pg_port),
                "data_dir": self.data_dir().display().to_string(),
                "bin_dir": self.pg_bin_dir.display().to_string(),
                "pgpass": format!("{node_dir}/pgpass"),
                "authentication": self.authentication(),
                "use_unix_socket": true,
                "parameters": {
                    "archive_command": self.archive_command()?,
                    "unix_socket_directories": self.socket_dir.display().to_string(),
                },
                "recovery_conf": {"restore_command": self.restore_command()?},
                "pg_hba": self.pg_hba(),
                "pg_ident": self.pg_ident(),
                "create_replica_methods": ["walarchive", "basebackup"],
                "walarchive": {
                    "command": format!("{node_dir}/{REPLICA_FETCH_SCRIPT}"),
                    "no_leader": true,
                },
                "basebackup": [{"checkpoint": "fast"}],
                "callbacks": {"on_role_change": format!("{node_dir}/{ROLE_CHANGE_SCRIPT}")},
            },
            "tags": {"nofailover": false, "noloadbalance": false, "clonefrom": false, "nosync": false},
        });
        if let Some(sc) = &self.synchronous_commit {
            v["postgresql"]["parameters"]["synchronous_commit"] = sc.as_str().into();
        }
        if self.bootstrap.is_some() {
            // No `recovery_conf` in the method: walarchive wrote the recovery settings.
            let b = &mut v["bootstrap"];
            b["method"] = bootstrap::METHOD.into();
            b[bootstrap::METHOD] = json!({
                "command": format!("{node_dir}/{RESTORE_BOOTSTRAP_SCRIPT}"),
                "keep_existing_recovery_conf": true,
            });
            b["post_bootstrap"] = format!("{node_dir}/{RESTORE_POST_BOOTSTRAP_SCRIPT}").into();
        }
        Ok(v)
    }

    /// The custom bootstrap script of a node with a bootstrap spec
    /// ([`bootstrap::restore_bootstrap_script`]).
    pub fn restore_bootstrap_script(&self) -> Option<Result<String, QuoteError>> {
        let spec = self.bootstrap.as_ref()?;
        Some(bootstrap::restore_bootstrap_script(
            &self.walarchive,
            &self.node_dir,
            spec,
        ))
    }

    /// The post-bootstrap script of a node with a bootstrap spec
    /// ([`bootstrap::restore_post_bootstrap_script`]).
    pub fn restore_post_bootstrap_script(&self) -> Option<Result<String, QuoteError>> {
        let spec = self.bootstrap.as_ref()?;
        Some(bootstrap::restore_post_bootstrap_script(
            &self.pg_bin_dir.join("psql"),
            spec,
        ))
    }

    /// The configuration file's text (JSON, which is valid YAML).
    pub fn render(&self) -> Result<String, QuoteError> {
        Ok(serde_json::to_string_pretty(&self.to_value()?).expect("JSON values serialize") + "\n")
    }

    /// The replica-creation wrapper Patroni runs as its `walarchive` replica method, with
    /// `--scope= --role= --datadir= --connstring=` arguments: it restores the repository's
    /// newest base backup into the data directory as a standby and exits non-zero when there
    /// is none (or it fails), so that Patroni falls back to `pg_basebackup`.
    pub fn replica_fetch_script(&self) -> Result<String, QuoteError> {
        replica_fetch_script(&self.walarchive, &self.repository)
    }

    /// Patroni's `on_role_change` callback (`ACTION ROLE SCOPE` arguments): on becoming the
    /// leader, switch to a new WAL segment as soon as the promotion is done.
    ///
    /// Why: a promotion starts a new timeline inside the current segment, and until that
    /// segment of the new timeline is archived (when full, or after `archive_timeout`), the
    /// repository's only copy of that segment number may be the old timeline's: a former
    /// leader archives its finished segments before pg_rewind, including WAL written after
    /// the fork. A replica restored from the archive in that window (`recovery_target_timeline
    /// = latest`) asks for the new timeline's segment, does not find it, and takes the old
    /// timeline's, replaying WAL the new leader never had. Switching at once shrinks the
    /// window to one archive_command.
    pub fn role_change_script(&self) -> Result<String, QuoteError> {
        Ok(format!(
            r#"#!/bin/sh
# Written by walarchive-broker: Patroni's on_role_change callback.
# Patroni runs it without waiting for the promotion to finish: wait until the server
# accepts writes (at most a minute), then switch to a new WAL segment.
case "$2" in
    master|primary) ;;
    *) exit 0 ;;
esac
q() {{ {psql} -X -A -t -q -h {socket} -p {port} -U {SUPERUSER} -d postgres -c "$1"; }}
i=0
while [ $i -lt 120 ]; do
    if [ "$(q 'SELECT pg_is_in_recovery()' 2>/dev/null)" = f ]; then
        q 'SELECT pg_switch_wal()' >/dev/null && exit 0
    fi
    sleep 0.5
    i=$((i + 1))
done
echo "on-role-change: could not switch WAL on the new leader" >&2
exit 0
"#,
            psql = quote(&self.pg_bin_dir.join("psql").display().to_string())?,
            socket = quote(&self.socket_dir.display().to_string())?,
            port = self.pg_port,
        ))
    }
}

/// See [`NodeConfig::replica_fetch_script`].
pub fn replica_fetch_script(walarchive: &Path, repository: &str) -> Result<String, QuoteError> {
    Ok(format!(
        r#"#!/bin/sh
# Written by walarchive-broker: Patroni's "walarchive" replica method.
datadir=
for arg; do
    case "$arg" in
        --datadir=*) datadir="${{arg#--datadir=}}" ;;
    esac
done
if [ -z "$datadir" ]; then
    echo "replica-fetch: no --datadir argument" >&2
    exit 2
fi
{walarchive} --repo {repo} backup-fetch --force --standby "$datadir" LATEST
status=$?
if [ "$status" -eq 0 ]; then
    exit 0
fi
# Leave nothing behind for pg_basebackup, which wants an empty or missing directory.
rm -rf "$datadir"
exit $status
"#,
        walarchive = quote(&walarchive.display().to_string())?,
        repo = quote(repository)?,
    ))
}

fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.starts_with("127.") || host == "::1"
}

fn host_cidr(host: &str) -> String {
    if host.parse::<std::net::Ipv4Addr>().is_ok() {
        format!("{host}/32")
    } else if host.parse::<std::net::Ipv6Addr>().is_ok() {
        format!("{host}/128")
    } else {
        host.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> NodeConfig {
        NodeConfig {
            scope: "inst-1".into(),
            namespace: "/walarchive-broker/patroni/".into(),
            node_name: "inst-1-0".into(),
            etcd_hosts: vec!["127.0.0.1:2379".into()],
            etcd_tls: Some(EtcdTls {
                ca_file: "/etc/cell/etcd-ca.crt".into(),
                cert_file: Some("/etc/cell/patroni.crt".into()),
                key_file: Some("/etc/cell/patroni.key".into()),
            }),
            etcd_credentials: Some(EtcdCredentials {
                username: "patroni".into(),
                password: Secret::new("etcd-pw"),
            }),
            host: "10.0.0.5".into(),
            peer_hosts: vec!["10.0.0.6".into()],
            pg_port: 5433,
            api_port: 8009,
            node_dir: "/var/lib/cell/inst-1-0".into(),
            socket_dir: "/var/lib/cell/.run".into(),
            pg_bin_dir: "/usr/lib/postgresql/15/bin".into(),
            walarchive: "/usr/local/bin/walarchive".into(),
            repository: "s3://bucket/base/inst-1".into(),
            archive_timeout: 60,
            synchronous: true,
            synchronous_commit: Some("remote_apply".into()),
            timing: DcsTiming::default(),
            wal_segsize_mb: Some(1),
            superuser_password: Secret::new("su'pw"),
            replication_password: Secret::new("repl"),
            rewind_password: Some(Secret::new("rew")),
            ident_users: vec!["postgres".into(), "root".into()],
            restapi_password: Secret::new("rest"),
            bootstrap: None,
        }
    }

    #[test]
    fn bootstrap_method_from_an_archive() {
        let plain = config().to_value().unwrap();
        assert!(plain["bootstrap"].get("method").is_none());
        assert!(config().restore_bootstrap_script().is_none());
        let mut c = config();
        c.bootstrap = Some(bootstrap::BootstrapSpec {
            source_repository: "s3://bucket/base/old".into(),
            backup: "LATEST".into(),
            recovery_target: bootstrap::BootstrapTarget::Lsn("0/3000060".into()),
            timeline: None,
            disable_roles: true,
            group_role: "g_app".into(),
            same_repository: false,
        });
        let v = c.to_value().unwrap();
        assert_eq!(v["bootstrap"]["method"], "walarchive_restore");
        assert_eq!(
            v["bootstrap"]["walarchive_restore"],
            json!({"command": "/var/lib/cell/inst-1-0/restore-bootstrap.sh",
                "keep_existing_recovery_conf": true})
        );
        assert_eq!(
            v["bootstrap"]["post_bootstrap"],
            "/var/lib/cell/inst-1-0/restore-post-bootstrap.sh"
        );
        // The node still archives into its own repository.
        assert_eq!(
            v["postgresql"]["parameters"]["archive_command"],
            "/usr/local/bin/walarchive --repo s3://bucket/base/inst-1 wal-push %p"
        );
        assert!(c
            .restore_bootstrap_script()
            .unwrap()
            .unwrap()
            .contains("s3://bucket/base/old"));
        assert!(c
            .restore_post_bootstrap_script()
            .unwrap()
            .unwrap()
            .contains(
                "\n/usr/lib/postgresql/15/bin/psql -X -q -v ON_ERROR_STOP=1 -d \"$conn\" <<'SQL'\n"
            ));
    }

    #[test]
    fn renders_the_documented_keys() {
        let v = config().to_value().unwrap();
        assert_eq!(v["scope"], "inst-1");
        assert_eq!(v["etcd3"]["hosts"][0], "127.0.0.1:2379");
        assert_eq!(v["etcd3"]["protocol"], "https");
        assert_eq!(v["etcd3"]["cacert"], "/etc/cell/etcd-ca.crt");
        assert_eq!(v["etcd3"]["key"], "/etc/cell/patroni.key");
        assert_eq!(v["etcd3"]["username"], "patroni");
        assert_eq!(v["etcd3"]["password"], "etcd-pw");
        assert_eq!(v["postgresql"]["listen"], "127.0.0.1,10.0.0.5:5433");
        assert_eq!(v["postgresql"]["connect_address"], "10.0.0.5:5433");
        assert_eq!(v["bootstrap"]["dcs"]["synchronous_mode"], true);
        assert_eq!(
            v["postgresql"]["parameters"]["synchronous_commit"],
            "remote_apply"
        );
        assert_eq!(
            v["postgresql"]["parameters"]["archive_command"],
            "/usr/local/bin/walarchive --repo s3://bucket/base/inst-1 wal-push %p"
        );
        assert_eq!(
            v["postgresql"]["authentication"]["superuser"]["password"],
            "su'pw"
        );
        assert_eq!(v["bootstrap"]["initdb"][2]["wal-segsize"], "1");
        let hba = config().pg_hba();
        assert_eq!(
            hba,
            [
                "local all postgres peer map=walarchive",
                "local replication postgres peer map=walarchive",
                "local all all reject",
                "host replication replicator 10.0.0.6/32 scram-sha-256",
                "host postgres rewinder 10.0.0.6/32 scram-sha-256",
                "host all postgres,replicator,rewinder 0.0.0.0/0 reject",
                "host replication all 0.0.0.0/0 reject",
                "host all postgres,replicator,rewinder ::/0 reject",
                "host replication all ::/0 reject",
                "host all all 0.0.0.0/0 scram-sha-256",
                "host all all ::/0 scram-sha-256",
            ]
        );
        assert_eq!(
            v["postgresql"]["pg_ident"],
            json!(["walarchive postgres postgres", "walarchive root postgres"])
        );
        assert_eq!(v["postgresql"]["use_unix_socket"], true);
        assert_eq!(
            v["postgresql"]["authentication"]["rewind"],
            json!({"username": "rewinder", "password": "rew"})
        );
        // The rendered text is JSON (hence YAML).
        let text = config().render().unwrap();
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), v);
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let dbg = format!("{:?}", config());
        assert!(
            !dbg.contains("su'pw") && !dbg.contains("repl\"") && !dbg.contains("etcd-pw"),
            "{dbg}"
        );
    }

    #[test]
    fn script_maps_datadir() {
        let s = replica_fetch_script(Path::new("/opt/wa bin/walarchive"), "file:///r").unwrap();
        assert!(s.contains("\n'/opt/wa bin/walarchive' --repo file:///r backup-fetch --force --standby \"$datadir\" LATEST\n"), "{s}");
    }
}
