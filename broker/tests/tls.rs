//! TLS on every HTTP surface, and plain HTTP refused off the loopback interface.
//!
//! The real processes: a `walarchive-broker cell` agent (mutual TLS: the broker's client
//! certificate and its bearer token), a `walarchive-broker serve` broker (TLS with the
//! tests' CA) and the tests' etcd (TLS with client certificates). A client that does not
//! trust the CA, that presents no certificate or one of another CA, never gets an answer; a
//! configuration that would listen in plain HTTP off the loopback interface is refused at
//! start with a one-line error and status 1.
use testkit::broker as common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::broker::BrokerToml;
use common::cells::{free_port, test_root, wait_for, Cell};
use common::etcd::{etcd, pki};
use walarchive_broker::cell::{CellClient, Secret};
use walarchive_broker::etcd::EtcdClient;
use walarchive_broker::tls::{ThrowawayCa, TlsFiles};

fn trusting_ca() -> reqwest::ClientBuilder {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(pki().ca_file()).unwrap()).unwrap();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .tls_certs_only([ca])
}

fn broker_bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_walarchive-broker"))
}

/// Runs `walarchive-broker <what> --config <config>`, which must refuse to start: its status
/// and its stderr.
fn refused(what: &str, config: &Path) -> (i32, String) {
    let mut child = broker_bin()
        .arg(what)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A process that starts anyway would serve until killed: bound its life.
    for _ in 0..100 {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if child.try_wait().unwrap().is_none() {
        let _ = child.kill();
        panic!("walarchive-broker {what} started with {}", config.display());
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cell_api_requires_the_brokers_certificate_and_token() {
    let root = test_root("tls-cell");
    let cell = Cell::start(&root, "a");
    cell.wait_ready().await;
    let url = format!("{}/v1/nodes", cell.url);
    let token = cell.token.expose().to_string();

    // The broker's client: its certificate, its token.
    assert!(cell.client().nodes().await.unwrap().is_empty());
    // Right certificate, wrong token: the token is checked too.
    let wrong = CellClient::new(&cell.url, Secret::new("wrong"), Some(&pki().broker)).unwrap();
    let e = wrong.nodes().await.unwrap_err().to_string();
    assert!(e.contains("401"), "{e}");

    // No client certificate: refused during the handshake, the token never read.
    let r = trusting_ca()
        .build()
        .unwrap()
        .get(&url)
        .bearer_auth(&token)
        .send()
        .await;
    assert!(r.is_err(), "answered without a client certificate: {r:?}");
    // A certificate of another CA.
    let other = ThrowawayCa::new(&root.join("other-ca"), "another CA").unwrap();
    let intruder = other.issue("intruder").unwrap();
    let files = TlsFiles {
        ca_file: pki().ca_file(),
        ..intruder
    };
    let client = walarchive_broker::tls::client_builder(reqwest::Client::builder(), &files)
        .unwrap()
        .build()
        .unwrap();
    let r = client.get(&url).bearer_auth(&token).send().await;
    assert!(r.is_err(), "answered a certificate of another CA: {r:?}");
    // A client that does not trust the tests' CA does not talk to the cell at all.
    let r = reqwest::Client::new()
        .get(&url)
        .bearer_auth(&token)
        .send()
        .await;
    let e = r.expect_err("a client without the CA");
    assert!(
        format!("{e:?}").to_lowercase().contains("certificate"),
        "{e:?}"
    );
    // Nor does plain HTTP.
    let plain = url.replace("https://", "http://");
    let r = reqwest::Client::new()
        .get(&plain)
        .bearer_auth(&token)
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(
        r.as_ref().map_or(true, |resp| !resp.status().is_success()),
        "{r:?}"
    );
    // The broker's own client refuses a cell whose certificate another CA signed.
    let impostor = CellClient::new(
        &cell.url,
        cell.token.clone(),
        Some(&TlsFiles {
            ca_file: other.ca_file(),
            ..pki().broker.clone()
        }),
    )
    .unwrap();
    assert!(impostor.nodes().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_serves_https_and_etcd_requires_a_client_certificate() {
    let root = test_root("tls-broker");
    let bin = common::cells::walarchive_copy(&root);
    let mut t = BrokerToml::new(&root, "file:///nonexistent", &bin);
    let listen = free_port();
    t.listen = Some(listen);
    t.router_ports = 1;
    t.outlive_router = false;
    let prefix = format!("/broker{}", etcd().fresh_prefix());
    let config = root.join("broker.toml");
    std::fs::write(&config, t.render(&prefix)).unwrap();
    let log = std::fs::File::create(root.join("broker.log")).unwrap();
    let mut cmd = broker_bin();
    cmd.arg("serve")
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    walarchive_broker::process::die_with_parent(&mut cmd);
    let mut broker = cmd.spawn().unwrap();
    let catalog = format!("https://127.0.0.1:{listen}/v2/catalog");
    let client = trusting_ca().build().unwrap();
    let ok = wait_for(
        "the broker answers over TLS",
        Duration::from_secs(30),
        || async {
            let r = client
                .get(&catalog)
                .basic_auth(common::osb::USER, Some(common::osb::PASSWORD))
                .header("X-Broker-API-Version", "2.17")
                .send()
                .await
                .ok()?;
            Some(r.status().as_u16())
        },
        || common::cells::tail(&root.join("broker.log"), 20),
    )
    .await;
    assert_eq!(ok, 200);
    // Without the CA: no answer (the password is never sent).
    let e = reqwest::Client::new()
        .get(&catalog)
        .basic_auth(common::osb::USER, Some(common::osb::PASSWORD))
        .send()
        .await
        .expect_err("a client without the CA");
    assert!(
        format!("{e:?}").to_lowercase().contains("certificate"),
        "{e:?}"
    );
    // Plain HTTP on the TLS port: no answer either.
    let r = reqwest::Client::new()
        .get(catalog.replace("https://", "http://"))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(
        r.as_ref().map_or(true, |resp| !resp.status().is_success()),
        "{r:?}"
    );
    broker.kill().unwrap();
    broker.wait().unwrap();

    // etcd: a client with the CA but without a client certificate, or without the CA.
    let mut opts = etcd().options();
    opts.identity = None;
    let e = EtcdClient::with_options(&[etcd().endpoint()], opts)
        .unwrap()
        .get(b"/x")
        .await
        .unwrap_err();
    assert!(e.is_transient(), "{e:?}");
    let mut opts = etcd().options();
    opts.ca_file = None;
    let e = EtcdClient::with_options(&[etcd().endpoint()], opts)
        .unwrap()
        .get(b"/x")
        .await
        .unwrap_err();
    assert!(
        format!("{e:?}").to_lowercase().contains("certificate"),
        "{e:?}"
    );
    let key = format!("{}/x", etcd().fresh_prefix());
    assert!(etcd().client().get(key.as_bytes()).await.is_ok());
}

#[test]
fn plain_http_off_the_loopback_interface_is_refused_at_start() {
    let root = test_root("tls-refused");
    let bin = common::cells::walarchive_copy(&root);
    let port = free_port();
    // The broker: its API on every interface, without [tls].
    let mut t = BrokerToml::new(&root, "file:///nonexistent", &bin);
    t.listen = Some(port);
    let prefix = format!("/broker{}", etcd().fresh_prefix());
    let text = t.render(&prefix);
    let start = text.find("[tls]\n").unwrap();
    let end = text[start..].find("[secrets]").unwrap() + start;
    let text = format!("{}{}", &text[..start], &text[end..])
        .replace(&format!("127.0.0.1:{port}"), &format!("0.0.0.0:{port}"));
    let config = root.join("broker.toml");
    std::fs::write(&config, &text).unwrap();
    let (code, stderr) = refused("serve", &config);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(
        stderr.trim(),
        format!(
            "walarchive-broker: error: invalid configuration {}: listen: 0.0.0.0:{port} is not a loopback address and [tls] is not configured: the platform's password would cross the network in clear; configure [tls] (cert_file, key_file, ca_file) or set allow_plaintext = true",
            config.display()
        )
    );
    // allow_plaintext says so explicitly: it starts.
    std::fs::write(&config, format!("allow_plaintext = true\n{text}")).unwrap();
    let mut child = broker_bin()
        .args(["serve", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut answered = false;
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            answered = true;
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "exited");
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(answered, "allow_plaintext = true did not start");

    // A cell on every interface without [tls].
    let cell = root.join("cell.toml");
    std::fs::write(
        &cell,
        format!(
            "listen = \"0.0.0.0:{port}\"\ndata_root = \"{}\"\ntoken_file = \"/dev/null\"\n",
            root.join("cell").display()
        ),
    )
    .unwrap();
    let (code, stderr) = refused("cell", &cell);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(
        stderr.trim(),
        format!(
            "walarchive-broker: error: cell agent: invalid cell configuration {}: listen: 0.0.0.0:{port} is not a loopback address and [tls] is not configured: the token and the nodes' passwords would cross the network in clear; configure [tls] (cert_file, key_file, ca_file) or set allow_plaintext = true",
            cell.display()
        )
    );
    // A socket directory too deep for PostgreSQL's socket paths.
    let deep = root.join("x".repeat(100));
    std::fs::write(
        &cell,
        format!(
            "listen = \"127.0.0.1:{port}\"\ndata_root = \"{}\"\n",
            deep.display()
        ),
    )
    .unwrap();
    let mut child = broker_bin()
        .args(["cell", "--config"])
        .arg(&cell)
        .env("WALARCHIVE_CELL_TOKEN", "t")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr.trim(),
        format!(
            "walarchive-broker: error: cell agent: invalid cell configuration {}: PostgreSQL's socket paths in this directory would be longer than 107 bytes: set a shorter socket_dir in the cell configuration",
            deep.join(".run").display()
        )
    );
}
