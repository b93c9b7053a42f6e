//! A provision whose first base backup keeps failing: the worker backs off (1 s doubling to
//! `worker.backoff_max`, jittered) instead of retrying every second, `last_operation` tells
//! the platform's user what fails in plain words (no paths, host names or internal errors:
//! those go to the broker's log), and the provision completes once backups work again.
//!
//! The failure is injected with a real command: `nodes.walarchive` is a wrapper around the
//! real walarchive that fails `backup-push` (after counting the attempt) while a flag file
//! exists, with an error message full of internal detail.
use testkit::broker as common;

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::Method;
use common::broker::BrokerToml;
use common::cells::{chown_postgres, file_repository, test_root, wait_for, walarchive_copy, Cell};
use common::etcd::etcd;
use common::osb::Api;

/// The broker's log lines, captured (the worker runs in this process).
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Log {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const INTERNAL: &str =
    "cannot write /srv/internal/base_1: Permission denied (os error 13) on db-internal-7.example";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_first_backup_backs_off_and_says_what_failed() {
    let log = Log::default();
    let writer = log.clone();
    tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_env_filter("walarchive_broker=info")
        .init();
    tokio::time::timeout(Duration::from_secs(400), scenario(log))
        .await
        .expect("the scenario finishes within 400 s");
}

async fn scenario(log: Log) {
    let etcd = etcd();
    let root = test_root("backoff");
    let real = walarchive_copy(&root);
    let base = file_repository(&root);
    let flag = root.join("fail-backups");
    let count = root.join("backup-attempts");
    std::fs::write(&flag, "").unwrap();
    std::fs::write(&count, "").unwrap();
    chown_postgres(&count);
    let wrapper = root.join("bin").join("walarchive-failing-backups");
    let mut f = std::fs::File::create(&wrapper).unwrap();
    write!(
        f,
        "#!/bin/sh\nfor a; do\n  if [ \"$a\" = backup-push ] && [ -e '{flag}' ]; then\n    \
         echo x >> '{count}'\n    echo 'walarchive backup-push: error: {INTERNAL}' >&2\n    exit 7\n  fi\n\
         done\nexec '{real}' \"$@\"\n",
        flag = flag.display(),
        count = count.display(),
        real = real.display(),
    )
    .unwrap();
    drop(f);
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();

    let cell = Cell::start(&root, "a");
    cell.wait_ready().await;
    let mut t = BrokerToml::new(&root.join("broker"), &base, &wrapper);
    t.cells = vec![(&cell, "za")];
    t.node_count = 1;
    t.worker = ("1s", "5m");
    t.backoff_max = "16s";
    t.outlive_router = false;
    let prefix = format!("/broker{}", etcd.fresh_prefix());
    let api = Api::new(&t.render(&prefix), &t.service, &t.plan);
    let worker = api.spawn_worker();
    let diag = || cell.log_tail(30);
    let attempts = || {
        std::fs::read_to_string(&count)
            .unwrap_or_default()
            .lines()
            .count()
    };

    let op = api.provision("db1", 1).await;
    let last_op = || async {
        let (_, b) = api
            .call(
                Method::GET,
                &format!("/v2/service_instances/db1/last_operation?operation={op}"),
                None,
            )
            .await;
        b
    };
    wait_for(
        "the first backup to fail",
        Duration::from_secs(180),
        || async {
            let b = last_op().await;
            assert_eq!(b["state"], "in progress", "{b}");
            b["description"]
                .as_str()?
                .contains("first base backup failed")
                .then_some(())
        },
        diag,
    )
    .await;

    // A window of 50 s: the backoff allows about 1 + 2 + 4 + 8 + 16 + 16 s between attempts
    // (each delay drawn between half and all of that), where retrying every pass made dozens.
    let (start, before) = (Instant::now(), attempts());
    let mut seen: Vec<String> = Vec::new();
    while start.elapsed() < Duration::from_secs(50) {
        let b = last_op().await;
        assert_eq!(b["state"], "in progress", "{b}");
        let d = b["description"].as_str().unwrap().to_string();
        if seen.last() != Some(&d) {
            eprintln!("  {d}");
            seen.push(d);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let made = attempts() - before;
    eprintln!("{made} backup attempts in 50 s");
    assert!((3..=10).contains(&made), "{made} attempts in 50 s");

    // What the platform's user reads: what failed, the attempt, when the next one is.
    let failing: Vec<&String> = seen
        .iter()
        .filter(|d| d.contains("the first base backup failed; retrying (attempt "))
        .collect();
    assert!(failing.len() >= 3, "{seen:#?}");
    let mut numbers = Vec::new();
    for d in &failing {
        let (attempt, next) = d
            .split_once("(attempt ")
            .and_then(|(_, r)| r.split_once(", next in "))
            .expect(d);
        let next: f64 = next.trim_end_matches(" s)").parse().expect(d);
        numbers.push((attempt.parse::<u32>().expect(d), next));
        assert!((1.0..=16.0).contains(&next), "{d}");
    }
    assert!(
        numbers.windows(2).all(|w| w[1].0 > w[0].0),
        "attempts count up: {numbers:?}"
    );
    assert!(
        numbers.last().unwrap().1 >= 4.0,
        "the delay grew: {numbers:?}"
    );
    for d in &seen {
        for leak in [
            "/",
            "Permission denied",
            "db-internal",
            "os error",
            "walarchive",
            "exit status",
        ] {
            assert!(!d.contains(leak), "{leak:?} in the description {d:?}");
        }
    }
    // The internal error is in the broker's log.
    let text = String::from_utf8_lossy(&log.0.lock().unwrap()).into_owned();
    assert!(
        text.contains("the first base backup failed")
            && text.contains("Permission denied (os error 13)"),
        "{text}"
    );

    // Backups work again: the provision completes at the next attempt.
    std::fs::remove_file(&flag).unwrap();
    api.wait_succeeded("db1", &op, Duration::from_secs(60), &diag)
        .await;
    let op = api.deprovision("db1").await;
    let (_, s, _) = api
        .wait_op("db1", &op, Duration::from_secs(60), &diag)
        .await;
    assert_eq!(s.as_u16(), 410);
    worker.abort();
    let _ = worker.await;
}
