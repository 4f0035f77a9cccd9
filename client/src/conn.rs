//! One blocking TCP connection to one node: a request line out, its reply
//! line back, with reads bounded in size ([`MAX_REPLY_BYTES`]) and in time (a
//! deadline, checked every [`SLICE`], and an optional Ctrl-C flag).

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use poncho_protocol::{LineBuffer, ReplyEnvelope};

/// Replies can be long (10,000 keys of 1 KiB, escaped); anything past this
/// is not a reply from a poncho node.
pub const MAX_REPLY_BYTES: usize = 64 << 20;
/// How long one blocking read or sleep may last before we look at Ctrl-C.
pub const SLICE: Duration = Duration::from_millis(50);

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
}

impl fmt::Display for ConnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnError::Io { error, .. } => write!(f, "{error}"),
            ConnError::Protocol(m) => f.write_str(m),
            ConnError::Interrupted => f.write_str("interrupted"),
        }
    }
}

fn unsent(error: io::Error) -> ConnError {
    ConnError::Io { error, sent: false }
}

fn after_send(error: io::Error) -> ConnError {
    ConnError::Io { error, sent: true }
}

#[derive(Debug)]
pub struct Connection {
    addr: String,
    stream: TcpStream,
    buf: LineBuffer,
}

impl Connection {
    /// Connects to `addr` (each of its socket addresses in turn, each given
    /// what is left until `deadline`, between 10 ms and 1 s).
    pub fn open(addr: &str, deadline: Instant) -> io::Result<Connection> {
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
        for sock in addr.to_socket_addrs()? {
            let left = deadline
                .saturating_duration_since(Instant::now())
                .clamp(Duration::from_millis(10), Duration::from_secs(1));
            match TcpStream::connect_timeout(&sock, left) {
                Ok(stream) => return Connection::from_stream(stream, addr),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// A connection on a stream the caller opened (to `addr`).
    pub fn from_stream(stream: TcpStream, addr: &str) -> io::Result<Connection> {
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(SLICE))?;
        Ok(Connection {
            addr: addr.to_string(),
            stream,
            buf: LineBuffer::new(MAX_REPLY_BYTES),
        })
    }

    /// The address this connection was opened to, as given.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The socket, for a caller that drives it on its own from now on (the
    /// bench, nonblocking). Fails if bytes of a reply are still buffered.
    pub fn into_stream(self) -> Result<TcpStream, ConnError> {
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
            .max(Duration::from_millis(10));
        self.stream.set_write_timeout(Some(left)).map_err(unsent)?;
        self.stream.write_all(line).map_err(unsent)
    }

    /// One line out, the reply with the same `req_id` back (replies to
    /// earlier requests we gave up on are skipped). `verbose` prints both
    /// lines to stderr.
    pub fn exchange(
        &mut self,
        line: &[u8],
        req_id: Option<u64>,
        deadline: Instant,
        interrupt: Option<&AtomicBool>,
        verbose: bool,
    ) -> Result<Reply, ConnError> {
        if verbose {
            eprintln!("-> {}", String::from_utf8_lossy(line).trim_end());
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
                Ok(n) => self.buf.extend(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(after_send(e)),
            }
        }
    }
}
