//! What the identifiers the platform sends may be, and the names they become outside the
//! broker's own records.
//!
//! Why one module: an instance id arrives from the network and ends up as a repository path
//! component (`<base>/<name>`, on a file system or as an object-key prefix), as Patroni's
//! `scope` (a prefix of etcd keys), in HAProxy's configuration and in log lines. Each of those
//! has its own dangerous inputs (`.`, `..` and `/` in paths, `/` in key prefixes, spaces and
//! quotes in configuration files, newlines in logs), and one of them unchecked was enough for
//! an instance `..` to archive above the base, and for the instance `.` (the base itself) to
//! have its retention delete the WAL of the instance `wal`. So ids are checked once, where they
//! enter ([`check_id`]), and mapped once ([`path_name`]) to a form that is safe everywhere.
//!
//! The mapping keeps the names operators already know: an id made of letters, digits, `-` and
//! `_` (GUIDs, which platforms use) and starting with a letter or a digit is its own name, so
//! existing archives stay where they are. Every other id is escaped, `_` followed by the id
//! with each byte outside `[A-Za-z0-9-]` written `_XX` (hex), or, when that would be longer
//! than [`MAX_ESCAPED`], `__sha256-` and 40 hex digits of its SHA-256. Names are therefore
//! made of `[A-Za-z0-9_-]` only (never `.`, `..`, `/`, never a leading `-`), no escaped or
//! hashed name equals a plain one (those never start with `_`), escaping is injective, and
//! since no name contains `.`, the repository of a later incarnation (`<name>.<n>`) can never
//! be another instance's.

use sha2::{Digest, Sha256};

/// Longest id accepted, in bytes.
pub const MAX_ID_BYTES: usize = 255;

/// Longest plain name: PostgreSQL-style identifiers, and far below file-name limits.
pub const MAX_PLAIN: usize = 63;

/// Longest escaped name; longer ones are hashed (file names are limited to 255 bytes).
pub const MAX_ESCAPED: usize = 120;

/// Why an id is refused (the text goes to the platform).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Empty.
    #[error("{0} must not be empty")]
    Empty(&'static str),
    /// Longer than [`MAX_ID_BYTES`].
    #[error("{0} must be at most {MAX_ID_BYTES} bytes long")]
    TooLong(&'static str),
    /// Holds a control character (a newline would forge log lines, a NUL cut C strings).
    #[error("{0} must not contain control characters")]
    Control(&'static str),
}

/// Checks an id the platform sent (`what` names it in the error: `instance_id`, ...): 1 to
/// 255 bytes of UTF-8 without control characters. Anything else is accepted and mapped by
/// [`path_name`] wherever it is used outside the broker's records.
pub fn check_id(id: &str, what: &'static str) -> Result<(), IdError> {
    if id.is_empty() {
        return Err(IdError::Empty(what));
    }
    if id.len() > MAX_ID_BYTES {
        return Err(IdError::TooLong(what));
    }
    if id.chars().any(char::is_control) {
        return Err(IdError::Control(what));
    }
    Ok(())
}

/// Whether `id` is its own name: `[A-Za-z0-9][A-Za-z0-9_-]*`, at most [`MAX_PLAIN`] bytes.
pub fn is_plain(id: &str) -> bool {
    let b = id.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_PLAIN
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_')
}

/// The name of instance `id` in repository paths, Patroni's scope and HAProxy's
/// configuration (see the module docs): made of `[A-Za-z0-9_-]`, 1 to [`MAX_ESCAPED`] bytes.
pub fn path_name(id: &str) -> String {
    if is_plain(id) {
        return id.to_string();
    }
    let mut out = String::with_capacity(id.len() + 8);
    out.push('_');
    for &b in id.as_bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("_{b:02X}"));
        }
        if out.len() > MAX_ESCAPED {
            break;
        }
    }
    if out.len() <= MAX_ESCAPED {
        return out;
    }
    let digest = Sha256::digest(id.as_bytes());
    let hex: String = digest.iter().take(20).map(|b| format!("{b:02x}")).collect();
    format!("__sha256-{hex}")
}

/// Whether `name` is a safe name (what [`path_name`] returns, or a legacy id stored before
/// names existed: `[A-Za-z0-9._~-]`, but never `.` or `..`). Checked by the cells on what the
/// broker sends them.
pub fn is_safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_ID_BYTES
        && name != "."
        && name != ".."
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn hostile() -> Vec<String> {
        let mut ids: Vec<String> = [
            ".",
            "..",
            "...",
            "wal",
            "a/b",
            "a_2Fb",
            "_a_2Fb",
            "/",
            "%2e%2e",
            "%2E%2E",
            "x.2",
            "x",
            "x_2E2",
            "_x_2E2",
            "-rf",
            "a b",
            "it's",
            "数据库-ü",
            "~",
            "_",
            "__",
            "__sha256-00",
            "3f2a6c1e-2b7d-4c39-9a0e-5d6f7a8b9c01",
            "UPPER-lower_9",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        ids.push("x".repeat(63));
        ids.push("x".repeat(64));
        ids.push("L.".to_string() + &"x".repeat(253));
        ids.push("é".repeat(127));
        ids.push(".".repeat(40));
        ids.push(".".repeat(41));
        ids
    }

    #[test]
    fn plain_ids_are_their_own_names() {
        for id in [
            "wal",
            "x",
            "3f2a6c1e-2b7d-4c39-9a0e-5d6f7a8b9c01",
            "UPPER-lower_9",
        ] {
            assert_eq!(path_name(id), id);
        }
        assert_eq!(path_name(&"x".repeat(63)), "x".repeat(63));
    }

    #[test]
    fn hostile_ids_get_safe_distinct_names() {
        let ids = hostile();
        let mut names = HashSet::new();
        for id in &ids {
            let n = path_name(id);
            assert!(
                !n.is_empty() && n.len() <= MAX_ESCAPED,
                "{id:?} -> {n:?} ({} bytes)",
                n.len()
            );
            assert!(
                n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "{id:?} -> {n:?}"
            );
            assert!(!n.starts_with('-'), "{id:?} -> {n:?}");
            assert!(is_safe_name(&n), "{id:?} -> {n:?}");
            // The name of a later incarnation, `<name>.<n>`, is nobody's first name.
            assert!(!n.contains('.'));
            assert!(names.insert(n.clone()), "{id:?} -> {n:?} collides");
            if !is_plain(id) {
                assert!(n.starts_with('_'), "{id:?} -> {n:?}");
            }
        }
        assert_eq!(path_name("."), "__2E");
        assert_eq!(path_name(".."), "__2E_2E");
        assert_eq!(path_name("a/b"), "_a_2Fb");
        assert_eq!(path_name("x.2"), "_x_2E2");
        assert_eq!(path_name("%2e%2e"), "__252e_252e");
        assert!(path_name(&"é".repeat(127)).starts_with("__sha256-"));
        assert_eq!(path_name(&".".repeat(39)).len(), 1 + 3 * 39);
        assert!(path_name(&".".repeat(40)).starts_with("__sha256-"));
    }

    #[test]
    fn ids_that_cannot_be_used_are_refused() {
        assert_eq!(
            check_id("", "instance_id"),
            Err(IdError::Empty("instance_id"))
        );
        assert_eq!(
            check_id(&"x".repeat(256), "instance_id"),
            Err(IdError::TooLong("instance_id"))
        );
        for bad in ["a\nb", "\0", "tab\there", "del\u{7f}", "c1\u{85}"] {
            assert_eq!(
                check_id(bad, "binding_id"),
                Err(IdError::Control("binding_id")),
                "{bad:?}"
            );
        }
        for ok in hostile() {
            check_id(&ok, "instance_id").unwrap();
        }
        assert_eq!(
            IdError::TooLong("instance_id").to_string(),
            "instance_id must be at most 255 bytes long"
        );
    }

    #[test]
    fn safe_names() {
        for ok in ["wal", "db1.2", "a~b", "__2E"] {
            assert!(is_safe_name(ok), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "-x", "a b", "é"] {
            assert!(!is_safe_name(bad), "{bad}");
        }
    }
}
