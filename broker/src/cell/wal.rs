//! A node's WAL as the broker needs it around clones and deprovisioning: where it is, a
//! switch that waits for the archiver, its history files pushed, and who can log in.
//!
//! All of it runs on the node's Unix socket as the superuser (as bindings do): nothing here
//! is reachable from the network but through the cell's authenticated API, and nothing the
//! request carries becomes SQL text (the role prefixes are bound parameters).

use std::time::{Duration, Instant};

use tracing::info;

use super::client::{WalPosition, WalSwitch};
use super::{pg_error, Agent, Error};

/// The longest wait for the archiver after a switch.
const ARCHIVE_WAIT_MAX: Duration = Duration::from_secs(120);

/// Whether `prefix` may be asked for in `login-roles` (a few characters of a role name).
pub(super) fn valid_prefix(prefix: &str) -> bool {
    (1..=16).contains(&prefix.len())
        && prefix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// The switch point of the last line of a timeline history file (`1\t0/5000108\tafter LSN
/// 0/5000100`): where recovery ended before the promotion that started the timeline.
fn last_switch_point(history: &str) -> Option<String> {
    let line = history
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty() && !l.starts_with('#'))?;
    let lsn: walarchive::Lsn = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(lsn.to_string())
}

impl Agent {
    /// `GET /v1/nodes/{name}/wal`.
    ///
    /// `pg_last_wal_replay_lsn()` and `pg_last_xact_replay_timestamp()` are only known to
    /// the postmaster that recovered: Patroni restarts a bootstrapped clone once it promoted
    /// (to apply its pg_hba and settings). Then where recovery ended is read from the
    /// history file of the timeline the promotion started (its last switch point); the
    /// time of the last replayed transaction is no longer known (`None`).
    pub(super) async fn wal(&self, name: &str) -> Result<WalPosition, Error> {
        let node = self.node(name)?;
        let db = self.local_superuser(name, "postgres").await?;
        let row = db
            .query_one(
                "select pg_is_in_recovery(),
                        (case when pg_is_in_recovery() then pg_last_wal_replay_lsn()
                              else pg_current_wal_lsn() end)::text,
                        pg_last_wal_replay_lsn()::text,
                        to_char(pg_last_xact_replay_timestamp() at time zone 'UTC',
                                'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),
                        (select timeline_id from pg_control_checkpoint())",
                &[],
            )
            .await
            .map_err(|e| pg_error(name, format!("reading the WAL position of {name}"), &e))?;
        let in_recovery: bool = row.get(0);
        let timeline: Option<i32> = row.get(4);
        let replay_lsn = row.get::<_, Option<String>>(2).or_else(|| {
            let tli = u32::try_from(timeline?).ok().filter(|t| *t > 1)?;
            let path = node.data_dir().join(format!("pg_wal/{tli:08X}.history"));
            last_switch_point(&std::fs::read_to_string(path).ok()?)
        });
        Ok(WalPosition {
            in_recovery,
            lsn: row.get::<_, Option<String>>(1).unwrap_or_default(),
            replay_lsn,
            replay_time: row.get(3),
        })
    }

    /// `POST /v1/nodes/{name}/switch-wal`: `pg_switch_wal()`, then waits (at most twice
    /// `archive_timeout`, within [`ARCHIVE_WAIT_MAX`]) until the archiver has archived the
    /// segment it ended (its flag is `.done`, or `pg_stat_archiver` names it or a later one).
    pub(super) async fn switch_wal(&self, name: &str) -> Result<WalSwitch, Error> {
        let node = self.node(name)?;
        let archive_timeout = node.record().spec.archive_timeout;
        let db = self.local_superuser(name, "postgres").await?;
        let row = db
            .query_one(
                "select l::text, pg_walfile_name(l) from pg_switch_wal() l",
                &[],
            )
            .await
            .map_err(|e| pg_error(name, format!("switching WAL on {name}"), &e))?;
        let (lsn, segment): (String, String) = (row.get(0), row.get(1));
        let bound = Duration::from_secs(2 * u64::from(archive_timeout))
            .clamp(Duration::from_secs(10), ARCHIVE_WAIT_MAX);
        let started = Instant::now();
        // Without WAL written since the last switch, `pg_switch_wal()` does nothing and returns
        // the start of the current segment (a segment boundary; after a switch it returns the end
        // of the switch record, inside the segment it ended): the segment named is then an older
        // one, archived unless its flag is still `.ready` (its `.done` may be recycled already).
        // After a real switch, it is archived once the archiver renamed its flag `.done` (it stays
        // until a checkpoint recycles the segment), or once `pg_stat_archiver` names it or a later
        // segment. That view alone is not enough: right after a base backup `last_archived_wal` is
        // the backup history file (`…08.00000028.backup`), which names no position in the
        // segments' order, and the next segment it names may come only at the next
        // `archive_timeout`.
        let noop = lsn.parse::<walarchive::Lsn>().is_ok_and(|l| {
            l.0 % (u64::from(node.record().spec.wal_segsize_mb.unwrap_or(16).max(1)) << 20) == 0
        });
        let archived = loop {
            let row = db
                .query_one(
                    "select pg_stat_file('pg_wal/archive_status/' || $1 || '.done', true) is not null, \
                     pg_stat_file('pg_wal/archive_status/' || $1 || '.ready', true) is not null, \
                     last_archived_wal from pg_stat_archiver",
                    &[&segment],
                )
                .await
                .map_err(|e| pg_error(name, format!("reading the archiver's state on {name}"), &e))?;
            let (done, ready, last): (bool, bool, Option<String>) =
                (row.get(0), row.get(1), row.get(2));
            // Same-length upper-case hex names (timeline first) compare as positions; a
            // `.partial`, `.history` or `.backup` name is not a segment of this timeline's order.
            if done
                || (noop && !ready)
                || last
                    .as_deref()
                    .is_some_and(|l| l.len() == segment.len() && *l >= *segment.as_str())
            {
                break true;
            }
            if started.elapsed() >= bound {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        info!(node = name, lsn, segment, archived, "WAL switched");
        Ok(WalSwitch {
            lsn,
            segment,
            archived,
        })
    }

    /// `POST /v1/nodes/{name}/push-history`: `walarchive wal-push` of every timeline history
    /// file in the node's `pg_wal` (already archived ones are accepted again unchanged).
    pub(super) async fn push_history(&self, name: &str) -> Result<Vec<String>, Error> {
        let node = self.node(name)?;
        let rec = node.record();
        let pg_wal = node.data_dir().join("pg_wal");
        let mut files: Vec<String> = std::fs::read_dir(&pg_wal)
            .map_err(super::io_err("cannot read", &pg_wal))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| {
                n.len() == 16
                    && n.ends_with(".history")
                    && n[..8].bytes().all(|b| b.is_ascii_hexdigit())
            })
            .collect();
        files.sort();
        for f in &files {
            let mut cmd = self.walarchive_command(&node, &rec);
            cmd.arg("wal-push")
                .arg("--pgdata")
                .arg(node.data_dir())
                .arg(pg_wal.join(f));
            let out = cmd.output().await.map_err(|source| Error::Spawn {
                program: rec.spec.walarchive.display().to_string(),
                source,
            })?;
            if !out.status.success() {
                return Err(Error::Walarchive {
                    node: name.to_string(),
                    what: "wal-push of a history file",
                    code: out.status.code(),
                    stderr: super::stderr_tail(&out.stderr),
                });
            }
        }
        info!(node = name, files = files.len(), "history files pushed");
        Ok(files)
    }

    /// `GET /v1/nodes/{name}/login-roles?prefix=b_,h_`: the roles that can log in and whose
    /// names start with one of the prefixes; `GET /v1/nodes/{name}/roles?prefix=b_,h_`
    /// (`login_only` false): every such role, whether it can log in or not (what a clone drops
    /// of its source's bindings, whose records a deleted source no longer has).
    pub(super) async fn login_roles(
        &self,
        name: &str,
        prefixes: Vec<String>,
        login_only: bool,
    ) -> Result<Vec<String>, Error> {
        if prefixes.is_empty() || !prefixes.iter().all(|p| valid_prefix(p)) {
            return Err(Error::Invalid(
                "prefix must be a comma-separated list of lower-case name prefixes".into(),
            ));
        }
        let db = self.local_superuser(name, "postgres").await?;
        let rows = db
            .query(
                "select rolname::text from pg_catalog.pg_roles
                 where (rolcanlogin or not $2)
                   and exists (select 1 from unnest($1::text[]) p where starts_with(rolname::text, p))
                 order by 1",
                &[&prefixes, &login_only],
            )
            .await
            .map_err(|e| pg_error(name, format!("listing the roles of {name}"), &e))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switch_point() {
        let h = "1\t0/3000108\tno recovery target specified\n\n2\t0/5A3F2D8\tafter LSN 0/5A3F2A0\n";
        assert_eq!(last_switch_point(h).as_deref(), Some("0/5A3F2D8"));
        assert_eq!(last_switch_point("# nothing\n"), None);
    }

    #[test]
    fn prefixes() {
        assert!(valid_prefix("b_") && valid_prefix("h_"));
        for bad in ["", "B_", "b'", "b_%", &"x".repeat(17)] {
            assert!(!valid_prefix(bad), "{bad}");
        }
    }
}
