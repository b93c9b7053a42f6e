//! The browser harness itself (`testkit::broker::browser`): Chromium starts, reads a page,
//! saves its artifacts on failure, and leaves no process behind.

use std::time::Duration;

use testkit::broker::browser::{artifacts_dir, Browser};

/// Processes whose command line holds `needle` (from /proc).
fn processes_with(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) {
            if String::from_utf8_lossy(&cmd).contains(needle) {
                out.push(pid);
            }
        }
    }
    out
}

#[tokio::test]
async fn reads_a_data_url_and_leaves_nothing_behind() {
    let browser = Browser::start("reads_a_data_url").await;
    let profile = browser.profile_dir().display().to_string();
    browser
        .goto("data:text/html,<title>t</title><p id=greeting>hello <b>browser</b></p><form id=f><input name=q value=x></form>")
        .await;
    assert_eq!(browser.text("#greeting").await, "hello browser");
    browser.fill("#f", &[("q", "typed")]).await;
    let v = browser
        .js("return document.querySelector('[name=q]').value;", vec![])
        .await;
    assert_eq!(v, "typed");
    let shot = browser.screenshot("page").await;
    assert!(std::fs::read(&shot).unwrap().starts_with(b"\x89PNG"));
    assert!(
        !processes_with(&profile).is_empty(),
        "Chromium runs with the browser's profile"
    );
    drop(browser);
    assert!(
        testkit::poll_until(Duration::from_secs(10), || processes_with(&profile)
            .is_empty()),
        "Chromium still runs after the guard dropped: {:?}",
        processes_with(&profile)
    );
}

#[tokio::test]
async fn a_failing_test_leaves_a_screenshot_and_the_html() {
    let dir = artifacts_dir("a_failing_browser_test");
    let _ = std::fs::remove_dir_all(&dir);
    let run = tokio::spawn(async {
        let browser = Browser::start("a_failing_browser_test").await;
        browser
            .goto("data:text/html,<p id=x>the page at the failure</p>")
            .await;
        browser.find("#not-there").await;
    });
    assert!(run.await.unwrap_err().is_panic());
    let html = std::fs::read_to_string(dir.join("failure.html")).expect("failure.html saved");
    assert!(html.contains("the page at the failure"), "{html}");
    let png = std::fs::read(dir.join("failure.png")).expect("failure.png saved");
    assert!(png.starts_with(b"\x89PNG"));
}
