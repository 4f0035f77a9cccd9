//! The cluster client: one blocking TCP connection at a time, which follows
//! `NOT_LEADER` redirects, retries the errors that promise a retry is safe
//! (and the outcome-unknown ones, with the same client_id/seq), and moves to
//! another node when the one it talks to dies, all until a deadline.
//!
//! Writes go through a session the cluster opens (`REGISTER_CLIENT`, before
//! the first write). When the cluster answers `SESSION_EXPIRED`, the write
//! was not applied this time; if no earlier attempt of it can have been
//! applied either, it is sent again in a new session, and otherwise its
//! outcome is unknown ([`CallError::OutcomeUnknown`]).

use std::io::{self, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::sleep;
use std::time::{Duration, Instant};

use poncho_protocol::{
    encode_peer, encode_request, ClientRequest, ErrorCode, ErrorReply, LineBuffer, RaftMessage,
    RegisterClientReply, ReplyEnvelope, SessionFields, StatusReply,
};
use rand::Rng;

/// Replies can be long (10,000 keys of 1 KiB, escaped); anything past this
/// is not a reply from a poncho node.
const MAX_REPLY_BYTES: usize = 64 << 20;
/// How long one blocking read or sleep may last before we look at Ctrl-C.
const SLICE: Duration = Duration::from_millis(50);
const FIRST_BACKOFF: Duration = Duration::from_millis(20);
const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// Why a request failed, after every retry the deadline allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// The cluster's answer (or, at the deadline, its last answer).
    Server(ErrorReply),
    /// No node could be reached, or none replied in time.
    Unreachable(String),
    /// A request sent but not answered before the deadline: its outcome is
    /// unknown (a write may still be applied).
    NoReply(String),
    /// A write's session expired while it was retried after an attempt that
    /// may have been applied: whether it was is unknown. The next write
    /// opens a new session.
    OutcomeUnknown(String),
    /// A reply that is not the protocol.
    Protocol(String),
    /// Ctrl-C while waiting.
    Interrupted,
}

impl CallError {
    /// What `--json` reports as `error.code`.
    pub fn code(&self) -> String {
        match self {
            CallError::Server(e) => e.code.to_string(),
            CallError::Unreachable(_) => "UNREACHABLE".into(),
            CallError::NoReply(_) => "TIMEOUT".into(),
            CallError::OutcomeUnknown(_) => "OUTCOME_UNKNOWN".into(),
            CallError::Protocol(_) => "PROTOCOL".into(),
            CallError::Interrupted => "INTERRUPTED".into(),
        }
    }

    pub fn message(&self) -> String {
        match self {
            CallError::Server(e) => e.message.clone(),
            CallError::Unreachable(m)
            | CallError::NoReply(m)
            | CallError::OutcomeUnknown(m)
            | CallError::Protocol(m) => m.clone(),
            CallError::Interrupted => "cancelled (Ctrl-C)".into(),
        }
    }
}

/// Where a request may be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Reads and writes: follow `NOT_LEADER` to the leader.
    Leader,
    /// HEALTHCHECK, STATUS and probes: whichever node we talk to.
    Here,
}

/// A reply and the node that sent it.
#[derive(Debug)]
pub struct Reply {
    pub addr: String,
    pub envelope: ReplyEnvelope,
    /// The line as received, for printing a probe's reply as it is.
    pub line: String,
}

struct Conn {
    addr: String,
    stream: TcpStream,
    buf: LineBuffer,
}

pub struct ClusterClient {
    /// Every address we know: the ones given, then leaders we were sent to.
    addrs: Vec<String>,
    /// Where the next connection attempt starts in `addrs`.
    next: usize,
    /// Where a redirect told us to go.
    preferred: Option<String>,
    conn: Option<Conn>,
    pub timeout: Duration,
    pub verbose: bool,
    /// The session writes carry (a `REGISTER_CLIENT` reply), once opened.
    session: Option<u64>,
    /// The last `seq` used in `session`.
    seq: u64,
    req_id: u64,
    interrupt: Option<Arc<AtomicBool>>,
}

impl ClusterClient {
    pub fn new(addrs: Vec<String>, timeout: Duration, verbose: bool) -> ClusterClient {
        ClusterClient {
            addrs,
            next: 0,
            preferred: None,
            conn: None,
            timeout,
            verbose,
            session: None,
            seq: 0,
            req_id: 0,
            interrupt: None,
        }
    }

    /// Ctrl-C sets this flag; a request in progress then gives up.
    pub fn set_interrupt(&mut self, flag: Arc<AtomicBool>) {
        self.interrupt = Some(flag);
    }

    /// The session's id, once the first write opened one.
    pub fn client_id(&self) -> Option<u64> {
        self.session
    }

    pub fn addrs(&self) -> &[String] {
        &self.addrs
    }

    /// The node we are connected to, if any.
    pub fn connected(&self) -> Option<&str> {
        self.conn.as_ref().map(|c| c.addr.as_str())
    }

    /// The session fields for a new write: a fresh `seq`, in the session,
    /// which is opened first if there is none. Retries of that write reuse
    /// them, so the cluster applies it at most once.
    fn next_session(&mut self) -> Result<SessionFields, CallError> {
        let client_id = match self.session {
            Some(id) => id,
            None => {
                // A registration whose reply is lost opens a session nobody
                // uses; it expires like any idle one.
                let reply = self.request(&ClientRequest::RegisterClient, Route::Leader)?;
                let registered: RegisterClientReply =
                    serde_json::from_value(reply.envelope.payload).map_err(|e| {
                        CallError::Protocol(format!(
                            "unexpected {} reply from {}: {e}",
                            reply.envelope.msg_type, reply.addr
                        ))
                    })?;
                self.note(format!("opened session {}", registered.client_id));
                self.session = Some(registered.client_id);
                self.seq = 0;
                registered.client_id
            }
        };
        self.seq += 1;
        Ok(SessionFields {
            client_id: Some(client_id),
            seq: Some(self.seq),
        })
    }

    /// Sends a write built by `make` from its session fields, like
    /// [`ClusterClient::request`], exactly once: in the current session (one
    /// is opened first if needed), retried with the same fields. If the
    /// session is gone (`SESSION_EXPIRED`) before any attempt could have been
    /// applied, the write is sent again in a new session; after an attempt
    /// whose outcome is unknown it fails with [`CallError::OutcomeUnknown`].
    pub fn write(
        &mut self,
        make: impl Fn(SessionFields) -> ClientRequest,
    ) -> Result<Reply, CallError> {
        let mut renewed = false;
        loop {
            let request = make(self.next_session()?);
            match self.request(&request, Route::Leader) {
                Err(CallError::Server(e)) if e.code == ErrorCode::SessionExpired && !renewed => {
                    self.note(format!(
                        "SESSION_EXPIRED: session {:?} is gone and the write was not applied; \
                         sending it in a new session",
                        self.session
                    ));
                    self.session = None;
                    renewed = true;
                }
                result => {
                    if matches!(
                        &result,
                        Err(CallError::OutcomeUnknown(_)
                            | CallError::Server(ErrorReply {
                                code: ErrorCode::SessionExpired,
                                ..
                            }))
                    ) {
                        self.session = None;
                    }
                    return result;
                }
            }
        }
    }

    fn interrupted(&self) -> bool {
        self.interrupt
            .as_ref()
            .is_some_and(|f| f.swap(false, Ordering::SeqCst))
    }

    fn note(&self, text: impl AsRef<str>) {
        if self.verbose {
            eprintln!("-- {}", text.as_ref());
        }
    }

    pub fn disconnect(&mut self) {
        if let Some(c) = self.conn.take() {
            self.note(format!("disconnected from {}", c.addr));
        }
    }

    fn remember(&mut self, addr: &str) {
        if !self.addrs.iter().any(|a| a == addr) {
            self.addrs.push(addr.to_string());
        }
    }

    /// Connects to `addr` now (the `connect` command), making it the node
    /// tried first from now on.
    pub fn connect_to(&mut self, addr: &str) -> Result<(), CallError> {
        self.disconnect();
        let deadline = Instant::now() + self.timeout.min(Duration::from_secs(2));
        match self.open(addr, deadline) {
            Ok(conn) => {
                self.addrs.retain(|a| a != addr);
                self.addrs.insert(0, addr.to_string());
                self.next = 0;
                self.preferred = None;
                self.conn = Some(conn);
                Ok(())
            }
            Err(e) => Err(CallError::Unreachable(format!("{addr}: {e}"))),
        }
    }

    fn open(&self, addr: &str, deadline: Instant) -> io::Result<Conn> {
        self.note(format!("connecting to {addr}"));
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
        for sock in addr.to_socket_addrs()? {
            let left = deadline
                .saturating_duration_since(Instant::now())
                .clamp(Duration::from_millis(10), Duration::from_secs(1));
            match TcpStream::connect_timeout(&sock, left) {
                Ok(stream) => {
                    stream.set_nodelay(true)?;
                    stream.set_read_timeout(Some(SLICE))?;
                    return Ok(Conn {
                        addr: addr.to_string(),
                        stream,
                        buf: LineBuffer::new(MAX_REPLY_BYTES),
                    });
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Makes sure there is a connection: the preferred node, else each known
    /// address once, in turn. Fails only if none accepted.
    fn ensure_connected(&mut self, deadline: Instant) -> Result<(), String> {
        if self.conn.is_some() {
            return Ok(());
        }
        let mut order: Vec<String> = Vec::new();
        if let Some(p) = self.preferred.take() {
            order.push(p);
        }
        let n = self.addrs.len();
        for i in 0..n {
            let a = &self.addrs[(self.next + i) % n];
            if !order.contains(a) {
                order.push(a.clone());
            }
        }
        let mut errors = Vec::new();
        for addr in order {
            if Instant::now() >= deadline {
                break;
            }
            match self.open(&addr, deadline) {
                Ok(conn) => {
                    self.conn = Some(conn);
                    return Ok(());
                }
                Err(e) => {
                    self.note(format!("{addr}: {e}"));
                    errors.push(format!("{addr}: {e}"));
                }
            }
        }
        if errors.is_empty() {
            errors.push("no address to try".into());
        }
        Err(format!("no node answered ({})", errors.join("; ")))
    }

    /// Drops the connection and starts the next attempt at the next address.
    pub fn rotate(&mut self) {
        let current = self.conn.as_ref().map(|c| c.addr.clone());
        self.disconnect();
        if let Some(addr) = current {
            if let Some(i) = self.addrs.iter().position(|a| *a == addr) {
                self.next = (i + 1) % self.addrs.len().max(1);
            }
        }
    }

    /// Sleeps `d` (or until the deadline), waking for Ctrl-C.
    fn pause(&self, d: Duration, deadline: Instant) -> Result<(), CallError> {
        let until = (Instant::now() + d).min(deadline);
        while Instant::now() < until {
            if self.interrupted() {
                return Err(CallError::Interrupted);
            }
            sleep(SLICE.min(until.saturating_duration_since(Instant::now())));
        }
        Ok(())
    }

    /// Sends a client request, following redirects and retrying until the
    /// deadline. Every retry sends the same line: a write goes through
    /// [`ClusterClient::write`], which gives it its session fields.
    pub fn request(&mut self, request: &ClientRequest, route: Route) -> Result<Reply, CallError> {
        self.req_id += 1;
        let req_id = self.req_id;
        let mut line = Vec::new();
        encode_request(&mut line, Some(req_id), request);
        self.call(&line, Some(req_id), route)
    }

    /// Sends a Raft probe (no src_id) to the node we talk to.
    pub fn probe(&mut self, message: &RaftMessage) -> Result<Reply, CallError> {
        let mut line = Vec::new();
        encode_peer(&mut line, None, None, message);
        self.call(&line, None, Route::Here)
    }

    fn call(&mut self, line: &[u8], req_id: Option<u64>, route: Route) -> Result<Reply, CallError> {
        let deadline = Instant::now() + self.timeout;
        let mut backoff = FIRST_BACKOFF;
        let mut last: Option<CallError> = None;
        let mut redirects = 0u32;
        // Whether an attempt may have been applied: sent and never answered,
        // or answered with an outcome-unknown error.
        let mut uncertain = false;
        loop {
            if self.interrupted() {
                return Err(CallError::Interrupted);
            }
            if Instant::now() >= deadline {
                return Err(self.give_up(last));
            }
            if let Err(e) = self.ensure_connected(deadline) {
                last = Some(CallError::Unreachable(e));
                self.note(format!("retrying in {backoff:?}"));
                self.pause(backoff, deadline)?;
                backoff = grow(backoff);
                continue;
            }
            let addr = self.connected().unwrap_or_default().to_string();
            let reply = match self.exchange(line, req_id, deadline) {
                Ok(reply) => reply,
                Err(Exchange::Interrupted) => {
                    // The reply may still come: this connection is out of step.
                    self.disconnect();
                    return Err(CallError::Interrupted);
                }
                Err(Exchange::Io(e, sent)) => {
                    let what = if sent {
                        "lost the connection before the reply"
                    } else {
                        "could not send"
                    };
                    self.note(format!("{addr}: {what}: {e}"));
                    uncertain |= sent;
                    last = Some(if sent && Instant::now() >= deadline {
                        CallError::NoReply(format!(
                            "no reply from {addr} within {:?}",
                            self.timeout
                        ))
                    } else {
                        CallError::Unreachable(format!("{addr}: {e}"))
                    });
                    self.rotate();
                    self.pause(backoff, deadline)?;
                    backoff = grow(backoff);
                    continue;
                }
                Err(Exchange::Protocol(m)) => {
                    self.disconnect();
                    return Err(CallError::Protocol(format!("{addr}: {m}")));
                }
            };
            if reply.envelope.msg_type != "ERROR" {
                return Ok(reply);
            }
            let Some(error) = reply.envelope.error() else {
                return Err(CallError::Protocol(format!(
                    "{addr}: malformed ERROR reply: {}",
                    reply.line
                )));
            };
            match error.code {
                ErrorCode::NotLeader if route == Route::Leader => {
                    match error.leader_addr.clone() {
                        Some(leader) if leader != addr => {
                            self.note(format!("NOT_LEADER: following the redirect to {leader}"));
                            self.remember(&leader);
                            self.disconnect();
                            self.preferred = Some(leader);
                            redirects += 1;
                            // Nodes that disagree on the leader for a moment
                            // could bounce us back and forth.
                            if redirects > 2 {
                                self.pause(backoff, deadline)?;
                                backoff = grow(backoff);
                            }
                        }
                        _ => {
                            self.note(format!(
                                "NOT_LEADER, no leader known: retrying in {backoff:?}"
                            ));
                            self.rotate();
                            self.pause(backoff, deadline)?;
                            backoff = grow(backoff);
                        }
                    }
                    last = Some(CallError::Server(error));
                }
                ErrorCode::NoLeader | ErrorCode::NoSpace => {
                    // This node may be cut off, or its disk is full and it
                    // is handing leadership on: ask another.
                    self.note(format!("{}: retrying in {backoff:?}", error.code));
                    self.rotate();
                    last = Some(CallError::Server(error));
                    self.pause(backoff, deadline)?;
                    backoff = grow(backoff);
                }
                ErrorCode::SessionExpired if uncertain => {
                    return Err(CallError::OutcomeUnknown(format!(
                        "the outcome of this command is unknown: an earlier attempt got no \
                         answer, and the session it was sent in expired before the retry \
                         (SESSION_EXPIRED), so the cluster can no longer tell whether it was \
                         applied; it may or may not have been. Check the key before repeating \
                         it. The next write opens a new session. ({})",
                        error.message
                    )));
                }
                ErrorCode::Overloaded | ErrorCode::Timeout | ErrorCode::LeadershipLost => {
                    uncertain |= error.code != ErrorCode::Overloaded;
                    self.note(format!("{}: retrying in {backoff:?}", error.code));
                    last = Some(CallError::Server(error));
                    self.pause(backoff, deadline)?;
                    backoff = grow(backoff);
                }
                _ => return Err(CallError::Server(error)),
            }
        }
    }

    fn give_up(&self, last: Option<CallError>) -> CallError {
        let after = format!("gave up after {:?}", self.timeout);
        match last {
            Some(CallError::Server(mut e)) => {
                e.message = format!("{} ({after})", e.message);
                CallError::Server(e)
            }
            Some(CallError::Unreachable(m)) => CallError::Unreachable(format!("{m} ({after})")),
            Some(other) => other,
            None => CallError::Unreachable(after),
        }
    }

    /// One line out, the matching line back, on the current connection.
    fn exchange(
        &mut self,
        line: &[u8],
        req_id: Option<u64>,
        deadline: Instant,
    ) -> Result<Reply, Exchange> {
        let verbose = self.verbose;
        let interrupt = self.interrupt.clone();
        let Some(conn) = self.conn.as_mut() else {
            return Err(Exchange::Io(io::ErrorKind::NotConnected.into(), false));
        };
        if verbose {
            eprintln!("-> {}", String::from_utf8_lossy(line).trim_end());
        }
        conn.stream
            .set_write_timeout(Some(
                deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(10)),
            ))
            .map_err(|e| Exchange::Io(e, false))?;
        conn.stream
            .write_all(line)
            .map_err(|e| Exchange::Io(e, false))?;
        loop {
            let text = read_line(conn, deadline, interrupt.as_deref())?;
            if verbose {
                eprintln!("<- {text}");
            }
            let envelope: ReplyEnvelope = serde_json::from_str(&text)
                .map_err(|e| Exchange::Protocol(format!("reply is not a JSON envelope: {e}")))?;
            // A reply to an earlier request that we gave up on: skip it.
            if let (Some(want), Some(got)) = (req_id, envelope.req_id) {
                if want != got {
                    continue;
                }
            }
            return Ok(Reply {
                addr: conn.addr.clone(),
                envelope,
                line: text,
            });
        }
    }

    /// STATUS of the connected node, once, quietly, without retries: for the
    /// prompt. Drops the connection if the node does not answer.
    pub fn quiet_status(&mut self) -> Option<StatusReply> {
        self.conn.as_ref()?;
        let verbose = std::mem::replace(&mut self.verbose, false);
        self.req_id += 1;
        let mut line = Vec::new();
        encode_request(&mut line, Some(self.req_id), &ClientRequest::Status);
        let deadline = Instant::now() + Duration::from_secs(1);
        let result = self.exchange(&line, Some(self.req_id), deadline);
        self.verbose = verbose;
        match result {
            Ok(r) if r.envelope.msg_type == "STATUS" => {
                serde_json::from_value(r.envelope.payload).ok()
            }
            Ok(_) => None,
            Err(_) => {
                self.conn = None;
                None
            }
        }
    }

    /// At start-up: connect to any node, quietly, one try each, and move to
    /// the leader if that node knows one.
    pub fn connect_quietly(&mut self) {
        let verbose = std::mem::replace(&mut self.verbose, false);
        let deadline = Instant::now() + self.timeout.min(Duration::from_secs(2));
        if self.ensure_connected(deadline).is_ok() {
            if let Some(status) = self.quiet_status() {
                if let Some(leader) = status.leader_addr.filter(|l| *l != status.addr) {
                    if let Ok(conn) = self.open(&leader, deadline) {
                        self.remember(&leader);
                        self.conn = Some(conn);
                    }
                }
            }
        }
        self.verbose = verbose;
    }
}

/// STATUS of one node on a connection of its own, for the status table.
/// Returns the reply (or why there is none) and the lines exchanged.
pub fn status_of(addr: &str, timeout: Duration) -> (Result<StatusReply, String>, Vec<String>) {
    let mut client = ClusterClient::new(vec![addr.to_string()], timeout, false);
    let deadline = Instant::now() + timeout;
    let mut wire = Vec::new();
    let mut line = Vec::new();
    encode_request(&mut line, Some(1), &ClientRequest::Status);
    let result = match client.open(addr, deadline) {
        Err(e) => Err(e.to_string()),
        Ok(conn) => {
            client.conn = Some(conn);
            wire.push(format!("-> {}", String::from_utf8_lossy(&line).trim_end()));
            match client.exchange(&line, Some(1), deadline) {
                Ok(reply) => {
                    wire.push(format!("<- {}", reply.line));
                    if reply.envelope.msg_type == "STATUS" {
                        serde_json::from_value(reply.envelope.payload)
                            .map_err(|e| format!("bad STATUS reply: {e}"))
                    } else {
                        Err(match reply.envelope.error() {
                            Some(e) => e.to_string(),
                            None => format!("unexpected reply {}", reply.line),
                        })
                    }
                }
                Err(Exchange::Io(e, _)) => Err(e.to_string()),
                Err(Exchange::Protocol(m)) => Err(m),
                Err(Exchange::Interrupted) => Err("interrupted".into()),
            }
        }
    };
    (result, wire)
}

enum Exchange {
    /// An I/O error, and whether the request had been sent.
    Io(io::Error, bool),
    Protocol(String),
    Interrupted,
}

fn read_line(
    conn: &mut Conn,
    deadline: Instant,
    interrupt: Option<&AtomicBool>,
) -> Result<String, Exchange> {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match conn.buf.next_line() {
            Some(Ok(line)) if line.iter().all(u8::is_ascii_whitespace) => continue,
            Some(Ok(line)) => {
                return String::from_utf8(line.to_vec())
                    .map_err(|_| Exchange::Protocol("reply is not UTF-8".into()))
            }
            Some(Err(_)) => {
                return Err(Exchange::Protocol(format!(
                    "reply longer than {MAX_REPLY_BYTES} bytes"
                )))
            }
            None => {}
        }
        if interrupt.is_some_and(|f| f.swap(false, Ordering::SeqCst)) {
            return Err(Exchange::Interrupted);
        }
        if Instant::now() >= deadline {
            return Err(Exchange::Io(io::ErrorKind::TimedOut.into(), true));
        }
        match io::Read::read(&mut conn.stream, &mut chunk) {
            Ok(0) => {
                return Err(Exchange::Io(
                    io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the node closed the connection",
                    ),
                    true,
                ))
            }
            Ok(n) => conn.buf.extend(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(Exchange::Io(e, true)),
        }
    }
}

fn grow(backoff: Duration) -> Duration {
    let jitter = rand::thread_rng().gen_range(0..=backoff.as_millis() as u64 / 2);
    (backoff * 2 + Duration::from_millis(jitter)).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::net::TcpListener;

    /// A fake node that answers each request line with the next scripted
    /// reply (`{req_id}` is replaced by the request's req_id), then closes.
    fn fake_node(replies: Vec<&'static str>) -> (String, std::thread::JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let handle = std::thread::spawn(move || {
            let mut seen = Vec::new();
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut writer = stream;
            for reply in replies {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap() == 0 {
                    break;
                }
                let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                let req_id = v["req_id"].as_u64().unwrap_or(0);
                seen.push(line.trim_end().to_string());
                let out = reply.replace("{req_id}", &req_id.to_string());
                writer.write_all(out.as_bytes()).unwrap();
                writer.write_all(b"\n").unwrap();
            }
            seen
        });
        (addr, handle)
    }

    fn set(session: SessionFields) -> ClientRequest {
        ClientRequest::Set(poncho_protocol::SetRequest {
            key: "k".into(),
            value: "v".into(),
            session,
        })
    }

    const REGISTERED_41: &str =
        r#"{"msg_type":"REGISTER_CLIENT","req_id":{req_id},"payload":{"client_id":41}}"#;
    const REGISTERED_57: &str =
        r#"{"msg_type":"REGISTER_CLIENT","req_id":{req_id},"payload":{"client_id":57}}"#;
    const SESSION_EXPIRED: &str = r#"{"msg_type":"ERROR","req_id":{req_id},"payload":{"code":"SESSION_EXPIRED","message":"client session 41 is not open"}}"#;
    const SET_OK: &str = r#"{"msg_type":"SET","req_id":{req_id},"payload":{"key":"k","index":7}}"#;

    #[test]
    fn retries_reuse_the_session_and_skip_stale_replies() {
        let (addr, node) = fake_node(vec![
            REGISTERED_41,
            r#"{"msg_type":"ERROR","req_id":{req_id},"payload":{"code":"LEADERSHIP_LOST","message":"x"}}"#,
            // A stray reply to some other request, then the real one.
            r#"{"msg_type":"SET","req_id":999,"payload":{"key":"zz","index":1}}
{"msg_type":"SET","req_id":{req_id},"payload":{"key":"k","index":7}}"#,
            SET_OK,
        ]);
        let mut client = ClusterClient::new(vec![addr], Duration::from_secs(5), false);
        assert_eq!(client.client_id(), None);
        let reply = client.write(set).unwrap();
        assert_eq!(reply.envelope.payload["index"], 7);
        assert_eq!(client.client_id(), Some(41));
        // The next write: the same session, the next seq.
        client.write(set).unwrap();
        let seen = node.join().unwrap();
        assert_eq!(seen.len(), 4);
        assert!(
            seen[0].contains(r#""msg_type":"REGISTER_CLIENT""#),
            "{}",
            seen[0]
        );
        assert_eq!(seen[1], seen[2], "a retry sends the same line");
        assert!(seen[1].contains(r#""client_id":41,"seq":1"#), "{}", seen[1]);
        assert!(seen[3].contains(r#""client_id":41,"seq":2"#), "{}", seen[3]);
    }

    #[test]
    fn a_session_gone_before_any_attempt_could_apply_is_renewed_and_the_write_resent() {
        let (addr, node) = fake_node(vec![REGISTERED_41, SESSION_EXPIRED, REGISTERED_57, SET_OK]);
        let mut client = ClusterClient::new(vec![addr], Duration::from_secs(5), false);
        let reply = client.write(set).unwrap();
        assert_eq!(reply.envelope.payload["index"], 7);
        assert_eq!(client.client_id(), Some(57));
        let seen = node.join().unwrap();
        assert_eq!(seen.len(), 4);
        assert!(seen[1].contains(r#""client_id":41,"seq":1"#), "{}", seen[1]);
        assert!(
            seen[2].contains(r#""msg_type":"REGISTER_CLIENT""#),
            "{}",
            seen[2]
        );
        assert!(seen[3].contains(r#""client_id":57,"seq":1"#), "{}", seen[3]);
    }

    #[test]
    fn a_session_gone_after_an_unanswered_attempt_makes_the_outcome_unknown() {
        let (addr, node) = fake_node(vec![
            REGISTERED_41,
            r#"{"msg_type":"ERROR","req_id":{req_id},"payload":{"code":"TIMEOUT","message":"x"}}"#,
            SESSION_EXPIRED,
            REGISTERED_57,
            SET_OK,
        ]);
        let mut client = ClusterClient::new(vec![addr], Duration::from_secs(5), false);
        let err = client.write(set).unwrap_err();
        assert_eq!(err.code(), "OUTCOME_UNKNOWN");
        assert!(
            err.message().contains("outcome of this command is unknown"),
            "{}",
            err.message()
        );
        // Not resent in a new session: that could apply it twice.
        assert_eq!(client.client_id(), None);
        // The next write opens a new session.
        client.write(set).unwrap();
        assert_eq!(client.client_id(), Some(57));
        let seen = node.join().unwrap();
        assert_eq!(seen.len(), 5);
        assert_eq!(seen[1], seen[2]);
        assert!(seen[4].contains(r#""client_id":57,"seq":1"#), "{}", seen[4]);
    }

    #[test]
    fn a_session_that_expires_again_at_once_is_reported() {
        let (addr, node) = fake_node(vec![
            REGISTERED_41,
            SESSION_EXPIRED,
            REGISTERED_57,
            SESSION_EXPIRED,
        ]);
        let mut client = ClusterClient::new(vec![addr], Duration::from_secs(5), false);
        let err = client.write(set).unwrap_err();
        assert_eq!(err.code(), "SESSION_EXPIRED");
        assert_eq!(client.client_id(), None);
        assert_eq!(node.join().unwrap().len(), 4);
    }

    #[test]
    fn follows_not_leader_to_the_leader() {
        let (leader, leader_node) = fake_node(vec![
            r#"{"msg_type":"GET","req_id":{req_id},"payload":{"key":"k","value":"v"}}"#,
        ]);
        let redirect: &'static str = Box::leak(
            format!(
                r#"{{"msg_type":"ERROR","req_id":{{req_id}},"payload":{{"code":"NOT_LEADER","message":"m","leader_id":2,"leader_addr":"{leader}"}}}}"#
            )
            .into_boxed_str(),
        );
        let (follower, follower_node) = fake_node(vec![redirect]);
        let mut client = ClusterClient::new(vec![follower], Duration::from_secs(5), false);
        let request = ClientRequest::Get(poncho_protocol::GetRequest {
            key: "k".into(),
            stale: false,
        });
        let reply = client.request(&request, Route::Leader).unwrap();
        assert_eq!(reply.addr, leader);
        assert_eq!(reply.envelope.payload["value"], "v");
        assert_eq!(client.connected(), Some(leader.as_str()));
        assert_eq!(follower_node.join().unwrap().len(), 1);
        assert_eq!(leader_node.join().unwrap().len(), 1);
    }

    #[test]
    fn final_errors_are_not_retried_and_garbage_is_a_protocol_error() {
        let (addr, node) = fake_node(vec![
            r#"{"msg_type":"ERROR","req_id":{req_id},"payload":{"code":"BAD_REQUEST","message":"nope"}}"#,
            "this is not json",
        ]);
        let mut client = ClusterClient::new(vec![addr], Duration::from_secs(5), false);
        let err = client
            .request(&ClientRequest::Healthcheck, Route::Here)
            .unwrap_err();
        assert_eq!(err.code(), "BAD_REQUEST");
        let err = client
            .request(&ClientRequest::Healthcheck, Route::Here)
            .unwrap_err();
        assert_eq!(err.code(), "PROTOCOL");
        assert_eq!(node.join().unwrap().len(), 2);
    }

    #[test]
    fn an_unreachable_cluster_fails_at_the_deadline() {
        // A port that was free a moment ago: connection refused.
        let addr = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let mut client = ClusterClient::new(vec![addr], Duration::from_millis(300), false);
        let started = Instant::now();
        let err = client
            .request(&ClientRequest::Healthcheck, Route::Here)
            .unwrap_err();
        assert_eq!(err.code(), "UNREACHABLE");
        assert!(err.message().contains("gave up"), "{}", err.message());
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(250) && took < Duration::from_secs(2),
            "{took:?}"
        );
    }
}
