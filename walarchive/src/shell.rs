//! Quoting a word for `/bin/sh`: the one shell-quoting function of the workspace.
//!
//! walarchive writes shell commands that other programs run through `sh -c`: PostgreSQL's
//! `archive_command` and `restore_command` (the CLI's backup-fetch, the broker's Patroni
//! configuration), the broker's scripts and watchdogs, the test harness's watchdogs. A path or
//! a repository URL put into one must reach the program as one word, whatever it holds. The
//! quoting itself is the `shlex` crate's (POSIX `sh`, kept well away from the interactive-shell
//! pitfalls); this module fixes the one policy on top of it, so that every caller quotes alike.

use std::borrow::Cow;

/// The word holds a NUL byte: no shell, argument vector or file name can carry one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cannot quote a word holding a NUL byte for the shell")]
pub struct QuoteError;

/// `word` as one word of a `/bin/sh` command line: unchanged when it needs no quoting
/// (letters, digits and `+-./:@]_`), quoted otherwise (the empty word is `''`).
///
/// The shell reads the result back as exactly `word`. Note for `archive_command` and
/// `restore_command`: PostgreSQL replaces `%f`, `%p`, `%r` and `%%` before the shell runs, inside
/// quotes too.
pub fn quote(word: &str) -> Result<Cow<'_, str>, QuoteError> {
    shlex::try_quote(word).map_err(|_| QuoteError)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// What `/bin/sh` makes of `printf %s <quoted>`.
    fn through_sh(word: &str) -> String {
        let out = Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("printf %s {}", quote(word).unwrap()))
            .output()
            .expect("run /bin/sh");
        assert!(out.status.success(), "sh failed for {word:?}: {out:?}");
        String::from_utf8(out.stdout).expect("UTF-8")
    }

    #[test]
    fn plain_words_stay_as_they_are() {
        for w in ["/usr/bin/walarchive", "s3://bucket/prefix", "a-b_c.d:e@f+g"] {
            assert_eq!(quote(w).unwrap(), w);
        }
    }

    #[test]
    fn hostile_words_read_back_exactly() {
        for w in [
            "",
            " ",
            "two words",
            "it's",
            "'",
            "''",
            "\"",
            "a\"b'c",
            "$HOME",
            "${x:-y}",
            "`id`",
            "$(id)",
            "back\\slash",
            "\\",
            "line\nbreak",
            "\r\n",
            "tab\there",
            "*?[a]~#",
            "a;b|c&d>e<f",
            "{a,b}",
            "!^%=,",
            "^start",
            "-n",
            "ünïcødé 文字",
            "s3://bucket/p?k=v&x='y'",
        ] {
            let q = quote(w).unwrap();
            assert_eq!(through_sh(w), w, "{w:?} quoted as {q}");
        }
    }

    #[test]
    fn a_nul_byte_is_refused() {
        assert_eq!(quote("a\0b"), Err(QuoteError));
        assert_eq!(
            QuoteError.to_string(),
            "cannot quote a word holding a NUL byte for the shell"
        );
    }
}
