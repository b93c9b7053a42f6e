//! A TCP proxy to stand between walarchive and a server on 127.0.0.1 (the S3 server), to
//! give the link what a remote object store's has: latency, connections dropped in the
//! middle of a transfer, stalls. What the proxy does to the traffic is a list of
//! [`Fault`]s; the drops and stalls follow a deterministic schedule (connection numbers,
//! byte counts), never a random one.
//!
//! ```ignore
//! let far = Proxy::start(s3().port, Duration::from_millis(20));
//! env.push(("AWS_ENDPOINT".into(), far.url()));
//! let bad = Proxy::with_faults(s3().port, vec![
//!     Fault::Drop { every: 4, after: 20_000 },
//!     Fault::Stall { every: 7, after: 5_000, pause: Duration::from_secs(4) },
//! ]);
//! ```

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the proxy does to the traffic it forwards.
#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// Holds each request back by this long, as the round trip to a remote store would: a
    /// chunk from the client that follows a pause (a new request, also on a kept-alive
    /// connection) waits this long; the rest of a request body, and responses, pass at once.
    Delay(Duration),
    /// Drops connections in the middle of a transfer: connection number `every`, 2 ×
    /// `every`, ... (counted from 1 in the order they are accepted) is shut down, both
    /// ways and at both ends, once `after` bytes have passed through it (both directions
    /// counted): the bytes up to `after` are forwarded, the rest never is. A connection
    /// that carries fewer bytes is not touched.
    Drop {
        /// Which connections (every `every`-th).
        every: u64,
        /// Bytes forwarded before the drop.
        after: u64,
    },
    /// Stalls connections: connection number `every`, 2 × `every`, ... stops forwarding
    /// for `pause` once `after` bytes have passed through it (both directions counted),
    /// then goes on (if the client is still there).
    Stall {
        /// Which connections (every `every`-th).
        every: u64,
        /// Bytes forwarded before the stall.
        after: u64,
        /// How long nothing is forwarded.
        pause: Duration,
    },
}

/// A chunk from the client that comes later than this after the previous one starts a new
/// request (for [`Fault::Delay`]).
const REQUEST_GAP: Duration = Duration::from_millis(2);

/// A running proxy: it listens on [`Proxy::port`] and forwards every connection to the
/// target port. Dropping it stops it and closes the connections it still forwards.
pub struct Proxy {
    port: u16,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

struct Shared {
    stopping: AtomicBool,
    next_id: AtomicU64,
    /// Both ends of every connection being forwarded, so that stopping can close them.
    connections: Mutex<HashMap<u64, (TcpStream, TcpStream)>>,
    /// Connections dropped by [`Fault::Drop`].
    dropped: AtomicU64,
    /// Connections stalled by [`Fault::Stall`].
    stalled: AtomicU64,
    /// An outage ([`Proxy::set_down`]): every connection is closed as soon as it is accepted.
    down: AtomicBool,
}

impl Proxy {
    /// A proxy to `target` (a port on 127.0.0.1) that delays each request by `delay`
    /// ([`Fault::Delay`]).
    pub fn start(target: u16, delay: Duration) -> Proxy {
        Proxy::with_fault(target, Fault::Delay(delay))
    }

    /// A proxy to `target` (a port on 127.0.0.1) that applies `fault`.
    pub fn with_fault(target: u16, fault: Fault) -> Proxy {
        Proxy::with_faults(target, vec![fault])
    }

    /// A proxy to `target` (a port on 127.0.0.1) that applies all of `faults`: every
    /// delay, and on each connection the first drop or stall whose schedule selects it.
    pub fn with_faults(target: u16, faults: Vec<Fault>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            stopping: AtomicBool::new(false),
            next_id: AtomicU64::new(0),
            connections: Mutex::new(HashMap::new()),
            dropped: AtomicU64::new(0),
            stalled: AtomicU64::new(0),
            down: AtomicBool::new(false),
        });
        let acceptor = {
            let shared = shared.clone();
            std::thread::spawn(move || accept(listener, target, faults, shared))
        };
        Proxy {
            port,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// The port the proxy listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`: an endpoint URL that goes through the proxy.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.next_id.load(Ordering::SeqCst)
    }

    /// Connections dropped mid-transfer so far ([`Fault::Drop`]).
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::SeqCst)
    }

    /// Connections stalled so far ([`Fault::Stall`]).
    pub fn stalled(&self) -> u64 {
        self.shared.stalled.load(Ordering::SeqCst)
    }

    /// Starts (`true`) or ends an outage of the store behind the proxy: while it lasts, the
    /// connections being forwarded are closed and every new one is closed as soon as it is
    /// accepted, as a store that went away does to its clients.
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
        if down {
            for (client, server) in self.shared.connections.lock().unwrap().values() {
                let _ = client.shutdown(Shutdown::Both);
                let _ = server.shutdown(Shutdown::Both);
            }
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wake the acceptor, which then sees `stopping`; without a wake-up it would block in
        // accept() forever, so it is only waited for when the wake-up got through.
        if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            if let Some(acceptor) = self.acceptor.take() {
                let _ = acceptor.join();
            }
        }
        for (client, server) in self.shared.connections.lock().unwrap().values() {
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
        }
    }
}

/// What happens to one connection once enough bytes passed.
#[derive(Clone, Copy, Debug)]
enum Trap {
    Drop { after: u64 },
    Stall { after: u64, pause: Duration },
}

fn accept(listener: TcpListener, target: u16, faults: Vec<Fault>, shared: Arc<Shared>) {
    let delay = faults.iter().find_map(|f| match f {
        Fault::Delay(d) => Some(*d),
        _ => None,
    });
    for client in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            break;
        }
        let Ok(client) = client else { continue };
        if shared.down.load(Ordering::SeqCst) {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
            continue;
        };
        // No Nagle stalls added by the proxy itself.
        let _ = (client.set_nodelay(true), server.set_nodelay(true));
        let (Ok(c), Ok(s)) = (client.try_clone(), server.try_clone()) else {
            continue;
        };
        let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
        let number = id + 1;
        let trap = faults.iter().find_map(|f| match *f {
            Fault::Drop { every, after } if every > 0 && number.is_multiple_of(every) => {
                Some(Trap::Drop { after })
            }
            Fault::Stall {
                every,
                after,
                pause,
            } if every > 0 && number.is_multiple_of(every) => Some(Trap::Stall { after, pause }),
            _ => None,
        });
        shared.connections.lock().unwrap().insert(id, (c, s));
        let shared = shared.clone();
        std::thread::spawn(move || {
            forward(client, server, delay, trap, &shared);
            shared.connections.lock().unwrap().remove(&id);
        });
    }
}

/// One connection's state, shared by its two directions.
struct Conn {
    client: TcpStream,
    server: TcpStream,
    trap: Option<Trap>,
    /// Bytes forwarded so far, both directions.
    passed: AtomicU64,
    /// The trap went off.
    sprung: AtomicBool,
}

/// Forwards one connection both ways until both directions are done.
fn forward(
    client: TcpStream,
    server: TcpStream,
    delay: Option<Duration>,
    trap: Option<Trap>,
    shared: &Arc<Shared>,
) {
    let (Ok(c2), Ok(s2), Ok(c_in), Ok(s_out)) = (
        client.try_clone(),
        server.try_clone(),
        client.try_clone(),
        server.try_clone(),
    ) else {
        return;
    };
    let conn = Arc::new(Conn {
        client: c2,
        server: s2,
        trap,
        passed: AtomicU64::new(0),
        sprung: AtomicBool::new(false),
    });
    let upstream = {
        let (conn, shared) = (conn.clone(), shared.clone());
        std::thread::spawn(move || pump(c_in, s_out, delay, &conn, &shared))
    };
    pump(server, client, None, &conn, shared);
    let _ = upstream.join();
}

/// Copies `from` to `to` until EOF or an error, applying the request delay (upstream only)
/// and the connection's trap.
fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    delay: Option<Duration>,
    conn: &Conn,
    shared: &Shared,
) {
    let mut buf = vec![0u8; 256 << 10];
    let mut last: Option<Instant> = None;
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 {
            break;
        }
        if let Some(delay) = delay {
            if last.is_none_or(|t| t.elapsed() > REQUEST_GAP) {
                std::thread::sleep(delay);
            }
        }
        let before = conn.passed.fetch_add(n as u64, Ordering::SeqCst);
        let mut chunk = &buf[..n];
        if let Some(trap) = conn.trap {
            let at = match trap {
                Trap::Drop { after } | Trap::Stall { after, .. } => after,
            };
            if before + n as u64 > at && !conn.sprung.swap(true, Ordering::SeqCst) {
                let head = at.saturating_sub(before) as usize;
                if to.write_all(&chunk[..head]).is_err() {
                    break;
                }
                chunk = &chunk[head..];
                match trap {
                    Trap::Drop { .. } => {
                        shared.dropped.fetch_add(1, Ordering::SeqCst);
                        let _ = conn.client.shutdown(Shutdown::Both);
                        let _ = conn.server.shutdown(Shutdown::Both);
                        break;
                    }
                    Trap::Stall { pause, .. } => {
                        shared.stalled.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(pause);
                    }
                }
            }
        }
        if to.write_all(chunk).is_err() {
            break;
        }
        last = Some(Instant::now());
    }
    let _ = to.shutdown(Shutdown::Write);
}
