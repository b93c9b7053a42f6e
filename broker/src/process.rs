//! Every process the broker starts, signals or looks up, behind safe functions.
//!
//! The broker's processes (the cell agent's Patroni nodes, the router's HAProxy, the
//! children of `dev` and of the tests) must die with the process that started them, so that
//! killing an agent is like losing its machine and a killed test run leaves nothing behind.
//! That takes `PR_SET_PDEATHSIG` in the child between `fork` and `exec`, which only an
//! `unsafe` `pre_exec` hook can do; this module is the one place where that (and any other
//! `unsafe`) lives, so that its conditions are argued once.
//!
//! * [`die_with_parent`] arms a command with the death signal. The signal is tied to the
//!   *thread* that forks, not the process: it is for callers whose spawning thread lives as
//!   long as the process (a main thread, a current-thread runtime's).
//! * [`spawn_tied`] spawns from a dedicated thread that never exits, for callers on tokio's
//!   worker or blocking threads, which come and go.
//! * [`start_watchdog`] starts the cell agent's shell watchdog, which takes the PostgreSQL
//!   servers down (they run in sessions of their own, out of reach of the death signal)
//!   once the agent is gone.
//! * [`signal`], [`comm`], [`alive`]: signals and `/proc` lookups by PID.
//! * [`user_ids`], [`user_name`], [`effective_uid`], [`effective_user_is_root`]: OS users (through the C
//!   library's name service, so not only `/etc/passwd`).

use std::io;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

pub use nix::sys::signal::Signal;
use nix::unistd::{Pid, Uid, User};
use tokio::sync::oneshot;

/// Makes the process `cmd` starts get SIGKILL when its parent goes, and not start at all
/// if the parent is already gone by then (`PR_SET_PDEATHSIG`, then a check of the parent).
///
/// The death signal is tied to the spawning thread, not the process: spawn from a thread
/// that lives as long as the process (the main thread, or a current-thread runtime's), or
/// use [`spawn_tied`]. A child that cannot arm the signal does not start (the spawn fails).
pub fn die_with_parent(cmd: &mut Command) {
    let parent = Pid::this();
    // SAFETY: the hook runs in the child between fork and exec, where only async-signal-safe
    // functions may be called: it calls prctl(2) and getppid(2) (thin wrappers without
    // allocation or locks) and builds an io::Error from a raw errno (no allocation). It
    // runs after std's uid/gid change, which would otherwise clear the death signal.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
                .map_err(|e| io::Error::from_raw_os_error(e as i32))?;
            if nix::unistd::getppid() != parent {
                // The parent died before the signal was armed: do not start an orphan.
                return Err(io::Error::from_raw_os_error(nix::libc::ESRCH));
            }
            Ok(())
        });
    }
}

type SpawnRequest = (Command, oneshot::Sender<io::Result<Child>>);

/// Spawns `cmd` so that it gets SIGKILL when this process dies ([`die_with_parent`]), from
/// a thread that lives as long as the process: safe to call from any tokio task.
pub async fn spawn_tied(cmd: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<std::sync::mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let tx = SPAWNER
        .get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel::<SpawnRequest>();
            std::thread::Builder::new()
                .name("child-spawner".into())
                .spawn(move || {
                    for (mut cmd, reply) in rx {
                        die_with_parent(&mut cmd);
                        let _ = reply.send(cmd.spawn());
                    }
                })
                .expect("start the child-spawner thread");
            Mutex::new(tx)
        })
        .lock()
        .expect("spawner lock")
        .clone();
    let (reply_tx, reply_rx) = oneshot::channel();
    tx.send((cmd, reply_tx))
        .map_err(|_| io::Error::other("child-spawner thread is gone"))?;
    reply_rx
        .await
        .map_err(|_| io::Error::other("child-spawner thread is gone"))?
}

/// Sends `sig` to process `pid`; `false` when it does not exist (or is not ours to signal).
pub fn signal(pid: u32, sig: Signal) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // Never 0 or negative: those would signal process groups.
    pid > 0 && nix::sys::signal::kill(Pid::from_raw(pid), sig).is_ok()
}

/// The command name of process `pid` (`/proc/PID/comm`), when it exists.
pub fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Whether process `pid` exists and has not exited (a zombie, state Z, has).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Whether this process runs as root (effective user).
pub fn effective_user_is_root() -> bool {
    Uid::effective().is_root()
}

/// This process's effective user id.
pub fn effective_uid() -> u32 {
    Uid::effective().as_raw()
}

/// The name of OS user `uid`, when it exists.
pub fn user_name(uid: u32) -> io::Result<Option<String>> {
    Ok(User::from_uid(Uid::from_raw(uid))
        .map_err(io::Error::from)?
        .map(|u| u.name))
}

/// The user and primary group ids of OS user `name`, when it exists.
pub fn user_ids(name: &str) -> io::Result<Option<(u32, u32)>> {
    Ok(User::from_name(name)
        .map_err(io::Error::from)?
        .map(|u| (u.uid.as_raw(), u.gid.as_raw())))
}

/// The shell watchdog that takes a cell agent's PostgreSQL servers down when the agent dies.
fn watchdog_script(agent_pid: u32, data_root: &Path) -> io::Result<String> {
    let root = walarchive::shell::quote(&data_root.display().to_string())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?
        .into_owned();
    Ok(format!(
        r#"agent={agent_pid}
root={root}
while kill -0 "$agent" 2>/dev/null; do sleep 0.3; done
for d in "$root"/*/; do
    f="$d/patroni.pid"
    if [ -f "$f" ]; then
        p=$(cat "$f")
        [ "$(cat /proc/"$p"/comm 2>/dev/null)" = patroni ] && kill -9 "$p"
    fi
    f="$d/data/postmaster.pid"
    if [ -f "$f" ]; then
        p=$(head -n 1 "$f")
        if [ "$(cat /proc/"$p"/comm 2>/dev/null)" = postgres ]; then
            # All at once, like a lost machine: freeze the postmaster, kill its children
            # (the archiver, backends...), then the postmaster itself.
            kill -STOP "$p"
            for c in $(ps -o pid= --ppid "$p"); do kill -9 "$c"; done
            kill -9 "$p"
        fi
    fi
done
"#,
    ))
}

/// Starts the watchdog of the nodes under `data_root` (one directory per node, holding
/// `patroni.pid` and `data/postmaster.pid`) in a process group of its own, and records its
/// PID in `data_root/watchdog.pid`. Once this process is gone it SIGKILLs every node's
/// Patroni and PostgreSQL, all at once, like a lost machine.
///
/// A previous agent's watchdog may still be about to clean up: it is given up to 15 s to
/// finish first, so that it does not kill the servers this agent is going to start.
pub async fn start_watchdog(data_root: &Path) -> io::Result<()> {
    let pid_file = data_root.join("watchdog.pid");
    if let Ok(text) = std::fs::read_to_string(&pid_file) {
        if let Ok(pid) = text.trim().parse::<u32>() {
            let deadline = Instant::now() + Duration::from_secs(15);
            while comm(pid).as_deref() == Some("sh") && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let child = Command::new("sh")
        .arg("-c")
        .arg(watchdog_script(std::process::id(), data_root)?)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()?;
    std::fs::write(&pid_file, child.id().to_string()).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot write {}: {e}", pid_file.display()),
        )
    })?;
    // Not waited for: it outlives this process by design.
    std::mem::forget(child);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_and_processes() {
        let root = user_ids("root").unwrap().expect("root exists");
        assert_eq!(root, (0, 0));
        assert_eq!(user_name(0).unwrap().as_deref(), Some("root"));
        assert_eq!(user_ids("no-such-user-walarchive").unwrap(), None);
        let me = std::process::id();
        assert!(alive(me));
        assert!(comm(me).is_some());
        assert!(!signal(0, Signal::SIGTERM), "pid 0 is a process group");
        assert!(!signal(u32::MAX, Signal::SIGTERM));
    }

    /// A tied child starts, and a child whose death signal is armed runs normally.
    #[tokio::test]
    async fn tied_children_start() {
        let mut cmd = Command::new("true");
        cmd.stdin(Stdio::null());
        let mut child = spawn_tied(cmd).await.unwrap();
        assert!(child.wait().unwrap().success());
        let mut cmd = Command::new("true");
        die_with_parent(&mut cmd);
        assert!(cmd.status().unwrap().success());
    }
}
