//! The client path: a line read from a connection becomes a request, is
//! dispatched (answered at once, proposed to the log, or started as a
//! linearizable read), waits in `Clients` until the core commits or confirms
//! it, and is answered into its reply slot (`conn::ReplyTo`), each reply
//! encoded where it is made.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use std::sync::Arc;

use poncho_protocol::{
    decode_request, encode_error, encode_reply, AuthReply, AuthRequest, ClientRequest, Entry,
    ErrorCode, ErrorReply, FollowerProgress, Handshake, HealthcheckReply, KeysReply, KeysRequest,
    MemberStatus, RangeRequest, Request, RoleReply, RoleRequest, StatusReply, Txn, UserReply,
    UserRequest,
};

use super::admission::Port;
use super::conn::{ConnRole, ReplyTo};
use super::logins::PasswordChange;
use super::Node;
use crate::kv::auth::{AuthStore, Need};
use crate::kv::{ApplyResult, Command};
use crate::raft::{MemberRole, ProgressState, ProposeError, ReadState, Role};
use crate::storage::Health;

/// Most keys one KEYS reply lists.
pub const MAX_KEYS_PER_REPLY: usize = 10_000;
/// How often requests are checked against their deadlines.
const EXPIRY_SCAN_INTERVAL: Duration = Duration::from_millis(100);

/// Client requests waiting for the core.
pub struct Clients {
    /// Writes by log index, until applied.
    writes: HashMap<u64, PendingWrite>,
    /// Reads by read id, until the core confirms them.
    reads: HashMap<u64, PendingRead>,
    /// Confirmed reads waiting for an earlier write of their connection.
    deferred_reads: Vec<PendingRead>,
    next_read_id: u64,
    next_expiry_scan: Instant,
}

struct PendingWrite {
    to: ReplyTo,
    term: u64,
    deadline: Instant,
}

enum ReadKind {
    Get(String),
    Keys(KeysRequest),
    Range(RangeRequest),
    /// A transaction that writes nothing.
    Txn(Txn),
    /// AUTH status, USER get/list, ROLE get/list.
    Auth(ClientRequest),
}

struct PendingRead {
    to: ReplyTo,
    kind: ReadKind,
    /// Who asked: the read is checked (and a listing filtered) as this
    /// user when it is served, against what is applied by then.
    user: Option<Arc<str>>,
    deadline: Instant,
    /// Serve only once this index is applied (read-your-writes on a connection).
    min_index: u64,
}

impl Clients {
    pub fn new(now: Instant) -> Clients {
        Clients {
            writes: HashMap::new(),
            reads: HashMap::new(),
            deferred_reads: Vec::new(),
            next_read_id: 1,
            next_expiry_scan: now,
        }
    }

    /// Takes the deferred reads whose connection's writes are applied
    /// through `applied`.
    fn take_servable(&mut self, applied: u64) -> Vec<PendingRead> {
        let (ready, waiting) = std::mem::take(&mut self.deferred_reads)
            .into_iter()
            .partition(|r| r.min_index <= applied);
        self.deferred_reads = waiting;
        ready
    }

    /// Takes the writes and reads past their deadlines.
    fn take_expired(&mut self, now: Instant) -> (Vec<PendingWrite>, Vec<PendingRead>) {
        let writes = take_where(&mut self.writes, |w| w.deadline <= now);
        let mut reads = take_where(&mut self.reads, |r| r.deadline <= now);
        let (late, waiting): (Vec<PendingRead>, Vec<PendingRead>) =
            std::mem::take(&mut self.deferred_reads)
                .into_iter()
                .partition(|r| r.deadline <= now);
        self.deferred_reads = waiting;
        reads.extend(late);
        (writes, reads)
    }
}

/// Removes and returns the values of `map` that `due` picks.
fn take_where<T>(map: &mut HashMap<u64, T>, due: impl Fn(&T) -> bool) -> Vec<T> {
    map.extract_if(|_, v| due(v)).map(|(_, v)| v).collect()
}

impl Node {
    /// Handles the complete lines buffered; returns whether there were any.
    /// Stops early at a line that refuses the connection, or that starts a
    /// login (the lines after it wait in the buffer until it is answered).
    pub(super) fn process_lines(&mut self, key: usize) -> bool {
        let mut completed = false;
        loop {
            let line = {
                let Some(conn) = self.conns.get_mut(key) else {
                    return completed;
                };
                if conn.close_after_flush || conn.logging_in {
                    break; // refused: what followed is not answered
                }
                match conn.input.next_line() {
                    None => break,
                    Some(Ok(bytes)) => Ok(bytes.to_vec()),
                    Some(Err(too_long)) => Err(too_long.limit),
                }
            };
            completed = true;
            match line {
                Ok(bytes) => self.handle_line(key, &bytes),
                Err(limit) => {
                    let error = ErrorReply::new(
                        ErrorCode::MessageTooLarge,
                        format!("line longer than {limit} bytes; closing the connection"),
                    );
                    self.reply_error_now(key, None, &error);
                    if let Some(conn) = self.conns.get_mut(key) {
                        conn.close_after_flush = true;
                    }
                    return true;
                }
            }
        }
        self.conns.mark_dirty(key);
        completed
    }

    fn handle_line(&mut self, key: usize, line: &[u8]) {
        if line.iter().all(u8::is_ascii_whitespace) {
            return; // blank lines (a human at nc pressing enter) are ignored
        }
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let (role, port) = (conn.role, conn.port);
        conn.lines_handled += 1;
        if conn.lines_handled == 1 && port == Port::Client && self.tls.client_cert_users {
            // --client-cert-auth: the certificate's common name is the user
            // (the handshake, done before any line, checked the chain).
            conn.user = conn
                .stream
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(poncho_tls::common_name)
                .map(Arc::from);
        }
        match role {
            ConnRole::Outbound(peer, link) => {
                return self.handle_outbound_line(key, peer, link, line)
            }
            ConnRole::Proving(proving) => return self.check_proof(key, proving, line),
            ConnRole::Client | ConnRole::Probation { .. } | ConnRole::Peer(_) => {}
        }
        let request = decode_request(line);
        if let Ok(Request::Handshake(handshake)) = request {
            return match (role, handshake) {
                (ConnRole::Client | ConnRole::Probation { .. }, Handshake::PeerHello(hello)) => {
                    self.answer_hello(key, hello)
                }
                (_, other) => {
                    let error = ErrorReply::bad_request(format!(
                        "{} is not expected here: a peer handshake begins with PEER_HELLO, on a \
                         connection that has sent nothing else",
                        other.msg_type()
                    ));
                    self.reply_error_now(key, None, &error)
                }
            };
        }
        let proven = match role {
            ConnRole::Peer(id) => Some(id),
            _ => None,
        };
        if port == Port::Peer && proven.is_none() {
            let error = ErrorReply::bad_request(format!(
                "this is node {}'s peer port, for its peers only; clients use {}",
                self.config.id,
                self.config.addr()
            ));
            return self.reply_error_now(key, None, &error);
        }
        if !self.identify(key) {
            return;
        }
        match request {
            Err(e) => self.reply_error_now(key, e.req_id, &e.error),
            Ok(Request::Peer { src_id, message }) => {
                self.handle_peer_message(key, proven, src_id, message)
            }
            Ok(Request::Client { req_id, request }) => {
                self.handle_client_request(key, req_id, request)
            }
            Ok(Request::Handshake(_)) => {} // answered above
        }
    }

    /// A write is proposed to the log and answered once applied; the rest
    /// are answered here (`Command::from_request` tells them apart). Each is
    /// first checked against the connection's user (a write again when it
    /// is applied).
    fn handle_client_request(&mut self, key: usize, req_id: Option<u64>, request: ClientRequest) {
        let probe = matches!(request, ClientRequest::Healthcheck | ClientRequest::Status);
        if !probe && self.is_removed() {
            let error = self.removed_error();
            return self.reply_error_now(key, req_id, &error);
        }
        let (user, since) = self
            .conns
            .get(key)
            .map_or((None, None), |c| (c.user.clone(), c.user_since));
        if let (Some(user), Some(since)) = (&user, since) {
            if let Err(stale) = self.kv.auth().login_stands(user, since) {
                return self.reply_error_now(key, req_id, &stale);
            }
        }
        // A transaction that writes nothing is a read: it needs no log entry.
        let request = match request {
            ClientRequest::Txn(t) if t.txn.is_read_only() => {
                if let Err(denied) = self.kv.auth().check(user.as_deref(), Need::Txn(&t.txn)) {
                    return self.reply_error_now(key, req_id, &denied);
                }
                return self.start_read(key, req_id, ReadKind::Txn(t.txn));
            }
            other => other,
        };
        let read = match Command::from_request(request, now_ms()) {
            Ok(mut write) => {
                if let Err(denied) = self.kv.auth().check(user.as_deref(), write.op.needs()) {
                    return self.reply_error_now(key, req_id, &denied);
                }
                write.user = user.map(|u| u.to_string());
                return self.propose_write(key, req_id, write);
            }
            Err(read) => read,
        };
        if let Err(denied) = self.kv.auth().check(user.as_deref(), needs(&read)) {
            return self.reply_error_now(key, req_id, &denied);
        }
        match read {
            ClientRequest::Healthcheck => self
                .conns
                .reply_now(key, |out| encode_reply(out, req_id, &HealthcheckReply)),
            ClientRequest::Status => {
                let status = self.status();
                self.conns
                    .reply_now(key, |out| encode_reply(out, req_id, &status));
            }
            ClientRequest::Get(get) if get.stale => {
                let reply = self.kv.get_reply(get.key);
                self.conns
                    .reply_now(key, |out| encode_reply(out, req_id, &reply));
            }
            ClientRequest::Get(get) => self.start_read(key, req_id, ReadKind::Get(get.key)),
            ClientRequest::Keys(keys) => self.start_read(key, req_id, ReadKind::Keys(keys)),
            ClientRequest::Range(range) if range.stale => {
                match self.kv.range(user.as_deref(), &range) {
                    Ok(reply) => self
                        .conns
                        .reply_now(key, |out| encode_reply(out, req_id, &reply)),
                    Err(error) => self.reply_error_now(key, req_id, &error),
                }
            }
            ClientRequest::Range(range) => self.start_read(key, req_id, ReadKind::Range(range)),
            ClientRequest::Watch(watch) => self.handle_watch(key, req_id, watch),
            ClientRequest::Lease(lease) => self.handle_lease(key, req_id, lease),
            ClientRequest::Authenticate(login) => self.start_login(key, req_id, login),
            ClientRequest::User(UserRequest::Add { name, password }) => {
                self.start_password_change(key, req_id, PasswordChange::Add { name }, password)
            }
            ClientRequest::User(UserRequest::Passwd { name, password }) => {
                self.start_password_change(key, req_id, PasswordChange::Passwd { name }, password)
            }
            query @ (ClientRequest::Auth(_) | ClientRequest::User(_) | ClientRequest::Role(_)) => {
                self.start_read(key, req_id, ReadKind::Auth(query))
            }
            ClientRequest::Member(request) => self.handle_member_request(key, req_id, request),
            ClientRequest::TransferLeader(t) => self.handle_transfer(key, req_id, t.to),
            // `from_request` took every write; a request it sends back that
            // is not listed above is a read this match has not learnt yet.
            other => {
                let error = ErrorReply::bad_request(format!(
                    "{} is not served by this node",
                    other.msg_type().name()
                ));
                self.reply_error_now(key, req_id, &error);
            }
        }
    }

    /// Proposes a write to the log; it is answered once applied.
    fn propose_write(&mut self, key: usize, req_id: Option<u64>, command: Command) {
        if let Some(to) = self.conns.reserve(key, req_id) {
            self.propose_into(to, command);
        }
    }

    /// Proposes a write whose reply goes to `to`, once applied.
    pub(super) fn propose_into(&mut self, to: ReplyTo, command: Command) {
        if self.unpersisted.is_some() && self.raft.role() == Role::Leader {
            let error = self.no_space_error();
            return self.complete_error(to, &error);
        }
        match self.raft.propose(command.encode()) {
            Ok((index, term)) => {
                if let Some(conn) = self.conns.current(&to) {
                    conn.last_write_index = index;
                }
                let deadline = Instant::now() + self.config.request_timeout;
                self.clients
                    .writes
                    .insert(index, PendingWrite { to, term, deadline });
            }
            Err(e) => {
                let error = self.propose_error(&e);
                self.complete_error(to, &error);
            }
        }
    }

    fn start_read(&mut self, key: usize, req_id: Option<u64>, kind: ReadKind) {
        let id = self.clients.next_read_id;
        self.clients.next_read_id += 1;
        match self.raft.read_index(id) {
            Ok(()) => {
                let Some(to) = self.conns.reserve(key, req_id) else {
                    return;
                };
                let deadline = Instant::now() + self.config.request_timeout;
                let conn = self.conns.get(key);
                let min_index = conn.map_or(0, |c| c.last_write_index);
                let user = conn.and_then(|c| c.user.clone());
                self.clients.reads.insert(
                    id,
                    PendingRead {
                        to,
                        kind,
                        user,
                        deadline,
                        min_index,
                    },
                );
            }
            Err(e) => {
                let error = self.propose_error(&e);
                self.reply_error_now(key, req_id, &error);
            }
        }
    }

    /// Answers the write proposed at `entry`'s index, if one waits here,
    /// with what applying it did (`result`).
    pub(super) fn answer_applied(&mut self, entry: &Entry, result: Option<ApplyResult>) {
        let Some(pending) = self.clients.writes.remove(&entry.index) else {
            return;
        };
        let req_id = pending.to.req_id;
        if pending.term != entry.term {
            let error = ErrorReply::new(
                ErrorCode::LeadershipLost,
                "leadership changed before the write committed; retry with the same client_id and seq",
            );
            return self.complete_error(pending.to, &error);
        }
        self.conns.complete(pending.to, |out| match &result {
            Some(result) => result.encode(out, req_id),
            None => encode_error(
                out,
                req_id,
                &ErrorReply::new(
                    ErrorCode::LeadershipLost,
                    "the entry at this index is not a command",
                ),
            ),
        });
    }

    /// After applying: serves the reads the core confirmed (`reads`) once
    /// their connection's writes are applied, and fails those it could not
    /// confirm (`failed`).
    pub(super) fn answer_reads(&mut self, reads: Vec<ReadState>, failed: Vec<u64>) {
        for read in reads {
            if let Some(pending) = self.clients.reads.remove(&read.id) {
                self.clients.deferred_reads.push(pending);
            }
        }
        for pending in self.clients.take_servable(self.kv.last_applied()) {
            self.serve_read(pending);
        }
        for id in failed {
            if let Some(pending) = self.clients.reads.remove(&id) {
                let error = ErrorReply::new(
                    ErrorCode::LeadershipLost,
                    "leadership was lost before the read was confirmed; retry",
                );
                self.complete_error(pending.to, &error);
            }
        }
    }

    fn serve_read(&mut self, pending: PendingRead) {
        let req_id = pending.to.req_id;
        let user = pending.user.as_deref();
        match pending.kind {
            ReadKind::Get(key) => {
                if let Err(denied) = self.kv.auth().check(user, Need::Read(&key)) {
                    return self.complete_error(pending.to, &denied);
                }
                let reply = self.kv.get_reply(key);
                self.conns
                    .complete(pending.to, |out| encode_reply(out, req_id, &reply));
            }
            ReadKind::Keys(request) => {
                let (keys, next_key) = self.kv.readable_keys(
                    user,
                    &request.prefix,
                    request.from.as_deref(),
                    MAX_KEYS_PER_REPLY,
                );
                let reply = KeysReply {
                    keys,
                    more: next_key.is_some(),
                    next_key,
                };
                self.conns
                    .complete(pending.to, |out| encode_reply(out, req_id, &reply));
            }
            ReadKind::Range(request) => match self.kv.range(user, &request) {
                Ok(reply) => self
                    .conns
                    .complete(pending.to, |out| encode_reply(out, req_id, &reply)),
                Err(error) => self.complete_error(pending.to, &error),
            },
            ReadKind::Txn(txn) => match self.kv.read_txn(user, &txn) {
                Ok(reply) => self
                    .conns
                    .complete(pending.to, |out| encode_reply(out, req_id, &reply)),
                Err(error) => self.complete_error(pending.to, &error),
            },
            ReadKind::Auth(query) => {
                let auth = self.kv.auth();
                let result = auth
                    .check(user, needs(&query))
                    .and_then(|()| auth_query(auth, query));
                match result {
                    Ok(reply) => self
                        .conns
                        .complete(pending.to, |out| reply.encode(out, req_id)),
                    Err(error) => self.complete_error(pending.to, &error),
                }
            }
        }
    }

    /// Answers the requests past their deadlines with TIMEOUT.
    pub(super) fn expire_requests(&mut self, now: Instant) {
        if now < self.clients.next_expiry_scan {
            return;
        }
        self.clients.next_expiry_scan = now + EXPIRY_SCAN_INTERVAL;
        let (writes, reads) = self.clients.take_expired(now);
        for w in writes {
            let error = ErrorReply::new(
                ErrorCode::Timeout,
                "the write did not commit in time; its outcome is unknown: retry with the same client_id and seq",
            );
            self.complete_error(w.to, &error);
        }
        for r in reads {
            let error = ErrorReply::new(
                ErrorCode::Timeout,
                "the read could not be served in time; retry",
            );
            self.complete_error(r.to, &error);
        }
    }

    pub(super) fn reply_error_now(&mut self, key: usize, req_id: Option<u64>, error: &ErrorReply) {
        self.conns
            .reply_now(key, |out| encode_error(out, req_id, error));
    }

    pub(super) fn complete_error(&mut self, to: ReplyTo, error: &ErrorReply) {
        self.conns
            .complete(to, |out| encode_error(out, to.req_id, error));
    }

    fn no_space_error(&self) -> ErrorReply {
        let next = if self.peers.is_empty() {
            "retry once space is freed"
        } else {
            "it is handing leadership to a node that can: retry shortly"
        };
        ErrorReply::new(
            ErrorCode::NoSpace,
            format!(
                "node {} cannot write to its disk ({}); the write was not applied; {next}",
                self.config.id,
                self.unpersisted.as_ref().map_or("", |u| u.error.as_str())
            ),
        )
    }

    pub(super) fn propose_error(&self, e: &ProposeError) -> ErrorReply {
        match e {
            ProposeError::NotLeader {
                leader_id: Some(id),
            } => {
                let mut error = ErrorReply::new(
                    ErrorCode::NotLeader,
                    format!("node {} is not the leader; node {id} is", self.config.id),
                );
                error.leader_id = Some(*id);
                error.leader_addr = self.peers.addr(*id).map(|a| a.to_string());
                error
            }
            ProposeError::NotLeader { leader_id: None } => ErrorReply::new(
                ErrorCode::NoLeader,
                "no leader is known; an election is under way or a quorum is unreachable",
            ),
            ProposeError::TransferInProgress => ErrorReply::new(
                ErrorCode::NoLeader,
                "leadership is being transferred; retry shortly",
            ),
            ProposeError::Overloaded => ErrorReply::new(
                ErrorCode::Overloaded,
                "too many writes waiting to commit; retry later",
            ),
        }
    }

    /// The STATUS reply: the core's status, with addresses and the disk.
    fn status(&self) -> StatusReply {
        let s = self.raft.status();
        let own = self.config.addr().to_string();
        let addr_of = |id| {
            if id == self.config.id {
                Some(own.clone())
            } else {
                self.peers.addr(id).map(|a| a.to_string())
            }
        };
        let members: Vec<MemberStatus> = self
            .raft
            .membership()
            .members
            .iter()
            .map(|m| MemberStatus {
                id: m.id,
                addr: m.addr.to_string(),
                learner: m.learner,
            })
            .collect();
        // A learner or a node not (or no longer) a member says so; a voter
        // says what its Raft role is.
        let role = match s.member_role {
            _ if self.is_removed() => "removed".to_string(),
            MemberRole::Learner | MemberRole::Joining => s.member_role.name().to_string(),
            // A voter, or one whose removal is not committed yet.
            MemberRole::Voter | MemberRole::Removed => s.role.to_string(),
        };
        StatusReply {
            id: s.id,
            addr: own.clone(),
            role,
            term: s.term,
            leader_id: s.leader_id,
            leader_addr: s.leader_id.and_then(addr_of),
            commit_index: s.commit_index,
            last_applied: s.applied_index,
            last_log_index: s.last_log_index,
            storage: self.storage_status().to_string(),
            storage_error: self.unpersisted.as_ref().map(|u| u.describe()),
            members,
            followers: s
                .followers
                .iter()
                .map(|f| FollowerProgress {
                    id: f.id,
                    match_index: f.match_index,
                    next_index: f.next_index,
                    state: match f.state {
                        ProgressState::Probe => "probe".to_string(),
                        ProgressState::Replicate => "replicate".to_string(),
                        ProgressState::Snapshot => "snapshot".to_string(),
                    },
                })
                .collect(),
        }
    }

    /// STATUS's `storage`: whether this node can write.
    fn storage_status(&self) -> &'static str {
        match (&self.unpersisted, self.storage.health()) {
            (Some(_), _) | (None, Health::NoSpace) => "no_space",
            (None, Health::Healthy) => "ok",
            (None, Health::Failed) => "failed",
        }
    }
}

/// What a request that is not a write needs of its connection's user (a
/// write's is `Op::needs`).
fn needs(request: &ClientRequest) -> Need<'_> {
    match request {
        ClientRequest::Healthcheck | ClientRequest::Authenticate(_) => Need::Nothing,
        // Listings show what the user may read of them.
        ClientRequest::Status
        | ClientRequest::RegisterClient
        | ClientRequest::Keys(_)
        | ClientRequest::Range(_)
        // A watch sends only the changes to keys its user may read.
        | ClientRequest::Watch(_)
        // Grants and revokes are checked as writes (`Op::needs`).
        | ClientRequest::Lease(_) => Need::LoggedIn,
        ClientRequest::Get(get) => Need::Read(&get.key),
        ClientRequest::Auth(AuthRequest::Status) => Need::LoggedIn,
        ClientRequest::Auth(_) | ClientRequest::User(_) | ClientRequest::Role(_) => Need::Root,
        ClientRequest::Member(poncho_protocol::MemberRequest::List) => Need::LoggedIn,
        // Membership changes and leadership are root's, as auth is.
        ClientRequest::Member(_) | ClientRequest::TransferLeader(_) => Need::Root,
        // Writes: checked by `Op::needs`; listed so that a new request
        // type must be placed here.
        ClientRequest::Set(r) => Need::Write(&r.key),
        ClientRequest::Delete(r) => Need::Write(&r.key),
        ClientRequest::Cas(r) => Need::ReadWrite(&r.key),
        ClientRequest::Txn(r) => Need::Txn(&r.txn),
    }
}

/// The answer to an auth read, from the applied state.
fn auth_query(auth: &AuthStore, query: ClientRequest) -> Result<ApplyResult, ErrorReply> {
    let users = |users| {
        ApplyResult::User(UserReply {
            index: None,
            users: Some(users),
        })
    };
    let roles = |roles| {
        ApplyResult::Role(RoleReply {
            index: None,
            roles: Some(roles),
        })
    };
    Ok(match query {
        ClientRequest::Auth(_) => ApplyResult::Auth(AuthReply {
            enabled: auth.enabled,
            index: None,
        }),
        ClientRequest::User(UserRequest::Get { name }) => users(vec![auth.user_info(&name)?]),
        ClientRequest::User(_) => users(auth.users()),
        ClientRequest::Role(RoleRequest::Get { name }) => roles(vec![auth.role_info(&name)?]),
        ClientRequest::Role(_) => roles(auth.roles()),
        other => {
            return Err(ErrorReply::bad_request(format!(
                "{} is not an auth query",
                other.msg_type()
            )))
        }
    })
}

pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
