//! A real browser for the dashboard's tests (feature `browser`): Debian's `chromedriver` on a
//! free port driving a headless Chromium (`/usr/bin/chromium`) through `fantoccini`.
//!
//! Why it looks like this:
//! * **Failures leave evidence.** A browser test that fails says little without the page it
//!   saw, so [`Browser`] is a guard: when it drops while the test panics (or after
//!   [`Browser::fail`]) it saves a screenshot and the page's HTML into
//!   `target/test-artifacts/<test>/`. `Drop` cannot await, and the session's task lives on
//!   the test's runtime (blocked in `Drop`), so the guard talks to chromedriver's WebDriver
//!   API directly over the harness's own HTTP client ([`crate::http_request`], a runtime of
//!   its own) with the session id it kept.
//! * **No stray processes.** chromedriver starts Chromium (and Chromium its helpers) in its
//!   own process group, which the guard deletes the session of and then kills whole on drop;
//!   chromedriver gets `PR_SET_PDEATHSIG` and a shell watchdog kills the group once the test
//!   process is gone, so a killed test run leaves no browser behind either.
//! * **A fresh profile per browser** (`--user-data-dir` in a temp dir): no cookies, cache or
//!   session shared between tests or with a previous run.
//! * Helpers panic with the URL and selector in the message rather than return errors: a
//!   test reads as the steps a person would take, and the panic triggers the artifacts.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use crate::{free_port, http_request, spawn_watchdog};

/// Debian's chromedriver (package `chromium-driver`).
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// Debian's Chromium (package `chromium`).
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// Chromium's flags: headless, no sandbox (the tests run as root), nothing that reaches out
/// to the network on its own, a window large enough for the dashboard's desktop layout.
const FLAGS: &[&str] = &[
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1000",
];

/// How long the helpers that wait ([`Browser::wait_for`], [`Browser::wait_text`]) wait by
/// default.
pub const WAIT: Duration = Duration::from_secs(30);

/// A headless Chromium session and the chromedriver behind it; see the module comment.
pub struct Browser {
    client: Client,
    driver: std::process::Child,
    port: u16,
    session: String,
    test: String,
    failed: AtomicBool,
    saved: AtomicBool,
    profile: tempfile::TempDir,
}

/// `target/test-artifacts/<test>/` of the running test binary's target directory.
pub fn artifacts_dir(test: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    // target/<profile>/deps/<binary>
    let mut dir = exe.parent().expect("the test's directory");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("the profile's directory");
    }
    let target = dir.parent().expect("the target directory");
    let safe: String = test
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    target.join("test-artifacts").join(safe)
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session; `test` names the artifacts'
    /// directory (use the test function's name).
    pub async fn start(test: &str) -> Browser {
        Browser::start_with(test, &[]).await
    }

    /// [`Browser::start`] with `extra` Chromium flags (e.g. the dashboard's tests trust the
    /// broker's throwaway certificate with `--ignore-certificate-errors-spki-list=<its key's
    /// hash>`, which exempts that key only).
    pub async fn start_with(test: &str, extra: &[String]) -> Browser {
        let profile = tempfile::Builder::new()
            .prefix("walarchive-chromium-")
            .tempdir_in("/tmp")
            .expect("a temp dir for Chromium's profile");
        let mut last = String::new();
        for _ in 0..3 {
            let port = free_port();
            let log = profile.path().join(format!("chromedriver-{port}.log"));
            let mut cmd = Command::new(CHROMEDRIVER);
            cmd.arg(format!("--port={port}"))
                .arg(format!("--log-path={}", log.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
            let driver = walarchive_broker::process::spawn_tied(cmd)
                .await
                .unwrap_or_else(|e| panic!("start {CHROMEDRIVER}: {e} (run scripts/setup)"));
            let pgid = driver.id();
            // Kills the group (Chromium and its helpers) once this process is gone.
            #[allow(clippy::zombie_processes)]
            let _ = spawn_watchdog(
                "chromedriver",
                &format!(
                    "while kill -0 {pid} 2>/dev/null; do sleep 1; done; kill -9 -{pgid} 2>/dev/null",
                    pid = std::process::id()
                ),
            );
            let mut guard = DriverGuard(Some(driver));
            let ready = {
                let started = Instant::now();
                loop {
                    if let Ok(r) = http_request(port, "GET", "/status", &[], b"") {
                        if r.status == 200 {
                            break true;
                        }
                    }
                    if guard.exited() || started.elapsed() > Duration::from_secs(20) {
                        break false;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            };
            if !ready {
                last = std::fs::read_to_string(&log).unwrap_or_default();
                continue;
            }
            let mut caps = serde_json::Map::new();
            caps.insert(
                "goog:chromeOptions".into(),
                json!({
                    "binary": CHROMIUM,
                    "args": FLAGS.iter().map(|f| f.to_string())
                        .chain(extra.iter().cloned())
                        .chain([format!("--user-data-dir={}", profile.path().join("profile").display())])
                        .collect::<Vec<_>>(),
                }),
            );
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            let client = match ClientBuilder::new(connector)
                .capabilities(caps)
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    last = format!(
                        "new session: {e}\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                    continue;
                }
            };
            let session = client
                .session_id()
                .await
                .ok()
                .flatten()
                .expect("chromedriver names its session");
            let driver = guard.0.take().unwrap();
            return Browser {
                client,
                driver,
                port,
                session,
                test: test.to_string(),
                failed: AtomicBool::new(false),
                saved: AtomicBool::new(false),
                profile,
            };
        }
        panic!("chromedriver and Chromium did not start: {last}");
    }

    /// The fantoccini client, for what the helpers below do not cover.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Chromium's profile directory (`--user-data-dir`, removed on drop): it names this
    /// browser's processes on their command lines.
    pub fn profile_dir(&self) -> &Path {
        self.profile.path()
    }

    /// The URL the browser shows.
    pub async fn url(&self) -> String {
        self.client
            .current_url()
            .await
            .map(|u| u.to_string())
            .unwrap_or_default()
    }

    /// Opens `url` and waits for the page to load.
    pub async fn goto(&self, url: &str) {
        if let Err(e) = self.client.goto(url).await {
            panic!("open {url}: {e}");
        }
    }

    /// The first element matching the CSS selector `css` (panics when there is none).
    pub async fn find(&self, css: &str) -> Element {
        match self.client.find(Locator::Css(css)).await {
            Ok(e) => e,
            Err(e) => panic!("find `{css}` on {}: {e}", self.url().await),
        }
    }

    /// Every element matching `css` (possibly none).
    pub async fn find_all(&self, css: &str) -> Vec<Element> {
        match self.client.find_all(Locator::Css(css)).await {
            Ok(e) => e,
            Err(e) => panic!("find all `{css}` on {}: {e}", self.url().await),
        }
    }

    /// Whether an element matches `css` now.
    pub async fn exists(&self, css: &str) -> bool {
        !self.find_all(css).await.is_empty()
    }

    /// The rendered text of the first element matching `css`.
    pub async fn text(&self, css: &str) -> String {
        let el = self.find(css).await;
        match el.text().await {
            Ok(t) => t,
            Err(e) => panic!("text of `{css}` on {}: {e}", self.url().await),
        }
    }

    /// The rendered text of every element matching `css`.
    pub async fn texts(&self, css: &str) -> Vec<String> {
        let mut out = Vec::new();
        for el in self.find_all(css).await {
            out.push(el.text().await.unwrap_or_default());
        }
        out
    }

    /// Clicks the first element matching `css`.
    pub async fn click(&self, css: &str) {
        let el = self.find(css).await;
        if let Err(e) = el.click().await {
            panic!("click `{css}` on {}: {e}", self.url().await);
        }
    }

    /// Sets the fields `fields` (name, value) of the form matching `form_css` (text inputs
    /// typed into after clearing them, `<select>`s by value).
    pub async fn fill(&self, form_css: &str, fields: &[(&str, &str)]) {
        let form = self.find(form_css).await;
        for (name, value) in fields {
            let css = format!("[name=\"{name}\"]");
            let field = match form.find(Locator::Css(&css)).await {
                Ok(f) => f,
                Err(e) => panic!(
                    "field `{name}` of `{form_css}` on {}: {e}",
                    self.url().await
                ),
            };
            let tag = field.tag_name().await.unwrap_or_default();
            let done = if tag.eq_ignore_ascii_case("select") {
                field.select_by_value(value).await
            } else {
                match field.clear().await {
                    Ok(()) => field.send_keys(value).await,
                    Err(e) => Err(e),
                }
            };
            if let Err(e) = done {
                panic!("fill `{name}` of `{form_css}` on {}: {e}", self.url().await);
            }
        }
    }

    /// Runs `script` (a function body; `arguments[i]` are `args`) in the page and returns
    /// what it returns.
    pub async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        match self.client.execute(script, args).await {
            Ok(v) => v,
            Err(e) => panic!("run script on {}: {e}", self.url().await),
        }
    }

    /// Waits (up to [`WAIT`]) for an element matching `css`.
    pub async fn wait_for(&self, css: &str) -> Element {
        match self
            .client
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css(css))
            .await
        {
            Ok(e) => e,
            Err(e) => panic!("wait for `{css}` on {}: {e}", self.url().await),
        }
    }

    /// Reloads the page until the text of the first element matching `css` satisfies `ok`
    /// (up to `timeout`), and returns it: for figures the broker updates in the background.
    pub async fn wait_text(
        &self,
        css: &str,
        timeout: Duration,
        ok: impl Fn(&str) -> bool,
    ) -> String {
        let started = Instant::now();
        loop {
            let found = match self.client.find(Locator::Css(css)).await {
                Ok(el) => el.text().await.ok(),
                Err(_) => None,
            };
            if let Some(t) = &found {
                if ok(t) {
                    return t.clone();
                }
            }
            if started.elapsed() > timeout {
                self.fail(format!(
                    "`{css}` on {} did not become what the test waits for within {timeout:?}; last: {found:?}",
                    self.url().await
                ))
                .await;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            let _ = self.client.refresh().await;
        }
    }

    /// The page's HTML as the browser has it now.
    pub async fn html(&self) -> String {
        self.client.source().await.unwrap_or_default()
    }

    /// A PNG screenshot of the page, saved at `path` (directories created).
    pub async fn screenshot_to(&self, path: &Path) {
        let png = match self.client.screenshot().await {
            Ok(p) => p,
            Err(e) => panic!("screenshot of {}: {e}", self.url().await),
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// A screenshot saved as `<name>.png` in this test's artifacts directory; its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let path = artifacts_dir(&self.test).join(format!("{name}.png"));
        self.screenshot_to(&path).await;
        path
    }

    /// Fails the test: saves the artifacts now, then panics with `msg`.
    pub async fn fail(&self, msg: impl std::fmt::Display) -> ! {
        self.failed.store(true, Ordering::SeqCst);
        self.save_artifacts();
        panic!("{msg}");
    }

    /// Marks the test failed without panicking (the artifacts are saved on drop), for a
    /// test that collects several failures before it asserts.
    pub fn mark_failed(&self) {
        self.failed.store(true, Ordering::SeqCst);
    }

    /// Saves `failure.png` and `failure.html` into the artifacts directory, once, through
    /// chromedriver's HTTP API (usable from `Drop`). Errors are printed, not raised.
    fn save_artifacts(&self) {
        if self.saved.swap(true, Ordering::SeqCst) {
            return;
        }
        let dir = artifacts_dir(&self.test);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            eprintln!("browser: cannot create {}: {e}", dir.display());
            return;
        }
        let get = |what: &str| -> Option<Value> {
            let r = http_request(
                self.port,
                "GET",
                &format!("/session/{}/{what}", self.session),
                &[],
                b"",
            )
            .ok()?;
            let v: Value = serde_json::from_slice(&r.body).ok()?;
            v.get("value").cloned()
        };
        match get("screenshot").and_then(|v| v.as_str().map(str::to_string)) {
            Some(b64) => match base64::engine::general_purpose::STANDARD.decode(b64) {
                Ok(png) => {
                    let _ = std::fs::write(dir.join("failure.png"), png);
                }
                Err(e) => eprintln!("browser: screenshot undecodable: {e}"),
            },
            None => eprintln!("browser: no screenshot from chromedriver"),
        }
        let url = get("url").and_then(|v| v.as_str().map(str::to_string));
        if let Some(src) = get("source").and_then(|v| v.as_str().map(str::to_string)) {
            let _ = std::fs::write(
                dir.join("failure.html"),
                format!("<!-- {} -->\n{src}", url.unwrap_or_default()),
            );
        }
        eprintln!("browser: saved the page into {}", dir.display());
    }

    /// Ends the session and stops chromedriver and Chromium now (what drop does).
    pub fn close(self) {
        drop(self);
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if std::thread::panicking() || self.failed.load(Ordering::SeqCst) {
            self.save_artifacts();
        }
        // Chromedriver quits Chromium when its session is deleted.
        let _ = http_request(
            self.port,
            "DELETE",
            &format!("/session/{}", self.session),
            &[],
            b"",
        );
        kill_group(&mut self.driver);
    }
}

/// Kills chromedriver's process group (Chromium and its helpers are in it) and reaps it.
fn kill_group(driver: &mut std::process::Child) {
    // The group's id is chromedriver's pid (`process_group(0)`); `kill` takes `-PGID`.
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", driver.id())])
        .stderr(Stdio::null())
        .status();
    let _ = driver.kill();
    let _ = driver.wait();
}

/// Kills chromedriver if the start is abandoned.
struct DriverGuard(Option<std::process::Child>);

impl DriverGuard {
    fn exited(&mut self) -> bool {
        self.0
            .as_mut()
            .is_none_or(|c| matches!(c.try_wait(), Ok(Some(_))))
    }
}

impl Drop for DriverGuard {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            kill_group(c);
        }
    }
}
