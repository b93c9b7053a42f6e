//! What the benches say about the machine they ran on (the first line of each report).
//! Every function answers `?` (or 0) rather than failing: a report is still worth having
//! without it.

use std::fs;
use std::process::Command;

/// The trimmed stdout of `program args`, or `?` when it cannot be run or fails.
pub fn command_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "?".into())
}

/// The current UTC time to the minute, `YYYY-MM-DD HH:MM` (from `date -u`).
pub fn utc_now() -> String {
    command_line("date", &["-u", "+%Y-%m-%d %H:%M"])
}

/// The CPU's model name from `/proc/cpuinfo`.
pub fn cpu_model() -> String {
    fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "?".into())
}

/// How many CPUs this process may use (what `nproc` says; 0 when unknown).
pub fn nproc() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0)
}

/// Total memory from `/proc/meminfo`, as `N GiB RAM`.
pub fn mem_total() -> String {
    fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kib| format!("{:.0} GiB RAM", kib as f64 / 1024.0 / 1024.0))
        .unwrap_or_else(|| "? RAM".into())
}
