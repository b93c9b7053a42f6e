//! An OpenStack Swift all-in-one for the tests, from Debian's packages (swift,
//! swift-proxy, swift-account, swift-container, swift-object, memcached).
//!
//! # Why it looks like this
//!
//! * **Real Swift, one per test process.** [`swift()`] starts it lazily, once, in a
//!   `OnceLock`, like `s3()` and `azurite()`; each test takes its own container
//!   ([`SwiftServer::fresh_container`]).
//! * **Everything in one temp dir.** Configs, rings, `swift.conf` (found through
//!   `swift_dir`), the device directory and the logs live under `proc_dir()/swift`;
//!   nothing in `/etc/swift` is read or written, so it never clashes with a system Swift.
//! * **Smallest cluster that is still Swift.** One device in a plain directory
//!   (`mount_check = false`; Swift keeps metadata in xattrs, which ext4/xfs/tmpfs have),
//!   replica count 1, `workers = 0` (no forking: one process per server, killed cleanly),
//!   `user = root` (the daemons drop privileges to `user`; root owns the temp dir). The
//!   proxy runs tempauth (`test:tester` / `testing`, admin of `AUTH_test`), slo, dlo,
//!   bulk, copy and s3api (Swift's S3 API: [`SwiftServer::s3_env`]), with memcached
//!   (tempauth keeps its tokens there) on its own port.
//! * **Rings** are built by the ring builder library that `swift-ring-builder` wraps
//!   (`create 10 1 1`, `add r1z1-127.0.0.1:PORT/d1 1`, `rebalance`), in one Python process:
//!   nine `swift-ring-builder` runs take ~15 s on a busy 2-core machine, this takes ~1 s.
//! * **Watchdog.** One `sh` starts the five daemons and kills them all once the test process
//!   is gone, or once any of them died (then the harness retries on other ports).
//! * **Ready** means: the proxy answers `/healthcheck`, tempauth issues a token, and a
//!   container PUT succeeds (account, container and object servers all up).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use crate::{await_ready, free_port, http_request, proc_dir, sh_quote, spawn_watchdog};

/// The account, user and key tempauth is configured with.
pub const SWIFT_ACCOUNT: &str = "test";
pub const SWIFT_USER: &str = "test:tester";
pub const SWIFT_KEY: &str = "testing";

/// The region Swift's s3api endpoint answers for (its `location`; SigV4 signs with it).
pub const SWIFT_S3_REGION: &str = "us-east-1";

const DAEMONS: [&str; 4] = ["account", "container", "object", "proxy"];

/// The shared Swift all-in-one of this test process.
pub struct SwiftServer {
    /// The proxy's port on 127.0.0.1.
    pub port: u16,
    dir: PathBuf,
    counter: AtomicU64,
    token: String,
}

/// The Swift all-in-one shared by all tests of this process (started on first use).
pub fn swift() -> &'static SwiftServer {
    static SWIFT: OnceLock<SwiftServer> = OnceLock::new();
    SWIFT.get_or_init(SwiftServer::start)
}

fn tail_of(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let v: Vec<&str> = text.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

fn check_programs() {
    for p in [
        "/usr/bin/swift-proxy-server",
        "/usr/bin/swift-account-server",
        "/usr/bin/swift-container-server",
        "/usr/bin/swift-object-server",
        "/usr/bin/memcached",
    ] {
        assert!(
            Path::new(p).exists(),
            "{p} not found: run scripts/setup (Debian packages swift-proxy, swift-account, \
             swift-container, swift-object, memcached)"
        );
    }
}

const RING_SCRIPT: &str = r#"
import sys
from swift.common.ring import RingBuilder
d = sys.argv[1]
for name, port in zip(("account", "container", "object"), sys.argv[2:5]):
    b = RingBuilder(10, 1, 1)
    b.add_dev({"id": 0, "region": 1, "zone": 1, "ip": "127.0.0.1", "port": int(port),
               "device": "d1", "weight": 1.0, "meta": ""})
    b.rebalance()
    b.get_ring().save("%s/%s.ring.gz" % (d, name))
    b.save("%s/%s.builder" % (d, name))
"#;

fn write(path: &Path, text: &str) {
    fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn write_configs(dir: &Path, ports: &[u16; 5]) {
    let d = dir.display();
    write(
        &dir.join("swift.conf"),
        "[swift-hash]\nswift_hash_path_suffix = walarchive-test\nswift_hash_path_prefix = walarchive-test\n\n\
         [storage-policy:0]\nname = Policy-0\ndefault = yes\n",
    );
    for (i, name) in ["account", "container", "object"].iter().enumerate() {
        write(
            &dir.join(format!("{name}-server.conf")),
            &format!(
                "[DEFAULT]\nbind_ip = 127.0.0.1\nbind_port = {port}\nworkers = 0\nuser = root\n\
                 swift_dir = {d}\ndevices = {d}/srv\nmount_check = false\nlog_name = {name}-server\n\
                 log_level = WARNING\n\n[pipeline:main]\npipeline = {name}-server\n\n\
                 [app:{name}-server]\nuse = egg:swift#{name}\n",
                port = ports[i],
            ),
        );
    }
    let filters = [
        ("catch_errors", "catch_errors"),
        ("gatekeeper", "gatekeeper"),
        ("healthcheck", "healthcheck"),
        ("proxy-logging", "proxy_logging"),
        ("listing_formats", "listing_formats"),
        ("bulk", "bulk"),
        ("copy", "copy"),
        ("slo", "slo"),
        ("dlo", "dlo"),
    ]
    .iter()
    .map(|(section, egg)| {
        // Small test segments must not hit SLO's rate limit (1 segment/s after the 10th).
        let extra = if *egg == "slo" || *egg == "dlo" {
            "rate_limit_segments_per_sec = 0\n"
        } else {
            ""
        };
        format!("[filter:{section}]\nuse = egg:swift#{egg}\n{extra}\n")
    })
    .collect::<String>();
    write(
        &dir.join("proxy-server.conf"),
        &format!(
            "[DEFAULT]\nbind_ip = 127.0.0.1\nbind_port = {port}\nworkers = 0\nuser = root\n\
             swift_dir = {d}\nlog_name = proxy-server\nlog_level = WARNING\n\n\
             [pipeline:main]\npipeline = catch_errors gatekeeper healthcheck proxy-logging cache \
             listing_formats bulk s3api tempauth copy slo dlo proxy-logging proxy-server\n\n\
             [app:proxy-server]\nuse = egg:swift#proxy\naccount_autocreate = true\n\n\
             [filter:s3api]\nuse = egg:swift#s3api\nlocation = {region}\n\n\
             [filter:tempauth]\nuse = egg:swift#tempauth\nuser_{acct}_tester = {key} .admin\n\n\
             [filter:cache]\nuse = egg:swift#memcache\nmemcache_servers = 127.0.0.1:{mport}\n\n\
             {filters}",
            port = ports[3],
            mport = ports[4],
            acct = SWIFT_ACCOUNT,
            key = SWIFT_KEY,
            region = SWIFT_S3_REGION,
        ),
    );
    let st = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(RING_SCRIPT)
        .arg(dir)
        .args(ports[..3].iter().map(|p| p.to_string()))
        .stdin(Stdio::null())
        .output()
        .expect("run /usr/bin/python3 to build the rings");
    assert!(
        st.status.success(),
        "building the Swift rings failed:\n{}",
        String::from_utf8_lossy(&st.stderr)
    );
}

/// GET /auth/v1.0 with the tempauth credentials: (storage URL, token).
fn tempauth(port: u16) -> Option<(String, String)> {
    let h = |k: &str, v: &str| (k.to_string(), v.to_string());
    let r = http_request(
        port,
        "GET",
        "/auth/v1.0",
        &[h("X-Auth-User", SWIFT_USER), h("X-Auth-Key", SWIFT_KEY)],
        b"",
    )
    .ok()?;
    if r.status != 200 {
        return None;
    }
    Some((
        r.header("x-storage-url")?.to_string(),
        r.header("x-auth-token")?.to_string(),
    ))
}

impl SwiftServer {
    fn start() -> SwiftServer {
        check_programs();
        let pid = std::process::id();
        let mut last_logs = String::new();
        for attempt in 0..3 {
            let dir = proc_dir().join(format!("swift-{attempt}"));
            fs::create_dir_all(dir.join("srv/d1")).unwrap();
            let ports = [
                free_port(),
                free_port(),
                free_port(),
                free_port(),
                free_port(),
            ];
            write_configs(&dir, &ports);
            let mut script = format!(
                "cd {d}\n/usr/bin/memcached -l 127.0.0.1 -p {mp} -U 0 -m 16 -u root \
                 >memcached.log 2>&1 </dev/null & m=$!\n",
                d = sh_quote(dir.to_str().unwrap()),
                mp = ports[4]
            );
            for (i, name) in DAEMONS.iter().enumerate() {
                script.push_str(&format!(
                    "/usr/bin/swift-{name}-server {name}-server.conf -v >{name}.log 2>&1 </dev/null & p{i}=$!\n"
                ));
            }
            script.push_str(&format!(
                "all=\"$m $p0 $p1 $p2 $p3\"\n\
                 while kill -0 {pid} 2>/dev/null; do\n\
                   if command -v ps >/dev/null; then\n\
                     n=$(ps -o stat= -p \"$m,$p0,$p1,$p2,$p3\" 2>/dev/null | grep -vc '^Z')\n\
                   else n=5; for s in $all; do kill -0 $s 2>/dev/null || n=0; done; fi\n\
                   if [ \"$n\" -lt 5 ]; then kill $all 2>/dev/null; sleep 1; kill -9 $all 2>/dev/null; exit 3; fi\n\
                   sleep 1\n\
                 done\n\
                 kill $all 2>/dev/null; sleep 1; kill -9 $all 2>/dev/null; exit 0\n"
            ));
            let watchdog = spawn_watchdog("Swift all-in-one", &script);
            let logs = || {
                ["memcached"]
                    .iter()
                    .chain(DAEMONS.iter())
                    .map(|n| {
                        format!(
                            "--- {n} ---\n{}\n",
                            tail_of(&dir.join(format!("{n}.log")), 15)
                        )
                    })
                    .collect::<String>()
            };
            let ready = || Self::ready(ports[3], &dir);
            let (timeout, poll) = (Duration::from_secs(90), Duration::from_millis(200));
            match await_ready("Swift all-in-one", watchdog, timeout, poll, logs, ready) {
                Ok(server) => {
                    eprintln!("Swift all-in-one on 127.0.0.1:{}", ports[3]);
                    return server;
                }
                Err(logs) => last_logs = logs,
            }
        }
        panic!("Swift failed to start 3 times\n{last_logs}");
    }

    fn ready(port: u16, dir: &Path) -> Option<SwiftServer> {
        let health = http_request(port, "GET", "/healthcheck", &[], b"").ok()?;
        if health.status != 200 {
            return None;
        }
        let (_, token) = tempauth(port)?;
        let server = SwiftServer {
            port,
            dir: dir.to_path_buf(),
            counter: AtomicU64::new(0),
            token,
        };
        server
            .create_container("walarchive-probe")
            .then_some(server)
    }

    /// `http://127.0.0.1:PORT/auth/v1.0`
    pub fn auth_url(&self) -> String {
        format!("http://127.0.0.1:{}/auth/v1.0", self.port)
    }

    /// The account's storage URL.
    pub fn storage_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1/AUTH_{SWIFT_ACCOUNT}", self.port)
    }

    /// A valid token (tempauth's last 24 h).
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The environment walarchive needs for this Swift: TempAuth, by OpenStack names.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("OS_AUTH_TYPE", "v1password".to_string()),
            ("OS_AUTH_URL", self.auth_url()),
            ("OS_USERNAME", SWIFT_USER.to_string()),
            ("OS_PASSWORD", SWIFT_KEY.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// The environment walarchive needs for Swift's S3 API (the s3api middleware in the
    /// proxy pipeline) through its S3 backend: with TempAuth, s3api takes `account:user` as
    /// the access key and the user's key as the secret. Buckets are Swift containers.
    pub fn s3_env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", SWIFT_USER.to_string()),
            ("AWS_SECRET_ACCESS_KEY", SWIFT_KEY.to_string()),
            ("AWS_REGION", SWIFT_S3_REGION.to_string()),
            ("AWS_ENDPOINT", format!("http://127.0.0.1:{}", self.port)),
            ("AWS_ALLOW_HTTP", "true".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// The same with wal-e's variable names.
    pub fn wal_e_env(&self) -> Vec<(String, String)> {
        [
            ("SWIFT_AUTH_VERSION", "1".to_string()),
            ("SWIFT_AUTHURL", self.auth_url()),
            ("SWIFT_USER", SWIFT_USER.to_string()),
            ("SWIFT_PASSWORD", SWIFT_KEY.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// A pre-issued storage URL and token.
    pub fn preissued_env(&self) -> Vec<(String, String)> {
        vec![
            ("OS_STORAGE_URL".into(), self.storage_url()),
            ("OS_AUTH_TOKEN".into(), self.token.clone()),
        ]
    }

    fn create_container(&self, name: &str) -> bool {
        let r = http_request(
            self.port,
            "PUT",
            &format!("/v1/AUTH_{SWIFT_ACCOUNT}/{name}"),
            &[("X-Auth-Token".into(), self.token.clone())],
            b"",
        );
        matches!(r, Ok(r) if r.status == 201 || r.status == 202)
    }

    /// A new, empty container.
    pub fn fresh_container(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::SeqCst);
        let name = format!("c{}-{n}", std::process::id());
        assert!(
            self.create_container(&name),
            "create Swift container {name}"
        );
        name
    }

    /// Raw request to the account (path relative to the storage URL, e.g. `/c/key`), with
    /// the token.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> crate::HttpResponse {
        let mut h: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        h.push(("X-Auth-Token".into(), self.token.clone()));
        http_request(
            self.port,
            method,
            &format!("/v1/AUTH_{SWIFT_ACCOUNT}{path}"),
            &h,
            body,
        )
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// The object names in `container` (raw, including hidden SLO segments), sorted.
    pub fn raw_names(&self, container: &str) -> Vec<String> {
        let r = self.request("GET", &format!("/{container}?format=json"), &[], b"");
        assert!(
            r.status == 200 || r.status == 204,
            "list {container}: {}",
            r.status
        );
        if r.body.is_empty() {
            return Vec::new();
        }
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap().to_string())
            .collect()
    }

    /// The proxy's log.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("proxy.log")).unwrap_or_default()
    }
}
