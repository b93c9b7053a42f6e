//! The S3 server the tests share (s3s-fs, or moto), and SigV4-signed requests to it.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::SystemTime;

use crate::http::{amz_date, hmac_sha256, http_request, sha256_hex, uri_encode, HttpResponse};
use crate::servers::{find_program, start_server};
use crate::tmp::{path_str, proc_dir};

/// Which S3 server [`s3()`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum S3Kind {
    /// `s3s-fs` (default): buckets and objects are plain directories/files under `root_dir()`.
    S3sFs,
    /// `moto_server` (`WALARCHIVE_TEST_S3=moto`): in memory.
    Moto,
}

/// A ListObjectsV2 answer (the parts the harness reads).
#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListBucketResult {
    #[serde(default)]
    contents: Vec<ListedObject>,
    #[serde(default)]
    is_truncated: bool,
    next_continuation_token: Option<String>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListedObject {
    key: String,
}

/// The shared S3 server of this test process.
pub struct S3Server {
    pub kind: S3Kind,
    pub port: u16,
    pub access_key: String,
    pub secret_key: String,
    pub region: String,
    dir: PathBuf,
    root: PathBuf,
    counter: AtomicU64,
}

/// The S3 server shared by all tests of this process (started on first use):
/// `s3s-fs`, or `moto_server` when `WALARCHIVE_TEST_S3=moto`.
pub fn s3() -> &'static S3Server {
    static S3: OnceLock<S3Server> = OnceLock::new();
    S3.get_or_init(S3Server::start)
}

impl S3Server {
    fn start() -> S3Server {
        let kind = match std::env::var("WALARCHIVE_TEST_S3").as_deref() {
            Ok("moto") => S3Kind::Moto,
            Ok("") | Ok("s3s-fs") | Ok("s3s") | Err(_) => S3Kind::S3sFs,
            Ok(other) => panic!("WALARCHIVE_TEST_S3={other}: expected s3s-fs or moto"),
        };
        let dir = proc_dir().join("s3");
        let root = dir.join("root");
        fs::create_dir_all(&root).unwrap();
        let access_key = "walarchive-test-access-key".to_string();
        let secret_key = "walarchive-test-secret-key".to_string();
        let port = match kind {
            S3Kind::S3sFs => {
                let prog = find_program("s3s-fs")
                    .expect("s3s-fs not found (PATH, ~/.cargo/bin): run scripts/setup");
                let args = [
                    "--host",
                    "127.0.0.1",
                    "--port",
                    "{port}",
                    "--access-key",
                    &access_key,
                    "--secret-key",
                    &secret_key,
                    path_str(&root),
                ]
                .map(String::from);
                start_server("s3s-fs", &prog, &args, &dir)
            }
            S3Kind::Moto => {
                let prog =
                    find_program("moto_server").expect("moto_server not found: run scripts/setup");
                let args = ["-H", "127.0.0.1", "-p", "{port}"].map(String::from);
                start_server("moto_server", &prog, &args, &dir)
            }
        };
        S3Server {
            kind,
            port,
            access_key,
            secret_key,
            region: "us-east-1".into(),
            dir,
            root,
            counter: AtomicU64::new(0),
        }
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// s3s-fs's storage root (`<root>/<bucket>/<key>`); unused by moto.
    pub fn root_dir(&self) -> &Path {
        &self.root
    }

    /// The server's own log.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// Environment for walarchive (object_store's AmazonS3Builder::from_env).
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID".into(), self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY".into(), self.secret_key.clone()),
            ("AWS_REGION".into(), self.region.clone()),
            ("AWS_ENDPOINT".into(), self.endpoint()),
            ("AWS_ALLOW_HTTP".into(), "true".into()),
        ]
    }

    /// A walarchive configuration file at `path` (mode 0644, so that PostgreSQL's OS user
    /// reads it) with this server's endpoint and credentials in `[storage]`.
    pub fn walarchive_config(&self, path: &Path) {
        fs::write(
            path,
            format!(
                "[storage]\naws_access_key_id = \"{}\"\naws_secret_access_key = \"{}\"\n\
                 aws_region = \"{}\"\naws_endpoint = \"{}\"\naws_allow_http = \"true\"\n",
                self.access_key,
                self.secret_key,
                self.region,
                self.endpoint()
            ),
        )
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        crate::chmod(path, 0o644);
    }

    /// A SigV4-signed path-style request. `path` is unencoded, e.g.
    /// "/bucket/some key"; `query` pairs are unencoded.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        query: &[(&str, &str)],
        body: &[u8],
    ) -> HttpResponse {
        let now = SystemTime::now();
        let amz = amz_date(now);
        let date = &amz[..8];
        let host = format!("127.0.0.1:{}", self.port);
        let payload_hash = sha256_hex(body);
        let canonical_uri = uri_encode(path, true);
        let mut q: Vec<(String, String)> = query
            .iter()
            .map(|(k, v)| (uri_encode(k, false), uri_encode(v, false)))
            .collect();
        q.sort();
        let canonical_query = q
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        let signed_headers = "host;x-amz-content-sha256;x-amz-date";
        let canonical_request = format!(
            "{method}\n{canonical_uri}\n{canonical_query}\nhost:{host}\nx-amz-content-sha256:{payload_hash}\nx-amz-date:{amz}\n\n{signed_headers}\n{payload_hash}"
        );
        let scope = format!("{date}/{}/s3/aws4_request", self.region);
        let string_to_sign = format!(
            "AWS4-HMAC-SHA256\n{amz}\n{scope}\n{}",
            sha256_hex(canonical_request.as_bytes())
        );
        let mut key = hmac_sha256(
            format!("AWS4{}", self.secret_key).as_bytes(),
            date.as_bytes(),
        );
        for part in [self.region.as_str(), "s3", "aws4_request"] {
            key = hmac_sha256(&key, part.as_bytes());
        }
        let signature = hex::encode(hmac_sha256(&key, string_to_sign.as_bytes()));
        let auth = format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
            self.access_key
        );
        let target = if canonical_query.is_empty() {
            canonical_uri
        } else {
            format!("{canonical_uri}?{canonical_query}")
        };
        let headers = vec![
            ("x-amz-date".to_string(), amz.clone()),
            ("x-amz-content-sha256".to_string(), payload_hash),
            ("Authorization".to_string(), auth),
        ];
        http_request(self.port, method, &target, &headers, body)
            .unwrap_or_else(|e| panic!("S3 {method} {target}: {e}"))
    }

    /// CreateBucket; panics unless the server answers 200.
    pub fn create_bucket(&self, name: &str) {
        let r = self.request("PUT", &format!("/{name}"), &[], b"");
        assert_eq!(r.status, 200, "CreateBucket {name}: {}", r.text());
    }

    /// Creates and returns a bucket name unique within this test process.
    pub fn fresh_bucket(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::SeqCst);
        let name = format!("wa-{}-{n}", std::process::id());
        self.create_bucket(&name);
        name
    }

    /// PutObject; panics unless 200.
    pub fn put_object(&self, bucket: &str, key: &str, body: &[u8]) {
        let r = self.request("PUT", &format!("/{bucket}/{key}"), &[], body);
        assert_eq!(r.status, 200, "PutObject {bucket}/{key}: {}", r.text());
    }

    /// GetObject: Some(body), or None on 404.
    pub fn get_object(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        let r = self.request("GET", &format!("/{bucket}/{key}"), &[], b"");
        match r.status {
            200 => Some(r.body),
            404 => None,
            s => panic!("GetObject {bucket}/{key}: {s} {}", r.text()),
        }
    }

    /// DeleteObject (ok if absent).
    pub fn delete_object(&self, bucket: &str, key: &str) {
        let r = self.request("DELETE", &format!("/{bucket}/{key}"), &[], b"");
        assert!(
            r.status == 204 || r.status == 200 || r.status == 404,
            "DeleteObject {bucket}/{key}: {} {}",
            r.status,
            r.text()
        );
    }

    /// All keys under `prefix` (ListObjectsV2, all pages), sorted.
    pub fn list_objects(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut q = vec![("list-type", "2"), ("prefix", prefix)];
            if let Some(t) = &token {
                q.push(("continuation-token", t));
            }
            let r = self.request("GET", &format!("/{bucket}"), &q, b"");
            assert_eq!(r.status, 200, "ListObjectsV2 {bucket}: {}", r.text());
            let page: ListBucketResult = quick_xml::de::from_str(&r.text())
                .unwrap_or_else(|e| panic!("ListObjectsV2 {bucket}: {e}: {}", r.text()));
            keys.extend(page.contents.into_iter().map(|c| c.key));
            token = page.next_continuation_token;
            if !page.is_truncated || token.is_none() {
                break;
            }
        }
        keys.sort();
        keys
    }
}
