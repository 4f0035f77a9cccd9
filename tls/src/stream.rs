//! A byte stream that is plain TCP or TLS over it, for blocking and
//! nonblocking sockets alike: [`MaybeTls`] reads and writes plaintext, and
//! drives the TLS records (handshake included) underneath.
//!
//! With a nonblocking socket, `read` and `write` return `WouldBlock` as the
//! socket does; a `write` takes plaintext into rustls's buffer (bounded by
//! [`TLS_BUFFER_LIMIT`]) and sends what the socket takes, so after a
//! writable event the owner calls [`MaybeTls::flush_records`] to send what
//! rustls still holds. A TLS failure (a bad certificate, a plaintext peer)
//! is an `io::Error` of kind `InvalidData` whose text is
//! [`crate::explain`]'s; [`MaybeTls::tls_error`] keeps it typed.

use std::io::{self, Read, Write};

use rustls::Connection;

/// Plaintext rustls buffers, sent or unsent, per connection, before `write`
/// takes no more (it then returns what it took, or `WouldBlock`).
pub const TLS_BUFFER_LIMIT: usize = 1 << 20;

pub enum MaybeTls<S> {
    Plain(S),
    Tls {
        conn: Box<Connection>,
        sock: S,
        /// The first TLS failure, kept: the connection is done after it.
        failed: Option<rustls::Error>,
        /// Whether the latest read from the socket returned less than it
        /// was offered (see [`MaybeTls::short_read_emptied_socket`]).
        socket_read_short: bool,
    },
}

impl<S: Read + Write> MaybeTls<S> {
    /// `sock` carrying TLS for `conn` (a fresh client or server session).
    pub fn tls(conn: impl Into<Connection>, sock: S) -> MaybeTls<S> {
        let mut conn: Connection = conn.into();
        conn.set_buffer_limit(Some(TLS_BUFFER_LIMIT));
        MaybeTls::Tls {
            conn: Box::new(conn),
            sock,
            failed: None,
            socket_read_short: false,
        }
    }

    pub fn get_ref(&self) -> &S {
        match self {
            MaybeTls::Plain(s) => s,
            MaybeTls::Tls { sock, .. } => sock,
        }
    }

    pub fn get_mut(&mut self) -> &mut S {
        match self {
            MaybeTls::Plain(s) => s,
            MaybeTls::Tls { sock, .. } => sock,
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, MaybeTls::Tls { .. })
    }

    /// Whether the TLS handshake is still under way (never, for plain TCP).
    pub fn is_handshaking(&self) -> bool {
        match self {
            MaybeTls::Plain(_) => false,
            MaybeTls::Tls { conn, .. } => conn.is_handshaking(),
        }
    }

    /// The TLS failure that ended this connection, if one did.
    pub fn tls_error(&self) -> Option<&rustls::Error> {
        match self {
            MaybeTls::Tls { failed, .. } => failed.as_ref(),
            MaybeTls::Plain(_) => None,
        }
    }

    /// The other end's certificate chain, once the handshake is done (TLS
    /// with client certificates only).
    pub fn peer_certificates(&self) -> Option<&[rustls::pki_types::CertificateDer<'static>]> {
        match self {
            MaybeTls::Tls { conn, .. } => conn.peer_certificates(),
            MaybeTls::Plain(_) => None,
        }
    }

    /// After a `read` that returned fewer bytes than its buffer holds:
    /// whether the socket itself had nothing more then, as a short read of
    /// a plain socket says (on Linux, where an arrival after it is a new
    /// edge-triggered event). Under TLS a short read says only that the
    /// decrypted bytes ran out; the socket was emptied too only if the
    /// latest read from it was short as well (rustls processes every
    /// complete record it has read before it hands out plaintext). This
    /// spares the read that would only say "would block".
    pub fn short_read_emptied_socket(&self) -> bool {
        match self {
            MaybeTls::Plain(_) => true,
            MaybeTls::Tls {
                socket_read_short, ..
            } => *socket_read_short,
        }
    }

    /// Whether rustls holds records not yet written to the socket.
    pub fn has_records_to_send(&self) -> bool {
        match self {
            MaybeTls::Plain(_) => false,
            MaybeTls::Tls { conn, .. } => conn.wants_write(),
        }
    }

    /// Writes the records rustls holds until done or the socket would block
    /// (`Ok` either way; `WouldBlock` is not an error here).
    pub fn flush_records(&mut self) -> io::Result<()> {
        match self {
            MaybeTls::Plain(_) => Ok(()),
            MaybeTls::Tls { conn, sock, .. } => write_records(conn, sock),
        }
    }

    /// One step of the TLS handshake on a blocking socket (with a read
    /// timeout) or a nonblocking one: sends what rustls holds, then reads
    /// and processes what the socket has. `Ok(true)` once the handshake is
    /// done (at once for plain TCP); an error of kind `WouldBlock` or
    /// `TimedOut` when the socket had nothing (the caller checks its
    /// deadline and steps again); `UnexpectedEof` if the other end closed;
    /// a TLS failure as `read` reports it (kept in [`MaybeTls::tls_error`]).
    pub fn handshake_step(&mut self) -> io::Result<bool> {
        let MaybeTls::Tls {
            conn, sock, failed, ..
        } = self
        else {
            return Ok(true);
        };
        if let Some(e) = failed {
            return Err(tls_failure(e));
        }
        write_records(conn, sock)?;
        if !conn.is_handshaking() {
            return Ok(true);
        }
        if conn.read_tls(sock)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the other end closed the connection during the TLS handshake",
            ));
        }
        process_records(conn, sock, failed)?;
        Ok(!conn.is_handshaking())
    }

    /// The same stream over another type of socket (a blocking std socket
    /// handed to a poll loop as a nonblocking one, say), TLS state kept.
    pub fn map_socket<T>(self, f: impl FnOnce(S) -> T) -> MaybeTls<T> {
        match self {
            MaybeTls::Plain(s) => MaybeTls::Plain(f(s)),
            MaybeTls::Tls {
                conn,
                sock,
                failed,
                socket_read_short,
            } => MaybeTls::Tls {
                conn,
                sock: f(sock),
                failed,
                socket_read_short,
            },
        }
    }

    /// Sends a TLS close_notify (nothing for plain TCP); the records go out
    /// with the next flush.
    pub fn send_close_notify(&mut self) {
        if let MaybeTls::Tls { conn, .. } = self {
            conn.send_close_notify();
        }
    }
}

fn tls_failure(error: &rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, crate::explain(error))
}

impl<S: Read + Write> Read for MaybeTls<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            MaybeTls::Plain(s) => s.read(buf),
            MaybeTls::Tls {
                conn,
                sock,
                failed,
                socket_read_short,
            } => read_plaintext(conn, sock, failed, socket_read_short, buf),
        }
    }
}

/// Decrypted bytes into `buf`, reading and processing records as needed;
/// `socket_read_short` records whether each read from the socket returned
/// less than it was offered.
fn read_plaintext<S: Read + Write>(
    conn: &mut Connection,
    sock: &mut S,
    failed: &mut Option<rustls::Error>,
    socket_read_short: &mut bool,
    buf: &mut [u8],
) -> io::Result<usize> {
    if let Some(e) = failed {
        return Err(tls_failure(e));
    }
    loop {
        // Plaintext already decrypted comes first.
        match conn.reader().read(buf) {
            Ok(n) => return Ok(n), // 0: the other end sent close_notify
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            // The socket closed without close_notify: report it as EOF,
            // which is what the owner acts on.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
            Err(e) => return Err(e),
        }
        let mut probe = ShortReadProbe {
            sock: &mut *sock,
            short: false,
        };
        let read = conn.read_tls(&mut probe);
        *socket_read_short = probe.short;
        if read? == 0 {
            return Ok(0);
        }
        process_records(conn, sock, failed)?;
    }
}

/// A socket read through, noting whether the read returned less than the
/// buffer offered.
struct ShortReadProbe<'a, S> {
    sock: &'a mut S,
    short: bool,
}

impl<S: Read> Read for ShortReadProbe<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.sock.read(buf)?;
        self.short = n < buf.len();
        Ok(n)
    }
}

/// Processes the records read; a failure is kept in `failed`. Replies
/// (handshake messages, key updates) go out at once.
fn process_records<S: Read + Write>(
    conn: &mut Connection,
    sock: &mut S,
    failed: &mut Option<rustls::Error>,
) -> io::Result<()> {
    if let Err(e) = conn.process_new_packets() {
        // Tell the other end why (an alert), as far as the socket takes
        // it, then fail from now on.
        let _ = conn.write_tls(sock);
        let error = tls_failure(&e);
        *failed = Some(e);
        return Err(error);
    }
    write_records(conn, sock)
}

/// Writes the records `conn` holds until done or the socket would block.
fn write_records<S: Write>(conn: &mut Connection, sock: &mut S) -> io::Result<()> {
    while conn.wants_write() {
        match conn.write_tls(sock) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl<S: Read + Write> Write for MaybeTls<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let (conn, sock) = match self {
            MaybeTls::Plain(s) => return s.write(buf),
            MaybeTls::Tls {
                failed: Some(e), ..
            } => return Err(tls_failure(e)),
            MaybeTls::Tls { conn, sock, .. } => (conn, sock),
        };
        let taken = conn.writer().write(buf)?;
        write_records(conn, sock)?;
        if taken == 0 && !buf.is_empty() {
            // rustls's buffer is full and the socket takes nothing now.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(taken)
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            MaybeTls::Plain(s) => s.flush(),
            MaybeTls::Tls { .. } => self.flush_records(),
        }
    }
}
