//! Where the daemon listens, and who may be believed there.
//!
//! A process answering in the daemon's place could acknowledge WAL that was never archived,
//! so the socket's directory and owner are checked before any client talks to it. The path
//! must also always fit in a socket address (`sun_path`): a data directory with a long path
//! must not lose the daemon (wal-push used to warn "socket path too long" on every call).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The daemon's socket, inside `pg_wal` (when that path fits in a socket address; see
/// [`socket_path`]).
pub const SOCKET_NAME: &str = "walarchive-daemon.sock";
/// Longest socket path the platform takes (`sun_path` is 108 bytes on Linux, 104 on BSDs).
const MAX_SOCKET_PATH: usize = 103;
/// Where the sockets of data directories whose path is too long for one go: a directory of
/// the user's own, created 0700, named by the effective user ID (`/tmp/walarchive.UID`).
const RUNTIME_DIR_PREFIX: &str = "/tmp/walarchive.";

/// The daemon's socket for `pg_wal`: `pg_wal/walarchive-daemon.sock` (of the directory's
/// real path, so that a daemon and its clients agree whatever symlinks they came through)
/// when that fits in a socket address, else `/tmp/walarchive.UID/HASH.sock`, HASH naming the
/// directory's real path. Either way the path always fits, so that a long data directory
/// path never stops the daemon from being used.
///
/// Who may connect matters: a process answering in the daemon's place could acknowledge
/// WAL that was never archived. `pg_wal` is inside the data directory, which PostgreSQL
/// keeps private to its owner; the other directory is checked ([`private_dir`]) by the
/// daemon, which creates it, and by every client, which otherwise does not connect. The
/// socket itself is 0600 and a client connects only to one owned by its own user.
pub fn socket_path(pg_wal: &Path) -> std::io::Result<PathBuf> {
    let real = fs::canonicalize(pg_wal)?;
    let beside = real.join(SOCKET_NAME);
    if beside.as_os_str().len() <= MAX_SOCKET_PATH {
        return Ok(beside);
    }
    use std::os::unix::ffi::OsStrExt;
    let digest = crate::format::Digest::sha256(real.as_os_str().as_bytes()).to_string();
    Ok(runtime_dir().join(format!("{}.sock", &digest[..32])))
}

/// `/tmp/walarchive.UID` for this process's effective user.
fn runtime_dir() -> PathBuf {
    PathBuf::from(format!("{RUNTIME_DIR_PREFIX}{}", effective_uid()))
}

fn effective_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Checks that the directory holding `socket` may be trusted with it: `pg_wal` always (see
/// [`socket_path`]); the runtime directory only when it is a directory (not a symlink),
/// owned by this user, and reachable by no one else. With `create`, the runtime directory
/// is made (0700) when missing.
pub fn private_dir(socket: &Path, create: bool) -> std::io::Result<()> {
    match socket.parent() {
        Some(dir) if dir == runtime_dir() => check_private_dir(dir, create),
        _ => Ok(()),
    }
}

/// [`private_dir`]'s checks of `dir`.
fn check_private_dir(dir: &Path, create: bool) -> std::io::Result<()> {
    if create {
        use std::os::unix::fs::DirBuilderExt;
        match fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    let m = fs::symlink_metadata(dir)?;
    if !m.is_dir() || m.uid() != effective_uid() || m.mode() & 0o077 != 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "{} is not a directory private to this user (owner {}, mode {:04o}): not using \
                 it for the daemon's socket (remove it)",
                dir.display(),
                m.uid(),
                m.mode() & 0o7777
            ),
        ));
    }
    Ok(())
}

/// Refuses a socket that another user owns: only a daemon of this very user may answer.
pub(super) fn ours(socket: &Path) -> std::io::Result<()> {
    let owner = fs::symlink_metadata(socket)?.uid();
    if owner != effective_uid() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "{} belongs to user {owner}, not to this one: not asking it",
                socket.display()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn socket_paths() {
        let d = tempfile::tempdir().unwrap();
        let wal = d.path().join("pg_wal");
        fs::create_dir_all(wal.join("archive_status")).unwrap();
        let real = fs::canonicalize(&wal).unwrap();
        assert_eq!(socket_path(&wal).unwrap(), real.join(SOCKET_NAME));
        private_dir(&socket_path(&wal).unwrap(), false).unwrap();
        // Through a symlink: the same socket.
        std::os::unix::fs::symlink(d.path(), d.path().with_extension("link")).unwrap();
        let linked = d.path().with_extension("link").join("pg_wal");
        assert_eq!(socket_path(&linked).unwrap(), real.join(SOCKET_NAME));
        fs::remove_file(d.path().with_extension("link")).unwrap();

        // Too long a path for a socket beside it: one in the runtime directory instead,
        // always short enough, named after the directory's real path.
        let mut long = d.path().to_path_buf();
        for _ in 0..4 {
            long.push("a-rather-long-directory-name-of-thirty-nine");
        }
        let long_wal = long.join("pg_wal");
        fs::create_dir_all(&long_wal).unwrap();
        let socket = socket_path(&long_wal).unwrap();
        assert!(
            socket.as_os_str().len() <= MAX_SOCKET_PATH,
            "{}",
            socket.display()
        );
        assert_eq!(socket.parent().unwrap(), runtime_dir());
        assert_ne!(socket, socket_path(&wal).unwrap());
        assert_eq!(socket, socket_path(&long_wal.join(".")).unwrap());
        assert!(socket_path(&d.path().join("missing/pg_wal")).is_err());
    }

    #[test]
    fn the_runtime_directory_must_be_private() {
        // A directory like the runtime one, checked by the same rules: a name under the
        // prefix unique to this test, so that nothing real is touched.
        let dir = PathBuf::from(format!(
            "{RUNTIME_DIR_PREFIX}{}-test-{}",
            effective_uid(),
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        assert_eq!(
            check_private_dir(&dir, false).unwrap_err().kind(),
            std::io::ErrorKind::NotFound
        );
        check_private_dir(&dir, true).unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        check_private_dir(&dir, false).unwrap();
        // Reachable by others: refused, created or not.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        for create in [false, true] {
            let e = check_private_dir(&dir, create).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied, "{e}");
            assert!(e.to_string().contains("0755"), "{e}");
        }
        fs::remove_dir(&dir).unwrap();
        // A symlink to a private directory: refused.
        let target = tempfile::tempdir().unwrap();
        fs::set_permissions(target.path(), fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::symlink(target.path(), &dir).unwrap();
        assert!(check_private_dir(&dir, true).is_err());
        fs::remove_file(&dir).unwrap();
        // Someone else's (when this test can make one: as root).
        if effective_uid() == 0 {
            fs::create_dir(&dir).unwrap();
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
            std::os::unix::fs::chown(&dir, Some(65534), None).unwrap();
            let e = check_private_dir(&dir, true).unwrap_err();
            assert!(e.to_string().contains("owner 65534"), "{e}");
            fs::remove_dir(&dir).unwrap();
        }
    }
}
