//! Durations in the configuration, written for humans (`"90s"`, `"5m"`, `"1h 30m"`).
//!
//! The grammar is `humantime`'s (units from `ns` to `y`, several terms summed, fractions),
//! plus what the broker accepted before it used that crate: a bare number is seconds (`"60"`,
//! or the TOML integer `60`), as in PostgreSQL's own settings.

use std::time::Duration;

use serde::Deserialize;

/// A duration written as `"90s"`, `"5m"`, `"1h"`, `"7d"` or a bare number of seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Secs(s) => Ok(HumanDuration(Duration::from_secs(s))),
            Raw::Text(t) => parse_duration(&t)
                .map(HumanDuration)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// Parses `"90s"`, `"5m"`, `"1h 30m"`, `"7d"`, `"250ms"` (see `humantime::parse_duration`)
/// or `"60"` (a bare number: seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let expected =
        "expected e.g. \"250ms\", \"60s\", \"5m\", \"1h 30m\", \"7d\" or a number of seconds";
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t
            .parse()
            .map(Duration::from_secs)
            .map_err(|_| format!("invalid duration {text:?}: number too large"));
    }
    humantime::parse_duration(t).map_err(|e| format!("invalid duration {text:?}: {e} ({expected})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_bare_seconds() {
        let secs = Duration::from_secs;
        for (text, want) in [
            ("90s", secs(90)),
            ("5m", secs(300)),
            ("5min", secs(300)),
            ("2h", secs(7200)),
            ("7d", secs(7 * 86400)),
            ("250ms", Duration::from_millis(250)),
            ("60", secs(60)),
            (" 60 ", secs(60)),
            ("0", secs(0)),
            ("5 m", secs(300)),
            ("1h 30m", secs(5400)),
            ("2w", secs(14 * 86400)),
            ("5 weeks", secs(35 * 86400)),
            ("1.5h", secs(5400)),
        ] {
            assert_eq!(parse_duration(text), Ok(want), "{text:?}");
        }
    }

    #[test]
    fn errors_name_the_input() {
        for text in [
            "",
            "  ",
            "s",
            "5 fortnights",
            "5x",
            "-5s",
            "1e3",
            "99999999999999999999999",
        ] {
            let e = parse_duration(text).expect_err(text);
            assert!(e.starts_with(&format!("invalid duration {text:?}")), "{e}");
        }
    }

    #[test]
    fn toml_integers_and_strings() {
        #[derive(Deserialize)]
        struct T {
            d: HumanDuration,
        }
        let d = |s: &str| toml::from_str::<T>(s).map(|t| t.d.0);
        assert_eq!(d("d = 60").unwrap(), Duration::from_secs(60));
        assert_eq!(d("d = \"60\"").unwrap(), Duration::from_secs(60));
        assert_eq!(d("d = \"10m\"").unwrap(), Duration::from_secs(600));
        let e = d("d = \"ten minutes\"").unwrap_err().to_string();
        assert!(e.contains("invalid duration \"ten minutes\""), "{e}");
    }
}
