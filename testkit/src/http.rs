//! Plain HTTP requests to the servers on 127.0.0.1, and what signing them takes (SHA-256,
//! HMAC, percent-encoding, the dates S3 and Azure sign).
//!
//! The harness is synchronous and is called from plain `#[test]`s and from `#[tokio::test]`s
//! alike, so a request runs on a thread of its own, on a runtime of the harness's own (a
//! runtime cannot be blocked on from inside another one). The client follows no redirects,
//! uses no proxy from the environment and keeps no idle connection: every request is what
//! the test wrote, on a fresh connection, as the hand-written client it replaces did.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

/// A response: status, headers and the whole body.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("testkit-http")
            .enable_all()
            .build()
            .expect("the harness's HTTP runtime")
    })
}

fn client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(0)
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .build()
            .expect("the harness's HTTP client")
    })
}

/// Sends one request to `http://127.0.0.1:port` + `target` (path and query, already
/// encoded) with `headers` and `body`, and reads the whole response. `Host` and
/// `Content-Length` are the client's.
pub fn http_request(
    port: u16,
    method: &str,
    target: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> std::io::Result<HttpResponse> {
    let io = |e: String| std::io::Error::other(e);
    let method = reqwest::Method::from_bytes(method.as_bytes()).map_err(|e| io(e.to_string()))?;
    let mut req = client().request(method, format!("http://127.0.0.1:{port}{target}"));
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let req = req.body(body.to_vec());
    let send = async move {
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = resp.bytes().await?.to_vec();
        Ok::<_, reqwest::Error>(HttpResponse {
            status,
            headers,
            body,
        })
    };
    std::thread::scope(|s| {
        s.spawn(|| runtime().block_on(send))
            .join()
            .expect("the HTTP request's thread")
    })
    .map_err(|e| io(format!("{e:#}")))
}

/// Lowercase hex of the SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// HMAC-SHA256 of `msg` under `key`.
pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(msg);
    mac.finalize().into_bytes().into()
}

/// Percent-encodes everything but RFC 3986 unreserved characters (and `/` when
/// `keep_slash`), as AWS SigV4 and Azure expect.
pub fn uri_encode(s: &str, keep_slash: bool) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            b'/' if keep_slash => out.push('/'),
            _ => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

/// RFC 1123 date, e.g. "Sun, 06 Nov 1994 08:49:37 GMT".
pub fn http_date(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t)
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string()
}

/// ISO 8601 basic format as in SigV4, e.g. "20240131T235959Z".
pub fn amz_date(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t)
        .format("%Y%m%dT%H%M%SZ")
        .to_string()
}
