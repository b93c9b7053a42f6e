//! Starting the object-store servers the tests share: finding the program, a watchdog that
//! kills the server once the test process is gone, and waiting until it answers.

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::*;
use crate::{tmp::path_str, wait::tail};

/// Finds `name` on PATH or in `$CARGO_HOME/bin` / `~/.cargo/bin`.
pub(crate) fn find_program(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(h) = std::env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(h).join("bin"));
    }
    if let Some(h) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(h).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// A TCP echo server on 127.0.0.1 (a thread per connection, for the rest of the process):
/// its port. What the proxy's tests forward to.
pub fn echo_server() -> u16 {
    let echo = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = echo.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in echo.incoming().flatten() {
            std::thread::spawn(move || {
                let mut rx = conn.try_clone().unwrap();
                let mut tx = conn;
                let _ = std::io::copy(&mut rx, &mut tx);
            });
        }
    });
    port
}

/// Spawns the watchdog shell `script` of server `what` (`sh -c`, in its own process group,
/// no stdio): it starts the server and kills it once this test process is gone.
pub fn spawn_watchdog(what: &str, script: &str) -> Child {
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn the {what} watchdog: {e}"))
}

/// Polls `ready` every `poll` until it gives the server that `watchdog` started: `Ok` with
/// it (the watchdog is never waited for; it outlives us). `Err` with the server's `logs`
/// when the watchdog exits early (the caller retries on other ports); a panic with them
/// when the server is not ready within `timeout`.
pub fn await_ready<T>(
    what: &str,
    mut watchdog: Child,
    timeout: Duration,
    poll: Duration,
    logs: impl Fn() -> String,
    mut ready: impl FnMut() -> Option<T>,
) -> Result<T, String> {
    let started = Instant::now();
    loop {
        if let Ok(Some(status)) = watchdog.try_wait() {
            eprintln!("{what} exited early ({status}); retrying on other ports");
            return Err(logs());
        }
        if let Some(server) = ready() {
            drop(watchdog);
            eprintln!("{what} ready in {:.1} s", started.elapsed().as_secs_f64());
            return Ok(server);
        }
        if started.elapsed() > timeout {
            let _ = watchdog.kill();
            panic!(
                "{what} did not become ready within {} s\n{}",
                timeout.as_secs(),
                logs()
            );
        }
        std::thread::sleep(poll);
    }
}

/// Starts `program args` (with `{port}` in args replaced by a free port) in
/// the background behind a watchdog that kills it once this test process is
/// gone; waits until it answers HTTP. Retries on another port if it exits
/// early. Returns the port.
pub(crate) fn start_server(what: &str, program: &Path, args: &[String], dir: &Path) -> u16 {
    let pid = std::process::id();
    let log = dir.join("server.log");
    let mut last_log = String::new();
    for _attempt in 0..3 {
        let port = free_port();
        let args: Vec<String> = args
            .iter()
            .map(|a| a.replace("{port}", &port.to_string()))
            .collect();
        let script = format!(
            "\"$0\" \"$@\" >{log} 2>&1 </dev/null & s=$!\n\
             while kill -0 {pid} 2>/dev/null; do\n\
               if ! kill -0 $s 2>/dev/null; then wait $s; exit $?; fi\n\
               sleep 0.5\n\
             done\n\
             kill $s 2>/dev/null; sleep 1; kill -9 $s 2>/dev/null; exit 0",
            log = sh_quote(path_str(&log)),
        );
        let mut child: Child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg(program)
            .args(&args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                last_log = fs::read_to_string(&log).unwrap_or_default();
                eprintln!("{what} exited early ({status}) on port {port}; retrying");
                break;
            }
            if http_request(port, "GET", "/", &[], b"").is_ok() {
                // The watchdog shell is never waited for; it outlives us.
                drop(child);
                return port;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                panic!(
                    "{what} did not answer HTTP on 127.0.0.1:{port} within 60 s\n--- log ---\n{}",
                    tail(&fs::read_to_string(&log).unwrap_or_default(), 40)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    panic!(
        "{what} failed to start 3 times\n--- log ---\n{}",
        tail(&last_log, 40)
    );
}
