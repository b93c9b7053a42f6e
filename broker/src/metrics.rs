//! `GET /metrics`: the instances, the cells and the broker itself in the Prometheus (OpenMetrics)
//! text format, written by the `prometheus-client` crate.
//!
//! Why a fresh registry per scrape for the gauges: they are the sampler's latest snapshots
//! ([`crate::stats::Stats`]), which already hold the state; copying them into long-lived
//! gauges would keep series of deleted instances alive. The broker's own counters (operations,
//! their durations, API requests) live for the process in [`broker`] and are added to each
//! scrape's registry. `docs/metrics.md` lists every metric; labels name instances by id,
//! platform name and plan, never anything secret.

use std::sync::LazyLock;

use chrono::Utc;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::config::PlanConfig;
use crate::state::InstanceRecord;
use crate::stats::Stats;

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type FGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InstanceLabels {
    instance_id: String,
    name: String,
    plan: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    instance_id: String,
    name: String,
    plan: String,
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CellLabels {
    cell: String,
    zone: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    kind: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: String,
}

/// The broker process's own counters.
struct Broker {
    operations: Family<OperationLabels, Counter>,
    durations: Family<KindLabels, Histogram>,
    requests: Family<StatusLabels, Counter>,
}

/// Operation durations: 1 s to about 9 h.
fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 16))
}

fn broker() -> &'static Broker {
    static BROKER: LazyLock<Broker> = LazyLock::new(|| Broker {
        operations: Family::default(),
        durations: Family::new_with_constructor(duration_histogram),
        requests: Family::default(),
    });
    &BROKER
}

/// Counts an operation the worker finished: its kind (`provision`, `update`, ...), whether it
/// succeeded, and how long it took from its acceptance.
pub fn operation_finished(kind: &str, succeeded: bool, seconds: f64) {
    let b = broker();
    b.operations
        .get_or_create(&OperationLabels {
            kind: kind.to_string(),
            result: if succeeded { "succeeded" } else { "failed" }.into(),
        })
        .inc();
    b.durations
        .get_or_create(&KindLabels {
            kind: kind.to_string(),
        })
        .observe(seconds.max(0.0));
}

/// Counts an answer of the OSB API by its status code.
pub fn api_request(status: u16) {
    broker()
        .requests
        .get_or_create(&StatusLabels {
            status: status.to_string(),
        })
        .inc();
}

fn gauge<
    S: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
>(
    reg: &mut Registry,
    name: &str,
    help: &str,
) -> Family<S, FGauge> {
    let f = Family::<S, FGauge>::default();
    reg.register(name, help, f.clone());
    f
}

/// The metrics text: the sampler's latest figures of `instances` (those it sampled; `plans`
/// name their plans), the cells, and the broker's counters.
pub fn render(plans: &[PlanConfig], stats: Option<&Stats>, instances: &[InstanceRecord]) -> String {
    let mut reg = Registry::with_prefix("walarchive");
    let archive_lag = gauge::<InstanceLabels>(
        &mut reg,
        "instance_archive_lag_seconds",
        "Age of the oldest completed WAL segment not yet archived (0: all archived)",
    );
    let archived_age = gauge::<InstanceLabels>(
        &mut reg,
        "instance_last_archived_age_seconds",
        "Seconds since the leader last archived a WAL file",
    );
    let archive_timeout = gauge::<InstanceLabels>(
        &mut reg,
        "instance_archive_timeout_seconds",
        "The leader's archive_timeout",
    );
    let archive_failed = gauge::<InstanceLabels>(
        &mut reg,
        "instance_archive_failed_count",
        "pg_stat_archiver.failed_count on the leader (since its statistics were reset)",
    );
    let backup_age = gauge::<InstanceLabels>(
        &mut reg,
        "instance_last_backup_age_seconds",
        "Seconds since the newest completed base backup stopped",
    );
    let backup_bytes = gauge::<InstanceLabels>(
        &mut reg,
        "instance_last_backup_bytes",
        "Size of the newest completed base backup (bytes of the data directory)",
    );
    let repl_bytes = gauge::<NodeLabels>(
        &mut reg,
        "instance_replication_lag_bytes",
        "How far a replica's replay is behind the leader's WAL position",
    );
    let repl_seconds = gauge::<NodeLabels>(
        &mut reg,
        "instance_replication_lag_seconds",
        "The leader's pg_stat_replication.replay_lag for a replica",
    );
    let nodes = gauge::<InstanceLabels>(&mut reg, "instance_nodes", "Nodes the instance has");
    let nodes_up = gauge::<InstanceLabels>(
        &mut reg,
        "instance_nodes_up",
        "Nodes whose cell answered with their statistics",
    );
    let has_leader = gauge::<InstanceLabels>(
        &mut reg,
        "instance_has_leader",
        "1 when a node leads (a running primary), else 0",
    );
    let leader_changes = Family::<InstanceLabels, Counter>::default();
    reg.register(
        "instance_leader_changes",
        "Failovers and switchovers (Patroni's history)",
        leader_changes.clone(),
    );
    let db_bytes = gauge::<InstanceLabels>(
        &mut reg,
        "instance_database_bytes",
        "Size of the instance's app database",
    );
    let connections = gauge::<InstanceLabels>(
        &mut reg,
        "instance_connections",
        "Client connections to the leader",
    );
    let max_connections = gauge::<InstanceLabels>(
        &mut reg,
        "instance_max_connections",
        "The leader's max_connections",
    );
    let tps = gauge::<InstanceLabels>(
        &mut reg,
        "instance_transactions_per_second",
        "Commits and rollbacks per second on the leader between the last two samples",
    );
    let cache_hit = gauge::<InstanceLabels>(
        &mut reg,
        "instance_cache_hit_ratio",
        "Share of block reads served from shared buffers on the leader between the last two samples",
    );
    let sample_age = gauge::<InstanceLabels>(
        &mut reg,
        "instance_sample_age_seconds",
        "Seconds since the broker last sampled the instance",
    );
    let cell_up = gauge::<CellLabels>(&mut reg, "cell_up", "1 when the cell agent answered");
    let cell_nodes = gauge::<CellLabels>(&mut reg, "cell_nodes", "Nodes placed on the cell");
    let cell_free = gauge::<CellLabels>(
        &mut reg,
        "cell_free_ports",
        "Ports of the cell's range no node holds",
    );
    let b = broker();
    reg.register(
        "broker_operations",
        "Operations the broker's worker finished, by kind and result",
        b.operations.clone(),
    );
    reg.register(
        "broker_operation_duration_seconds",
        "Time from an operation's acceptance to its end",
        b.durations.clone(),
    );
    reg.register(
        "broker_api_requests",
        "Answers of the Open Service Broker API by status",
        b.requests.clone(),
    );

    let now = Utc::now();
    let secs = |t: chrono::DateTime<Utc>| (now - t).num_milliseconds().max(0) as f64 / 1000.0;
    if let Some(stats) = stats {
        for i in instances {
            let Some(s) = stats.latest(&i.id) else {
                continue;
            };
            let l = InstanceLabels {
                instance_id: i.id.clone(),
                name: i.context.instance_name.clone().unwrap_or_default(),
                plan: plans
                    .iter()
                    .find(|p| p.id == i.plan_id)
                    .map(|p| p.name.clone())
                    .unwrap_or_else(|| i.plan_id.clone()),
            };
            let set = |f: &Family<InstanceLabels, FGauge>, v: f64| {
                f.get_or_create(&l).set(v);
            };
            if let Some(a) = &s.archive {
                if let Some(v) = a.lag_seconds {
                    set(&archive_lag, v);
                }
                if let Some(v) = a.last_archived_age_seconds {
                    set(&archived_age, v);
                }
                if let Some(v) = a.archive_timeout_seconds {
                    set(&archive_timeout, v as f64);
                }
                set(&archive_failed, a.failed_count as f64);
            }
            // The repository is read every few minutes; the worker records each backup it
            // completes at once: the newer of the two dates the last backup.
            let last = stats
                .repository(&i.id)
                .and_then(|r| r.backups.into_iter().next_back());
            if let Some(v) = last.as_ref().and_then(|b| b.bytes) {
                set(&backup_bytes, v as f64);
            }
            if let Some(t) = last
                .and_then(|b| b.stopped_at)
                .into_iter()
                .chain(i.last_backup_at)
                .max()
            {
                set(&backup_age, secs(t.0));
            }
            for n in s.nodes.iter().filter(|n| n.role == "replica") {
                let nl = NodeLabels {
                    instance_id: l.instance_id.clone(),
                    name: l.name.clone(),
                    plan: l.plan.clone(),
                    node: n.name.clone(),
                };
                if let Some(v) = n.lag_bytes {
                    repl_bytes.get_or_create(&nl).set(v as f64);
                }
                if let Some(v) = n.lag_seconds {
                    repl_seconds.get_or_create(&nl).set(v);
                }
            }
            set(&nodes, s.nodes.len() as f64);
            set(
                &nodes_up,
                s.nodes.iter().filter(|n| n.role != "unknown").count() as f64,
            );
            set(&has_leader, f64::from(u8::from(s.leader.is_some())));
            leader_changes
                .get_or_create(&l)
                .inc_by(s.failovers.len() as u64);
            if let Some(v) = s.database_bytes {
                set(&db_bytes, v as f64);
            }
            if let Some(v) = s.connections {
                set(&connections, f64::from(v));
            }
            if let Some(v) = s.max_connections {
                set(&max_connections, f64::from(v));
            }
            if let Some(v) = s.tps {
                set(&tps, v);
            }
            if let Some(v) = s.cache_hit_ratio {
                set(&cache_hit, v);
            }
            set(&sample_age, secs(s.at.0));
        }
        for c in stats.cells() {
            let l = CellLabels {
                cell: c.name.clone(),
                zone: c.zone.clone(),
            };
            cell_up.get_or_create(&l).set(f64::from(u8::from(c.up)));
            cell_nodes.get_or_create(&l).set(f64::from(c.nodes));
            if let Some(v) = c.free_ports {
                cell_free.get_or_create(&l).set(f64::from(v));
            }
        }
    }
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &reg).expect("writing to a String");
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Timestamp;
    use crate::stats::{ArchiveState, CellLoad, InstanceSnapshot, NodeSnapshot};

    fn node(name: &str, role: &str, lag: Option<u64>) -> NodeSnapshot {
        NodeSnapshot {
            name: name.into(),
            cell: "c1".into(),
            zone: "z1".into(),
            host: "10.0.0.1".into(),
            pg_port: 5432,
            role: role.into(),
            state: "running".into(),
            timeline: Some(1),
            lag_bytes: lag,
            lag_seconds: lag.map(|_| 0.5),
            last_seen: Some(Timestamp::now()),
        }
    }

    /// An instance's figures under its labels, a platform name that tries to break out of its
    /// label escaped (no line of its own), nothing for an instance not sampled, and a text a
    /// Prometheus parser reads.
    #[test]
    fn instances_cells_and_hostile_names() {
        let plans: Vec<PlanConfig> =
            vec![
                toml::from_str("id = \"p1\"\nname = \"ha\"\ndescription = \"d\"\nnode_count = 2")
                    .unwrap(),
            ];
        let record = |id: &str, name: &str| -> InstanceRecord {
            serde_json::from_value(serde_json::json!({
                "id": id, "service_id": "s", "plan_id": "p1", "parameters": {},
                "node_count": 2, "port": 10000, "repository": format!("file:///r/{id}"),
                "state": "ready", "created_at": "2026-12-07T10:00:00Z",
                "updated_at": "2026-12-07T10:00:00Z",
                "context": {"organization_guid": "o", "space_guid": "s",
                            "instance_name": name, "raw": null},
            }))
            .unwrap()
        };
        let hostile = "x\"} 1\nwalarchive_instance_has_leader{instance_id=\"evil";
        let instances = vec![record("i1", "orders"), record("i2", "other")];
        let stats = Stats::new();
        stats.publish(
            vec![InstanceSnapshot {
                instance_id: "i1".into(),
                at: Timestamp::now(),
                leader: Some("n0".into()),
                nodes: vec![
                    node("n0", "leader", Some(0)),
                    node("n1", "replica", Some(4096)),
                    node("n2", "unknown", None),
                ],
                archive: Some(ArchiveState {
                    last_archived_wal: None,
                    last_archived_at: None,
                    archived_count: 3,
                    failed_count: 2,
                    last_failed_wal: None,
                    last_failed_at: None,
                    lag_seconds: Some(42.0),
                    last_archived_age_seconds: Some(50.0),
                    archive_timeout_seconds: Some(60),
                }),
                database_bytes: Some(1 << 20),
                total_database_bytes: Some(3 << 20),
                connections: Some(4),
                max_connections: Some(100),
                tps: Some(1.5),
                cache_hit_ratio: Some(0.99),
                failovers: vec![],
                error: None,
            }],
            &["i1".to_string(), "i2".to_string()],
        );
        stats.set_cells(vec![CellLoad {
            name: "c1".into(),
            zone: "z1".into(),
            up: true,
            nodes: 3,
            free_ports: Some(10),
            majors: vec![18],
        }]);
        let text = render(&plans, Some(&stats), &instances);
        let scrape =
            prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
        let value = |name: &str, labels: &[(&str, &str)]| {
            scrape
                .samples
                .iter()
                .filter(|s| {
                    s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
                })
                .map(|s| match s.value {
                    prometheus_parse::Value::Gauge(v)
                    | prometheus_parse::Value::Counter(v)
                    | prometheus_parse::Value::Untyped(v) => v,
                    _ => f64::NAN,
                })
                .collect::<Vec<_>>()
        };
        let i1 = [("instance_id", "i1"), ("plan", "ha"), ("name", "orders")];
        assert_eq!(
            value("walarchive_instance_archive_lag_seconds", &i1),
            [42.0]
        );
        assert_eq!(value("walarchive_instance_nodes", &i1), [3.0]);
        assert_eq!(value("walarchive_instance_nodes_up", &i1), [2.0]);
        assert_eq!(value("walarchive_instance_has_leader", &i1), [1.0]);
        assert_eq!(
            value(
                "walarchive_instance_replication_lag_bytes",
                &[("node", "n1")]
            ),
            [4096.0]
        );
        assert!(value(
            "walarchive_instance_replication_lag_bytes",
            &[("node", "n0")]
        )
        .is_empty());
        assert_eq!(value("walarchive_instance_cache_hit_ratio", &i1), [0.99]);
        assert_eq!(
            value("walarchive_instance_database_bytes", &i1),
            [1048576.0]
        );
        assert_eq!(
            value("walarchive_cell_free_ports", &[("cell", "c1")]),
            [10.0]
        );
        assert_eq!(
            value("walarchive_instance_has_leader", &[]).len(),
            1,
            "{text}"
        );
        assert!(value("walarchive_instance_nodes", &[("instance_id", "i2")]).is_empty());
        assert!(text.ends_with("# EOF\n"), "{text}");
        // The last backup: its size from the repository, its age from the newer of the
        // repository's newest and the worker's record.
        let ago = |s: i64| Timestamp(Utc::now() - chrono::Duration::seconds(s));
        stats.set_repository(
            "i1",
            crate::stats::RepositoryState {
                backups: vec![crate::stats::BackupSummary {
                    name: "b1".into(),
                    started_at: Some(ago(1100)),
                    stopped_at: Some(ago(1000)),
                    bytes: Some(12345),
                    duration_seconds: Some(100.0),
                    node: None,
                }],
                window: None,
                computed_at: ago(0),
                error: None,
            },
        );
        let mut r = record("i1", "orders");
        let age = |r: &InstanceRecord| {
            let text = render(&plans, Some(&stats), std::slice::from_ref(r));
            let scrape =
                prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
            let get = |name: &str| {
                scrape
                    .samples
                    .iter()
                    .find(|s| s.metric == name)
                    .map(|s| match s.value {
                        prometheus_parse::Value::Gauge(v) => v,
                        _ => f64::NAN,
                    })
            };
            (
                get("walarchive_instance_last_backup_age_seconds").unwrap(),
                get("walarchive_instance_last_backup_bytes").unwrap(),
            )
        };
        let (a, bytes) = age(&r);
        assert!(
            (999.0..1002.0).contains(&a) && bytes == 12345.0,
            "{a} {bytes}"
        );
        r.last_backup_at = Some(ago(100));
        let (a, _) = age(&r);
        assert!((99.0..102.0).contains(&a), "{a}");
        r.last_backup_at = Some(ago(5000));
        let (a, _) = age(&r);
        assert!((999.0..1002.0).contains(&a), "{a}");
        // A platform name that tries to break out of its label stays inside it, escaped (the
        // test parser does not unescape: the text is read as it is).
        let text = render(&plans, Some(&stats), &[record("i1", hostile)]);
        let lines = |prefix: &str| text.lines().filter(|l| l.starts_with(prefix)).count();
        assert_eq!(lines("walarchive_instance_has_leader{"), 1, "{text}");
        assert!(
            text.contains(r#"name="x\"} 1\nwalarchive_instance_has_leader{instance_id=\"evil","#),
            "{text}"
        );
    }
}
