//! Ports and polling.

use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher};
use std::net::{Ipv4Addr, TcpListener};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A TCP port on 127.0.0.1 that is free right now and was not handed out
/// before in this process. Ports come from 20000..32000, below Linux's
/// ephemeral range (32768..), so client connections' local ports never
/// collide with a port handed out here but not yet bound by its server.
pub fn free_port() -> u16 {
    const LO: u32 = 20000;
    const SPAN: u32 = 12000;
    static STATE: OnceLock<Mutex<(u32, HashSet<u16>)>> = OnceLock::new();
    let state = STATE.get_or_init(|| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        Mutex::new(((h.finish() % SPAN as u64) as u32, HashSet::new()))
    });
    let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..SPAN {
        st.0 = (st.0 + 1) % SPAN;
        let port = (LO + st.0) as u16;
        if st.1.contains(&port) {
            continue;
        }
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            st.1.insert(port);
            return port;
        }
    }
    panic!("no free TCP port in {LO}..{}", LO + SPAN);
}

/// Calls `f` every 100 ms until it returns true; false after `timeout`.
pub fn poll_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Calls `f` every 100 ms until it returns true; panics with "timed out
/// waiting for {what}" after `timeout`.
#[track_caller]
pub fn wait_until(what: &str, timeout: Duration, f: impl FnMut() -> bool) {
    if !poll_until(timeout, f) {
        panic!("timed out after {timeout:?} waiting for {what}");
    }
}

pub(crate) fn tail(text: &str, lines: usize) -> String {
    let v: Vec<&str> = text.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}
