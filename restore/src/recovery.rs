//! Recovery targets: choosing the backup and writing PostgreSQL's recovery settings.
//!
//! Two mistakes make a point-in-time restore silently wrong: starting from a backup that
//! ends after the target (PostgreSQL cannot stop before the backup's end), and aiming past
//! the end of the archive (recovery ends early and promotes short of the target). Both are
//! refused here, before a single byte is downloaded.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use walarchive::manifest::{parse_time, Manifest};
use walarchive::Lsn;

use crate::FetchError;

/// What to recover to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A moment (PostgreSQL's `recovery_target_time`), as given and as parsed.
    Time(String, DateTime<Utc>),
    /// A WAL position.
    Lsn(Lsn),
    /// A transaction ID.
    Xid(u64),
    /// A named restore point (`pg_create_restore_point`).
    Name(String),
    /// The end of the backup (the earliest consistent point).
    Immediate,
}

/// Every recovery setting backup-fetch can write.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// The target, if any (without one, recovery replays all archived WAL).
    pub target: Option<Target>,
    /// `recovery_target_timeline`: `latest`, `current` or a number.
    pub timeline: Option<String>,
    /// `recovery_target_action`: `promote`, `pause` or `shutdown`.
    pub action: Option<String>,
    /// Stop just before the target instead of just after it.
    pub exclusive: bool,
    /// Write standby.signal instead of recovery.signal.
    pub standby: bool,
}

/// Parses a time as PostgreSQL would accept it for `recovery_target_time`, requiring an
/// explicit time zone (without one, PostgreSQL would use the server's zone and a choice
/// made here could disagree with it).
pub fn parse_target_time(s: &str) -> Result<DateTime<Utc>, String> {
    let t = s.trim();
    let normalized = t.replacen(' ', "T", 1);
    let with_minutes = |z: &str| {
        // "+00" or "-05" -> "+00:00"
        let bytes = z.as_bytes();
        if z.len() >= 3 && (bytes[z.len() - 3] == b'+' || bytes[z.len() - 3] == b'-') {
            format!("{z}:00")
        } else {
            z.to_string()
        }
    };
    let candidates = [
        normalized.clone(),
        with_minutes(&normalized),
        normalized.replace(" UTC", "Z").replace("UTC", "Z"),
    ];
    for c in candidates {
        let parsed = DateTime::parse_from_rfc3339(&c)
            .or_else(|_| DateTime::parse_from_str(&c, "%Y-%m-%dT%H:%M:%S%.f%z"));
        if let Ok(d) = parsed {
            if d.timestamp_subsec_nanos() % 1000 != 0 {
                return Err(format!(
                    "cannot use the target time {s:?}: PostgreSQL keeps times to the microsecond; give at most 6 digits after the seconds"
                ));
            }
            return Ok(d.with_timezone(&Utc));
        }
    }
    Err(format!(
        "cannot read the target time {s:?}: give a date, time and UTC offset, e.g. 2026-11-22 05:30:00+00"
    ))
}

/// A target time in the form PostgreSQL's `recovery_target_time` reads, in UTC to the
/// microsecond (`2026-12-07 10:15:00.000000+00`).
pub fn postgres_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string()
}

/// Whether backup `m` can serve `target`: it must end before the target.
pub fn ends_before(m: &Manifest, target: &Target) -> bool {
    match target {
        Target::Time(_, t) => parse_time(&m.stop_time).is_some_and(|stop| stop <= *t),
        Target::Lsn(l) => m.stop_lsn <= *l,
        Target::Xid(x) => m.stop_next_xid <= *x,
        Target::Name(_) | Target::Immediate => true,
    }
}

/// Picks the backup for `wanted` (a name or `LATEST`) among complete manifests (oldest first).
pub fn choose<'a>(
    manifests: &'a [Manifest],
    wanted: &str,
    recovery: &Recovery,
) -> Result<&'a Manifest, FetchError> {
    let timeline_ok = |m: &Manifest| match recovery.timeline.as_deref().map(str::parse::<u32>) {
        Some(Ok(n)) => m.timeline <= n,
        _ => true,
    };
    if !wanted.eq_ignore_ascii_case("LATEST") {
        let m = manifests
            .iter()
            .find(|m| m.name == wanted)
            .ok_or_else(|| FetchError::NoBackup(format!("no complete backup named {wanted}")))?;
        if let Some(t) = &recovery.target {
            if !ends_before(m, t) {
                return Err(FetchError::BadTarget(format!(
                    "backup {} ends at {} ({}), after the recovery target {}: PostgreSQL cannot stop before a backup's end; choose an older backup or LATEST",
                    m.name,
                    m.stop_lsn,
                    m.stop_time,
                    describe(t)
                )));
            }
        }
        return Ok(m);
    }
    // Manifests are oldest first: the newest usable one is the last match.
    let chosen = manifests
        .iter()
        .rev()
        .find(|m| timeline_ok(m) && recovery.target.as_ref().is_none_or(|t| ends_before(m, t)));
    chosen.ok_or_else(|| match &recovery.target {
        Some(t) if !manifests.is_empty() => FetchError::BadTarget(format!(
            "no complete backup ends before the recovery target {}; the oldest ends at {} ({})",
            describe(t),
            manifests[0].stop_lsn,
            manifests[0].stop_time
        )),
        _ => FetchError::NoBackup("the repository has no complete backup".into()),
    })
}

/// The target as a user wrote it.
pub fn describe(t: &Target) -> String {
    match t {
        Target::Time(s, _) => format!("time {s}"),
        Target::Lsn(l) => format!("LSN {l}"),
        Target::Xid(x) => format!("transaction {x}"),
        Target::Name(n) => format!("restore point {n:?}"),
        Target::Immediate => "immediate".into(),
    }
}

/// `v` as a quoted value of postgresql.auto.conf, read back exactly by PostgreSQL's
/// configuration lexer (guc-file.l; `DeescapeQuotedString`, `GUC_scanstr` before version 16):
/// inside quotes `''` is a quote and `\` starts a C-like escape (`\n`, `\t`, octal, any other
/// character stands for itself), and a quoted value cannot span lines. So `'` and `\` are
/// doubled, as ALTER SYSTEM writes them, and line breaks are written as `\n` and `\r`: a
/// restore_command or a path holding a backslash reaches PostgreSQL unchanged.
fn quote(v: &str) -> String {
    let mut out = String::with_capacity(v.len() + 2);
    out.push('\'');
    for c in v.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// The lines backup-fetch appends to postgresql.auto.conf.
pub fn settings(backup: &str, restore_command: &str, r: &Recovery) -> String {
    let mut out = format!("\n# Added by walarchive backup-fetch (backup {backup})\n");
    let mut set = |k: &str, v: &str| {
        let _ = writeln!(out, "{k} = {}", quote(v));
    };
    set("restore_command", restore_command);
    match &r.target {
        // As PostgreSQL reads it, whatever form it was given in (PostgreSQL 15 refuses an
        // RFC 3339 `T…Z` time that it would take with a space and `+00`).
        Some(Target::Time(_, t)) => set("recovery_target_time", &postgres_time(*t)),
        Some(Target::Lsn(l)) => set("recovery_target_lsn", &l.to_string()),
        Some(Target::Xid(x)) => set("recovery_target_xid", &x.to_string()),
        Some(Target::Name(n)) => set("recovery_target_name", n),
        Some(Target::Immediate) => set("recovery_target", "immediate"),
        None => {}
    }
    if r.exclusive && r.target.is_some() {
        set("recovery_target_inclusive", "false");
    }
    if let Some(t) = &r.timeline {
        set("recovery_target_timeline", t);
    }
    if let Some(a) = &r.action {
        set("recovery_target_action", a);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(name: &str, stop_lsn: &str, stop_time: &str, xid: u64, tli: u32) -> Manifest {
        Manifest {
            start_time: stop_time.into(),
            stop_time: stop_time.into(),
            stop_next_xid: xid,
            ..Manifest::for_tests(name, tli, Lsn(0), stop_lsn.parse().unwrap())
        }
    }

    #[test]
    fn parses_times() {
        let want = parse_time("2026-11-22T05:30:00Z").unwrap();
        for s in [
            "2026-11-22 05:30:00+00",
            "2026-11-22 05:30:00+00:00",
            "2026-11-22T05:30:00Z",
            "2026-11-22 07:30:00+02",
            "2026-11-22 05:30:00 UTC",
        ] {
            assert_eq!(parse_target_time(s).unwrap(), want, "{s}");
        }
        let frac = parse_target_time("2026-11-22 05:30:00.123456+00").unwrap();
        assert_eq!(frac.timestamp_subsec_micros(), 123456);
        assert!(parse_target_time("2026-11-22 05:30:00").is_err());
        assert!(parse_target_time("yesterday").is_err());
    }

    #[test]
    fn chooses_the_newest_backup_before_the_target() {
        let ms = vec![
            manifest("a", "0/3000000", "2026-11-22T01:00:00Z", 100, 1),
            manifest("b", "0/6000000", "2026-11-22T02:00:00Z", 200, 1),
            manifest("c", "0/9000000", "2026-11-22T03:00:00Z", 300, 2),
        ];
        let r = |t: Option<Target>| Recovery {
            target: t,
            ..Default::default()
        };
        assert_eq!(choose(&ms, "LATEST", &r(None)).unwrap().name, "c");
        let t = |s: &str| Target::Time(s.into(), parse_target_time(s).unwrap());
        assert_eq!(
            choose(&ms, "LATEST", &r(Some(t("2026-11-22 02:30:00+00"))))
                .unwrap()
                .name,
            "b"
        );
        assert_eq!(
            choose(
                &ms,
                "latest",
                &r(Some(Target::Lsn("0/6000000".parse().unwrap())))
            )
            .unwrap()
            .name,
            "b"
        );
        assert_eq!(
            choose(&ms, "LATEST", &r(Some(Target::Xid(150))))
                .unwrap()
                .name,
            "a"
        );
        assert!(matches!(
            choose(&ms, "LATEST", &r(Some(t("2026-11-22 00:30:00+00")))),
            Err(FetchError::BadTarget(_))
        ));
        assert!(matches!(
            choose(
                &ms,
                "c",
                &r(Some(Target::Lsn("0/4000000".parse().unwrap())))
            ),
            Err(FetchError::BadTarget(_))
        ));
        assert!(matches!(
            choose(&ms, "zzz", &r(None)),
            Err(FetchError::NoBackup(_))
        ));
        let old_tl = Recovery {
            timeline: Some("1".into()),
            ..Default::default()
        };
        assert_eq!(choose(&ms, "LATEST", &old_tl).unwrap().name, "b");
    }

    #[test]
    fn writes_quoted_settings() {
        let r = Recovery {
            target: Some(Target::Name("it's".into())),
            timeline: Some("latest".into()),
            action: Some("promote".into()),
            exclusive: true,
            standby: false,
        };
        let s = settings(
            "b1",
            "/usr/bin/walarchive --repo s3://b/p wal-fetch %f %p",
            &r,
        );
        assert!(
            s.contains("restore_command = '/usr/bin/walarchive --repo s3://b/p wal-fetch %f %p'\n")
        );
        assert!(s.contains("recovery_target_name = 'it''s'\n"));
        // A time is written as PostgreSQL reads it, whatever form it was given in.
        for given in [
            "2026-12-07T10:15:00.5Z",
            "2026-12-07 10:15:00.500000+00",
            "2026-12-07T11:15:00.5+01:00",
        ] {
            let r = Recovery {
                target: Some(Target::Time(
                    given.into(),
                    parse_target_time(given).unwrap(),
                )),
                ..Default::default()
            };
            let s = settings("b1", "true", &r);
            assert!(
                s.contains("recovery_target_time = '2026-12-07 10:15:00.500000+00'\n"),
                "{given}: {s}"
            );
        }
        assert!(parse_target_time("2026-12-07T10:15:00.0000005Z").is_err());
        assert!(s.contains("recovery_target_inclusive = 'false'\n"));
        assert!(s.contains("recovery_target_timeline = 'latest'\n"));
        assert!(s.contains("recovery_target_action = 'promote'\n"));
    }

    /// The inverse of PostgreSQL's `DeescapeQuotedString` (guc-file.l), for the tests: what
    /// PostgreSQL reads from a quoted value.
    fn pg_unquote(q: &str) -> String {
        let inner = q
            .strip_prefix('\'')
            .and_then(|q| q.strip_suffix('\''))
            .unwrap();
        let mut out = String::new();
        let mut it = inner.chars().peekable();
        while let Some(c) = it.next() {
            match c {
                '\\' => match it.next().unwrap() {
                    'b' => out.push('\u{8}'),
                    'f' => out.push('\u{c}'),
                    'n' => out.push('\n'),
                    'r' => out.push('\r'),
                    't' => out.push('\t'),
                    d @ '0'..='7' => {
                        let mut n = d.to_digit(8).unwrap();
                        for _ in 0..2 {
                            match it.peek().and_then(|c| c.to_digit(8)) {
                                Some(x) => {
                                    n = n * 8 + x;
                                    it.next();
                                }
                                None => break,
                            }
                        }
                        out.push(char::from_u32(n).unwrap());
                    }
                    other => out.push(other),
                },
                '\'' => {
                    assert_eq!(it.next(), Some('\''), "a lone quote ends the value: {q}");
                    out.push('\'');
                }
                '\n' | '\r' => panic!("a quoted value cannot span lines: {q:?}"),
                c => out.push(c),
            }
        }
        out
    }

    #[test]
    fn quoting_survives_postgresql_escapes() {
        for v in [
            r"C:\wal\%f",
            r"/srv/a\nb/%f",
            r"cmd --x '\\host\share' %p",
            r"\101\t\'",
            "it's",
            "",
            "a\nb\rc\td",
            r"trailing\",
        ] {
            let q = quote(v);
            assert_eq!(pg_unquote(&q), v, "{q}");
            assert!(!q.contains('\n') && !q.contains('\r'), "{q:?}");
        }
        assert_eq!(quote(r"a\b'c"), r"'a\\b''c'");
        let s = settings(
            "b1",
            r"walarchive wal-fetch --repo file:///srv/a\b %f %p",
            &Recovery::default(),
        );
        assert!(
            s.contains(r"restore_command = 'walarchive wal-fetch --repo file:///srv/a\\b %f %p'"),
            "{s}"
        );
    }
}
