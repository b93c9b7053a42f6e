//! The resident archiver: `walarchive daemon`, and the thin client `wal-push` becomes when
//! one runs.
//!
//! # Why
//!
//! PostgreSQL calls `archive_command` once per segment and waits for it. Even with
//! [pushing ahead](crate::pushahead), every call is a new process that starts a runtime,
//! opens the store, re-reads and re-hashes its segment to trust a marker, and asks the
//! store whether the object is there: tens of milliseconds per segment, paid one after
//! the other by PostgreSQL's single archiver. And a call only pushes ahead what is
//! `.ready` when it starts, so the pipeline drains at every batch boundary.
//!
//! A resident process removes both costs. It watches `pg_wal/archive_status` and pushes
//! every `.ready` segment as soon as it appears, `parallel` segments compressing at once
//! and more uploads in flight (uploads wait on the network, not on a core); PostgreSQL's
//! call for a segment then only asks the daemon over a Unix socket in `pg_wal`, and is
//! answered as soon as that segment is durably stored, usually at once.
//!
//! # Same semantics as without it
//!
//! * **A segment is acknowledged only once durably stored**, exactly as by `wal-push`
//!   alone: the daemon answers "archived" only after the put returned (or the repository
//!   already held identical content), and every check `wal-push` makes (name, size, page
//!   header, the repository's cluster) is made by the daemon before it uploads.
//! * **The answer is about the file PostgreSQL names now.** The daemon records, for each
//!   segment it stored, the file's identity and change times (device, inode, size,
//!   modification and status-change time, the same on both sides of the read). It answers
//!   from that record only when the file still has them; a file rewritten, replaced or
//!   renamed over since has another inode or change time, and is pushed again (which
//!   stores it, finds it identical, or refuses it as a conflict). This replaces the
//!   re-hash that a marker check costs without a daemon: the daemon read the file itself.
//! * **Errors reach PostgreSQL as they would without the daemon**: the reply carries the
//!   error's class and message, the client prints the message and exits with the same
//!   status `wal-push` would.
//! * **The daemon is only ever a shortcut.** A client that cannot reach it (not running,
//!   killed mid-request, a socket it does not trust, a reply it does not understand) pushes the
//!   segment itself, with push-ahead, as if there were no daemon. The daemon holds the
//!   push-ahead lock for its whole life, so such a client waits for the daemon's marker
//!   instead of uploading the same segments alongside it, and the daemon writes the same
//!   markers push-ahead does.
//! * **Nothing is dropped**, whatever the pressure: a segment the daemon could not push is
//!   retried later and pushed by PostgreSQL's own call meanwhile.
//!
//! # Lifetime
//!
//! Started by hand (`walarchive daemon --pgdata DIR`, e.g. as a service) it runs until
//! stopped. Started by `wal-push` itself (`--daemon`, or `daemon = true` in the
//! configuration file), it runs in a process group of its own, stops once its data
//! directory's `postmaster.pid` is gone, and after a minute with nothing to push and no
//! request, so that no process outlives the server it archives for; the next `wal-push`
//! starts it again. Memory stays bounded: at most `uploads` segments are held at a time,
//! each as its compressed object.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::future::LocalBoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Notify, Semaphore};

use crate::control::ClusterIdentity;
use crate::metrics;
use crate::push::{self, PushReport};
use crate::pushahead::{self, Marker, LOCK_NAME, MARKER_DIR};
use crate::repo::{Descriptor, PutOutcome, Repository};
use crate::wal::SegmentName;
use crate::{Error, ErrorKind};

mod socket;
use socket::ours;
pub use socket::{private_dir, socket_path, SOCKET_NAME};

/// How long a client waits for an answer before pushing the segment itself.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(600);
/// Idle time after which a daemon started by `wal-push` stops.
pub const SPAWNED_IDLE_EXIT: Duration = Duration::from_secs(60);

/// How the daemon works.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// Segments read, checked and compressed at once (cores).
    pub parallel: usize,
    /// Segments in flight at once, compressing or uploading (bounds memory).
    pub uploads: usize,
    /// Stop after this long with nothing to push and no request.
    pub idle_exit: Option<Duration>,
    /// Stop once the data directory's `postmaster.pid` is gone.
    pub follow_postmaster: bool,
    /// How often `archive_status` is looked at while segments are being pushed. Idle, the
    /// interval doubles up to [`IDLE_POLL_MAX`]; a `wal-push` request (PostgreSQL's archiver
    /// starting on a segment) has it looked at at once.
    pub poll: Duration,
    /// How long a segment whose push failed waits before the daemon tries it again (a
    /// request from PostgreSQL retries it at once).
    pub retry_after: Duration,
    /// A digest of the settings that decide where and how segments are archived (repository,
    /// codec, credentials): a client whose settings differ is not served (see [`ask`]).
    pub key: String,
    /// The cluster of the data directory served (its pg_control): what every file pushed is
    /// checked against, as `wal-push` checks it.
    pub identity: Option<ClusterIdentity>,
}

impl Options {
    /// `parallel` segments compressing and up to 2 × `parallel` + 2 in flight.
    pub fn with_parallel(parallel: usize) -> Options {
        let parallel = parallel.max(1);
        Options {
            parallel,
            uploads: parallel * 2 + 2,
            idle_exit: None,
            follow_postmaster: false,
            poll: Duration::from_millis(20),
            retry_after: Duration::from_secs(5),
            key: String::new(),
            identity: None,
        }
    }
}

/// The longest interval between two looks at `archive_status` of an idle daemon. Looking
/// every 20 ms whatever happens cost an idle daemon a noticeable share of a core (figures in
/// docs/benchmarks.md, "The resident daemon"); a segment PostgreSQL finishes meanwhile loses
/// nothing by it, since the archiver's own `wal-push` for it both pushes it and has the
/// directory looked at again at once.
pub const IDLE_POLL_MAX: Duration = Duration::from_millis(250);

/// The interval until the next look at `archive_status`: `min` while pushes are started or
/// in flight, else twice `current`, up to [`IDLE_POLL_MAX`] (never below `min`).
fn next_poll(current: Duration, min: Duration, busy: bool) -> Duration {
    if busy {
        min
    } else {
        (current * 2).min(IDLE_POLL_MAX).max(min)
    }
}

/// What a daemon did in its life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Segments it uploaded.
    pub stored: u64,
    /// Segments it found already stored with identical content.
    pub already: u64,
    /// Requests it answered with success.
    pub answered: u64,
    /// Pushes that failed (retried later, or reported to the requester).
    pub failed: u64,
}

/// The `pg_wal` directory holding PostgreSQL's `%p`, when `%p` is in one (a directory named
/// `pg_wal` with `archive_status`), as an absolute path (not resolved through symlinks).
pub fn pg_wal_of(path: &Path) -> Option<PathBuf> {
    let parent = path.parent()?;
    let cwd;
    let parent = if parent.is_absolute() {
        parent
    } else {
        cwd = std::env::current_dir().ok()?.join(parent);
        &cwd
    };
    let parent = if parent.file_name().is_none() {
        // "pg_wal/." and the like.
        parent.parent()?
    } else {
        parent
    };
    (parent.file_name()? == "pg_wal" && parent.join("archive_status").is_dir())
        .then(|| parent.to_path_buf())
}

/// How the daemon archived the segment a client asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum How {
    /// The daemon had already pushed it, before the request.
    Ahead,
    /// Stored for this request.
    Stored,
    /// The repository already had it, identical.
    Already,
}

impl How {
    fn as_str(self) -> &'static str {
        match self {
            How::Ahead => "ahead",
            How::Stored => "stored",
            How::Already => "already",
        }
    }

    fn parse(s: &str) -> Option<How> {
        [How::Ahead, How::Stored, How::Already]
            .into_iter()
            .find(|h| h.as_str() == s)
    }
}

/// The daemon's answer to a request.
#[derive(Debug)]
pub enum Answer {
    /// The file is durably archived.
    Archived {
        /// How.
        how: How,
        /// Its size.
        raw_len: u64,
        /// Bytes uploaded, when this request stored it.
        stored_len: u64,
    },
    /// The daemon could not archive it: the error `wal-push` would have reported.
    Refused(Error),
}

/// Asks the daemon serving `pg_wal` to archive `path` and waits for its answer. `key` is the
/// client's settings digest ([`Options::key`]): a daemon started with other settings (the
/// configuration changed since it started) does not archive for this client, and stops so
/// that the next call can start one with the new settings. An `Err` means the daemon could
/// not answer (none runs, it died, its settings differ, it said something this client does
/// not understand): the caller then pushes the file itself.
pub fn ask(pg_wal: &Path, path: &Path, key: &str) -> std::io::Result<Answer> {
    use std::os::unix::net::UnixStream as StdStream;
    let socket = socket_path(pg_wal)?;
    private_dir(&socket, false)?;
    ours(&socket)?;
    let path = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()?.join(path)
    };
    let path = path
        .to_str()
        .filter(|p| !p.contains(['\n', '\t']))
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "unusual path"))?;
    let mut stream = StdStream::connect(&socket)?;
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.write_all(format!("PUSH\t{key}\t{path}\n").as_bytes())?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    if line.starts_with("STALE") {
        return Err(std::io::Error::other(
            "it was started with other settings (repository, codec or credentials) and stops now",
        ));
    }
    parse_reply(line.trim_end_matches('\n')).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            if line.is_empty() {
                "the daemon closed the connection".to_string()
            } else {
                format!("unexpected reply {line:?}")
            },
        )
    })
}

fn parse_reply(line: &str) -> Option<Answer> {
    let mut f = line.splitn(4, '\t');
    match f.next()? {
        "OK" => {
            let how = How::parse(f.next()?)?;
            let raw_len = f.next()?.parse().ok()?;
            let stored_len = f.next()?.parse().ok()?;
            Some(Answer::Archived {
                how,
                raw_len,
                stored_len,
            })
        }
        "ERR" => {
            let kind = ErrorKind::from_name(f.next()?)?;
            let message = f.next()?.to_string();
            Some(Answer::Refused(Error::Remote { kind, message }))
        }
        _ => None,
    }
}

fn ok_reply(how: How, report: &PushReport) -> String {
    let stored_len = match report.outcome {
        PutOutcome::Stored { stored_len } if how == How::Stored => stored_len,
        _ => 0,
    };
    format!("OK\t{}\t{}\t{stored_len}\n", how.as_str(), report.raw_len)
}

fn err_reply(e: &Error) -> String {
    let message = e.to_string().replace(['\n', '\t'], " ");
    format!("ERR\t{}\t{message}\n", e.kind().as_str())
}

/// A file's identity and change times: equal before and after the daemon read it, and
/// equal again when PostgreSQL asks, means the content is the one stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Fingerprint {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

fn fingerprint(path: &Path) -> Option<Fingerprint> {
    let m = fs::metadata(path).ok()?;
    Some(Fingerprint {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
    })
}

#[derive(Clone, Debug)]
enum Entry {
    InFlight,
    Done {
        fingerprint: Option<Fingerprint>,
        report: PushReport,
    },
    Failed {
        at: Instant,
    },
}

struct State {
    entries: HashMap<String, Entry>,
    descriptor: Option<Descriptor>,
    last_activity: Instant,
    clients: usize,
    stats: Stats,
    /// A client with other settings asked: stop.
    stale: bool,
}

struct Daemon<'a> {
    repo: &'a Repository,
    pg_wal: PathBuf,
    status: PathBuf,
    markers: PathBuf,
    opts: Options,
    state: RefCell<State>,
    changed: Notify,
    uploads: Semaphore,
    cpu: Semaphore,
}

/// Runs the daemon for `pg_wal` until it has a reason to stop (see the module
/// documentation). `Ok(None)` when another daemon already serves that directory.
pub async fn run(repo: &Repository, pg_wal: &Path, opts: Options) -> Result<Option<Stats>, Error> {
    let io = |context: String| move |source| Error::Io { context, source };
    let status = pg_wal.join("archive_status");
    if !status.is_dir() {
        return Err(Error::BadInput {
            path: pg_wal.display().to_string(),
            reason: "is not a pg_wal directory (it has no archive_status)".into(),
        });
    }
    let socket = socket_path(pg_wal)
        .and_then(|socket| private_dir(&socket, true).map(|()| socket))
        .map_err(|e| {
            Error::Config(format!(
                "no socket for the daemon of {}: {e}",
                pg_wal.display()
            ))
        })?;
    let markers = pg_wal.join(MARKER_DIR);
    fs::create_dir_all(&markers).map_err(io(format!("cannot create {}", markers.display())))?;
    let lock_path = pg_wal.join(LOCK_NAME);
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io(format!("cannot open {}", lock_path.display())))?;
    let Some(lock) = take_lock(lock, &socket).await? else {
        return Ok(None);
    };
    // Holding the lock: a socket file left there is a dead daemon's.
    match fs::remove_file(&socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(format!("cannot remove {}", socket.display()))(e)),
    }
    let listener = UnixListener::bind(&socket)
        .map_err(io(format!("cannot listen on {}", socket.display())))?;
    fs::set_permissions(&socket, fs::Permissions::from_mode(0o600))
        .map_err(io(format!("cannot restrict {}", socket.display())))?;
    tracing::info!(
        "walarchive daemon serving {} into {} ({} compressing, {} in flight)",
        pg_wal.display(),
        repo.url(),
        opts.parallel,
        opts.uploads
    );
    let daemon = Daemon {
        repo,
        pg_wal: pg_wal.to_path_buf(),
        status,
        markers,
        cpu: Semaphore::new(opts.parallel),
        uploads: Semaphore::new(opts.uploads),
        opts,
        state: RefCell::new(State {
            entries: HashMap::new(),
            descriptor: None,
            last_activity: Instant::now(),
            clients: 0,
            stats: Stats::default(),
            stale: false,
        }),
        changed: Notify::new(),
    };
    let why = daemon.serve(listener).await;
    let _ = fs::remove_file(&socket);
    drop(lock);
    let stats = daemon.state.borrow().stats;
    tracing::info!(
        "walarchive daemon for {} stops ({why}): {} segments stored, {} found already stored, {} requests answered, {} failed pushes",
        pg_wal.display(),
        stats.stored,
        stats.already,
        stats.answered,
        stats.failed
    );
    Ok(Some(stats))
}

/// Takes the push-ahead lock for good. `None` when another daemon answers on the socket;
/// a `wal-push` pushing ahead holds it only briefly, so it is waited for.
async fn take_lock(lock: File, socket: &Path) -> Result<Option<File>, Error> {
    let started = Instant::now();
    loop {
        match lock.try_lock() {
            Ok(()) => return Ok(Some(lock)),
            Err(TryLockError::WouldBlock) => {}
            Err(TryLockError::Error(source)) => {
                return Err(Error::Io {
                    context: "cannot lock the push-ahead lock".into(),
                    source,
                })
            }
        }
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            tracing::debug!("another walarchive daemon serves {}", socket.display());
            return Ok(None);
        }
        if started.elapsed() > Duration::from_secs(30) {
            tracing::info!("the push-ahead lock stays held: leaving it to its holder");
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Daemon<'_> {
    async fn serve(&self, listener: UnixListener) -> &'static str {
        let mut pushes: FuturesUnordered<LocalBoxFuture<'_, ()>> = FuturesUnordered::new();
        let mut clients: FuturesUnordered<LocalBoxFuture<'_, ()>> = FuturesUnordered::new();
        let mut poll = self.opts.poll;
        let mut next_scan = tokio::time::Instant::now();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        clients.push(self.client(stream).boxed_local());
                        // PostgreSQL's archiver is at work: more segments may be ready.
                        poll = self.opts.poll;
                        next_scan = tokio::time::Instant::now();
                    }
                    Err(e) => tracing::warn!("cannot accept a connection: {e}"),
                },
                Some(()) = pushes.next(), if !pushes.is_empty() => {}
                Some(()) = clients.next(), if !clients.is_empty() => {}
                _ = tokio::time::sleep_until(next_scan) => {
                    if let Some(why) = self.reason_to_stop(pushes.is_empty()) {
                        return why;
                    }
                    let started = self.scan();
                    poll = next_poll(poll, self.opts.poll, !started.is_empty() || !pushes.is_empty());
                    pushes.extend(started);
                    next_scan = tokio::time::Instant::now() + poll;
                }
            }
        }
    }

    fn reason_to_stop(&self, idle: bool) -> Option<&'static str> {
        if self.state.borrow().stale {
            return Some("the settings changed");
        }
        if self.opts.follow_postmaster {
            let datadir = self.pg_wal.parent().unwrap_or(Path::new("/"));
            if !datadir.join("postmaster.pid").exists() {
                return Some("PostgreSQL is not running");
            }
        }
        if !self.status.is_dir() {
            return Some("pg_wal/archive_status is gone");
        }
        let st = self.state.borrow();
        match self.opts.idle_exit {
            Some(limit) if idle && st.clients == 0 && st.last_activity.elapsed() >= limit => {
                Some("idle")
            }
            _ => None,
        }
    }

    /// Starts pushes for the `.ready` segments not pushed yet, oldest first, as far as
    /// upload slots allow; forgets segments PostgreSQL is done with.
    fn scan(&self) -> Vec<LocalBoxFuture<'_, ()>> {
        let ready = match pushahead::ready_segments(&self.status) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("cannot list {}: {e}", self.status.display());
                return Vec::new();
            }
        };
        let mut st = self.state.borrow_mut();
        let names: BTreeSet<String> = ready.iter().map(|s| s.to_string()).collect();
        let markers = &self.markers;
        st.entries.retain(|name, e| {
            let keep = matches!(e, Entry::InFlight) || names.contains(name);
            if !keep {
                pushahead::remove(&markers.join(name));
            }
            keep
        });
        let mut started = Vec::new();
        for seg in ready {
            let name = seg.to_string();
            match st.entries.get(&name) {
                Some(Entry::InFlight | Entry::Done { .. }) => continue,
                Some(Entry::Failed { at }) if at.elapsed() < self.opts.retry_after => continue,
                _ => {}
            }
            let Ok(permit) = self.uploads.try_acquire() else {
                break;
            };
            st.entries.insert(name.clone(), Entry::InFlight);
            st.last_activity = Instant::now();
            started.push(
                async move {
                    let path = self.pg_wal.join(&name);
                    let result = self.push_segment(&path, seg).await;
                    drop(permit);
                    self.record(&name, &result, true).await;
                    match result {
                        Ok((r, _)) => match r.outcome {
                            PutOutcome::Stored { stored_len } => tracing::info!(
                                "pushed {name} ({} -> {stored_len} bytes, {})",
                                r.raw_len,
                                self.repo.compression
                            ),
                            PutOutcome::AlreadyStored => tracing::info!(
                                "{name} was already archived with identical content"
                            ),
                        },
                        Err(e) => tracing::warn!(
                            "could not push {name} (retrying later; PostgreSQL's own call pushes it too): {e}"
                        ),
                    }
                }
                .boxed_local(),
            );
        }
        started
    }

    /// Reads, checks, compresses and stores one segment of pg_wal; returns the file's
    /// fingerprint when it did not change while being read.
    async fn push_segment(
        &self,
        path: &Path,
        seg: SegmentName,
    ) -> Result<(PushReport, Option<Fingerprint>), Error> {
        let before = fingerprint(path);
        let cpu = self.cpu.acquire().await.expect("never closed");
        let prepared =
            push::prepare(path, self.repo.compression, self.opts.identity.as_ref()).await?;
        let cached = self.state.borrow().descriptor.clone();
        match cached {
            Some(d) => pushahead::same_cluster(&d, &prepared.found, &prepared.name)?,
            None => {
                let d = self
                    .repo
                    .ensure_descriptor(&prepared.found, &seg.to_string())
                    .await?;
                self.state.borrow_mut().descriptor = Some(d);
            }
        }
        drop(cpu);
        let after = fingerprint(path);
        let stable = before.filter(|b| Some(*b) == after);
        let report = push::store_prepared(self.repo, prepared).await?;
        Ok((report, stable))
    }

    /// Records a push's result, writes its marker and counters, and wakes waiting clients.
    async fn record(
        &self,
        name: &str,
        result: &Result<(PushReport, Option<Fingerprint>), Error>,
        ahead: bool,
    ) {
        {
            let mut st = self.state.borrow_mut();
            st.last_activity = Instant::now();
            match result {
                Ok((report, fingerprint)) => {
                    match report.outcome {
                        PutOutcome::Stored { .. } => st.stats.stored += 1,
                        PutOutcome::AlreadyStored => st.stats.already += 1,
                    }
                    st.entries.insert(
                        name.to_string(),
                        Entry::Done {
                            fingerprint: *fingerprint,
                            report: report.clone(),
                        },
                    );
                }
                Err(_) => {
                    st.stats.failed += 1;
                    st.entries
                        .insert(name.to_string(), Entry::Failed { at: Instant::now() });
                }
            }
        }
        self.changed.notify_waiters();
        let Ok((report, _)) = result else {
            return;
        };
        // A marker lets a client that cannot reach this daemon (it died, say) answer
        // without uploading, after checking the content itself.
        let marker = ahead.then(|| Marker::of(self.repo, report, 0));
        let (markers, pg_wal, report) = (self.markers.clone(), self.pg_wal.clone(), report.clone());
        tokio::task::spawn_blocking(move || {
            if let Some(m) = marker {
                if let Err(e) = pushahead::write_marker(&markers, &m) {
                    tracing::warn!("cannot write the push-ahead marker of {}: {e}", m.name);
                }
            }
            if let PutOutcome::Stored { stored_len } = report.outcome {
                let counted = metrics::update(&pg_wal, |c| {
                    c.push_total += 1;
                    c.push_bytes_total += report.raw_len;
                    c.push_stored_bytes_total += stored_len;
                });
                if let Err(e) = counted {
                    tracing::debug!("cannot update the counters: {e}");
                }
            }
        })
        .await
        .expect("writing a marker does not panic");
    }

    async fn client(&self, stream: UnixStream) {
        self.state.borrow_mut().clients += 1;
        let (rd, mut wr) = stream.into_split();
        let mut lines = tokio::io::BufReader::new(rd).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let request = line
                .strip_prefix("PUSH\t")
                .and_then(|rest| rest.split_once('\t'));
            let reply = match request {
                Some((key, _)) if key != self.opts.key => {
                    tracing::info!(
                        "a wal-push with other settings (repository, codec or credentials) asked: this daemon stops, the next call starts one with the new settings"
                    );
                    self.state.borrow_mut().stale = true;
                    "STALE\n".to_string()
                }
                Some((_, path)) => self.answer(Path::new(path)).await,
                None => err_reply(&Error::BadInput {
                    path: "request".into(),
                    reason: format!("unknown request {line:?}"),
                }),
            };
            if wr.write_all(reply.as_bytes()).await.is_err() {
                break;
            }
        }
        let mut st = self.state.borrow_mut();
        st.clients -= 1;
        st.last_activity = Instant::now();
    }

    /// PostgreSQL asks for `path`: answer from what was pushed, or push it now.
    async fn answer(&self, path: &Path) -> String {
        self.state.borrow_mut().last_activity = Instant::now();
        let ours = match path.file_name().and_then(|n| n.to_str()) {
            Some(n) if path.parent() == Some(self.pg_wal.as_path()) => {
                n.parse::<SegmentName>().ok()
            }
            _ => None,
        };
        let Some(seg) = ours else {
            // History, .partial and .backup files, or a file elsewhere: pushed as asked.
            let _slot = self.uploads.acquire().await.expect("never closed");
            let result = push::push_file(self.repo, path, self.opts.identity.as_ref()).await;
            return self.reply_for(result.as_ref());
        };
        let name = seg.to_string();
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let entry = self.state.borrow().entries.get(&name).cloned();
            match entry {
                Some(Entry::InFlight) => changed.await,
                Some(Entry::Done {
                    fingerprint: Some(f),
                    report,
                }) if fingerprint(path) == Some(f) => {
                    pushahead::remove(&self.markers.join(&name));
                    self.state.borrow_mut().stats.answered += 1;
                    return ok_reply(How::Ahead, &report);
                }
                _ => break,
            }
        }
        // Not pushed yet, failed, or changed since: push it now, as PostgreSQL asks.
        self.state
            .borrow_mut()
            .entries
            .insert(name.clone(), Entry::InFlight);
        let slot = self.uploads.acquire().await.expect("never closed");
        let result = self.push_segment(path, seg).await;
        drop(slot);
        self.record(&name, &result, false).await;
        self.reply_for(result.as_ref().map(|(r, _)| r))
    }

    /// The reply to a request this daemon pushed for.
    fn reply_for(&self, result: Result<&PushReport, &Error>) -> String {
        match result {
            Ok(r) => {
                self.state.borrow_mut().stats.answered += 1;
                let how = match r.outcome {
                    PutOutcome::Stored { .. } => How::Stored,
                    PutOutcome::AlreadyStored => How::Already,
                };
                ok_reply(how, r)
            }
            Err(e) => err_reply(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_daemon_looks_less_often() {
        let min = Duration::from_millis(20);
        let mut poll = min;
        let mut seen = vec![];
        for _ in 0..6 {
            poll = next_poll(poll, min, false);
            seen.push(poll.as_millis());
        }
        assert_eq!(seen, [40, 80, 160, 250, 250, 250]);
        assert_eq!(next_poll(IDLE_POLL_MAX, min, true), min);
        // A configured interval above the idle maximum is kept.
        let slow = Duration::from_secs(1);
        assert_eq!(next_poll(slow, slow, false), slow);
    }

    #[test]
    fn replies_round_trip() {
        let r = PushReport {
            name: "000000010000000000000001".parse().unwrap(),
            raw_len: 16,
            outcome: PutOutcome::Stored { stored_len: 9 },
            blake3: crate::format::Digest::blake3(b"x"),
        };
        let line = ok_reply(How::Stored, &r);
        match parse_reply(line.trim_end()) {
            Some(Answer::Archived {
                how: How::Stored,
                raw_len: 16,
                stored_len: 9,
            }) => {}
            other => panic!("{other:?}"),
        }
        let line = ok_reply(How::Ahead, &r);
        assert!(matches!(
            parse_reply(line.trim_end()),
            Some(Answer::Archived {
                how: How::Ahead,
                stored_len: 0,
                ..
            })
        ));
        let e = Error::BadInput {
            path: "p\tq".into(),
            reason: "two\nlines".into(),
        };
        match parse_reply(err_reply(&e).trim_end()) {
            Some(Answer::Refused(Error::Remote { kind, message })) => {
                assert_eq!(kind, ErrorKind::BadInput);
                assert_eq!(message, "p q: two lines");
            }
            other => panic!("{other:?}"),
        }
        assert!(parse_reply("").is_none());
        assert!(parse_reply("OK\tsideways\t1\t2").is_none());
        assert!(parse_reply("ERR\tnonsense\tx").is_none());
    }

    #[test]
    fn pg_wal_paths() {
        let d = tempfile::tempdir().unwrap();
        let wal = d.path().join("pg_wal");
        fs::create_dir_all(wal.join("archive_status")).unwrap();
        let seg = wal.join("000000010000000000000001");
        assert_eq!(pg_wal_of(&seg), Some(wal.clone()));
        assert_eq!(
            pg_wal_of(&d.path().join("x/000000010000000000000001")),
            None
        );
    }
}
