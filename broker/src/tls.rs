//! TLS for every HTTP surface of the broker: the OSB API, the cells' API and etcd.
//!
//! Why: the OSB API carries the platform's password (basic auth) and every binding's
//! credentials, the cells' API their bearer token and every node's database passwords, etcd
//! the broker's whole state. On any network but the loopback interface, plain HTTP hands all
//! of that to whoever can watch the wire. So:
//!
//! * servers ([`Incoming`]) speak TLS with a certificate and key from PEM files (rustls,
//!   already in the tree through reqwest), handshaking each connection in a task of its own so
//!   that a slow or hostile client cannot hold up the others;
//! * the cells' API also requires a client certificate signed by its CA (mutual TLS), in
//!   addition to the bearer token: a stolen token alone is not enough;
//! * clients ([`client_builder`]) trust only the configured CA (no system roots: a
//!   certificate from any public CA must not pass for a cell or for etcd) and present the
//!   broker's certificate;
//! * the configurations refuse a non-loopback address without TLS unless `allow_plaintext`
//!   says so ([`is_loopback_host`]).
//!
//! [`ThrowawayCa`] makes a CA and certificates on the fly (rcgen) for the single-machine mode
//! and the tests, so that TLS is what they exercise.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// How long a client has to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors loading certificates and keys. Messages name the file, never its content.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A file holds no PEM certificate.
    #[error("{} holds no PEM certificate", .0.display())]
    NoCertificate(PathBuf),
    /// A file holds no PEM private key.
    #[error("{} holds no PEM private key", .0.display())]
    NoKey(PathBuf),
    /// rustls refused the certificates or the key.
    #[error("TLS configuration: {0}")]
    Config(String),
    /// A certificate could not be generated.
    #[error("cannot generate a certificate: {0}")]
    Generate(String),
}

/// A certificate and its key, and the CA that peers' certificates must chain to.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// PEM certificate (chain) this side presents, as a server and as a client.
    pub cert_file: PathBuf,
    /// PEM private key of the certificate (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// PEM certificate(s) of the CA that peers' certificates must be signed by.
    pub ca_file: PathBuf,
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// The certificates of a PEM file (at least one).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(path.to_path_buf()));
    }
    Ok(certs)
}

/// The private key of a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|_| TlsError::NoKey(path.to_path_buf()))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn roots(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in load_certs(path)? {
        roots
            .add(c)
            .map_err(|e| TlsError::Config(format!("{}: {e}", path.display())))?;
    }
    Ok(roots)
}

/// A server configuration presenting `files`' certificate; with `client_auth`, clients must
/// present a certificate signed by `files.ca_file`.
pub fn server_config(
    files: &TlsFiles,
    client_auth: bool,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let cfg = |e: rustls::Error| TlsError::Config(e.to_string());
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(cfg)?;
    let builder = if client_auth {
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots(&files.ca_file)?),
            provider(),
        )
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let mut config = builder
        .with_single_cert(load_certs(&files.cert_file)?, load_key(&files.key_file)?)
        .map_err(cfg)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// An HTTP client builder that trusts only `files.ca_file` and presents `files`'
/// certificate when the server asks for one.
pub fn client_builder(
    builder: reqwest::ClientBuilder,
    files: &TlsFiles,
) -> Result<reqwest::ClientBuilder, TlsError> {
    let ca = reqwest::Certificate::from_pem_bundle(&read(&files.ca_file)?)
        .map_err(|e| TlsError::Config(format!("{}: {e}", files.ca_file.display())))?;
    let mut pem = read(&files.cert_file)?;
    pem.push(b'\n');
    pem.extend(read(&files.key_file)?);
    let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
        TlsError::Config(format!(
            "{} with {}: {e}",
            files.cert_file.display(),
            files.key_file.display()
        ))
    })?;
    Ok(builder.tls_certs_only(ca).identity(identity))
}

/// Whether `host` (a name or an address, IPv6 with or without brackets) is this machine's
/// loopback interface, where plain HTTP cannot be watched from the network.
pub fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost")
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

// ---------------------------------------------------------------------------------------
// Serving
// ---------------------------------------------------------------------------------------

/// A connection accepted by [`Incoming`]: TLS, or plain TCP when no TLS is configured.
pub enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The connections of a listening socket, after their TLS handshake (an `axum::serve`
/// listener). Handshakes run in tasks of their own; failed ones are logged and dropped.
pub struct Incoming {
    rx: mpsc::Receiver<(Stream, SocketAddr)>,
    local: SocketAddr,
}

impl Incoming {
    /// Listens on `addr`, with TLS when `tls` is given.
    pub async fn bind(
        addr: SocketAddr,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> io::Result<Incoming> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = tx.closed() => return,
                };
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: do not spin.
                        warn!("accept on {local}: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let tx = tx.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let stream = match acceptor {
                        None => Stream::Plain(tcp),
                        Some(a) => {
                            match tokio::time::timeout(HANDSHAKE_TIMEOUT, a.accept(tcp)).await {
                                Ok(Ok(s)) => Stream::Tls(Box::new(s)),
                                Ok(Err(e)) => {
                                    debug!(%peer, "TLS handshake failed: {e}");
                                    return;
                                }
                                Err(_) => {
                                    debug!(%peer, "TLS handshake timed out");
                                    return;
                                }
                            }
                        }
                    };
                    let _ = tx.send((stream, peer)).await;
                });
            }
        });
        Ok(Incoming { rx, local })
    }
}

impl axum::serve::Listener for Incoming {
    type Io = Stream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Stream, SocketAddr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accept task only ends when this receiver is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

// ---------------------------------------------------------------------------------------
// A throwaway CA
// ---------------------------------------------------------------------------------------

/// A certificate authority made on the spot, for the single-machine mode and the tests: its
/// certificate is written to `<dir>/ca.crt`, and [`ThrowawayCa::issue`] writes certificates
/// (valid for `localhost`, `127.0.0.1` and `::1`, as servers and as clients) signed by it.
/// Its key lives only in memory.
pub struct ThrowawayCa {
    dir: PathBuf,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl std::fmt::Debug for ThrowawayCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThrowawayCa")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl ThrowawayCa {
    /// A new CA named `name`, its certificate written to `<dir>/ca.crt` (mode 0644).
    pub fn new(dir: &Path, name: &str) -> Result<ThrowawayCa, TlsError> {
        let gen = |e: rcgen::Error| TlsError::Generate(e.to_string());
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(gen)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().map_err(gen)?;
        let cert = params.self_signed(&key).map_err(gen)?;
        std::fs::create_dir_all(dir).map_err(|source| TlsError::Read {
            path: dir.to_path_buf(),
            source,
        })?;
        write_file(&dir.join("ca.crt"), cert.pem().as_bytes(), 0o644)?;
        Ok(ThrowawayCa {
            dir: dir.to_path_buf(),
            issuer: rcgen::Issuer::new(params, key),
        })
    }

    /// The CA certificate's file.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// A certificate for `name` (a DNS name in it, and its organizational unit; no common
    /// name) signed by this CA,
    /// written to `<dir>/<name>.crt` and `<dir>/<name>.key` (mode 0600); the files, with the
    /// CA's.
    pub fn issue(&self, name: &str) -> Result<TlsFiles, TlsError> {
        let gen = |e: rcgen::Error| TlsError::Generate(e.to_string());
        let mut params = rcgen::CertificateParams::new(vec![
            name.to_string(),
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ])
        .map_err(gen)?;
        // No common name: with client certificates and authentication on, etcd's gateway
        // refuses a client certificate that has one (it cannot map it to a user), and every
        // peer here is known by its subject alternative names anyway.
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "walarchive-broker");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationalUnitName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::DigitalSignature,
            rcgen::KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = rcgen::KeyPair::generate().map_err(gen)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(gen)?;
        let files = TlsFiles {
            cert_file: self.dir.join(format!("{name}.crt")),
            key_file: self.dir.join(format!("{name}.key")),
            ca_file: self.ca_file(),
        };
        write_file(&files.cert_file, cert.pem().as_bytes(), 0o644)?;
        write_file(&files.key_file, key.serialize_pem().as_bytes(), 0o600)?;
        Ok(files)
    }
}

fn write_file(path: &Path, content: &[u8], mode: u32) -> Result<(), TlsError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let err = |source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    };
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(err)?;
    f.write_all(content).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for h in [
            "localhost",
            "LOCALHOST",
            "127.0.0.1",
            "127.1.2.3",
            "::1",
            "[::1]",
        ] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in [
            "0.0.0.0",
            "10.0.0.1",
            "::",
            "db.example",
            "localhost.example",
            "",
        ] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }

    #[test]
    fn a_throwaway_ca_issues_usable_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ThrowawayCa::new(dir.path(), "test CA").unwrap();
        let files = ca.issue("cell-a").unwrap();
        server_config(&files, true).unwrap();
        server_config(&files, false).unwrap();
        client_builder(reqwest::Client::builder(), &files)
            .unwrap()
            .build()
            .unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&files.key_file)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let e = load_key(&files.cert_file).unwrap_err().to_string();
        assert!(e.ends_with("cell-a.crt holds no PEM private key"), "{e}");
        let e = load_certs(&dir.path().join("missing.crt"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("cannot read "), "{e}");
    }
}
