//! Key rotation with the real `walarchive-broker rotate-secrets` command against the tests'
//! etcd: secrets sealed with the old key are sealed again with the new one, after which the
//! old key can go; a broker without the key a secret was sealed with says which key it needs.
use testkit::broker as common;

use std::process::Command;

use common::broker::BrokerToml;
use common::cells::test_root;
use common::etcd::etcd;
use walarchive_broker::secrets::Keyring;
use walarchive_broker::state::InstanceSecrets;
use walarchive_broker::{BrokerConfig, EtcdClient, Store};

fn rotate(config: &std::path::Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_walarchive-broker"))
        .args(["rotate-secrets", "--config"])
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_secrets_seals_everything_with_the_new_key() {
    let root = test_root("secrets");
    let t = BrokerToml::new(
        &root,
        "file:///nonexistent",
        std::path::Path::new("/bin/true"),
    );
    let prefix = format!("/broker{}", etcd().fresh_prefix());
    let text = t.render(&prefix);
    let k1 = root.join("secrets.key");
    let config = root.join("broker.toml");
    std::fs::write(&config, &text).unwrap();
    let c = BrokerConfig::load(&config).unwrap();
    let old = Store::new(
        EtcdClient::from_config(&c.etcd).unwrap(),
        &prefix,
        c.keyring(),
    );
    let secrets = old
        .put_instance_secrets("db1", &InstanceSecrets::generate())
        .await
        .unwrap();

    // A new key; the old one kept for opening until the rotation has run.
    let k2 = root.join("secrets.key.2");
    std::fs::write(&k2, Keyring::generate_key()).unwrap();
    let id = |k: &std::path::Path| {
        Keyring::from_base64(&std::fs::read_to_string(k).unwrap())
            .unwrap()
            .current_id()
            .to_string()
    };
    let key_line = format!("key_file = \"{}\"", k1.display());
    std::fs::write(
        &config,
        text.replace(
            &key_line,
            &format!(
                "key_file = \"{}\"\nold_key_files = [\"{}\"]",
                k2.display(),
                k1.display()
            ),
        ),
    )
    .unwrap();
    let (code, out, err) = rotate(&config);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        format!(
            "every secret is sealed with key {}: 1 sealed again from an older key, 0 were in clear, 0 already were",
            id(&k2)
        )
    );
    // Without the old key now.
    std::fs::write(
        &config,
        text.replace(&key_line, &format!("key_file = \"{}\"", k2.display())),
    )
    .unwrap();
    let (code, out, err) = rotate(&config);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.ends_with("0 sealed again from an older key, 0 were in clear, 1 already were"),
        "{out}"
    );
    let c = BrokerConfig::load(&config).unwrap();
    let new = Store::new(
        EtcdClient::from_config(&c.etcd).unwrap(),
        &prefix,
        c.keyring(),
    );
    assert_eq!(new.instance_secrets("db1").await.unwrap(), Some(secrets));

    // A broker that only has the old key says which key it lacks.
    std::fs::write(&config, &text).unwrap();
    let (code, _, err) = rotate(&config);
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        err,
        format!(
            "walarchive-broker: error: cannot open the secret at {prefix}/secrets/db1: sealed with key {}, which is neither secrets.key_file/key_env nor in secrets.old_key_files",
            id(&k2)
        )
    );
}
