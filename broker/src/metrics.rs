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

use crate::config::BrokerConfig;
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

/// The metrics text: the sampler's latest figures of `instances` (those it sampled), the
/// cells, and the broker's counters.
pub fn render(
    config: &BrokerConfig,
    stats: Option<&Stats>,
    instances: &[InstanceRecord],
) -> String {
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
                plan: config
                    .plan(&i.plan_id)
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
            if let Some(last) = stats
                .repository(&i.id)
                .and_then(|r| r.backups.into_iter().next_back())
            {
                if let Some(t) = last.stopped_at {
                    set(&backup_age, secs(t.0));
                }
                if let Some(v) = last.bytes {
                    set(&backup_bytes, v as f64);
                }
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
