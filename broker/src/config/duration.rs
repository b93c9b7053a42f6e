//! Durations in the configuration, written for humans (`"90s"`, `"5m"`).

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

/// Parses `"90s"`, `"5m"`, `"1h"`, `"7d"`, `"250ms"` or `"60"` (seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        format!("invalid duration {text:?} (expected e.g. \"60s\", \"5m\", \"1h\", \"7d\")")
    })?;
    let secs = |mult: u64| Duration::from_secs(n.saturating_mul(mult));
    Ok(match unit.trim() {
        "" | "s" => secs(1),
        "ms" => Duration::from_millis(n),
        "m" | "min" => secs(60),
        "h" => secs(3600),
        "d" => secs(86400),
        _ => {
            return Err(format!(
                "invalid duration unit in {text:?} (expected ms, s, m, h or d)"
            ))
        }
    })
}
