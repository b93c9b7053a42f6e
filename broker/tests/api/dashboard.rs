//! The dashboard's authentication, in-process (`oneshot`) against a real etcd: the
//! `dashboard_url` of provision and `GET`, every route refused without a session (walking the
//! dashboard's route table, so a new route is covered the day it is added), the operator's
//! login and logout, per-instance links that open their instance only, rotation (through the
//! real `dashboard-link` command), and escaping. The pages' numbers are checked in a real
//! browser against real clusters in `tests/dashboard`.

use std::process::Command;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use super::{ctx, provision_body, Ctx, PASSWORD, PLAN1};
use walarchive_broker::state::OperationKind;

struct Page {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
}

impl Page {
    fn location(&self) -> &str {
        self.headers
            .get(header::LOCATION)
            .map_or("", |v| v.to_str().unwrap())
    }

    /// `name=value` of every cookie set, with its attributes.
    fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    }

    /// The `name=value` pair of the one cookie set (for a `Cookie` header).
    fn cookie(&self) -> String {
        let c = self.set_cookies();
        assert_eq!(c.len(), 1, "{c:?}");
        c[0].split(';').next().unwrap().to_string()
    }
}

/// A browser's request: `cookie` as the `Cookie` header, `form` as an urlencoded body.
async fn browse(c: &Ctx, method: Method, uri: &str, cookie: Option<&str>, form: &str) -> Page {
    let mut b = Request::builder().method(method.clone()).uri(uri);
    if let Some(k) = cookie {
        b = b.header(header::COOKIE, k);
    }
    if method == Method::POST {
        b = b.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    }
    let resp = c
        .app
        .clone()
        .oneshot(b.body(Body::from(form.to_string())).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Page {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

async fn get(c: &Ctx, uri: &str, cookie: Option<&str>) -> Page {
    browse(c, Method::GET, uri, cookie, "").await
}

/// The operator's session cookie.
async fn operator(c: &Ctx) -> String {
    let form = format!("username=platform&password={}", enc(PASSWORD));
    let p = browse(c, Method::POST, "/dashboard/login", None, &form).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    assert_eq!(p.location(), "/dashboard/");
    p.cookie()
}

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The path (and query) of an absolute URL.
fn path_of(url: &str) -> String {
    let u = url::Url::parse(url).unwrap();
    u.path().to_string()
}

/// The instance's `dashboard_url` as `GET` gives it.
async fn dashboard_url(c: &Ctx, id: &str) -> String {
    let r = c
        .call(Method::GET, &format!("/v2/service_instances/{id}"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.body["dashboard_url"].as_str().unwrap().to_string()
}

/// The CSRF token in a page's forms.
fn csrf(body: &str) -> String {
    let at = body.find(r#"name="csrf" value=""#).expect("a CSRF field") + 19;
    body[at..at + body[at..].find('"').unwrap()].to_string()
}

#[tokio::test]
async fn provision_and_get_carry_the_dashboard_url() {
    let c = ctx();
    let r = c
        .provision("dash-1", provision_body(PLAN1, None), true)
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let url = r.body["dashboard_url"].as_str().unwrap().to_string();
    assert!(
        url.starts_with("http://127.0.0.1:0/dashboard/open/dash-1/"),
        "{url}"
    );
    assert!(!url.contains(PASSWORD));
    // A re-sent provision gets the same link, and so does GET once it is ready.
    let again = c
        .provision("dash-1", provision_body(PLAN1, None), true)
        .await;
    assert_eq!(again.body["dashboard_url"], url.as_str());
    c.finish("dash-1", true, "ready").await;
    assert_eq!(dashboard_url(&c, "dash-1").await, url);
    let ready = c
        .provision("dash-1", provision_body(PLAN1, None), true)
        .await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(ready.body["dashboard_url"], url.as_str());
    // Another instance's link differs by more than its id.
    c.ready_instance("dash-2").await;
    let other = dashboard_url(&c, "dash-2").await;
    let token = |u: &str| u.rsplit('/').next().unwrap().to_string();
    assert_ne!(token(&url), token(&other));
}

#[tokio::test]
async fn no_dashboard_route_answers_without_a_session() {
    let c = ctx();
    c.ready_instance("dash-a").await;
    let forged = "wa_dash=eyJleHAiOjk5OTk5OTk5OTksIm5vbmNlIjoieCJ9.AAAA";
    let paths = walarchive_broker::dashboard::paths();
    assert!(paths.len() >= 8, "{paths:?}");
    for path in paths {
        let concrete = path
            .replace("{id}", "dash-a")
            .replace("{token}", "not-a-token")
            .replace("{file}", "uPlot.iife.min.js")
            .replace("{action}", "backup")
            .replace("{*rest}", "anything");
        for method in [Method::GET, Method::POST] {
            for cookie in [None, Some(forged)] {
                let p = browse(&c, method.clone(), &concrete, cookie, "csrf=x").await;
                let what = format!("{method} {concrete} {cookie:?}: {} {}", p.status, p.body);
                match concrete.as_str() {
                    // Public: the login page (its form fails without the password), the
                    // link (404 without the right token).
                    "/dashboard/login" => assert!(
                        matches!(
                            p.status,
                            StatusCode::OK
                                | StatusCode::UNAUTHORIZED
                                | StatusCode::UNPROCESSABLE_ENTITY
                        ) && !p.body.contains("dash-a"),
                        "{what}"
                    ),
                    "/dashboard/open/dash-a/not-a-token" => assert!(
                        matches!(
                            p.status,
                            StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED
                        ) && p.set_cookies().is_empty(),
                        "{what}"
                    ),
                    // Assets: 401 (a script or stylesheet cannot follow a redirect to a form).
                    a if a.starts_with("/dashboard/assets/") && method == Method::GET => {
                        assert_eq!(p.status, StatusCode::UNAUTHORIZED, "{what}")
                    }
                    _ if method == Method::GET => {
                        assert_eq!(p.status, StatusCode::SEE_OTHER, "{what}");
                        assert_eq!(p.location(), "/dashboard/login", "{what}");
                    }
                    _ => assert!(
                        matches!(
                            p.status,
                            StatusCode::UNAUTHORIZED | StatusCode::METHOD_NOT_ALLOWED
                        ),
                        "{what}"
                    ),
                }
                assert!(!p.body.contains("orders-db"), "{what}");
            }
        }
    }
    // Assets but the login page's stylesheet need a session too.
    let css = get(&c, "/dashboard/assets/dashboard.css", None).await;
    assert_eq!(css.status, StatusCode::OK);
    let js = get(&c, "/dashboard/assets/charts.js", None).await;
    assert_eq!(js.status, StatusCode::UNAUTHORIZED);
    // The OSB API keeps its own authentication and its error shape beside the dashboard.
    let r = c.call(Method::GET, "/v2/nothing", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let p = get(&c, "/v2/catalog", None).await;
    assert_eq!(p.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_operator_logs_in_sees_everything_and_logs_out() {
    let c = ctx();
    c.ready_instance("dash-op").await;
    let wrong = browse(
        &c,
        Method::POST,
        "/dashboard/login",
        None,
        "username=platform&password=nope",
    )
    .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(wrong.set_cookies().is_empty());
    assert!(wrong.body.contains("Wrong user name or password"));

    let form = format!("username=platform&password={}", enc(PASSWORD));
    let p = browse(&c, Method::POST, "/dashboard/login", None, &form).await;
    let set = &p.set_cookies()[0];
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/dashboard", "Max-Age="] {
        assert!(set.contains(attr), "{set}");
    }
    assert!(!set.contains(PASSWORD), "{set}");
    let cookie = p.cookie();
    let overview = get(&c, "/dashboard/", Some(&cookie)).await;
    assert_eq!(overview.status, StatusCode::OK, "{}", overview.body);
    assert!(overview.body.contains("orders-db"));
    assert!(overview
        .body
        .contains(r#"href="/dashboard/instances/dash-op""#));
    for h in [
        header::CONTENT_SECURITY_POLICY,
        header::X_FRAME_OPTIONS,
        header::REFERRER_POLICY,
    ] {
        assert!(overview.headers.contains_key(&h), "{h}");
    }
    let page = get(&c, "/dashboard/instances/dash-op", Some(&cookie)).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("router.test:40000"), "{}", page.body);
    let js = get(&c, "/dashboard/assets/uPlot.iife.min.js", Some(&cookie)).await;
    assert_eq!(js.status, StatusCode::OK);
    assert!(js.body.contains("uPlot"));

    // Log out: a POST with the session's CSRF token, which a form without it cannot.
    let refused = browse(
        &c,
        Method::POST,
        "/dashboard/logout",
        Some(&cookie),
        "csrf=forged",
    )
    .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    let token = csrf(&overview.body);
    let out = browse(
        &c,
        Method::POST,
        "/dashboard/logout",
        Some(&cookie),
        &format!("csrf={}", enc(&token)),
    )
    .await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert_eq!(out.location(), "/dashboard/login");
    assert!(
        out.set_cookies()[0].contains("Max-Age=0"),
        "{:?}",
        out.set_cookies()
    );
}

#[tokio::test]
async fn a_users_link_opens_its_instance_only_until_rotated() {
    let c = ctx();
    c.ready_instance("dash-mine").await;
    c.ready_instance("dash-theirs").await;
    let url = dashboard_url(&c, "dash-mine").await;
    let theirs = dashboard_url(&c, "dash-theirs").await;

    let opened = get(&c, &path_of(&url), None).await;
    assert_eq!(opened.status, StatusCode::SEE_OTHER, "{}", opened.body);
    // The secret leaves the address bar: the page's URL has no token.
    assert_eq!(opened.location(), "/dashboard/instances/dash-mine");
    let mine = opened.cookie();
    let page = get(&c, "/dashboard/instances/dash-mine", Some(&mine)).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(
        !page.body.contains(r#"href="/dashboard/""#),
        "no overview link"
    );

    // Another instance: the same 404 as an instance that does not exist.
    let other = get(&c, "/dashboard/instances/dash-theirs", Some(&mine)).await;
    let nothing = get(&c, "/dashboard/instances/dash-nothing", Some(&mine)).await;
    assert_eq!(other.status, StatusCode::NOT_FOUND);
    assert_eq!((other.status, &other.body), (nothing.status, &nothing.body));
    assert!(!other.body.contains("dash-theirs"));
    // The overview is the operator's.
    assert_eq!(
        get(&c, "/dashboard/", Some(&mine)).await.status,
        StatusCode::FORBIDDEN
    );
    // One instance's token does not open another.
    let their_token = theirs.rsplit('/').next().unwrap();
    let swapped = get(
        &c,
        &format!("/dashboard/open/dash-mine/{their_token}"),
        None,
    )
    .await;
    assert_eq!(swapped.status, StatusCode::NOT_FOUND);
    assert!(swapped.set_cookies().is_empty());

    // Rotation (the real command): the old link and its session stop working, the new one
    // works.
    let out = Command::new(env!("CARGO_BIN_EXE_walarchive-broker"))
        .args(["dashboard-link", "--config"])
        .arg(c.config_file())
        .args(["dash-mine", "--rotate"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new_url = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_ne!(new_url, url);
    assert_eq!(dashboard_url(&c, "dash-mine").await, new_url);
    let stale = get(&c, "/dashboard/instances/dash-mine", Some(&mine)).await;
    assert_eq!(stale.status, StatusCode::SEE_OTHER);
    assert_eq!(stale.location(), "/dashboard/login");
    assert_eq!(
        get(&c, &path_of(&url), None).await.status,
        StatusCode::NOT_FOUND
    );
    let reopened = get(&c, &path_of(&new_url), None).await;
    assert_eq!(reopened.status, StatusCode::SEE_OTHER);
    let page = get(
        &c,
        "/dashboard/instances/dash-mine",
        Some(&reopened.cookie()),
    )
    .await;
    assert_eq!(page.status, StatusCode::OK);
    // Without --rotate the command prints the current link.
    let out = Command::new(env!("CARGO_BIN_EXE_walarchive-broker"))
        .args(["dashboard-link", "--config"])
        .arg(c.config_file())
        .arg("dash-mine")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), new_url);
}

#[tokio::test]
async fn names_from_the_platform_are_escaped() {
    let c = ctx();
    let mut body = provision_body(PLAN1, None);
    body["context"]["instance_name"] = json!("<script>alert('x')</script>");
    let id = "dash-<b>&\"esc\"";
    let path = format!(
        "/v2/service_instances/{}?accepts_incomplete=true",
        enc(id).replace('+', "%20")
    );
    let r = c.call(Method::PUT, &path, Some(body)).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    c.finish(id, true, "<img src=x onerror=alert(1)>").await;
    let url: Value = r.body["dashboard_url"].clone();
    assert!(
        url.as_str()
            .unwrap()
            .contains("/open/dash-%3Cb%3E%26%22esc%22/"),
        "{url}"
    );
    let op = operator(&c).await;
    for page in [
        get(&c, "/dashboard/", Some(&op)).await,
        get(
            &c,
            "/dashboard/instances/dash-%3Cb%3E%26%22esc%22",
            Some(&op),
        )
        .await,
    ] {
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        assert!(!page.body.contains("<script>alert"), "{}", page.body);
        assert!(!page.body.contains("<b>&"), "{}", page.body);
        assert!(!page.body.contains("<img src=x"), "{}", page.body);
        assert!(page.body.contains("&lt;script&gt;alert"), "{}", page.body);
    }
}

#[tokio::test]
async fn actions_need_the_sessions_token_and_a_confirmation() {
    let c = ctx();
    c.ready_instance("dash-act").await;
    c.ready_instance("dash-else").await;
    let op = operator(&c).await;
    let page = get(&c, "/dashboard/instances/dash-act", Some(&op)).await;
    assert!(page
        .body
        .contains(r#"action="/dashboard/instances/dash-act/actions/backup""#));
    let token = csrf(&page.body);
    let post = |uri: &'static str, cookie: String, form: String| {
        let c = &c;
        async move { browse(c, Method::POST, uri, Some(&cookie), &form).await }
    };
    let kind = || async { c.store.operation("dash-act").await.unwrap().unwrap().value };
    // Without the session's token: refused, nothing recorded.
    let p = post(
        "/dashboard/instances/dash-act/actions/backup",
        op.clone(),
        "csrf=forged&confirm=yes".into(),
    )
    .await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);
    assert_eq!(kind().await.kind, OperationKind::Provision);
    // The first POST asks; only the confirmed one acts.
    let form = format!("csrf={}", enc(&token));
    let p = post(
        "/dashboard/instances/dash-act/actions/backup",
        op.clone(),
        form.clone(),
    )
    .await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.body);
    assert!(
        p.body.contains(r#"name="confirm" value="yes""#),
        "{}",
        p.body
    );
    assert_eq!(kind().await.kind, OperationKind::Provision);
    let p = post(
        "/dashboard/instances/dash-act/actions/backup",
        op.clone(),
        format!("{form}&confirm=yes"),
    )
    .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    assert_eq!(p.location(), "/dashboard/instances/dash-act#history");
    let recorded = kind().await;
    assert_eq!(recorded.kind, OperationKind::Backup);
    assert_eq!(recorded.requested_by.as_deref(), Some("operator"));
    let page = get(&c, "/dashboard/instances/dash-act", Some(&op)).await;
    assert!(page.body.contains("backup (operator)"), "{}", page.body);
    // Refused while it runs: the action's own sentence.
    let p = post(
        "/dashboard/instances/dash-act/actions/node-count",
        op.clone(),
        format!("{form}&nodes=2&confirm=yes"),
    )
    .await;
    assert_eq!(p.status, StatusCode::CONFLICT);
    assert!(
        p.body.contains("A backup is in progress on this instance"),
        "{}",
        p.body
    );
    let p = post(
        "/dashboard/instances/dash-act/actions/node-count",
        op.clone(),
        format!("{form}&nodes=many&confirm=yes"),
    )
    .await;
    assert_eq!(p.status, StatusCode::CONFLICT);
    assert!(p.body.contains("must be a number"), "{}", p.body);
    // A user's session acts on its instance only, with its own token.
    let url = dashboard_url(&c, "dash-else").await;
    let user = get(&c, &path_of(&url), None).await.cookie();
    let mine = get(&c, "/dashboard/instances/dash-else", Some(&user)).await;
    let user_form = format!("csrf={}&confirm=yes", enc(&csrf(&mine.body)));
    let p = post(
        "/dashboard/instances/dash-act/actions/backup",
        user.clone(),
        user_form.clone(),
    )
    .await;
    assert_eq!(p.status, StatusCode::NOT_FOUND);
    let p = post(
        "/dashboard/instances/dash-else/actions/backup",
        user.clone(),
        format!("{form}&confirm=yes"),
    )
    .await;
    assert_eq!(
        p.status,
        StatusCode::FORBIDDEN,
        "the operator's token is not the user's"
    );
    let p = post(
        "/dashboard/instances/dash-else/actions/backup",
        user,
        user_form,
    )
    .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    let other = c.store.operation("dash-else").await.unwrap().unwrap().value;
    assert_eq!(other.requested_by.as_deref(), Some("user"));
}

#[tokio::test]
async fn the_overview_sorts_on_the_server() {
    let c = ctx();
    c.ready_instance("dash-s1").await;
    let mut body = provision_body(PLAN1, None);
    body["context"]["instance_name"] = json!("aaa-first-by-name");
    let r = c.provision("dash-s2", body, true).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    c.finish("dash-s2", true, "ready").await;
    // A failed update: the instance stays usable, its health red.
    let r = c
        .call(
            Method::PATCH,
            "/v2/service_instances/dash-s1?accepts_incomplete=true",
            Some(json!({ "service_id": super::SERVICE, "parameters": { "node-count": 2 } })),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    c.finish("dash-s1", false, "the new node did not start")
        .await;
    let op = operator(&c).await;
    let order = |body: &str| {
        let a = body.find(r#"data-instance="dash-s1""#).unwrap();
        let b = body.find(r#"data-instance="dash-s2""#).unwrap();
        if a < b {
            ["dash-s1", "dash-s2"]
        } else {
            ["dash-s2", "dash-s1"]
        }
    };
    let by_name = get(&c, "/dashboard/?sort=name", Some(&op)).await;
    assert_eq!(order(&by_name.body), ["dash-s2", "dash-s1"]);
    let by_health = get(&c, "/dashboard/?sort=health", Some(&op)).await;
    assert_eq!(order(&by_health.body), ["dash-s1", "dash-s2"], "red first");
    assert!(
        by_health.body.contains("the last operation failed"),
        "{}",
        by_health.body
    );
    assert!(by_health.body.contains(r#"href="?sort=backup""#));
}
