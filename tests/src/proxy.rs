//! A fault-injecting TCP proxy for one ordered pair of nodes.
//!
//! Node i's `--peers` entry for node j points at the proxy (i->j), which
//! forwards to node j's real address. poncho sends Raft messages one way per
//! connection (i's outbound connection carries only i's messages to j; j
//! answers on its own connection to i), so blocking proxy (i->j) is exactly
//! "j does not hear i", without root or firewall rules.
//!
//! Plain threads and blocking sockets: one thread accepts, and each proxied
//! connection has one thread per direction. Control is through atomics. Every
//! thread polls the shutdown flag (short timeouts), so dropping the proxy
//! stops them all, and `Drop` joins them.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::thread::{self, sleep, JoinHandle};
use std::time::Duration;

/// How often idle threads look at the flags (blocking and dropping also
/// shut their sockets down, which wakes them at once).
const POLL: Duration = Duration::from_millis(100);

pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

struct Shared {
    target: SocketAddr,
    blocked: AtomicBool,
    /// What the target sends back is read and discarded.
    replies_dropped: AtomicBool,
    latency_us: AtomicU64,
    shutdown: AtomicBool,
    next_conn: AtomicU64,
    /// Both sockets of every live proxied connection, so blocking (or
    /// dropping) the proxy can cut them at once rather than at the next
    /// timeout.
    conns: Mutex<Vec<(u64, TcpStream, TcpStream)>>,
}

impl Shared {
    fn cut_all(&self) {
        for (_, a, b) in self.conns.lock().unwrap().drain(..) {
            let _ = a.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
        }
    }
}

impl Proxy {
    /// Listens on an ephemeral port of 127.0.0.1 and forwards to `target`.
    pub fn start(target: SocketAddr) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        // Nonblocking, so the accept loop can notice shutdown.
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            target,
            blocked: AtomicBool::new(false),
            replies_dropped: AtomicBool::new(false),
            latency_us: AtomicU64::new(0),
            shutdown: AtomicBool::new(false),
            next_conn: AtomicU64::new(0),
            conns: Mutex::new(Vec::new()),
        });
        let s = shared.clone();
        let acceptor = thread::Builder::new()
            .name(format!("proxy-{addr}"))
            .spawn(move || accept_loop(listener, s))?;
        Ok(Proxy {
            addr,
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// Where nodes should connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Blocked: existing connections are cut and new ones closed at once,
    /// so the sender sees its connection fail and reconnects with backoff.
    pub fn set_blocked(&self, blocked: bool) {
        self.shared.blocked.store(blocked, SeqCst);
        if blocked {
            self.shared.cut_all();
        }
    }

    pub fn is_blocked(&self) -> bool {
        self.shared.blocked.load(SeqCst)
    }

    /// Replies dropped: what the sender sends still reaches the target, but
    /// nothing comes back (a client sees a request that is never answered).
    pub fn set_replies_dropped(&self, dropped: bool) {
        self.shared.replies_dropped.store(dropped, SeqCst);
    }

    /// Delays every forwarded chunk by `latency` (zero: none).
    pub fn set_latency(&self, latency: Duration) {
        self.shared
            .latency_us
            .store(latency.as_micros() as u64, SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, SeqCst);
        self.shared.cut_all();
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut workers: Vec<JoinHandle<()>> = Vec::new();
    while !shared.shutdown.load(SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                if shared.blocked.load(SeqCst) {
                    drop(stream); // refuse: the sender sees it closed
                    continue;
                }
                let s = shared.clone();
                workers.retain(|w| !w.is_finished());
                workers.push(thread::spawn(move || serve(stream, s)));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => sleep(Duration::from_millis(5)),
            Err(_) => sleep(Duration::from_millis(5)),
        }
    }
    drop(listener); // new connections are refused from here on
    for w in workers {
        let _ = w.join();
    }
}

/// Forwards one accepted connection to the target, both ways.
fn serve(downstream: TcpStream, shared: Arc<Shared>) {
    let Ok(upstream) = TcpStream::connect_timeout(&shared.target, Duration::from_millis(500))
    else {
        return; // target down: closing the accepted side tells the sender
    };
    type Clones = (TcpStream, TcpStream, TcpStream, TcpStream);
    let setup = || -> std::io::Result<Clones> {
        for s in [&downstream, &upstream] {
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(POLL))?;
            // So a pump never hangs on a stopped (SIGSTOP) target whose
            // buffers filled up: the connection is dropped instead, and the
            // sender reconnects.
            s.set_write_timeout(Some(Duration::from_secs(1)))?;
        }
        let (d, u) = (&downstream, &upstream);
        Ok((
            d.try_clone()?,
            u.try_clone()?,
            d.try_clone()?,
            u.try_clone()?,
        ))
    };
    let Ok((down2, up2, down3, up3)) = setup() else {
        return;
    };
    let id = shared.next_conn.fetch_add(1, SeqCst);
    shared.conns.lock().unwrap().push((id, down3, up3));
    // Registered before this check, so a concurrent set_blocked either sees
    // this connection in the list or we see its flag.
    if !shared.blocked.load(SeqCst) && !shared.shutdown.load(SeqCst) {
        let s = shared.clone();
        let back = thread::spawn(move || pump(up2, down2, &s, true));
        pump(downstream, upstream, &shared, false);
        let _ = back.join();
    }
    shared.conns.lock().unwrap().retain(|(i, a, b)| {
        if *i == id {
            let _ = a.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
        }
        *i != id
    });
}

/// Copies `from` to `to` until either side closes, the proxy is blocked or
/// shut down; `back` is the target-to-sender direction, whose chunks are
/// discarded while replies are dropped. On exit both sockets are shut down,
/// which ends the other direction too.
fn pump(mut from: TcpStream, mut to: TcpStream, shared: &Shared, back: bool) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if shared.shutdown.load(SeqCst) || shared.blocked.load(SeqCst) {
            break;
        }
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(_) => break,
        };
        let latency = shared.latency_us.load(SeqCst);
        if latency > 0 {
            // Per chunk: a chunk read while this one waits is delayed a bit
            // more, which is fine for Raft's small, bursty messages.
            sleep(Duration::from_micros(latency));
        }
        if back && shared.replies_dropped.load(SeqCst) {
            continue;
        }
        if shared.blocked.load(SeqCst) || to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;

    fn echo_server() -> (SocketAddr, Arc<AtomicBool>, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let h = thread::spawn(move || {
            let mut threads = Vec::new();
            while !s.load(SeqCst) {
                match listener.accept() {
                    Ok((mut c, _)) => {
                        c.set_nonblocking(false).unwrap();
                        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                        threads.push(thread::spawn(move || {
                            let mut buf = [0u8; 1024];
                            while let Ok(n) = c.read(&mut buf) {
                                if n == 0 || c.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        }));
                    }
                    Err(_) => sleep(Duration::from_millis(5)),
                }
            }
        });
        (addr, stop, h)
    }

    fn roundtrip(c: &mut std::io::BufReader<TcpStream>, line: &str) -> std::io::Result<String> {
        c.get_mut().write_all(format!("{line}\n").as_bytes())?;
        let mut got = String::new();
        if c.read_line(&mut got)? == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        Ok(got.trim_end().to_string())
    }

    fn connect(addr: SocketAddr) -> std::io::BufReader<TcpStream> {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        std::io::BufReader::new(s)
    }

    #[test]
    fn forwards_blocks_cuts_and_adds_latency() {
        let (target, stop, server) = echo_server();
        let proxy = Proxy::start(target).unwrap();
        let mut c = connect(proxy.addr());
        assert_eq!(roundtrip(&mut c, "hello").unwrap(), "hello");

        // Blocking cuts the live connection, and refuses new ones.
        proxy.set_blocked(true);
        assert!(roundtrip(&mut c, "cut").is_err());
        let mut c2 = connect(proxy.addr());
        assert!(roundtrip(&mut c2, "refused").is_err());

        proxy.set_blocked(false);
        let mut c3 = connect(proxy.addr());
        assert_eq!(roundtrip(&mut c3, "again").unwrap(), "again");

        // Both directions are delayed: about two latencies per round trip.
        proxy.set_latency(Duration::from_millis(100));
        let t = std::time::Instant::now();
        assert_eq!(roundtrip(&mut c3, "slow").unwrap(), "slow");
        assert!(
            t.elapsed() >= Duration::from_millis(200),
            "{:?}",
            t.elapsed()
        );

        // Dropped replies: the request arrives (the echo server answers it),
        // and nothing comes back until they flow again.
        proxy.set_latency(Duration::ZERO);
        proxy.set_replies_dropped(true);
        c3.get_mut()
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        assert!(roundtrip(&mut c3, "lost").is_err());
        proxy.set_replies_dropped(false);
        c3.get_mut()
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        assert_eq!(roundtrip(&mut c3, "back").unwrap(), "back");

        drop(proxy);
        assert!(
            roundtrip(&mut c3, "gone").is_err(),
            "dropping the proxy cuts it"
        );
        stop.store(true, SeqCst);
        drop((c, c2, c3));
        server.join().unwrap();
    }
}
