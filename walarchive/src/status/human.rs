//! Human durations ("42s", "12m 5s", "3h 2m", "2d 4h"), for `status` and its problems.
//!
//! Shown as the two most significant units: `humantime::format_duration` prints every unit
//! ("10m", "2days 4h", "2s 500ms"), which would change the documented output. Parsing
//! durations (`--rpo`) uses `humantime`, in the CLI.

/// "42s", "12m 5s", "3h 2m", "2d 4h".
pub fn human_seconds(s: f64) -> String {
    let s = s.max(0.0);
    if s < 60.0 {
        return if s < 10.0 && s.fract() != 0.0 {
            format!("{s:.1}s")
        } else {
            format!("{}s", s.round() as u64)
        };
    }
    let s = s.round() as u64;
    let (d, h, m, sec) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else {
        format!("{m}m {sec}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_durations() {
        assert_eq!(human_seconds(0.0), "0s");
        assert_eq!(human_seconds(2.5), "2.5s");
        assert_eq!(human_seconds(42.0), "42s");
        assert_eq!(human_seconds(725.0), "12m 5s");
        assert_eq!(human_seconds(3.0 * 3600.0 + 120.0), "3h 2m");
        assert_eq!(human_seconds(2.0 * 86400.0 + 4.0 * 3600.0), "2d 4h");
    }
}
