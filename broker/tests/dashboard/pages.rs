//! What the dashboard's pages show, in Chromium, checked against what PostgreSQL itself says
//! (through the nodes' superuser sessions on the cells): roles and ports, database size,
//! connections, the last archived segment; a chart with data points; the per-instance link
//! opening its instance and no other; no page without a session.

use std::time::Duration;

use super::{fixture, http};
use testkit::broker::cells::local_sql;

/// Screenshots of the main pages go to the test's artifacts directory; the ones in
/// `docs/dashboard/` were taken from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_sees_what_postgresql_says() {
    let f = fixture();
    let b = f.browser("the_operator_sees_what_postgresql_says").await;
    f.login(&b).await;
    // The overview lists both instances, by their platform names.
    let rows = b.texts("table#instances tbody tr").await;
    assert!(rows.iter().any(|r| r.starts_with("orders")), "{rows:?}");
    assert!(rows.iter().any(|r| r.starts_with("other")), "{rows:?}");
    let cells = b
        .wait_text("table#cells tbody", Duration::from_secs(30), |t| {
            t.contains("z1") && t.contains("z2")
        })
        .await;
    assert!(cells.contains("up"), "{cells}");
    b.screenshot("overview").await;

    // The instance page, once the sampler has seen both nodes.
    b.click(&format!("tr[data-instance=\"{}\"] td a", f.instance))
        .await;
    b.wait_text("#nodes tbody", Duration::from_secs(60), |t| {
        t.contains("leader") && t.contains("replica")
    })
    .await;
    // Roles and ports as the nodes themselves say.
    let nodes = b
        .js(
            "return [...document.querySelectorAll('#nodes tbody tr')].map(r => [r.dataset.cell, Number(r.dataset.port), r.dataset.role]);",
            vec![],
        )
        .await;
    let nodes = nodes.as_array().unwrap().clone();
    assert_eq!(nodes.len(), 2, "{nodes:?}");
    let mut leader = None;
    for n in &nodes {
        let (cell, port, role) = (
            n[0].as_str().unwrap(),
            n[1].as_u64().unwrap() as u16,
            n[2].as_str().unwrap(),
        );
        let recovery = local_sql(f.cell(cell), port, "SELECT pg_is_in_recovery()").unwrap();
        let expected = if recovery.trim() == "t" {
            "replica"
        } else {
            "leader"
        };
        assert_eq!(role, expected, "node on {cell}:{port}");
        if role == "leader" {
            leader = Some((cell.to_string(), port));
        }
    }
    let (leader_cell, leader_port) = leader.expect("a leader");
    let sql = |q: &str| {
        local_sql(f.cell(&leader_cell), leader_port, q)
            .unwrap()
            .trim()
            .to_string()
    };
    // The router's port is the binding's.
    let router = b.text("#router").await;
    assert!(
        router.ends_with(&format!(":{}", f.credentials["port"])),
        "{router} vs {}",
        f.credentials
    );
    // And the read-only port is the binding's too.
    let read_only = b.text("#router-read-only").await;
    assert!(
        read_only.ends_with(&format!(":{}", f.credentials["read_only_port"])),
        "{read_only} vs {}",
        f.credentials
    );
    // Database size within a few percent of pg_database_size.
    let size: f64 = b
        .find("#stat-size")
        .await
        .attr("data-value")
        .await
        .unwrap()
        .expect("a size")
        .parse()
        .unwrap();
    let real: f64 = sql("SELECT pg_database_size('app')").parse().unwrap();
    assert!(
        (size - real).abs() / real < 0.05,
        "dashboard {size} vs pg_database_size {real}"
    );
    // Connections in use and allowed.
    let conn = b
        .find("#stat-connections")
        .await
        .attr("data-value")
        .await
        .unwrap()
        .expect("connections");
    let (used, allowed) = conn.split_once('/').unwrap();
    assert_eq!(allowed, sql("SHOW max_connections"));
    let clients: i64 =
        sql("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'")
            .parse()
            .unwrap();
    let used: i64 = used.parse().unwrap();
    assert!(
        (used - clients).abs() <= 3,
        "dashboard {used} connections vs pg_stat_activity {clients}"
    );
    // The last archived segment as pg_stat_archiver says (the page is reloaded until the
    // sampler caught up with a segment archived meanwhile).
    let archived = sql("SELECT last_archived_wal FROM pg_stat_archiver");
    assert!(!archived.is_empty(), "nothing archived yet");
    b.wait_text("#last-archived-wal", Duration::from_secs(30), |t| {
        t >= archived.as_str()
    })
    .await;
    // Backups and the restorable window with its command.
    b.wait_text("#backups tbody", Duration::from_secs(60), |t| {
        !t.contains("No completed backup")
    })
    .await;
    let cmd = b
        .wait_text("#window", Duration::from_secs(60), |t| {
            t.contains("cf create-service")
        })
        .await;
    assert!(
        cmd.contains(r#"'{"clone-from":"orders","clone-at":""#),
        "{cmd}"
    );
    // The charts: the sampler's points, drawn.
    let points = b
        .js(
            "const c = window.walarchiveCharts && window.walarchiveCharts.connections; return c ? c.data[1].filter(v => v !== null).length : -1;",
            vec![],
        )
        .await;
    assert!(
        points.as_i64().unwrap() >= 2,
        "connections chart points: {points}"
    );
    // The history names the provision.
    let history = b.text("#history").await;
    assert!(history.contains("provision"), "{history}");
    // The whole page, and as a phone shows it (the layout reflows; no sideways scrolling of
    // the page itself).
    b.client().set_window_size(1280, 3000).await.unwrap();
    b.screenshot("instance").await;
    b.client().set_window_size(390, 844).await.unwrap();
    let overflow = b
        .js(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth;",
            vec![],
        )
        .await;
    assert!(
        overflow.as_i64().unwrap() <= 0,
        "the page scrolls sideways on a phone by {overflow}px"
    );
    b.screenshot("instance-phone").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_link_opens_its_instance_and_no_other() {
    let f = fixture();
    let b = f
        .browser("a_users_link_opens_its_instance_and_no_other")
        .await;
    b.goto(&f.link).await;
    b.wait_for("#nodes").await;
    // The secret is gone from the address bar.
    let url = b.url().await;
    assert!(
        url.ends_with(&format!("/dashboard/instances/{}", f.instance)),
        "{url}"
    );
    assert!(b.text("h1").await.starts_with("orders"));
    b.screenshot("user-instance").await;
    // Another (real) instance: the page of an instance that does not exist.
    b.goto(&format!("{}/dashboard/instances/{}", f.base, f.other))
        .await;
    assert_eq!(b.text("h1").await, "No such instance");
    assert!(!b.html().await.contains("other"));
    b.goto(&format!("{}/dashboard/", f.base)).await;
    assert_eq!(b.text("h1").await, "Operators only");
    // Logged out, the instance page is the login page.
    b.goto(&format!("{}/dashboard/instances/{}", f.base, f.instance))
        .await;
    b.click("header form button").await;
    b.wait_for("input[name=password]").await;
    b.goto(&format!("{}/dashboard/instances/{}", f.base, f.instance))
        .await;
    b.wait_for("input[name=password]").await;
    assert!(b.url().await.ends_with("/dashboard/login"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_session_there_is_no_page() {
    let f = fixture();
    let b = f.browser("without_a_session_there_is_no_page").await;
    for path in [
        "/dashboard/".to_string(),
        format!("/dashboard/instances/{}", f.instance),
        format!("/dashboard/instances/{}?range=30d", f.other),
    ] {
        b.goto(&format!("{}{path}", f.base)).await;
        b.wait_for("input[name=password]").await;
        let html = b.html().await;
        assert!(
            !html.contains("orders") && !html.contains(&f.instance),
            "{path}: {html}"
        );
    }
    b.screenshot("login").await;
    // Nor a script, nor a forged session, nor the broker's password as a link token.
    let http = http();
    let js = http
        .get(format!("{}/dashboard/assets/charts.js", f.base))
        .send()
        .await
        .unwrap();
    assert_eq!(js.status(), 401);
    let forged = http
        .get(format!("{}/dashboard/", f.base))
        .header("Cookie", "wa_dash=eyJleHAiOjk5OTk5OTk5OTl9.AAAA")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 303);
    let guess = http
        .get(format!(
            "{}/dashboard/open/{}/{}",
            f.base,
            f.instance,
            testkit::broker::osb::PASSWORD
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(guess.status(), 404);
}
