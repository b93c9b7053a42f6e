//! PostgreSQL majors: which the broker offers, how a request names one, how a cell finds out
//! which major a directory of binaries is.
//!
//! One place for these because the API (the `postgresql-version` parameter, the catalog),
//! the records (an instance's major; old records have none and ran 15), the cell agent (its
//! bin directories) and placement (only on cells that have the major) must agree on them.

use std::path::Path;

/// The majors an instance may run, oldest first.
pub const SUPPORTED: [u32; 4] = [15, 16, 17, 18];
/// What a provision without `postgresql-version` gets (and no clone: a clone runs its
/// source's major).
pub const NEWEST: u32 = 18;
/// The major of everything recorded before majors were (instances, node specs): all ran 15.
pub const LEGACY: u32 = 15;

/// `15, 16, 17, 18` for messages.
pub fn supported_list() -> String {
    SUPPORTED
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A `postgresql-version` parameter: `"17"` (a string, as the catalog says) or `17` (the
/// number, accepted too). `Err` says what is accepted.
pub fn parse_parameter(v: &serde_json::Value) -> Result<u32, String> {
    let major = match v {
        serde_json::Value::String(s) => s.trim().parse::<u32>().ok(),
        serde_json::Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        _ => None,
    };
    match major {
        Some(m) if SUPPORTED.contains(&m) => Ok(m),
        _ => Err(format!(
            "postgresql-version must be one of the supported PostgreSQL majors {} (as a string, e.g. \"{NEWEST}\"), not {v}.",
            supported_list()
        )),
    }
}

/// The major of `postgres --version` output (`postgres (PostgreSQL) 17.10`,
/// `postgres (PostgreSQL) 16.14 (Debian 16.14-1)`).
pub fn major_of_version_output(out: &str) -> Option<(u32, String)> {
    let rest = out.trim().strip_prefix("postgres (PostgreSQL) ")?;
    let version = rest.split_whitespace().next()?.to_string();
    let major = version
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    Some((major, version))
}

/// The major and full version of the server in `bin_dir` (runs `postgres --version`).
pub fn probe_bin_dir(bin_dir: &Path) -> Result<(u32, String), String> {
    let postgres = bin_dir.join("postgres");
    let out = std::process::Command::new(&postgres)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {} --version: {e}", postgres.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "{} --version failed ({}): {}",
            postgres.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    major_of_version_output(&text).ok_or_else(|| {
        format!(
            "{} --version printed {:?}, not a PostgreSQL version",
            postgres.display(),
            text.trim()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parameters_strings_and_numbers() {
        assert_eq!(parse_parameter(&json!("17")), Ok(17));
        assert_eq!(parse_parameter(&json!(16)), Ok(16));
        for bad in [
            json!("14"),
            json!("19"),
            json!("17.2"),
            json!(true),
            json!(""),
        ] {
            let e = parse_parameter(&bad).unwrap_err();
            assert!(e.contains("15, 16, 17, 18"), "{e}");
        }
    }

    #[test]
    fn version_outputs() {
        assert_eq!(
            major_of_version_output("postgres (PostgreSQL) 17.10\n"),
            Some((17, "17.10".into()))
        );
        assert_eq!(
            major_of_version_output("postgres (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)"),
            Some((15, "15.14".into()))
        );
        assert_eq!(
            major_of_version_output("postgres (PostgreSQL) 18beta1"),
            Some((18, "18beta1".into()))
        );
        assert_eq!(major_of_version_output("patroni 4.1.5"), None);
    }
}
