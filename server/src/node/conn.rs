//! The event loop's TCP connections: each one's input line buffer, output
//! buffer and the reply slots that keep pipelined replies in order, and the
//! table of them all (`Conns`), which says where a reply goes (`ReplyTo`).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use poncho_protocol::{LineBuffer, NodeId};

use poncho_tls::MaybeTls;

use super::admission::Port;
use crate::peer_auth::Nonce;
use slab::Slab;

/// Stop reading a client's requests while this much output waits for it: a
/// client that does not read its replies gets no more work done.
pub const OUTPUT_PAUSE_BYTES: usize = 4 << 20;
/// Drop a client whose unread replies reach this much.
pub const OUTPUT_DROP_BYTES: usize = 64 << 20;
/// Stop reading a client with this many requests awaiting replies.
pub const MAX_PENDING_REPLIES: usize = 8192;
/// Bytes read per `read` call.
pub const READ_CHUNK: usize = 64 << 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnRole {
    /// Accepted and not known to be a peer's: a client, counted against
    /// `--max-clients`. A peer's connection is one until its first message.
    Client,
    /// Accepted past `--max-clients`, in the room kept for peers: it must
    /// show it is a peer's (a message from a member) by `until`. A client
    /// request on it is refused with OVERLOADED, unless a client's place
    /// has come free meanwhile. On the peer port (`peer_port`) every
    /// connection starts so, in places of its own, and must say hello.
    Probation { until: Instant, peer_port: bool },
    /// Accepted; a member's `PEER_HELLO` came on it and was answered with
    /// our challenge. Its proof must come next, by `until`.
    Proving(Proving),
    /// Accepted, and proven to be this member's (see `handshake.rs`): the
    /// Raft messages read on it go to the core as the member's.
    Peer(NodeId),
    /// Ours, to a peer: carries our messages to it once the handshake has
    /// proven both ends. Only the handshake (or a refusal) is read from it.
    Outbound(NodeId, Link),
}

/// An inbound handshake half done: who claims to be opening it, both nonces,
/// and the deadline for the opener's proof.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Proving {
    pub peer: NodeId,
    /// The hello named a cluster id this node takes if the peer proves
    /// itself (this node joins and has none yet): kept in
    /// `PeerTrust::claims` under the connection's key.
    pub claims_cluster: bool,
    /// The address it comes from (handshakes per source are bounded).
    pub source: IpAddr,
    pub opener_nonce: Nonce,
    pub our_nonce: Nonce,
    pub until: Instant,
}

/// How far the handshake on one of our connections to a peer has got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// `PEER_HELLO` sent with `nonce`; the challenge must come by `until`.
    Hello { nonce: Nonce, until: Instant },
    /// Our proof sent for the peer's `their` nonce; its `PEER_ACCEPT` (with
    /// its proof) must come by `until`.
    Proving {
        nonce: Nonce,
        their: Nonce,
        until: Instant,
    },
    /// Both ends proven: our Raft messages go out on it.
    Proven,
}

/// Poll tokens of connections start here (the listener, the signals, the
/// peer listener and the password worker come first).
pub const FIRST_CONN: usize = 4;

/// Where a reply must go: connection, its generation, and the reply slot.
#[derive(Clone, Copy)]
pub struct ReplyTo {
    pub conn: usize,
    generation: u64,
    slot: u64,
    pub req_id: Option<u64>,
}

/// Every open connection, by slab key (its poll token less `FIRST_CONN`),
/// and the ones with output to flush or to close at the end of the
/// iteration.
pub struct Conns {
    slab: Slab<Conn>,
    next_generation: u64,
    max_line_bytes: usize,
    dirty: Vec<usize>,
    /// What `read` reads through (not zeroed on every read).
    read_buffer: Box<[u8]>,
}

impl Conns {
    pub fn new(max_line_bytes: usize) -> Conns {
        Conns {
            slab: Slab::new(),
            next_generation: 0,
            max_line_bytes,
            dirty: Vec::new(),
            read_buffer: vec![0; READ_CHUNK].into_boxed_slice(),
        }
    }

    pub fn get(&self, key: usize) -> Option<&Conn> {
        self.slab.get(key)
    }

    pub fn get_mut(&mut self, key: usize) -> Option<&mut Conn> {
        self.slab.get_mut(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = (usize, &Conn)> {
        self.slab.iter()
    }

    pub fn keys(&self) -> Vec<usize> {
        self.slab.iter().map(|(k, _)| k).collect()
    }

    /// Registers `stream` with the poll and keeps it; returns its key.
    pub fn add(
        &mut self,
        registry: &Registry,
        mut stream: MaybeTls<TcpStream>,
        role: ConnRole,
        interest: Interest,
    ) -> io::Result<usize> {
        let entry = self.slab.vacant_entry();
        let key = entry.key();
        registry.register(stream.get_mut(), Token(key + FIRST_CONN), interest)?;
        self.next_generation += 1;
        entry.insert(Conn::new(
            stream,
            role,
            self.next_generation,
            self.max_line_bytes,
            Instant::now(),
        ));
        Ok(key)
    }

    /// Forgets a connection and takes it from the poll.
    pub fn remove(&mut self, registry: &Registry, key: usize) -> Option<Conn> {
        let mut conn = self.slab.try_remove(key)?;
        let _ = registry.deregister(conn.stream.get_mut());
        Some(conn)
    }

    /// `Conn::read_some` on `key`, through the shared read buffer; `None`
    /// if there is no such connection.
    pub fn read(
        &mut self,
        key: usize,
        budget: usize,
        short_read_drains: bool,
    ) -> Option<io::Result<bool>> {
        let conn = self.slab.get_mut(key)?;
        Some(conn.read_some(budget, &mut self.read_buffer, short_read_drains))
    }

    /// The read buffer, to read what a refused connection sent.
    pub fn read_buffer(&mut self) -> &mut [u8] {
        &mut self.read_buffer
    }

    /// Has `key` flushed (and closed, if it is done) at the end of the
    /// iteration. Every path that queues output must call it (or flush).
    pub fn mark_dirty(&mut self, key: usize) {
        self.dirty.push(key);
    }

    /// The connections marked, as marked; `put_back` marks them again.
    pub fn take_dirty(&mut self) -> Vec<usize> {
        std::mem::take(&mut self.dirty)
    }

    /// Marks `dirty` again, before anything marked since `take_dirty`; an
    /// emptied list is kept for its allocation.
    pub fn put_back(&mut self, dirty: Vec<usize>) {
        let mut later = std::mem::replace(&mut self.dirty, dirty);
        self.dirty.append(&mut later);
    }

    /// Reserves the place of the reply to the request just read on `key`.
    pub fn reserve(&mut self, key: usize, req_id: Option<u64>) -> Option<ReplyTo> {
        let conn = self.slab.get_mut(key)?;
        Some(ReplyTo {
            conn: key,
            generation: conn.generation,
            slot: conn.reserve_slot(),
            req_id,
        })
    }

    /// Sends what `encode` writes as the reply to the request just read on
    /// `key`, in its turn.
    pub fn reply_now(&mut self, key: usize, encode: impl FnOnce(&mut Vec<u8>)) {
        if let Some(conn) = self.slab.get_mut(key) {
            let slot = conn.reserve_slot();
            conn.fill_slot(slot, encode);
            // The oversized-line path returns before `process_lines` marks
            // the connection, and a reply with nothing pending before it
            // would otherwise wait for the next event on the connection.
            self.dirty.push(key);
        }
    }

    /// The connection a reply goes to, if it is still the one that asked.
    pub fn current(&mut self, to: &ReplyTo) -> Option<&mut Conn> {
        self.slab
            .get_mut(to.conn)
            .filter(|c| c.generation == to.generation)
    }

    /// Sends what `encode` writes to a reserved slot, if its connection is
    /// still the one that asked.
    pub fn complete(&mut self, to: ReplyTo, encode: impl FnOnce(&mut Vec<u8>)) {
        if let Some(conn) = self.slab.get_mut(to.conn) {
            if conn.generation == to.generation {
                conn.fill_slot(to.slot, encode);
                self.dirty.push(to.conn);
            }
        }
    }
}

pub struct Conn {
    /// The socket, plain or carrying TLS (the node's `--cert-file`).
    pub stream: MaybeTls<TcpStream>,
    /// When the connection was accepted or opened.
    pub opened: Instant,
    /// The listener it came in on (ours to peers: `Port::Client`, unused).
    pub port: Port,
    /// Lines handled so far (a peer's hello must be the first).
    pub lines_handled: u64,
    pub role: ConnRole,
    /// Distinguishes this connection from a later one reusing its slab key.
    pub generation: u64,
    pub input: LineBuffer,
    output: Vec<u8>,
    written: usize,
    /// Replies not yet in `output`, in request order: `slots[0]` is the reply
    /// to request number `first_slot`. `None` until its reply is ready.
    slots: VecDeque<Option<Vec<u8>>>,
    first_slot: u64,
    /// Outbound only: the nonblocking connect has not completed yet.
    pub connecting: bool,
    /// Send what is buffered, then close (after MESSAGE_TOO_LARGE).
    pub close_after_flush: bool,
    /// Reading stopped for backpressure; resume when output drains.
    pub read_paused: bool,
    pub peer_eof: bool,
    /// The log index of the latest write proposed from this connection: a
    /// later read on it waits until that index is applied, so a pipelined
    /// GET after a SET sees the SET (read-your-writes).
    pub last_write_index: u64,
    /// Since when the input holds the start of a line and not its end
    /// (while it is being read): the partial-request deadline runs from it.
    pub partial_since: Option<Instant>,
    /// The last time bytes came in or went out: the idle timeout runs from it.
    pub last_active: Instant,
    /// Who the connection logged in as (AUTHENTICATE, or its client
    /// certificate): what its requests are checked against.
    pub user: Option<Arc<str>>,
    /// An AUTHENTICATE is being checked: nothing more is read until it is
    /// answered (see `logins.rs`).
    pub logging_in: bool,
    /// The logged-in user's `since` (`kv::auth::User`) when its password
    /// was checked: the login stands while it is the user's `since`. `None`
    /// for a login by certificate, which no password change undoes.
    pub user_since: Option<u64>,
    /// The `since` of the user an AUTHENTICATE in progress names, read when
    /// the password was sent to be checked.
    pub login_since: Option<u64>,
    /// Failed logins so far: each answer waits longer.
    pub failed_logins: u32,
    /// The id the connection's last watch got (they count from 1), and how
    /// many it has now (a watching connection is not idle).
    pub next_watch_id: u64,
    pub watches: usize,
    /// The login in progress's flag, set when the connection is dropped so
    /// the password worker skips a check nobody waits for.
    pub login_gone: Option<Arc<AtomicBool>>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(gone) = &self.login_gone {
            gone.store(true, Ordering::Relaxed);
        }
    }
}

impl Conn {
    pub fn new(
        stream: MaybeTls<TcpStream>,
        role: ConnRole,
        generation: u64,
        max_line_bytes: usize,
        now: Instant,
    ) -> Conn {
        Conn {
            stream,
            opened: now,
            port: Port::Client,
            lines_handled: 0,
            role,
            generation,
            input: LineBuffer::new(max_line_bytes),
            output: Vec::new(),
            written: 0,
            slots: VecDeque::new(),
            first_slot: 0,
            connecting: false,
            close_after_flush: false,
            read_paused: false,
            peer_eof: false,
            last_write_index: 0,
            partial_since: None,
            last_active: now,
            user: None,
            logging_in: false,
            user_since: None,
            login_since: None,
            failed_logins: 0,
            next_watch_id: 0,
            watches: 0,
            login_gone: None,
        }
    }

    /// Whether this is an accepted connection (not one of ours to a peer).
    pub fn is_inbound(&self) -> bool {
        !matches!(self.role, ConnRole::Outbound(..))
    }

    /// After the lines read at `now` were taken: starts the partial-request
    /// clock when a line is left incomplete (from `now` when a line was
    /// completed in this read, or reading resumed after a pause: the client
    /// owed nothing before), and stops it when none is.
    pub fn note_input(&mut self, now: Instant, restart_clock: bool) {
        self.last_active = now;
        if self.input.pending_bytes() == 0 {
            self.partial_since = None;
        } else if restart_clock || self.partial_since.is_none() {
            self.partial_since = Some(now);
        }
    }

    /// Reserves the place of the next reply.
    pub fn reserve_slot(&mut self) -> u64 {
        self.slots.push_back(None);
        self.first_slot + self.slots.len() as u64 - 1
    }

    /// Fills a reserved slot with the reply `encode` writes; replies go out
    /// in slot order. The reply is encoded where it goes: into the output
    /// when every earlier reply is out, else into the slot, to wait there.
    pub fn fill_slot(&mut self, slot: u64, encode: impl FnOnce(&mut Vec<u8>)) {
        let Some(position) = slot.checked_sub(self.first_slot) else {
            return; // already filled (cannot happen: each slot is filled once)
        };
        let position = position as usize;
        if position == 0 {
            encode(&mut self.output);
            self.slots.pop_front();
            self.first_slot += 1;
            while let Some(Some(_)) = self.slots.front() {
                if let Some(Some(bytes)) = self.slots.pop_front() {
                    self.output.extend_from_slice(&bytes);
                }
                self.first_slot += 1;
            }
        } else if let Some(entry) = self.slots.get_mut(position) {
            let mut reply = Vec::new();
            encode(&mut reply);
            *entry = Some(reply);
        }
    }

    /// Appends what `encode` writes, needing no slot (messages to a peer).
    pub fn push_output(&mut self, encode: impl FnOnce(&mut Vec<u8>)) {
        encode(&mut self.output);
    }

    /// Whether the reply in `slot` has gone to the output (it and every
    /// reply before it are ready).
    pub fn slot_sent(&self, slot: u64) -> bool {
        slot < self.first_slot
    }

    pub fn output_bytes(&self) -> usize {
        self.output.len() - self.written
    }

    /// Whether anything is still to go out: our output, or TLS records.
    pub fn has_unsent(&self) -> bool {
        self.output_bytes() > 0 || self.stream.has_records_to_send()
    }

    pub fn pending_replies(&self) -> usize {
        self.slots.len()
    }

    /// Whether its client closed while it was logging in, sending nothing
    /// after the AUTHENTICATE: nobody is left to answer.
    pub fn hung_up_logging_in(&self) -> bool {
        self.logging_in && self.peer_eof && self.input.pending_bytes() == 0
    }

    /// Whether a client should be read from now (backpressure).
    pub fn wants_input(&self) -> bool {
        !self.close_after_flush
            && !self.logging_in
            && self.output_bytes() < OUTPUT_PAUSE_BYTES
            && self.slots.len() < MAX_PENDING_REPLIES
    }

    /// Writes buffered output until done or the socket would block.
    pub fn flush(&mut self) -> io::Result<()> {
        if self.written < self.output.len() && self.is_inbound() {
            self.last_active = Instant::now();
        }
        while self.written < self.output.len() {
            match self.stream.write(&self.output[self.written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        // TLS: records rustls still holds (the socket was full).
        self.stream.flush_records()?;
        if self.written == self.output.len() {
            self.output.clear();
            self.written = 0;
        } else if self.written > (1 << 20) {
            self.output.drain(..self.written);
            self.written = 0;
        }
        Ok(())
    }

    /// Reads what the socket has into the line buffer, up to `budget` bytes,
    /// through `chunk` (the caller's, so it is not zeroed on every call).
    /// Returns whether the socket may still have more (the budget ran out).
    ///
    /// With `short_read_drains`, a read that returns less than `chunk` holds
    /// is taken to have emptied the socket, sparing the read that would only
    /// say "would block": on Linux, epoll (edge-triggered, as mio registers)
    /// reports every later arrival as a new event. The caller passes it only
    /// for a readable event that did not also report the peer's close, which
    /// may already be queued behind the data and raise no further event.
    /// Under TLS it holds only when the socket's own read was short (see
    /// `MaybeTls::short_read_emptied_socket`).
    pub fn read_some(
        &mut self,
        budget: usize,
        chunk: &mut [u8],
        short_read_drains: bool,
    ) -> io::Result<bool> {
        let mut total = 0;
        while total < budget {
            match self.stream.read(chunk) {
                Ok(0) => {
                    self.peer_eof = true;
                    return Ok(false);
                }
                Ok(n) => {
                    self.input.extend(&chunk[..n]);
                    total += n;
                    // Under TLS only if the socket's own read was short.
                    if short_read_drains
                        && n < chunk.len()
                        && self.stream.short_read_emptied_socket()
                    {
                        return Ok(false);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_leave_in_request_order_even_when_completed_out_of_order() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        stream.set_nonblocking(true).unwrap();
        let mut conn = Conn::new(
            MaybeTls::Plain(TcpStream::from_std(stream)),
            ConnRole::Client,
            1,
            1024,
            Instant::now(),
        );
        let line = |text: &'static [u8]| move |out: &mut Vec<u8>| out.extend_from_slice(text);
        let a = conn.reserve_slot();
        let b = conn.reserve_slot();
        let c = conn.reserve_slot();
        conn.fill_slot(c, line(b"c\n"));
        conn.fill_slot(b, line(b"b\n"));
        assert_eq!(
            conn.output_bytes(),
            0,
            "nothing may overtake the first reply"
        );
        conn.fill_slot(a, line(b"a\n"));
        assert_eq!(conn.output_bytes(), 6);
        assert_eq!(conn.pending_replies(), 0);
    }
}
