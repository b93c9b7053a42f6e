//! `walarchive-broker selftest` (design §5), the real binary against a real `serve` process,
//! one cell agent (Patroni, PostgreSQL, HAProxy), archives in S3 (s3s-fs) and a `file://`
//! state backup.
//!
//! What it must show: the steps' lines and the exit status; that a wrong S3 secret fails at
//! step 1 naming "repository credentials"; and, whatever happened, that nothing is left: no
//! node on the cell, no record under the broker's prefix naming a self-test instance, no
//! object under the archives' base. `selftest_passes_on_a_good_setup` runs all twelve steps
//! (provision, backup, a clone at a point in time and its row count included); a failure in
//! the middle of a run (the guard cleaning up after it) has no test of its own yet.
use testkit::broker as common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::broker::BrokerToml;
use common::cells::{free_port, tail, test_root, wait_for, walarchive_copy, Cell};
use common::etcd::{etcd, pki};
use common::s3::{files_under, s3};

/// A `walarchive-broker serve` child that dies with the test.
struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Everything a self-test runs against.
struct Setup {
    root: PathBuf,
    cell: Cell,
    config: PathBuf,
    /// The same broker configuration, but the archives' S3 secret is wrong.
    wrong_secret: PathBuf,
    bucket_dir: PathBuf,
    prefix: String,
    _broker: Serve,
}

async fn setup(kind: &str) -> Setup {
    let etcd = etcd();
    let root = test_root(kind);
    let bin = walarchive_copy(&root);
    let s3 = s3();
    let bucket = s3.fresh_bucket();
    let s3_config = root.join("walarchive-s3.toml");
    s3.walarchive_config(&s3_config);
    let wrong = root.join("walarchive-s3-wrong.toml");
    let text = std::fs::read_to_string(&s3_config).unwrap();
    assert!(text.contains(&s3.secret_key));
    std::fs::write(&wrong, text.replace(&s3.secret_key, "not-the-secret")).unwrap();
    let state_dir = root.join("state-backup");
    std::fs::create_dir(&state_dir).unwrap();

    let cell = Cell::start(&root, "a");
    cell.wait_ready().await;
    let listen = free_port();
    let mut t = BrokerToml::new(&root, &format!("s3://{bucket}/inst"), &bin);
    t.cells = vec![(&cell, "za")];
    t.node_count = 1;
    t.listen = Some(listen);
    t.router_ports = 8;
    t.backups = ("1h", 2);
    t.worker = ("1s", "3m");
    t.walarchive_config = Some(s3_config.clone());
    let prefix = format!("/broker{}", etcd.fresh_prefix());
    let text = t.render(&prefix)
        + &format!(
            "[state_backup]\nurl = \"file://{}\"\nmin_interval = \"1s\"\n",
            state_dir.display()
        );
    let config = root.join("broker.toml");
    std::fs::write(&config, &text).unwrap();
    let wrong_secret = root.join("broker-wrong-secret.toml");
    let wrong_text = text.replace(
        &s3_config.display().to_string(),
        &wrong.display().to_string(),
    );
    assert_ne!(wrong_text, text);
    std::fs::write(&wrong_secret, wrong_text).unwrap();

    let log = std::fs::File::create(root.join("broker.log")).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_walarchive-broker"));
    cmd.arg("serve")
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "info,walarchive_broker=debug")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    walarchive_broker::process::die_with_parent(&mut cmd);
    let broker = Serve(cmd.spawn().expect("start walarchive-broker serve"));
    let ca = reqwest::Certificate::from_pem(&std::fs::read(pki().ca_file()).unwrap()).unwrap();
    let http = reqwest::Client::builder()
        .tls_certs_only([ca])
        .build()
        .unwrap();
    let broker_log = root.join("broker.log");
    wait_for(
        "the broker answers",
        Duration::from_secs(30),
        || {
            let req = http
                .get(format!("https://127.0.0.1:{listen}/v2/catalog"))
                .basic_auth(common::osb::USER, Some(common::osb::PASSWORD))
                .header("X-Broker-API-Version", "2.17");
            async move { (req.send().await.ok()?.status() == 200).then_some(()) }
        },
        || tail(&broker_log, 30),
    )
    .await;
    Setup {
        bucket_dir: s3.root_dir().join(&bucket),
        root,
        cell,
        config,
        wrong_secret,
        prefix,
        _broker: broker,
    }
}

/// `walarchive-broker selftest --config FILE`: exit status and stdout (stderr to the log).
async fn selftest(s: &Setup, config: &Path) -> (i32, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_walarchive-broker"));
    cmd.arg("selftest")
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(240), cmd.output())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "selftest did not finish within 4 minutes\n{}",
                tail(&s.root.join("broker.log"), 40)
            )
        })
        .expect("run walarchive-broker selftest");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!(
        "--- selftest stdout ---\n{stdout}--- stderr ---\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), stdout)
}

/// Nothing of a self-test is left: no node on the cell, no key under the broker's prefix
/// naming a self-test instance (nor a port or a claim), no object in the archives' bucket.
async fn nothing_left(s: &Setup) {
    let nodes = s.cell.client().nodes().await.expect("the cell answers");
    assert!(nodes.is_empty(), "nodes left on the cell: {nodes:?}");
    let keys: Vec<String> = etcd()
        .client()
        .get_prefix(format!("{}/", s.prefix).as_bytes())
        .await
        .unwrap()
        .iter()
        .map(|kv| kv.key_str())
        .filter(|k| {
            let rest = &k[s.prefix.len()..];
            [
                "/instances/",
                "/operations/",
                "/bindings/",
                "/secrets/",
                "/claims/",
                "/ports/",
                "/catalog/",
            ]
            .iter()
            .any(|p| rest.starts_with(p))
        })
        .collect();
    assert!(keys.is_empty(), "records left: {keys:?}");
    let objects = files_under(&s.bucket_dir);
    assert!(
        objects.is_empty(),
        "objects left in the bucket: {objects:?}"
    );
}

fn step_lines(out: &str, tag: &str) -> Vec<usize> {
    out.lines()
        .filter_map(|l| l.strip_prefix(&format!("[{tag}] ")))
        .filter_map(|l| l.split(' ').next()?.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selftest_fails_at_step_1_on_a_wrong_secret_leaving_nothing() {
    let t0 = Instant::now();
    let s = setup("selftest-fail").await;

    // A wrong S3 secret: step 1, named; nothing was created.
    let (code, out) = selftest(&s, &s.wrong_secret).await;
    assert_eq!(code, 1, "{out}");
    let last = out.lines().last().unwrap_or_default();
    assert!(
        last.contains("step 1 (repository credentials)"),
        "last line: {last:?}\n{out}"
    );
    assert!(
        out.starts_with("[FAILED] 1 repository credentials: "),
        "{out}"
    );
    assert_eq!(step_lines(&out, "ok"), vec![10, 11], "{out}");
    nothing_left(&s).await;
    eprintln!("done at {:.1} s", t0.elapsed().as_secs_f64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selftest_passes_on_a_good_setup() {
    let s = setup("selftest-pass").await;
    let (code, out) = selftest(&s, &s.config).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        step_lines(&out, "ok"),
        (1..=12).collect::<Vec<_>>(),
        "{out}"
    );
    assert_eq!(out.lines().last(), Some("selftest passed"), "{out}");
    nothing_left(&s).await;
}
