//! One TCP connection owned by the event loop: its input line buffer, its
//! output buffer, and the reply slots that keep pipelined replies in order.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::time::Instant;

use mio::net::TcpStream;
use poncho_protocol::{LineBuffer, NodeId};

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
    /// has come free meanwhile.
    Probation { until: Instant },
    /// Accepted, and a member has sent its messages on it.
    Peer(NodeId),
    /// Ours, to a peer: carries our messages to it. Nothing is read from it.
    Outbound(NodeId),
}

pub struct Conn {
    pub stream: TcpStream,
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
}

impl Conn {
    pub fn new(
        stream: TcpStream,
        role: ConnRole,
        generation: u64,
        max_line_bytes: usize,
        now: Instant,
    ) -> Conn {
        Conn {
            stream,
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
        }
    }

    /// Whether this is an accepted connection (not one of ours to a peer).
    pub fn is_inbound(&self) -> bool {
        !matches!(self.role, ConnRole::Outbound(_))
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

    /// Fills a reserved slot; replies go out in slot order.
    pub fn fill_slot(&mut self, slot: u64, reply: &[u8]) {
        let Some(position) = slot.checked_sub(self.first_slot) else {
            return; // already filled (cannot happen: each slot is filled once)
        };
        let position = position as usize;
        if position == 0 {
            self.output.extend_from_slice(reply);
            self.slots.pop_front();
            self.first_slot += 1;
            while let Some(Some(_)) = self.slots.front() {
                if let Some(Some(bytes)) = self.slots.pop_front() {
                    self.output.extend_from_slice(&bytes);
                }
                self.first_slot += 1;
            }
        } else if let Some(entry) = self.slots.get_mut(position) {
            *entry = Some(reply.to_vec());
        }
    }

    /// Appends bytes that need no slot (messages to a peer).
    pub fn push_output(&mut self, bytes: &[u8]) {
        self.output.extend_from_slice(bytes);
    }

    pub fn output_bytes(&self) -> usize {
        self.output.len() - self.written
    }

    pub fn pending_replies(&self) -> usize {
        self.slots.len()
    }

    /// Whether a client should be read from now (backpressure).
    pub fn wants_input(&self) -> bool {
        !self.close_after_flush
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
                    if short_read_drains && n < chunk.len() {
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
