//! A TCP proxy to stand between walarchive and a server on 127.0.0.1 (the S3 server), to
//! give the link what a remote object store's has: latency, for now. What the proxy does
//! to the traffic is a [`Fault`]; faults such as dropping a connection in the middle of a
//! transfer or stalling it belong there too.
//!
//! ```ignore
//! let far = Proxy::start(s3().port, Duration::from_millis(20));
//! env.push(("AWS_ENDPOINT".into(), far.url()));
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
}

impl Proxy {
    /// A proxy to `target` (a port on 127.0.0.1) that delays each request by `delay`
    /// ([`Fault::Delay`]).
    pub fn start(target: u16, delay: Duration) -> Proxy {
        Proxy::with_fault(target, Fault::Delay(delay))
    }

    /// A proxy to `target` (a port on 127.0.0.1) that applies `fault`.
    pub fn with_fault(target: u16, fault: Fault) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            stopping: AtomicBool::new(false),
            next_id: AtomicU64::new(0),
            connections: Mutex::new(HashMap::new()),
        });
        let acceptor = {
            let shared = shared.clone();
            std::thread::spawn(move || accept(listener, target, fault, shared))
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

fn accept(listener: TcpListener, target: u16, fault: Fault, shared: Arc<Shared>) {
    for client in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            break;
        }
        let Ok(client) = client else { continue };
        let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
            continue;
        };
        // No Nagle stalls added by the proxy itself.
        let _ = (client.set_nodelay(true), server.set_nodelay(true));
        let (Ok(c), Ok(s)) = (client.try_clone(), server.try_clone()) else {
            continue;
        };
        let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
        shared.connections.lock().unwrap().insert(id, (c, s));
        let shared = shared.clone();
        std::thread::spawn(move || {
            forward(client, server, fault);
            shared.connections.lock().unwrap().remove(&id);
        });
    }
}

/// Forwards one connection both ways until both directions are done.
fn forward(client: TcpStream, server: TcpStream, fault: Fault) {
    let (Ok(mut c_in), Ok(mut s_out)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let (mut s_in, mut c_out) = (server, client);
    let upstream = std::thread::spawn(move || {
        let mut buf = vec![0u8; 256 << 10];
        let mut last: Option<Instant> = None;
        while let Ok(n) = c_in.read(&mut buf) {
            if n == 0 {
                break;
            }
            match fault {
                Fault::Delay(delay) => {
                    if last.is_none_or(|t| t.elapsed() > REQUEST_GAP) {
                        std::thread::sleep(delay);
                    }
                }
            }
            if s_out.write_all(&buf[..n]).is_err() {
                break;
            }
            last = Some(Instant::now());
        }
        let _ = s_out.shutdown(Shutdown::Write);
    });
    let _ = std::io::copy(&mut s_in, &mut c_out);
    let _ = c_out.shutdown(Shutdown::Write);
    let _ = upstream.join();
}
