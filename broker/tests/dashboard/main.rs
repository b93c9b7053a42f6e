//! The dashboard in a real browser (headless Chromium through chromedriver) against the real
//! `walarchive-broker serve` with real clusters: etcd, two cells, a broker sampling every
//! second, a two-node instance with a binding and data, and a one-node instance beside it.
//!
//! Why one shared setup: a cluster takes most of a minute to provision; every test of this
//! binary (`pages.rs`: what the pages show; `actions.rs`: what their forms do) looks at the
//! same instances. The setup runs once, on a thread that lives as long as the test process
//! (the cells and the broker die with the thread that started them), and hands out plain
//! data; each test makes its own browser and clients on its own runtime.
use testkit::broker as common;

mod actions;
mod pages;

use std::path::PathBuf;
use std::process::Child;
use std::sync::OnceLock;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};

use common::broker::BrokerToml;
use common::browser::Browser;
use common::cells::{free_port, tail, wait_for, Cell};
use common::etcd::pki;
use common::osb::{PASSWORD, USER};
use common::rig::Rig;
use common::serve::{osb_call, spawn_serve};

const SERVICE: &str = "svc-dash";
const PLAN: &str = "plan-ha";

/// What the tests share: addresses, ids, links and the processes behind them.
pub struct Fixture {
    /// The broker's URL (`https://127.0.0.1:<port>`).
    pub base: String,
    /// The broker's configuration file.
    pub config: PathBuf,
    /// The broker's log.
    pub log: PathBuf,
    /// The two-node instance (with a binding and data).
    pub instance: String,
    /// Its `dashboard_url` (the user's link).
    pub link: String,
    /// Its binding's credentials.
    pub credentials: Value,
    /// The one-node instance.
    pub other: String,
    /// The Chromium flag that trusts the broker's (throwaway) certificate, and only it.
    pub trust_flag: String,
    /// The cells (their nodes' superuser sessions go through them).
    pub cells: Vec<Cell>,
    _broker: std::sync::Mutex<Child>,
}

impl Fixture {
    /// The broker's log, last `n` lines (for failure messages).
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log, n)
    }

    /// The cell named `name`.
    pub fn cell(&self, name: &str) -> &Cell {
        self.cells.iter().find(|c| c.name == name).expect("a cell")
    }

    /// A headless Chromium that trusts the broker's certificate; `test` names its artifacts.
    pub async fn browser(&self, test: &str) -> Browser {
        Browser::start_with(test, std::slice::from_ref(&self.trust_flag)).await
    }

    /// Logs `b` in as the operator (the broker's credentials) and waits for the overview.
    pub async fn login(&self, b: &Browser) {
        b.goto(&format!("{}/dashboard/login", self.base)).await;
        b.fill("form", &[("username", USER), ("password", PASSWORD)])
            .await;
        b.click("form button[type=submit]").await;
        b.wait_for("table#instances").await;
    }

    /// The broker's OSB API: `(status, body)`.
    pub async fn osb(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        osb(&self.base, method, path, body).await
    }
}

/// The setup, once per test process.
pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Option<Fixture>> = OnceLock::new();
    let f = FIXTURE.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("dashboard-fixture".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .unwrap();
                let f = rt.block_on(setup());
                tx.send(f).unwrap();
                // The cells and the broker die with this thread: it lives as long as the
                // process.
                loop {
                    std::thread::park();
                }
            })
            .unwrap();
        // A failed setup fails every test, once (its panic is in the first test's output).
        rx.recv().ok()
    });
    f.as_ref()
        .expect("the dashboard's setup failed (see its panic above)")
}

async fn osb(base: &str, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
    osb_call(&http(), base, method, path, body)
        .await
        .expect("the broker answers")
}

/// An HTTP client trusting the tests' CA.
pub fn http() -> reqwest::Client {
    let ca = std::fs::read(pki().ca_file()).unwrap();
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Chromium's exemption for one key: `--ignore-certificate-errors-spki-list` with the
/// base64 SHA-256 of the broker certificate's SubjectPublicKeyInfo.
fn trust_flag() -> String {
    use rcgen::PublicKeyData as _;
    use sha2::Digest as _;
    let pem = std::fs::read_to_string(&pki().broker.key_file).unwrap();
    let key = rcgen::KeyPair::from_pem(&pem).expect("the broker's key");
    let spki = sha2::Sha256::digest(key.subject_public_key_info());
    format!(
        "--ignore-certificate-errors-spki-list={}",
        base64::engine::general_purpose::STANDARD.encode(spki)
    )
}

async fn provision(base: &str, id: &str, name: &str, nodes: u8, log: &std::path::Path) -> String {
    let (s, b) = osb(
        base,
        reqwest::Method::PUT,
        &format!("/v2/service_instances/{id}?accepts_incomplete=true"),
        Some(json!({
            "service_id": SERVICE, "plan_id": PLAN,
            "organization_guid": "org-1", "space_guid": "space-1",
            "context": { "platform": "cloudfoundry", "instance_name": name },
            "parameters": { "node-count": nodes },
        })),
    )
    .await;
    assert_eq!(s, 202, "{b}\n{}", tail(log, 40));
    b["operation"].as_str().unwrap().to_string()
}

async fn wait_ready(base: &str, id: &str, op: &str, log: &std::path::Path) {
    wait_for(
        &format!("instance {id} provisioned"),
        Duration::from_secs(240),
        || async {
            let (_, b) = osb(
                base,
                reqwest::Method::GET,
                &format!("/v2/service_instances/{id}/last_operation?operation={op}"),
                None,
            )
            .await;
            match b["state"].as_str() {
                Some("succeeded") => Some(()),
                Some("failed") => panic!("provision of {id} failed: {b}\n{}", tail(log, 60)),
                _ => None,
            }
        },
        || tail(log, 60),
    )
    .await;
}

async fn setup() -> Fixture {
    let t0 = std::time::Instant::now();
    let rig = Rig::start("dashboard", &["a", "b"]).await;
    let root = &rig.root;
    let port = free_port();
    let mut toml = BrokerToml::new(&root.join("broker"), &rig.base, &rig.bin);
    toml.cells = vec![(&rig.cells[0], "z1"), (&rig.cells[1], "z2")];
    toml.service = SERVICE.into();
    toml.plan = PLAN.into();
    toml.listen = Some(port);
    toml.worker = ("1s", "4m");
    let mut text = toml.render(&rig.prefix());
    text.push_str(
        "[stats]\nsample_interval = \"1s\"\nrepository_interval = \"3s\"\ncell_timeout = \"3s\"\n\
         [dashboard]\nsession_lifetime = \"1h\"\n",
    );
    let config = root.join("broker.toml");
    std::fs::write(&config, &text).unwrap();
    let log = root.join("broker.log");
    let broker = spawn_serve(env!("CARGO_BIN_EXE_walarchive-broker"), &config, &log, &[]);
    let base = format!("https://127.0.0.1:{port}");
    wait_for(
        "the broker's API",
        Duration::from_secs(30),
        || async {
            let r = http().get(format!("{base}/dashboard/login")).send().await;
            r.ok().filter(|r| r.status() == 200).map(|_| ())
        },
        || tail(&log, 40),
    )
    .await;
    let instance = "dash-orders".to_string();
    let other = "dash-other".to_string();
    let op1 = provision(&base, &instance, "orders", 2, &log).await;
    let op2 = provision(&base, &other, "other", 1, &log).await;
    wait_ready(&base, &instance, &op1, &log).await;
    wait_ready(&base, &other, &op2, &log).await;
    let (s, b) = osb(
        &base,
        reqwest::Method::PUT,
        &format!("/v2/service_instances/{instance}/service_bindings/b1"),
        Some(json!({ "service_id": SERVICE, "plan_id": PLAN })),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let credentials = b["credentials"].clone();
    let uri = credentials["uri"].as_str().unwrap().to_string();
    let db = wait_for(
        "a connection with the binding",
        Duration::from_secs(30),
        || async { common::cells::connect(&uri).await.ok() },
        || tail(&log, 40),
    )
    .await;
    db.batch_execute(
        "CREATE TABLE orders (id serial PRIMARY KEY, note text);
         INSERT INTO orders (note) SELECT repeat('x', 200) FROM generate_series(1, 20000);",
    )
    .await
    .unwrap();
    let (_, got) = osb(
        &base,
        reqwest::Method::GET,
        &format!("/v2/service_instances/{instance}"),
        None,
    )
    .await;
    let link = got["dashboard_url"]
        .as_str()
        .expect("dashboard_url")
        .to_string();
    eprintln!("dashboard setup: {:.1} s", t0.elapsed().as_secs_f64());
    Fixture {
        base,
        config,
        log,
        instance,
        link,
        credentials,
        other,
        trust_flag: trust_flag(),
        cells: rig.cells,
        _broker: std::sync::Mutex::new(broker),
    }
}
