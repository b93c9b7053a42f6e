//! The binder's roles against a real PostgreSQL 15, and the single-machine mode end to end.
//!
//! The roles are made by [`create_role`] and [`drop_role`] on a superuser session (a cell
//! runs them on its node's socket), so their test runs one plain PostgreSQL cluster (initdb
//! as `postgres`, SCRAM authentication) rather than a Patroni cluster: what is tested is the
//! roles, privileges and ownership, not failover.
use testkit::broker as common;

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::cells::{chown_postgres, connect, free_port, sh_quote, spawn_watchdog, test_root};
use walarchive_broker::binder::{
    create_role, credentials, drop_role, new_role, role_name, BinderOptions,
};
use walarchive_broker::secrets::Secret;
use walarchive_broker::state::{Credentials, InstanceRecord};

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

fn pg_bin() -> PathBuf {
    std::env::var_os("WALARCHIVE_PG_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(PG_BIN))
}

fn as_postgres(program: &Path) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--"]).arg(program);
    c
}

/// A PostgreSQL cluster with SCRAM authentication; stopped on drop, and by a watchdog when
/// the test process dies.
struct Postgres {
    data: PathBuf,
    port: u16,
    password: Secret,
}

impl Postgres {
    fn start(root: &Path) -> Postgres {
        let run = root.join("pg");
        std::fs::create_dir(&run).unwrap();
        chown_postgres(&run);
        let data = run.join("data");
        let pwfile = run.join("pwfile");
        let password = Secret::generate();
        std::fs::write(&pwfile, password.expose()).unwrap();
        std::fs::set_permissions(&pwfile, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        chown_postgres(&pwfile);
        let st = as_postgres(&pg_bin().join("initdb"))
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=scram-sha-256",
                "--no-instructions",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .stdout(Stdio::null())
            .status()
            .expect("run initdb");
        assert!(st.success(), "initdb failed");
        std::fs::remove_file(&pwfile).unwrap();
        let port = free_port();
        let conf = format!(
            "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nlog_statement = 'ddl'\n",
            run.display()
        );
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .unwrap();
        std::io::Write::write_all(&mut f, conf.as_bytes()).unwrap();
        let pg_ctl = pg_bin().join("pg_ctl");
        // Stops PostgreSQL once this test process is gone (a panic skips no drop, a kill does).
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; runuser -u postgres -- {ctl} -D {data} -m immediate stop",
            pid = std::process::id(),
            ctl = sh_quote(&pg_ctl.to_string_lossy()),
            data = sh_quote(&data.to_string_lossy()),
        );
        // Not waited for: it outlives this process by design.
        #[allow(clippy::zombie_processes)]
        let _ = spawn_watchdog("PostgreSQL", &script);
        let st = as_postgres(&pg_ctl)
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(run.join("postgres.log"))
            .args(["-w", "start"])
            .stdout(Stdio::null())
            .status()
            .expect("run pg_ctl start");
        assert!(st.success(), "pg_ctl start failed");
        Postgres {
            data,
            port,
            password,
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = as_postgres(&pg_bin().join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn instance(port: u16) -> InstanceRecord {
    // From JSON, so that fields added to the record later take their defaults.
    serde_json::from_value(serde_json::json!({
        "id": "inst-1",
        "service_id": "svc",
        "plan_id": "plan",
        "parameters": {},
        "node_count": 1,
        "context": { "organization_guid": "org", "space_guid": "space" },
        "port": port,
        "repository": "file:///nowhere",
        "state": "ready",
        "created_at": "2026-01-01T00:00:00.000Z",
        "updated_at": "2026-01-01T00:00:00.000Z",
    }))
    .expect("an instance record")
}

/// What the broker and the leader's cell do together for a binding, on `admin_uri`'s server.
struct Roles {
    admin_uri: String,
    options: BinderOptions,
}

impl Roles {
    async fn bind(&self, inst: &InstanceRecord, binding_id: &str) -> Credentials {
        let (role, req, password) = new_role(&self.options, inst, binding_id);
        assert!(!format!("{req:?}").contains("SCRAM"), "{req:?}");
        let admin = connect(&self.admin_uri).await.expect("superuser connects");
        create_role(&admin, &role, &req)
            .await
            .expect("create the role");
        credentials(
            "127.0.0.1",
            inst.port,
            &self.options.database,
            &role,
            password.expose(),
        )
    }

    async fn unbind(&self, binding_id: &str) {
        let admin = connect(&self.admin_uri).await.expect("superuser connects");
        let base = self.admin_uri.trim_end_matches("/postgres").to_string();
        drop_role(
            &admin,
            &self.options.group_role,
            &role_name(binding_id),
            |db| {
                let uri = format!("{base}/{db}");
                async move {
                    connect(&uri)
                        .await
                        .map_err(|e| walarchive_broker::BindError::new(e.to_string()))
                }
            },
        )
        .await
        .expect("drop the role");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bindings_are_roles_sharing_one_database() {
    let root = test_root("bind");
    let pg = Postgres::start(&root);
    let inst = instance(pg.port);
    let admin_uri = format!(
        "postgres://postgres:{}@127.0.0.1:{}/postgres",
        pg.password.expose(),
        pg.port
    );
    let admin = connect(&admin_uri).await.expect("superuser connects");
    let binder = Roles {
        admin_uri: admin_uri.clone(),
        options: BinderOptions::default(),
    };

    let id1 = "3f2a6c1e-2b7d-4c39-9a0e-5d6f7a8b9c01";
    let id2 = "Binding.Two~";
    let c1 = binder.bind(&inst, id1).await;
    assert_eq!(c1.username, role_name(id1));
    assert_eq!((c1.hostname.as_str(), c1.port), ("127.0.0.1", pg.port));
    assert_eq!(c1.name, "app");
    assert!(c1.jdbc_url.starts_with(&format!(
        "jdbc:postgresql://127.0.0.1:{}/app?user=",
        pg.port
    )));
    assert!(!format!("{c1:?}").contains(&c1.password));

    // The password is stored as a SCRAM verifier, and the plain one never reached the log.
    let stored: String = admin
        .query_one(
            "select rolpassword from pg_authid where rolname = $1",
            &[&c1.username],
        )
        .await
        .unwrap()
        .get(0);
    assert!(stored.starts_with("SCRAM-SHA-256$"), "{stored}");

    let s1 = connect(&c1.uri).await.expect("binding 1 connects");
    s1.batch_execute(
        "create table t1 (id int primary key, v text); insert into t1 values (1, 'one')",
    )
    .await
    .unwrap();
    let app_admin = connect(&format!("{}/app", admin_uri.trim_end_matches("/postgres")))
        .await
        .expect("superuser connects to app");
    let owner: String = app_admin
        .query_one(
            "select tableowner::text from pg_tables where tablename = 't1'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(owner, "app_owner");

    let c2 = binder.bind(&inst, id2).await;
    assert_ne!(c2.username, c1.username);
    assert!(c2.username.starts_with("h_"));
    let s2 = connect(&c2.uri).await.expect("binding 2 connects");
    s2.batch_execute(
        "insert into t1 values (2, 'two'); create table t2 (x int); insert into t2 values (1)",
    )
    .await
    .expect("binding 2 uses binding 1's table");
    let n: i64 = s1
        .query_one("select count(*) from t1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
    s1.batch_execute("insert into t2 values (2)")
        .await
        .expect("binding 1 uses binding 2's table");

    // Binding roles reach no server files or programs, and hold no privilege attribute,
    // even when one had been granted to them meanwhile: binding again takes it away.
    admin
        .batch_execute(&format!(
            "alter role {0} superuser createrole; grant pg_execute_server_program, pg_read_server_files to {0}",
            c2.username
        ))
        .await
        .unwrap();
    let c2 = binder.bind(&inst, id2).await;
    let s2 = connect(&c2.uri).await.expect("binding 2 connects again");
    let attrs = admin
        .query_one(
            "select rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls, \
             pg_has_role(rolname, 'pg_execute_server_program', 'member'), \
             pg_has_role(rolname, 'pg_read_server_files', 'member'), \
             pg_has_role(rolname, 'pg_write_server_files', 'member') \
             from pg_roles where rolname = $1",
            &[&c2.username],
        )
        .await
        .unwrap();
    for i in 0..8 {
        assert!(!attrs.get::<_, bool>(i), "column {i} of {:?}", attrs);
    }
    for (what, sql) in [
        (
            "COPY ... TO PROGRAM",
            "copy (select 1) to program 'id > /tmp/walarchive-pwned'",
        ),
        ("COPY ... FROM PROGRAM", "copy t2 from program 'id'"),
        (
            "reading a server file",
            "select pg_read_file('/etc/passwd')",
        ),
        ("creating roles", "create role intruder superuser"),
    ] {
        let e = s2.batch_execute(sql).await.expect_err(what);
        let m = e
            .as_db_error()
            .map_or(e.to_string(), |d| d.message().to_string());
        assert!(
            m.contains("permission denied")
                || m.contains("must be superuser")
                || m.contains("Only roles with"),
            "{what}: {m}"
        );
    }
    assert!(!std::path::Path::new("/tmp/walarchive-pwned").exists());

    // Binding again resets the password of the same role.
    let c1b = binder.bind(&inst, id1).await;
    assert_eq!(c1b.username, c1.username);
    assert_ne!(c1b.password, c1.password);
    assert!(
        connect(&c1.uri).await.is_err(),
        "the old password still works"
    );
    connect(&c1b.uri).await.expect("the new password works");

    // Unbinding ends the role's sessions and drops it; the data stays.
    binder.unbind(id1).await;
    assert!(
        s1.query_one("select 1", &[]).await.is_err(),
        "binding 1's session survived"
    );
    let gone = admin
        .query_opt("select 1 from pg_roles where rolname = $1", &[&c1.username])
        .await
        .unwrap();
    assert!(gone.is_none(), "role still exists");
    assert!(connect(&c1b.uri).await.is_err());
    let n: i64 = s2
        .query_one("select count(*) from t1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
    binder.unbind(id1).await;
    binder.unbind("never-bound").await;
    binder.unbind(id2).await;

    let log = std::fs::read_to_string(root.join("pg/postgres.log")).unwrap_or_default();
    for pw in [&c1.password, &c1b.password, &c2.password] {
        assert!(
            !log.contains(pw.as_str()),
            "a password is in the server log"
        );
    }
    assert!(
        log.contains("SCRAM-SHA-256$"),
        "log_statement = ddl saw no verifier"
    );
}

/// `walarchive-broker dev --demo` provisions, binds and prints a working psql command, then
/// stops everything on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_demo_end_to_end() {
    let root = test_root("dev");
    let dir = root.join("dev");
    // Built when missing (dev mode copies it again into its own directory).
    let walarchive = common::cells::walarchive_copy(&root);
    let mut child = Command::new(env!("CARGO_BIN_EXE_walarchive-broker"))
        .arg("dev")
        .arg("--dir")
        .arg(&dir)
        .args(["--cells", "2", "--demo"])
        .arg("--walarchive")
        .arg(&walarchive)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start walarchive-broker dev");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            eprintln!("dev> {line}");
            let _ = tx.send(line);
        }
    });
    let start = Instant::now();
    let uri = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(600).saturating_sub(start.elapsed()))
            .expect("dev --demo printed no psql command in time");
        if let Some(rest) = line.trim().strip_prefix("psql \"") {
            break rest.trim_end_matches('"').to_string();
        }
    };
    let c = connect(&uri).await.expect("the printed URI connects");
    c.batch_execute("create table if not exists e2e (x int); insert into e2e values (1)")
        .await
        .unwrap();
    drop(c);
    walarchive_broker::process::signal(child.id(), walarchive_broker::process::Signal::SIGTERM);
    let status = child.wait().unwrap();
    assert!(status.success(), "dev exited with {status}");
    // Nothing of it is left running (etcd, cells, Patroni, PostgreSQL, HAProxy, watchdogs).
    let needle = dir.to_string_lossy().into_owned();
    let left = || {
        let mut left = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
                let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                if cmd.contains(&needle) {
                    left.push(cmd);
                }
            }
        }
        left
    };
    let start = Instant::now();
    while !left().is_empty() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(left().is_empty(), "processes left: {:#?}", left());
}
