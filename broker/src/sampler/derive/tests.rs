use super::*;
use crate::cell::client::ReplicationStats;

fn stats(role: &str, recovery: bool) -> NodeStats {
    NodeStats {
        server_time: 1_800_000_100.0,
        postmaster_start: 1_800_000_000.0,
        in_recovery: recovery,
        timeline: Some(2),
        current_lsn: (!recovery).then(|| "0/5000000".into()),
        receive_lsn: None,
        replay_lsn: recovery.then(|| "0/4F00000".into()),
        current_wal_file: None,
        archive_timeout_seconds: 60,
        max_connections: 100,
        connections: 7,
        app_database_bytes: Some(8_000_000),
        total_database_bytes: 30_000_000,
        xact_total: 1000,
        blks_hit: 900,
        blks_read: 100,
        archiver: (!recovery).then(|| ArchiverStats {
            archived_count: 5,
            last_archived_wal: Some("000000020000000000000004".into()),
            last_archived_time: Some(1_800_000_040.0),
            failed_count: 0,
            last_failed_wal: None,
            last_failed_time: None,
            ready_count: 0,
            oldest_ready_time: None,
        }),
        replication: Vec::new(),
        patroni_role: Some(role.into()),
        patroni_state: Some(if recovery { "streaming" } else { "running" }.into()),
        history: vec![HistoryEntry {
            timeline: 1,
            lsn: 50_331_808,
            reason: Some("no recovery target specified".into()),
            at: Some("2026-12-07T10:12:13.456789+00:00".into()),
            new_leader: Some("i-1".into()),
        }],
    }
}

fn placement(name: &str) -> NodePlacement {
    NodePlacement {
        name: name.into(),
        cell: format!("cell-{name}"),
        zone: "z1".into(),
        pg_port: 5432,
        api_port: 8008,
    }
}

#[test]
fn a_counter_reset_counts_its_whole_value() {
    assert_eq!(increase(100, 150), 50);
    assert_eq!(increase(100, 30), 30);
    assert_eq!(increase(0, 0), 0);
}

#[test]
fn rates_between_two_readings_of_one_node() {
    let p = Counters {
        node: "a".into(),
        at: 100.0,
        xact: 1000,
        hit: 900,
        read: 100,
    };
    let c = Counters {
        at: 110.0,
        xact: 1500,
        hit: 1290,
        read: 110,
        ..p.clone()
    };
    let (tps, ratio) = rates(Some(&p), &c);
    assert_eq!(tps, Some(50.0));
    assert!((ratio.unwrap() - 390.0 / 400.0).abs() < 1e-9);
    // After PostgreSQL restarted (the statistics of a crash are lost): the counters start over.
    let reset = Counters {
        at: 110.0,
        xact: 200,
        hit: 10,
        read: 0,
        ..p.clone()
    };
    assert_eq!(rates(Some(&p), &reset), (Some(20.0), Some(1.0)));
    // Another node (a failover), no previous reading, or no time passed: no rate.
    let other = Counters {
        node: "b".into(),
        ..c.clone()
    };
    assert_eq!(rates(Some(&p), &other), (None, None));
    assert_eq!(rates(None, &c), (None, None));
    assert_eq!(rates(Some(&c), &c), (None, None));
    // No block read at all: no ratio.
    let idle = Counters {
        at: 120.0,
        ..c.clone()
    };
    assert_eq!(rates(Some(&c), &idle), (Some(0.0), None));
}

#[test]
fn archive_lag_is_the_age_of_the_oldest_waiting_segment() {
    let mut a = stats("primary", false).archiver.unwrap();
    let s = archive_state(&a, 1_800_000_100.0, 60);
    assert_eq!(s.lag_seconds, Some(0.0));
    assert_eq!(s.last_archived_age_seconds, Some(60.0));
    assert_eq!(s.archive_timeout_seconds, Some(60));
    a.ready_count = 3;
    a.oldest_ready_time = Some(1_800_000_010.0);
    let s = archive_state(&a, 1_800_000_100.0, 60);
    assert_eq!(s.lag_seconds, Some(90.0));
    // Clocks never make it negative.
    a.oldest_ready_time = Some(1_800_000_200.0);
    assert_eq!(
        archive_state(&a, 1_800_000_100.0, 60).lag_seconds,
        Some(0.0)
    );
}

#[test]
fn a_snapshot_of_a_leader_a_replica_and_a_lost_node() {
    let (a, b, c) = (placement("i-0"), placement("i-1"), placement("i-2"));
    let mut leader = stats("primary", false);
    leader.replication = vec![ReplicationStats {
        application_name: "i-1".into(),
        state: Some("streaming".into()),
        sync_state: Some("sync".into()),
        lag_bytes: Some(0),
        replay_lag_seconds: None,
    }];
    let replica = stats("replica", true);
    let previous_counters = Counters {
        node: "i-0".into(),
        at: 1_800_000_090.0,
        xact: 900,
        hit: 800,
        read: 100,
    };
    let at = Utc.timestamp_opt(1_800_000_101, 0).unwrap();
    let (snap, counters) = snapshot(Inputs {
        instance_id: "inst",
        at,
        nodes: vec![
            (&a, "10.0.0.1".into(), Ok(leader)),
            (&b, "10.0.0.2".into(), Ok(replica)),
            (&c, "10.0.0.3".into(), Err("timed out".into())),
        ],
        previous: None,
        counters: Some(&previous_counters),
    });
    assert_eq!(snap.leader.as_deref(), Some("i-0"));
    assert_eq!(snap.error, None);
    let roles: Vec<_> = snap.nodes.iter().map(|n| n.role.as_str()).collect();
    assert_eq!(roles, ["leader", "replica", "unknown"]);
    assert_eq!(snap.nodes[1].lag_bytes, Some(0));
    assert_eq!(snap.nodes[1].lag_seconds, Some(0.0));
    assert_eq!(snap.nodes[1].state, "streaming");
    assert_eq!(snap.nodes[2].last_seen, None);
    assert_eq!(snap.tps, Some(10.0));
    assert_eq!(snap.database_bytes, Some(8_000_000));
    assert_eq!(snap.connections, Some(7));
    assert_eq!(snap.failovers.len(), 1);
    assert_eq!(
        snap.failovers[0].at.map(|t| t.0.timestamp()),
        Some(1_796_638_333)
    );
    assert_eq!(counters.unwrap().xact, 1000);
    let s = sample(&snap);
    assert_eq!(s.replication_lag_bytes, Some(0));
    assert_eq!(s.archive_lag_seconds, Some(0.0));

    // The replica not in pg_stat_replication: its lag from the positions.
    let (snap2, _) = snapshot(Inputs {
        instance_id: "inst",
        at,
        nodes: vec![
            (&a, "10.0.0.1".into(), Ok(stats("primary", false))),
            (&b, "10.0.0.2".into(), Ok(stats("replica", true))),
            (&c, "10.0.0.3".into(), Err("timed out".into())),
        ],
        previous: Some(&snap),
        counters: None,
    });
    assert_eq!(snap2.nodes[1].lag_bytes, Some(0x100000));
    assert_eq!(snap2.nodes[1].lag_seconds, None);
    assert_eq!(snap2.tps, None);

    // Nobody leads.
    let (snap3, counters) = snapshot(Inputs {
        instance_id: "inst",
        at,
        nodes: vec![(&b, "10.0.0.2".into(), Ok(stats("replica", true)))],
        previous: None,
        counters: None,
    });
    assert_eq!(snap3.leader, None);
    assert_eq!(snap3.error.as_deref(), Some("No node leads."));
    assert!(counters.is_none() && snap3.archive.is_none());
}
