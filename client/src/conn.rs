//! One blocking TCP connection to one node, plain or TLS: a request line
//! out, its reply line back, with reads bounded in size ([`MAX_REPLY_BYTES`])
//! and in time (a deadline, checked every [`SLICE`], and an optional Ctrl-C
//! flag). A TLS handshake is bounded by the connect deadline too, and at
//! most [`HANDSHAKE_TIMEOUT`] per address.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use poncho_protocol::{LineBuffer, ReplyEnvelope};
use poncho_tls::MaybeTls;

use crate::tls::{self, Tls};

/// Replies can be long (10,000 keys of 1 KiB, escaped); anything past this
/// is not a reply from a poncho node.
pub const MAX_REPLY_BYTES: usize = 64 << 20;
/// How long one blocking read or sleep may last before we look at Ctrl-C.
pub const SLICE: Duration = Duration::from_millis(50);
/// The longest a TLS handshake with one address may take (within the
/// caller's deadline): a node that accepts but does not answer a
/// ClientHello (a plaintext port) must not hold a client until its deadline.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// What one connection attempt to one address may take at most (and at
/// least, so that a deadline about to pass still gets a real try).
const CONNECT_MIN: Duration = Duration::from_millis(10);
const CONNECT_MAX: Duration = Duration::from_secs(1);

/// A reply and the node that sent it.
#[derive(Debug)]
pub struct Reply {
    pub addr: String,
    pub envelope: ReplyEnvelope,
    /// The line as received, for printing a probe's reply as it is.
    pub line: String,
}

/// Why an exchange on one connection failed.
#[derive(Debug)]
pub enum ConnError {
    /// An I/O error (a timeout at the deadline too), and whether the request
    /// had been sent: if it had, it may have been applied.
    Io { error: io::Error, sent: bool },
    /// A reply that is not the protocol.
    Protocol(String),
    /// The interrupt flag was set while waiting.
    Interrupted,
    /// TLS refused this connection (a certificate the client does not
    /// trust, or one it lacks; a plaintext node on a TLS connection or the
    /// reverse): trying this address again will not help.
    Tls(String),
}

impl fmt::Display for ConnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnError::Io { error, .. } => write!(f, "{error}"),
            ConnError::Protocol(m) => f.write_str(m),
            ConnError::Interrupted => f.write_str("interrupted"),
            ConnError::Tls(m) => f.write_str(m),
        }
    }
}

fn unsent(error: io::Error) -> ConnError {
    ConnError::Io { error, sent: false }
}

fn after_send(error: io::Error) -> ConnError {
    ConnError::Io { error, sent: true }
}

pub struct Connection {
    addr: String,
    stream: MaybeTls<TcpStream>,
    buf: LineBuffer,
    /// Whether any byte came from the node yet (the first ones tell a TLS
    /// port from a poncho one).
    heard: bool,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("addr", &self.addr)
            .field("tls", &self.stream.is_tls())
            .finish_non_exhaustive()
    }
}

/// A TCP connection to `addr` (each of its socket addresses in turn, each
/// given what is left until `deadline`, between 10 ms and 1 s).
fn connect_tcp(addr: &str, deadline: Instant) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
    for sock in addr.to_socket_addrs()? {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .clamp(CONNECT_MIN, CONNECT_MAX);
        match TcpStream::connect_timeout(&sock, left) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = e,
        }
    }
    Err(last)
}

impl Connection {
    /// A plaintext connection to `addr`, as [`Connection::connect`] without
    /// TLS.
    pub fn open(addr: &str, deadline: Instant) -> io::Result<Connection> {
        Connection::from_stream(connect_tcp(addr, deadline)?, addr)
    }

    /// Connects to `addr`, over TLS if `tls` is given: the handshake is done
    /// before this returns, by `deadline` and within [`HANDSHAKE_TIMEOUT`].
    /// A certificate or protocol failure is [`ConnError::Tls`].
    pub fn connect(
        addr: &str,
        deadline: Instant,
        tls: Option<&Tls>,
    ) -> Result<Connection, ConnError> {
        let stream = connect_tcp(addr, deadline).map_err(unsent)?;
        Connection::on_stream(stream, addr, deadline, tls)
    }

    /// A connection on a stream the caller opened (to `addr`), over TLS if
    /// `tls` is given, as [`Connection::connect`] makes it.
    pub fn on_stream(
        stream: TcpStream,
        addr: &str,
        deadline: Instant,
        tls: Option<&Tls>,
    ) -> Result<Connection, ConnError> {
        let Some(tls) = tls else {
            return Connection::from_stream(stream, addr).map_err(unsent);
        };
        let session = tls.session(addr).map_err(ConnError::Tls)?;
        let mut conn = Connection::over(MaybeTls::tls(session, stream), addr).map_err(unsent)?;
        let budget = deadline
            .saturating_duration_since(Instant::now())
            .min(HANDSHAKE_TIMEOUT);
        conn.handshake(budget)?;
        Ok(conn)
    }

    /// A connection on a stream the caller opened (to `addr`).
    pub fn from_stream(stream: TcpStream, addr: &str) -> io::Result<Connection> {
        Connection::over(MaybeTls::Plain(stream), addr)
    }

    fn over(stream: MaybeTls<TcpStream>, addr: &str) -> io::Result<Connection> {
        stream.get_ref().set_nodelay(true)?;
        stream.get_ref().set_read_timeout(Some(SLICE))?;
        Ok(Connection {
            addr: addr.to_string(),
            stream,
            buf: LineBuffer::new(MAX_REPLY_BYTES),
            heard: false,
        })
    }

    /// Drives the TLS handshake until it is done or `budget` has passed.
    fn handshake(&mut self, budget: Duration) -> Result<(), ConnError> {
        let until = Instant::now() + budget;
        loop {
            match self.stream.handshake_step() {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) if is_wait(&e) => {}
                Err(e) => return Err(self.io_failure(e, false)),
            }
            if Instant::now() >= until {
                return Err(unsent(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "no TLS handshake from {} within {:.1} s: is it a TLS port (or is \
                         the node too busy)?",
                        self.addr,
                        budget.as_secs_f64()
                    ),
                )));
            }
        }
    }

    /// `error` from the stream, as a TLS refusal if TLS failed.
    fn io_failure(&self, error: io::Error, sent: bool) -> ConnError {
        match self.stream.tls_error() {
            Some(e) => ConnError::Tls(tls::failure(&self.addr, e)),
            None => ConnError::Io { error, sent },
        }
    }

    /// Whether this connection speaks TLS.
    pub fn is_tls(&self) -> bool {
        self.stream.is_tls()
    }

    /// The address this connection was opened to, as given.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The socket, for a caller that drives it on its own from now on (the
    /// bench, nonblocking). Fails if bytes of a reply are still buffered.
    /// A TLS connection fails: see [`Connection::into_inner`].
    pub fn into_stream(self) -> Result<TcpStream, ConnError> {
        match self.into_inner()? {
            MaybeTls::Plain(stream) => Ok(stream),
            MaybeTls::Tls { .. } => Err(ConnError::Protocol(
                "a TLS connection is not a plain socket".into(),
            )),
        }
    }

    /// The stream, plain or TLS (its session kept), for a caller that
    /// drives it on its own from now on. Fails if bytes of a reply are
    /// still buffered.
    pub fn into_inner(self) -> Result<MaybeTls<TcpStream>, ConnError> {
        match self.buf.pending_bytes() {
            0 => Ok(self.stream),
            n => Err(ConnError::Protocol(format!(
                "{n} bytes after the last reply from {}",
                self.addr
            ))),
        }
    }

    /// Writes `line` (ending in a newline), giving up at `deadline`.
    pub fn send(&mut self, line: &[u8], deadline: Instant) -> Result<(), ConnError> {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(CONNECT_MIN);
        let sock = self.stream.get_ref();
        sock.set_write_timeout(Some(left)).map_err(unsent)?;
        if let Err(e) = self.stream.write_all(line) {
            return Err(self.io_failure(e, false));
        }
        // TLS: records rustls still holds when the socket timed out.
        while self.stream.has_records_to_send() {
            if Instant::now() >= deadline {
                return Err(unsent(io::ErrorKind::TimedOut.into()));
            }
            if let Err(e) = self.stream.flush_records() {
                return Err(self.io_failure(e, false));
            }
        }
        Ok(())
    }

    /// One line out, the reply with the same `req_id` back (replies to
    /// earlier requests we gave up on are skipped). `verbose` prints both
    /// lines to stderr, passwords redacted ([`crate::auth::redact`]).
    pub fn exchange(
        &mut self,
        line: &[u8],
        req_id: Option<u64>,
        deadline: Instant,
        interrupt: Option<&AtomicBool>,
        verbose: bool,
    ) -> Result<Reply, ConnError> {
        if verbose {
            eprintln!("-> {}", crate::auth::redact(line));
        }
        self.send(line, deadline)?;
        loop {
            let reply = self.read_reply(deadline, interrupt)?;
            if verbose {
                eprintln!("<- {}", reply.line);
            }
            // A reply to an earlier request that we gave up on: skip it.
            if let (Some(want), Some(got)) = (req_id, reply.envelope.req_id) {
                if want != got {
                    continue;
                }
            }
            return Ok(reply);
        }
    }

    /// The next reply on this connection, whatever its `req_id`.
    pub fn read_reply(
        &mut self,
        deadline: Instant,
        interrupt: Option<&AtomicBool>,
    ) -> Result<Reply, ConnError> {
        let text = self.read_line(deadline, interrupt)?;
        let envelope: ReplyEnvelope = serde_json::from_str(&text)
            .map_err(|e| ConnError::Protocol(format!("reply is not a JSON envelope: {e}")))?;
        Ok(Reply {
            addr: self.addr.clone(),
            envelope,
            line: text,
        })
    }

    /// The next non-blank line, without its newline.
    fn read_line(
        &mut self,
        deadline: Instant,
        interrupt: Option<&AtomicBool>,
    ) -> Result<String, ConnError> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match self.buf.next_line() {
                Some(Ok(line)) if line.iter().all(u8::is_ascii_whitespace) => continue,
                Some(Ok(line)) => {
                    return String::from_utf8(line.to_vec())
                        .map_err(|_| ConnError::Protocol("reply is not UTF-8".into()))
                }
                Some(Err(_)) => {
                    return Err(ConnError::Protocol(format!(
                        "reply longer than {MAX_REPLY_BYTES} bytes"
                    )))
                }
                None => {}
            }
            if interrupt.is_some_and(|f| f.swap(false, Ordering::SeqCst)) {
                return Err(ConnError::Interrupted);
            }
            if Instant::now() >= deadline {
                return Err(after_send(io::ErrorKind::TimedOut.into()));
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    return Err(after_send(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the node closed the connection",
                    )))
                }
                Ok(n) => {
                    if !self.heard && !self.stream.is_tls() && tls::looks_like_tls(&chunk[..n]) {
                        return Err(ConnError::Tls(tls::speaks_tls(&self.addr)));
                    }
                    self.heard = true;
                    self.buf.extend(&chunk[..n]);
                }
                Err(e) if is_wait(&e) => {}
                Err(e) => return Err(self.io_failure(e, true)),
            }
        }
    }
}

/// A read or write that found nothing to do before its timeout.
fn is_wait(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}
