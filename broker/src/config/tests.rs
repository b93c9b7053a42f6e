//! Tests of loading, validating and resolving the configuration.

use super::*;
use std::time::Duration;

fn example() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/broker.example.toml")).unwrap()
}

fn with_password_file(text: &str) -> (tempfile::NamedTempFile, String) {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), "s3cret-pw\n").unwrap();
    let key = f.path().with_extension("key");
    std::fs::write(&key, crate::secrets::Keyring::generate_key()).unwrap();
    let text = text
        .replace(
            "/etc/walarchive-broker/secrets.key\"",
            &format!("{}\"", key.display()),
        )
        .replace(
            "\"/etc/walarchive-broker/etcd.password\"",
            &format!("{:?}", f.path().display().to_string()),
        )
        .replace(
            "\"/etc/walarchive-broker/etcd-patroni.password\"",
            &format!("{:?}", f.path().display().to_string()),
        );
    let text = text.replace(
        "password_env = \"WALARCHIVE_BROKER_PASSWORD\"",
        &format!("password_file = {:?}", f.path().display().to_string()),
    );
    let text = text
        .lines()
        .filter(|l| !l.starts_with("token_env"))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("[[cells]]", "[[cells]]\ntoken_file = \"__TOKEN__\"")
        .replace("__TOKEN__", &f.path().display().to_string());
    (f, text)
}

#[test]
fn the_example_loads_and_secrets_are_redacted() {
    let (_f, text) = with_password_file(&example());
    let c = BrokerConfig::parse(&text, "example").unwrap();
    assert_eq!(c.credentials.password.expose(), "s3cret-pw");
    assert_eq!(c.service.plans.len(), 2);
    assert_eq!(c.service.plans[0].node_count, 1);
    assert_eq!(c.service.plans[1].node_count, 2);
    assert_eq!(c.etcd.prefix, "/walarchive-broker");
    assert_eq!(c.archive_timeout.0, Duration::from_secs(60));
    assert_eq!(
        c.repository.keep_deleted.map(|d| d.0),
        Some(Duration::from_secs(30 * 86400))
    );
    // A documented minimum lower than the default lets tests purge after seconds.
    let short = text.replace(
        "keep_deleted = \"30d\"\n# keep_deleted_minimum = \"1h\"",
        "keep_deleted = \"1s\"\nkeep_deleted_minimum = \"1s\"",
    );
    assert_ne!(short, text);
    let c = BrokerConfig::parse(&short, "example").unwrap();
    assert_eq!(c.repository.keep_deleted.unwrap().0, Duration::from_secs(1));
    assert!(c.cells.iter().all(|c| c.token.expose() == "s3cret-pw"));
    let debug = format!("{c:?}");
    assert!(!debug.contains("s3cret"), "{debug}");
    assert!(debug.contains("[redacted]"));
    assert_eq!(
        c.repository.for_instance("abc"),
        format!("{}/abc", c.repository.base.trim_end_matches('/'))
    );
}

#[test]
fn errors_are_clear() {
    let (_f, text) = with_password_file(&example());
    let bad = text.replace("listen =", "lisen =");
    let e = BrokerConfig::parse(&bad, "x.toml").unwrap_err().to_string();
    assert!(e.contains("x.toml") && e.contains("lisen"), "{e}");

    let e = BrokerConfig::parse(&text.replace("port_min = 30000", "port_min = 40000"), "x")
        .unwrap_err()
        .to_string();
    assert!(e.contains("router.port_min"), "{e}");

    let e = BrokerConfig::parse(&example(), "x")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("WALARCHIVE_BROKER_PASSWORD") || e.contains("token"),
        "{e}"
    );

    let e = BrokerConfig::parse(&text.replace("node_count = 2", "node_count = 9"), "x")
        .unwrap_err()
        .to_string();
    assert!(e.contains("node_count"), "{e}");

    for (line, bad, setting) in [
        (
            "cross_organization_users = []",
            "cross_organization_users = [\"\"]",
            "clones.cross_organization_users[0]",
        ),
        (
            "cross_organization_users = []",
            "cross_organization_users = [\"a b\"]",
            "clones.cross_organization_users[0]",
        ),
        (
            "validation_budget = \"20s\"",
            "validation_budget = \"0s\"",
            "clones.validation_budget",
        ),
        (
            "keep_deleted = \"30d\"",
            "keep_deleted = \"30m\"",
            "repository.keep_deleted",
        ),
        (
            "# keep_deleted_minimum = \"1h\"",
            "keep_deleted_minimum = \"0s\"",
            "repository.keep_deleted_minimum",
        ),
    ] {
        assert!(text.contains(line), "{line}");
        let e = BrokerConfig::parse(&text.replace(line, bad), "x")
            .unwrap_err()
            .to_string();
        assert!(e.contains(setting), "{bad}: {e}");
    }

    let start = text.find("\n[secrets]").unwrap();
    let end = text[start..].find("\n[credentials]").unwrap() + start;
    let e = BrokerConfig::parse(&format!("{}{}", &text[..start], &text[end..]), "x")
        .unwrap_err()
        .to_string();
    assert_eq!(e, "invalid configuration x: secrets: the key sealing the passwords the broker keeps in etcd is required: set secrets.key_file (or secrets.key_env) to 32 random bytes in base64, e.g. from `head -c 32 /dev/urandom | base64`");
}

/// Storage credentials go in the credential settings, never in the base URL (which
/// every node's command line, log and etcd record carries); the error names the key and
/// never echoes the secret.
#[test]
fn credentials_in_the_repository_url_are_refused() {
    let (_f, text) = with_password_file(&example());
    let base = BrokerConfig::parse(&text, "x").unwrap().repository.base;
    let (scheme, rest) = base.split_once("://").unwrap();
    for bad in [
        format!("s3://AKIAEXAMPLE:SuperSecret123@bucket/{rest}"),
        format!("s3://SuperSecret123@bucket/{rest}"),
        format!("{scheme}://{rest}?access_key=SuperSecret123"),
        format!("{scheme}://{rest}#SuperSecret123"),
        "not a url SuperSecret123".to_string(),
    ] {
        let e = BrokerConfig::parse(&text.replace(&base, &bad), "x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("repository.base"), "{e}");
        assert!(!e.contains("SuperSecret123") && !e.contains('\n'), "{e}");
    }
}

#[test]
fn plain_http_off_the_loopback_interface_is_refused() {
    let (_f, text) = with_password_file(&example());
    let no_tls = |t: &str| {
        let start = t.find("\n[tls]\n").unwrap();
        let end = t[start..].find("\n[secrets]").unwrap() + start;
        format!("{}{}", &t[..start], &t[end..])
    };
    let e = BrokerConfig::parse(&no_tls(&text), "x.toml")
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "invalid configuration x.toml: listen: 0.0.0.0:8443 is not a loopback address and [tls] is not configured: the platform's password would cross the network in clear; configure [tls] (cert_file, key_file, ca_file) or set allow_plaintext = true"
    );
    let http_cell = text.replace("https://10.0.1.10:7500", "http://10.0.1.10:7500");
    let e = BrokerConfig::parse(&http_cell, "x")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cells[0].url: \"http://10.0.1.10:7500\" is plain HTTP to another machine"),
        "{e}"
    );
    let http_etcd = text.replace("https://10.0.0.21:2379", "http://10.0.0.21:2379");
    let e = BrokerConfig::parse(&http_etcd, "x")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("etcd.endpoints: \"http://10.0.0.21:2379\" is plain HTTP to another machine"),
        "{e}"
    );
    let no_etcd_ca = text.replace("ca_file = \"/etc/walarchive-broker/tls/etcd-ca.crt\"", "");
    let e = BrokerConfig::parse(&no_etcd_ca, "x")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("etcd.ca_file: \"https://10.0.0.21:2379\" is https"),
        "{e}"
    );
    let https_cells_without_tls =
        no_tls(&text).replace("listen = \"0.0.0.0:8443\"", "listen = \"127.0.0.1:8443\"");
    let e = BrokerConfig::parse(&https_cells_without_tls, "x")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cells[0].url: \"https://10.0.1.10:7500\" is https: configure [tls]"),
        "{e}"
    );
    // Everything plain, explicitly allowed.
    let plain = no_tls(&text).replace("https://", "http://").replace(
        "listen = \"0.0.0.0:8443\"",
        "listen = \"0.0.0.0:8443\"\nallow_plaintext = true",
    );
    BrokerConfig::parse(&plain, "x").unwrap();
    // Plain HTTP on the loopback interface is fine.
    let local = no_tls(&text)
        .replace("https://10.0.", "http://127.0.")
        .replace("listen = \"0.0.0.0:8443\"", "listen = \"127.0.0.1:8443\"");
    BrokerConfig::parse(&local, "x").unwrap();
}

/// `[state_backup]`: a plain URL of a store of its own, `keep` and `min_interval` sensible;
/// the example's defaults load.
#[test]
fn the_state_backup_is_validated() {
    let (_f, text) = with_password_file(&example());
    let c = BrokerConfig::parse(&text, "x").unwrap();
    let b = c
        .state_backup
        .as_ref()
        .expect("the example has [state_backup]");
    assert_eq!((b.keep, b.min_interval.0), (200, Duration::from_secs(5)));
    let url = "url = \"s3://broker-state/production\"";
    for (bad, setting, what) in [
        (
            "url = \"s3://AKIA:sekrit99@broker-state/x\"",
            "state_backup.url",
            "credentials",
        ),
        (
            "url = \"s3://broker-state/x?sig=sekrit99\"",
            "state_backup.url",
            "query string",
        ),
        ("url = \"not a url\"", "state_backup.url", "not a URL"),
    ] {
        let e = BrokerConfig::parse(&text.replace(url, bad), "x")
            .unwrap_err()
            .to_string();
        assert!(e.contains(setting) && e.contains(what), "{e}");
        assert!(!e.contains("sekrit99"), "never echoed: {e}");
    }
    let base = format!(
        "url = \"{}/state\"",
        c.repository.base.trim_end_matches('/')
    );
    let e = BrokerConfig::parse(&text.replace(url, &base), "x")
        .unwrap_err()
        .to_string();
    assert!(e.contains("must not be under repository.base"), "{e}");
    let e = BrokerConfig::parse(&text.replace("keep = 200", "keep = 0"), "x")
        .unwrap_err()
        .to_string();
    assert!(e.contains("state_backup.keep"), "{e}");
    let e = BrokerConfig::parse(
        &text.replace("min_interval = \"5s\"", "min_interval = \"0s\""),
        "x",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("state_backup.min_interval"), "{e}");
}

#[test]
fn read_only_routing_and_synchronous_commit() {
    let (_f, text) = with_password_file(&example());
    let c = BrokerConfig::parse(&text, "example").unwrap();
    assert_eq!(c.router.read_only_fallback, ReadOnlyFallback::Primary);
    assert_eq!(c.router.read_only_max_lag_bytes, 16 << 20);
    assert_eq!(c.nodes.synchronous_commit, SynchronousCommit::On);
    // Without the settings: the same defaults.
    let bare: String = text
        .lines()
        .filter(|l| !l.starts_with("read_only_"))
        .collect::<Vec<_>>()
        .join("\n");
    let c = BrokerConfig::parse(&bare, "x.toml").unwrap();
    assert_eq!(c.router.read_only_fallback, ReadOnlyFallback::Primary);
    assert_eq!(c.router.read_only_max_lag_bytes, 16 << 20);
    let none = text.replace(
        "read_only_fallback = \"primary\"",
        "read_only_fallback = \"none\"",
    );
    let c = BrokerConfig::parse(&none, "x.toml").unwrap();
    assert_eq!(c.router.read_only_fallback, ReadOnlyFallback::None);
    let e = BrokerConfig::parse(
        &text.replace(
            "read_only_fallback = \"primary\"",
            "read_only_fallback = \"replica\"",
        ),
        "x.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("read_only_fallback"), "{e}");
    // remote_apply only means something with a synchronous standby.
    let apply = text.replace(
        "# synchronous_commit = \"on\"",
        "synchronous_commit = \"remote_apply\"",
    );
    let e = BrokerConfig::parse(&apply, "x.toml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("nodes.synchronous_commit"), "{e}");
    let c = BrokerConfig::parse(
        &apply.replace("synchronous = false", "synchronous = true"),
        "x.toml",
    )
    .unwrap();
    assert_eq!(c.nodes.synchronous_commit, SynchronousCommit::RemoteApply);
}

/// `[stats]`: the example's values load, the samples file defaults to HAProxy's directory, and
/// intervals and retentions that contradict each other are refused naming the setting.
#[test]
fn the_stats_settings_are_validated() {
    let (_f, text) = with_password_file(&example());
    let c = BrokerConfig::parse(&text, "x").unwrap();
    let s = &c.stats;
    assert!(s.enabled);
    assert_eq!(s.sample_interval.0, Duration::from_secs(15));
    assert_eq!(s.full_retention.0, Duration::from_secs(48 * 3600));
    assert_eq!(s.coarse_interval.0, Duration::from_secs(600));
    assert_eq!(s.coarse_retention.0, Duration::from_secs(30 * 86400));
    assert_eq!(
        s.dir(&c.router),
        c.router.haproxy_config.parent().unwrap().to_path_buf()
    );
    // Without the section: the same defaults.
    let start = text.find("[stats]").unwrap();
    let end = text[start + 1..]
        .find("\n[")
        .map_or(text.len(), |e| start + 1 + e);
    let without = format!("{}{}", &text[..start], &text[end..]);
    let d = BrokerConfig::parse(&without, "x").unwrap().stats;
    assert_eq!(
        (d.sample_interval.0, d.concurrency, d.repository_interval.0),
        (s.sample_interval.0, s.concurrency, s.repository_interval.0)
    );
    for (from, to, setting) in [
        (
            "sample_interval = \"15s\"",
            "sample_interval = \"0s\"",
            "stats.sample_interval",
        ),
        ("concurrency = 8", "concurrency = 0", "stats.concurrency"),
        (
            "coarse_interval = \"10m\"",
            "coarse_interval = \"5s\"",
            "stats.coarse_interval",
        ),
        (
            "coarse_retention = \"30d\"",
            "coarse_retention = \"1h\"",
            "stats.coarse_retention",
        ),
    ] {
        assert!(text.contains(from), "{from}");
        let e = BrokerConfig::parse(&text.replace(from, to), "x")
            .unwrap_err()
            .to_string();
        assert!(e.contains(setting), "{e}");
    }
}

/// `[dashboard]`: the example's values load, the defaults without the section, and a URL with
/// credentials or a query (it goes into every `dashboard_url`) or a too short session refused.
#[test]
fn the_dashboard_settings_are_validated() {
    let (_f, text) = with_password_file(&example());
    let c = BrokerConfig::parse(&text, "x").unwrap();
    assert_eq!(
        c.dashboard.url.as_deref(),
        Some("https://broker.example.com")
    );
    assert_eq!(
        c.dashboard.session_lifetime.0,
        Duration::from_secs(8 * 3600)
    );
    assert_eq!(c.dashboard.replica_lag_red_bytes, 64 << 20);
    let start = text.find("[dashboard]").unwrap();
    let end = text[start + 1..]
        .find("\n[")
        .map_or(text.len(), |e| start + 1 + e);
    let without = format!("{}{}", &text[..start], &text[end..]);
    let d = BrokerConfig::parse(&without, "x").unwrap();
    assert_eq!(d.dashboard.url, None);
    assert_eq!(
        d.dashboard.backup_age_amber.0,
        Duration::from_secs(26 * 3600)
    );
    for (from, to, setting) in [
        (
            "url = \"https://broker.example.com\"",
            "url = \"https://user:pw@broker.example.com\"",
            "dashboard.url",
        ),
        (
            "url = \"https://broker.example.com\"",
            "url = \"https://broker.example.com/?x=1\"",
            "dashboard.url",
        ),
        (
            "url = \"https://broker.example.com\"",
            "url = \"broker.example.com\"",
            "dashboard.url",
        ),
        (
            "session_lifetime = \"8h\"",
            "session_lifetime = \"10s\"",
            "dashboard.session_lifetime",
        ),
    ] {
        assert!(text.contains(from), "{from}");
        let e = BrokerConfig::parse(&text.replace(from, to), "x")
            .unwrap_err()
            .to_string();
        assert!(e.contains(setting), "{e}");
        assert!(!e.contains("pw@"), "{e}");
    }
}
