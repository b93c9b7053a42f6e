//! The cell agent's configuration file (`walarchive-broker cell --config cell.toml`), its
//! API token, and the PostgreSQL majors the cell runs.
//!
//! Majors: `[postgresql.bin_dirs]` maps each major to its binaries (`17 = "/usr/lib/..."`);
//! without it the cell finds `/usr/lib/postgresql/<major>/bin` for every supported major.
//! Each directory is asked for its version (`postgres --version`) at start, so a directory
//! filed under the wrong major is refused rather than run. The old single `pg_bin_dir` is
//! still read: its one directory, under the major its server reports. Nodes whose spec names
//! no major (placed before majors existed) run what they ran then: that directory, else 15.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{io_err, Error};
use crate::secrets::Secret;

/// Environment variable holding the agent's API token (else `token_file` in the config).
pub const TOKEN_ENV: &str = "WALARCHIVE_CELL_TOKEN";

/// The agent's configuration file (`walarchive-broker cell --config cell.toml`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CellConfig {
    /// Address of the HTTP API, e.g. `127.0.0.1:7100`.
    pub listen: SocketAddr,
    /// TLS of the API: its certificate, and the CA the broker's client certificate must be
    /// signed by (mutual TLS: a client without such a certificate is refused before its
    /// token is even read).
    #[serde(default)]
    pub tls: Option<crate::tls::TlsFiles>,
    /// Serve plain HTTP on a non-loopback `listen` address (the token and the nodes'
    /// passwords would cross the network in clear).
    #[serde(default)]
    pub allow_plaintext: bool,
    /// Directory holding one sub-directory per node (traversable by the postgres user).
    pub data_root: PathBuf,
    /// File holding the API token (when the environment variable `WALARCHIVE_CELL_TOKEN`
    /// is not set).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// The Patroni executable.
    #[serde(default = "default_patroni")]
    pub patroni: PathBuf,
    /// PostgreSQL's binaries, for one major: the setting of configurations written before
    /// `[postgresql.bin_dirs]`; the major is the one its server reports.
    #[serde(default)]
    pub pg_bin_dir: Option<PathBuf>,
    /// `[postgresql]`: the majors this cell runs.
    #[serde(default)]
    pub postgresql: PostgresqlConfig,
    /// The OS user PostgreSQL and Patroni run as.
    #[serde(default = "default_user")]
    pub user: String,
    /// PostgreSQL's Unix-socket directory, shared by the cell's nodes (default
    /// `<data_root>/.run`). A socket's path is limited to 107 bytes: with a deep `data_root`,
    /// set a short one here.
    #[serde(default)]
    pub socket_dir: Option<PathBuf>,
    /// The nodes' ports (PostgreSQL, Patroni's API) are chosen in this inclusive range,
    /// `[min, max]`; default: any port the kernel hands out. Cells that share a machine (the
    /// single-machine mode, tests) need disjoint ranges, or two may pick one port.
    #[serde(default)]
    pub ports: Option<[u16; 2]>,
    /// The majors found at load ([`resolve_majors`]).
    #[serde(skip)]
    pub majors: BTreeMap<u32, MajorBin>,
    /// The major of nodes whose spec names none ([`resolve_majors`]).
    #[serde(skip)]
    pub unnamed_major: u32,
}

fn default_patroni() -> PathBuf {
    "/usr/bin/patroni".into()
}

/// `[postgresql]` of the cell's configuration.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresqlConfig {
    /// Major (`"17"`) → its bin directory. Empty: `/usr/lib/postgresql/<major>/bin` of every
    /// supported major found there.
    #[serde(default)]
    pub bin_dirs: BTreeMap<String, PathBuf>,
}

/// One major a cell runs: its binaries and the server's full version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MajorBin {
    /// The bin directory (`postgres`, `pg_ctl`, `initdb`, `psql`...).
    pub bin_dir: PathBuf,
    /// What `postgres --version` reports (`17.10`).
    pub version: String,
}

/// The majors of a cell configuration (see the module comment): each bin directory checked
/// against the major it is filed under. Also returns the major of nodes whose spec names none.
pub fn resolve_majors(
    pg_bin_dir: Option<&Path>,
    bin_dirs: &BTreeMap<String, PathBuf>,
) -> Result<(BTreeMap<u32, MajorBin>, u32), String> {
    use crate::pgmajor::{probe_bin_dir, supported_list, LEGACY, SUPPORTED};
    let mut majors = BTreeMap::new();
    if pg_bin_dir.is_some() && !bin_dirs.is_empty() {
        return Err(
            "set either pg_bin_dir (one major, the old setting) or [postgresql.bin_dirs], not both"
                .into(),
        );
    }
    if let Some(dir) = pg_bin_dir {
        let (major, version) = probe_bin_dir(dir).map_err(|e| format!("pg_bin_dir: {e}"))?;
        if !SUPPORTED.contains(&major) {
            return Err(format!(
                "pg_bin_dir {} holds PostgreSQL {version}; supported majors: {}",
                dir.display(),
                supported_list()
            ));
        }
        majors.insert(
            major,
            MajorBin {
                bin_dir: dir.to_path_buf(),
                version,
            },
        );
        return Ok((majors, major));
    }
    if bin_dirs.is_empty() {
        for major in SUPPORTED {
            let dir = PathBuf::from(format!("/usr/lib/postgresql/{major}/bin"));
            if !dir.join("postgres").is_file() {
                continue;
            }
            match probe_bin_dir(&dir) {
                Ok((m, version)) if m == major => {
                    majors.insert(major, MajorBin { bin_dir: dir, version });
                }
                Ok((m, _)) => {
                    return Err(format!(
                        "{} holds PostgreSQL {m}, not {major}: list the majors in [postgresql.bin_dirs]",
                        dir.display()
                    ))
                }
                Err(e) => return Err(e),
            }
        }
        if majors.is_empty() {
            return Err(format!(
                "no PostgreSQL found in /usr/lib/postgresql/<major>/bin ({}): list the majors' bin directories in [postgresql.bin_dirs]",
                supported_list()
            ));
        }
    }
    for (key, dir) in bin_dirs {
        let major = key
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|m| SUPPORTED.contains(m))
            .ok_or_else(|| {
                format!(
                    "[postgresql.bin_dirs]: {key:?} is not a supported PostgreSQL major ({})",
                    supported_list()
                )
            })?;
        let (found, version) =
            probe_bin_dir(dir).map_err(|e| format!("[postgresql.bin_dirs] {key}: {e}"))?;
        if found != major {
            return Err(format!(
                "[postgresql.bin_dirs] {key}: {} holds PostgreSQL {version}, not {major}",
                dir.display()
            ));
        }
        majors.insert(
            major,
            MajorBin {
                bin_dir: dir.clone(),
                version,
            },
        );
    }
    Ok((majors, LEGACY))
}
fn default_user() -> String {
    "postgres".into()
}

/// The longest socket name PostgreSQL adds to the socket directory: `/.s.PGSQL.65535`.
pub(super) const SOCKET_NAME_MAX: usize = 16;
/// Longest Unix socket path (`sun_path`, with its terminating NUL).
pub(super) const SOCKET_PATH_MAX: usize = 107;

impl CellConfig {
    /// PostgreSQL's socket directory: `socket_dir`, else `<data_root>/.run` (not a node name,
    /// which never holds a `.`).
    pub fn socket_dir(&self) -> PathBuf {
        self.socket_dir
            .clone()
            .unwrap_or_else(|| self.data_root.join(".run"))
    }

    /// Reads and checks a TOML configuration file.
    pub fn load(path: &Path) -> Result<CellConfig, Error> {
        let text = std::fs::read_to_string(path).map_err(io_err("cannot read", path))?;
        let mut config: CellConfig = toml::from_str(&text).map_err(|e| Error::Config {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        (config.majors, config.unnamed_major) =
            resolve_majors(config.pg_bin_dir.as_deref(), &config.postgresql.bin_dirs).map_err(
                |message| Error::Config {
                    path: path.to_path_buf(),
                    message,
                },
            )?;
        if !config.listen.ip().is_loopback() && config.tls.is_none() && !config.allow_plaintext {
            return Err(Error::Config {
                path: path.to_path_buf(),
                message: format!(
                    "listen: {} is not a loopback address and [tls] is not configured: the token and the nodes' passwords would cross the network in clear; configure [tls] (cert_file, key_file, ca_file) or set allow_plaintext = true",
                    config.listen
                ),
            });
        }
        Ok(config)
    }

    /// The major a node with spec major `major` runs (none: [`CellConfig::unnamed_major`]).
    pub fn major(&self, major: Option<u32>) -> u32 {
        major.unwrap_or(self.unnamed_major)
    }

    /// The bin directory of major `major` (none: [`CellConfig::unnamed_major`]'s); `Err`
    /// says this cell does not have it.
    pub fn bin_dir(&self, major: Option<u32>) -> Result<&Path, String> {
        let m = self.major(major);
        self.majors
            .get(&m)
            .map(|b| b.bin_dir.as_path())
            .ok_or_else(|| {
                format!(
                    "this cell has no PostgreSQL {m} (it has {})",
                    self.majors
                        .keys()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
    }

    /// The API token: `WALARCHIVE_CELL_TOKEN`, else the content of `token_file` (trimmed).
    pub fn token(&self) -> Result<Secret, Error> {
        if let Ok(t) = std::env::var(TOKEN_ENV) {
            if !t.is_empty() {
                return Ok(Secret::new(t));
            }
        }
        let Some(path) = &self.token_file else {
            return Err(Error::NoToken);
        };
        let t = std::fs::read_to_string(path).map_err(io_err("cannot read", path))?;
        let t = t.trim();
        if t.is_empty() {
            return Err(Error::NoToken);
        }
        Ok(Secret::new(t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PG15: &str = "/usr/lib/postgresql/15/bin";
    const PG18: &str = "/opt/walarchive-test/pg/18/bin";

    fn installed(dir: &str) -> bool {
        Path::new(dir).join("postgres").is_file()
    }

    /// A configuration from before majors (`pg_bin_dir`) keeps working: its directory is
    /// the cell's one major, which nodes without one run.
    #[test]
    fn the_old_pg_bin_dir_is_its_one_major() {
        if !installed(PG15) {
            eprintln!("skipped: no PostgreSQL 15 in {PG15} (scripts/setup)");
            return;
        }
        let (majors, unnamed) = resolve_majors(Some(Path::new(PG15)), &BTreeMap::new()).unwrap();
        assert_eq!(majors.keys().copied().collect::<Vec<_>>(), [15]);
        assert_eq!(unnamed, 15);
        assert!(majors[&15].version.starts_with("15."), "{majors:?}");
        let both = BTreeMap::from([("15".to_string(), PathBuf::from(PG15))]);
        let e = resolve_majors(Some(Path::new(PG15)), &both).unwrap_err();
        assert!(e.contains("not both"), "{e}");
    }

    /// Each `[postgresql.bin_dirs]` entry is checked against its server's version.
    #[test]
    fn bin_dirs_are_checked_against_their_server() {
        if !installed(PG15) || !installed(PG18) {
            eprintln!("skipped: PostgreSQL 15 and 18 are not both installed (scripts/setup)");
            return;
        }
        let ok = BTreeMap::from([
            ("15".to_string(), PathBuf::from(PG15)),
            ("18".to_string(), PathBuf::from(PG18)),
        ]);
        let (majors, unnamed) = resolve_majors(None, &ok).unwrap();
        assert_eq!(majors.keys().copied().collect::<Vec<_>>(), [15, 18]);
        assert_eq!(unnamed, 15);
        let wrong = BTreeMap::from([("17".to_string(), PathBuf::from(PG18))]);
        let e = resolve_majors(None, &wrong).unwrap_err();
        assert!(
            e.contains("holds PostgreSQL 18") && e.contains("not 17"),
            "{e}"
        );
        let unknown = BTreeMap::from([("14".to_string(), PathBuf::from(PG15))]);
        let e = resolve_majors(None, &unknown).unwrap_err();
        assert!(e.contains("15, 16, 17, 18"), "{e}");
        let cfg: CellConfig = toml::from_str(&format!(
            "listen = \"127.0.0.1:1\"\ndata_root = \"/tmp/x\"\n[postgresql.bin_dirs]\n18 = \"{PG18}\"\n"
        ))
        .unwrap();
        assert_eq!(cfg.postgresql.bin_dirs.len(), 1);
    }
}
