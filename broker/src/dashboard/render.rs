//! The HTML every page shares: the layout, the login and error pages, the security headers,
//! and numbers, sizes, durations and times written for people.
//!
//! Why maud: its templates escape every value they insert (`(value)`), so text from records,
//! cells or PostgreSQL (instance ids, names, Patroni's states, operation descriptions) cannot
//! become markup; only [`PreEscaped`] writes raw text, used for the JSON of the charts after
//! [`json_for_script`] made it safe inside a `<script>` element.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use chrono::{DateTime, Utc};
use maud::{html, Markup, PreEscaped, DOCTYPE};

use crate::state::Timestamp;

/// Where a page's navigation links.
pub(super) struct Nav<'a> {
    /// Whether the operator's overview is reachable (an operator session).
    pub operator: bool,
    /// The CSRF token of the log-out form.
    pub csrf: &'a str,
}

/// A whole page: head (viewport, the stylesheet), the header with navigation, `body`.
pub(super) fn page(title: &str, nav: Option<&Nav<'_>>, scripts: bool, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · walarchive" }
                link rel="stylesheet" href="/dashboard/assets/dashboard.css";
                @if scripts {
                    link rel="stylesheet" href="/dashboard/assets/uPlot.min.css";
                }
            }
            body {
                header.top {
                    a.brand href=(if nav.is_some_and(|n| n.operator) { "/dashboard/" } else { "#" }) { "walarchive" }
                    @if let Some(n) = nav {
                        nav {
                            @if n.operator { a href="/dashboard/" { "All instances" } }
                            form.inline method="post" action="/dashboard/logout" {
                                input type="hidden" name="csrf" value=(n.csrf);
                                button type="submit" { "Log out" }
                            }
                        }
                    }
                }
                main { (body) }
                @if scripts {
                    script src="/dashboard/assets/uPlot.iife.min.js" {}
                    script src="/dashboard/assets/charts.js" {}
                }
            }
        }
    }
}

/// The login page, with `error` above the form.
pub(super) fn login(error: Option<&str>) -> Html<String> {
    Html(
        page(
            "Log in",
            None,
            false,
            html! {
                section.card.login {
                    h1 { "Operator login" }
                    p.muted { "The broker's credentials. Users open their instance with the link the platform shows them." }
                    @if let Some(e) = error { p.error role="alert" { (e) } }
                    form method="post" action="/dashboard/login" {
                        label { "User name" input type="text" name="username" autocomplete="username" required; }
                        label { "Password" input type="password" name="password" autocomplete="current-password" required; }
                        button type="submit" { "Log in" }
                    }
                }
            },
        )
        .into_string(),
    )
}

/// A page saying what went wrong, with `status`.
pub(super) fn error_page(status: StatusCode, title: &str, text: &str) -> Response {
    let body = page(
        title,
        None,
        false,
        html! { section.card { h1 { (title) } p { (text) } p { a href="/dashboard/" { "Dashboard" } } } },
    );
    (status, Html(body.into_string())).into_response()
}

/// The answer when the broker's records cannot be read.
pub(super) fn unavailable() -> Response {
    error_page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Try again",
        "The broker cannot read its records right now.",
    )
}

/// The answer to a form without this session's CSRF token.
pub(super) fn csrf_refused() -> Response {
    error_page(
        StatusCode::FORBIDDEN,
        "Form expired",
        "This form does not belong to your session: reload the page and try again.",
    )
}

/// The same 404 for an instance that does not exist and one the session may not see.
pub(super) fn no_such_instance() -> Response {
    error_page(
        StatusCode::NOT_FOUND,
        "No such instance",
        "There is no instance here that this session can open.",
    )
}

/// Headers of every dashboard answer: only the broker's own scripts and styles, no framing,
/// no referrer (links must not leak ids to other sites), no caching of pages.
pub(super) fn security_headers(h: &mut HeaderMap) {
    let set = |h: &mut HeaderMap, k: header::HeaderName, v: &'static str| {
        h.entry(k).or_insert(HeaderValue::from_static(v));
    };
    set(
        h,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    );
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(h, header::REFERRER_POLICY, "no-referrer");
    set(h, header::X_FRAME_OPTIONS, "DENY");
    set(h, header::CACHE_CONTROL, "no-store");
}

/// `value` as JSON that is safe inside `<script type="application/json">`: `<`, `>` and `&`
/// written as escapes, so no text can close the element.
pub(super) fn json_for_script(value: &serde_json::Value) -> PreEscaped<String> {
    let s = serde_json::to_string(value).expect("JSON");
    PreEscaped(
        s.replace('<', "\\u003c")
            .replace('>', "\\u003e")
            .replace('&', "\\u0026"),
    )
}

/// A size: `512 B`, `1.5 KiB`, `20.3 MiB`, `1.2 GiB`.
pub(super) fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A duration for people: `45 s`, `3 min 5 s`, `2 h 10 min`, `3 d 4 h`.
pub(super) fn duration(seconds: f64) -> String {
    if !seconds.is_finite() || seconds < 0.0 {
        return "–".into();
    }
    if seconds < 10.0 {
        return format!("{seconds:.1} s");
    }
    let s = seconds.round() as u64;
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min {} s", s / 60, s % 60),
        3600..=86399 => format!("{} h {} min", s / 3600, (s % 3600) / 60),
        _ => format!("{} d {} h", s / 86400, (s % 86400) / 3600),
    }
}

/// A time: `2026-12-07 17:03:05 UTC`.
pub(super) fn time(t: &Timestamp) -> String {
    t.0.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// Seconds from `t` to `now`.
pub(super) fn age(t: &Timestamp, now: DateTime<Utc>) -> f64 {
    (now - t.0).num_milliseconds() as f64 / 1000.0
}

/// `–` for what is not known.
pub(super) fn or_dash<T>(v: Option<T>, f: impl FnOnce(T) -> String) -> String {
    v.map_or_else(|| "–".to_string(), f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped_in_pages_and_scripts() {
        let evil = r#"<script>alert("x")</script>&"#;
        let p = page(evil, None, false, html! { p { (evil) } }).into_string();
        assert!(!p.contains("<script>alert"), "{p}");
        assert!(p.contains("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;"));
        let j = json_for_script(&serde_json::json!({ "name": evil })).0;
        assert!(
            !j.contains('<') && !j.contains('>') && !j.contains('&'),
            "{j}"
        );
        let back: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(back["name"], evil);
    }

    #[test]
    fn numbers_for_people() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(64 << 20), "64.0 MiB");
        assert_eq!(duration(3.25), "3.2 s");
        assert_eq!(duration(185.0), "3 min 5 s");
        assert_eq!(duration(7800.0), "2 h 10 min");
        assert_eq!(duration(3.0 * 86400.0 + 4.0 * 3600.0), "3 d 4 h");
        assert_eq!(duration(-1.0), "–");
    }
}
