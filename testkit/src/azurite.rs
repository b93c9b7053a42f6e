//! The Azurite blob service the tests share, and SharedKey-signed requests to it.

use std::fmt::Write as _;
use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::SystemTime;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

use crate::http::{hmac_sha256, http_date, http_request, uri_encode, HttpResponse};
use crate::servers::{find_program, start_server};
use crate::tmp::{path_str, proc_dir};

/// A List Blobs answer (the parts the harness reads).
#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct EnumerationResults {
    #[serde(default)]
    blobs: Blobs,
    next_marker: Option<String>,
}

#[derive(Default, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Blobs {
    #[serde(default)]
    blob: Vec<ListedBlob>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListedBlob {
    name: String,
}

/// The shared Azurite (blob service) of this test process.
pub struct Azurite {
    pub port: u16,
    dir: PathBuf,
    counter: AtomicU64,
}

/// The Azurite blob server shared by all tests of this process (started on first use).
pub fn azurite() -> &'static Azurite {
    static AZ: OnceLock<Azurite> = OnceLock::new();
    AZ.get_or_init(Azurite::start)
}

impl Azurite {
    /// The emulator's well-known account.
    pub const ACCOUNT: &'static str = "devstoreaccount1";
    /// The emulator's well-known account key (public, documented by Microsoft;
    /// the same value as Azurite's and object_store's built-in constant).
    /// Beware a corrupted variant ending in `...K1SZFf3eR4h9ae/eD9LXyg==`
    /// that circulates: Azurite rejects it with 403.
    pub const KEY: &'static str =
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
    /// x-ms-version sent by the harness.
    pub const API_VERSION: &'static str = "2021-12-02";

    fn start() -> Azurite {
        let prog = find_program("azurite-blob").expect("azurite-blob not found: run scripts/setup");
        let dir = proc_dir().join("azurite");
        let location = dir.join("data");
        fs::create_dir_all(&location).unwrap();
        let mut args = [
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            "{port}",
            "--location",
            path_str(&location),
            "--skipApiVersionCheck",
            "--loose",
            "--silent",
            "--disableTelemetry",
        ]
        .map(String::from)
        .to_vec();
        // WALARCHIVE_AZURITE_DEBUG=1: Azurite's debug log (incl. the string it
        // signs for SharedKey) goes to <proc dir>/azurite/debug.log.
        if std::env::var("WALARCHIVE_AZURITE_DEBUG").is_ok_and(|v| v == "1") {
            args.push("--debug".into());
            args.push(path_str(&dir.join("debug.log")).into());
        }
        let port = start_server("azurite-blob", &prog, &args, &dir);
        Azurite {
            port,
            dir,
            counter: AtomicU64::new(0),
        }
    }

    /// `http://127.0.0.1:PORT` (what AZURITE_BLOB_STORAGE_URL holds).
    pub fn blob_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:PORT/devstoreaccount1`
    pub fn endpoint(&self) -> String {
        format!("{}/{}", self.blob_url(), Self::ACCOUNT)
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// Environment for walarchive (object_store's MicrosoftAzureBuilder::from_env).
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AZURE_STORAGE_USE_EMULATOR".into(), "true".into()),
            ("AZURITE_BLOB_STORAGE_URL".into(), self.blob_url()),
            ("AZURE_STORAGE_ACCOUNT_NAME".into(), Self::ACCOUNT.into()),
            ("AZURE_STORAGE_ACCOUNT_KEY".into(), Self::KEY.into()),
        ]
    }

    /// A SharedKey-signed request. `path` is relative to the account and
    /// unencoded, e.g. "/container/blob name"; `query` pairs unencoded;
    /// `headers` may include x-ms-* headers (signed) and Content-Type.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        query: &[(&str, &str)],
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> HttpResponse {
        let mut hdrs: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        hdrs.push(("x-ms-date".into(), http_date(SystemTime::now())));
        hdrs.push(("x-ms-version".into(), Self::API_VERSION.into()));
        let std_header = |name: &str| -> String {
            hdrs.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let mut ms: Vec<(String, String)> = hdrs
            .iter()
            .filter(|(k, _)| k.to_ascii_lowercase().starts_with("x-ms-"))
            .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        ms.sort();
        let canonical_headers: String = ms.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
        let encoded_path = uri_encode(path, true);
        let mut canonical_resource =
            format!("/{}/{}{}", Self::ACCOUNT, Self::ACCOUNT, encoded_path);
        let mut q: Vec<(String, &str)> = query
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), *v))
            .collect();
        q.sort();
        for (k, v) in &q {
            let _ = write!(canonical_resource, "\n{k}:{v}");
        }
        let content_length = if body.is_empty() {
            String::new()
        } else {
            body.len().to_string()
        };
        let string_to_sign = format!(
            "{method}\n{}\n{}\n{content_length}\n{}\n{}\n\n{}\n{}\n{}\n{}\n{}\n{canonical_headers}{canonical_resource}",
            std_header("Content-Encoding"),
            std_header("Content-Language"),
            std_header("Content-MD5"),
            std_header("Content-Type"),
            std_header("If-Modified-Since"),
            std_header("If-Match"),
            std_header("If-None-Match"),
            std_header("If-Unmodified-Since"),
            std_header("Range"),
        );
        let key = BASE64
            .decode(Self::KEY)
            .expect("the emulator's key is base64");
        let sig = BASE64.encode(hmac_sha256(&key, string_to_sign.as_bytes()));
        hdrs.push((
            "Authorization".into(),
            format!("SharedKey {}:{sig}", Self::ACCOUNT),
        ));
        let query_string = query
            .iter()
            .map(|(k, v)| format!("{}={}", uri_encode(k, false), uri_encode(v, false)))
            .collect::<Vec<_>>()
            .join("&");
        let mut target = format!("/{}{}", Self::ACCOUNT, encoded_path);
        if !query_string.is_empty() {
            target = format!("{target}?{query_string}");
        }
        http_request(self.port, method, &target, &hdrs, body)
            .unwrap_or_else(|e| panic!("Azure {method} {target}: {e}"))
    }

    /// Create Container; returns the HTTP status (201 created, 409 exists).
    pub fn try_create_container(&self, name: &str) -> u16 {
        self.request(
            "PUT",
            &format!("/{name}"),
            &[("restype", "container")],
            &[],
            b"",
        )
        .status
    }

    /// Create Container; panics unless 201.
    pub fn create_container(&self, name: &str) {
        let status = self.try_create_container(name);
        assert_eq!(status, 201, "create container {name}");
    }

    /// Creates and returns a container name unique within this test process.
    pub fn fresh_container(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::SeqCst);
        let name = format!("wa-{}-{n}", std::process::id());
        self.create_container(&name);
        name
    }

    /// Put Blob (block blob); panics unless 201.
    pub fn put_blob(&self, container: &str, name: &str, body: &[u8]) {
        let r = self.request(
            "PUT",
            &format!("/{container}/{name}"),
            &[],
            &[("x-ms-blob-type", "BlockBlob")],
            body,
        );
        assert_eq!(r.status, 201, "put blob {container}/{name}: {}", r.text());
    }

    /// Get Blob: Some(body), or None on 404.
    pub fn get_blob(&self, container: &str, name: &str) -> Option<Vec<u8>> {
        let r = self.request("GET", &format!("/{container}/{name}"), &[], &[], b"");
        match r.status {
            200 => Some(r.body),
            404 => None,
            s => panic!("get blob {container}/{name}: {s} {}", r.text()),
        }
    }

    /// Delete Blob (ok if absent).
    pub fn delete_blob(&self, container: &str, name: &str) {
        let r = self.request("DELETE", &format!("/{container}/{name}"), &[], &[], b"");
        assert!(
            r.status == 202 || r.status == 404,
            "delete blob {container}/{name}: {} {}",
            r.status,
            r.text()
        );
    }

    /// All blob names under `prefix` (List Blobs, all pages), sorted.
    pub fn list_blobs(&self, container: &str, prefix: &str) -> Vec<String> {
        let mut names = Vec::new();
        let mut marker = String::new();
        loop {
            let mut q = vec![("restype", "container"), ("comp", "list")];
            if !prefix.is_empty() {
                q.push(("prefix", prefix));
            }
            if !marker.is_empty() {
                q.push(("marker", &marker));
            }
            let r = self.request("GET", &format!("/{container}"), &q, &[], b"");
            assert_eq!(r.status, 200, "list blobs {container}: {}", r.text());
            let page: EnumerationResults = quick_xml::de::from_str(&r.text())
                .unwrap_or_else(|e| panic!("list blobs {container}: {e}: {}", r.text()));
            names.extend(page.blobs.blob.into_iter().map(|b| b.name));
            match page.next_marker.filter(|m| !m.is_empty()) {
                Some(next) => marker = next,
                None => break,
            }
        }
        names.sort();
        names
    }
}
