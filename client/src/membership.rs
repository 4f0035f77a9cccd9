//! Membership as typed calls: `MEMBER` (list, add, promote, remove,
//! update) and `TRANSFER_LEADER`, in the style of etcd's member API.
//!
//! `list` is a read: it follows `NOT_LEADER` to the leader, which knows
//! every member's progress, and is retried like any read. A change (and a
//! transfer) follows redirects the same way, and waits out
//! `CHANGE_IN_PROGRESS` until the deadline, but it carries no session, so
//! the cluster could apply it twice: after an attempt that may have been
//! applied (no reply, `TIMEOUT`, `LEADERSHIP_LOST`) it is not sent again,
//! and fails with [`ClientError::OutcomeUnknown`], saying what to check.
//! Every other refusal comes back as [`ClientError::Server`], its code kept
//! (`LEARNER_NOT_READY`, `UNSAFE_CHANGE`, `MEMBERSHIP_REFUSED`, ...).

use std::net::SocketAddr;

use poncho_protocol::{
    ClientRequest, Member, MemberReply, MemberRequest, NodeId, ReplyError, TransferLeaderReply,
    TransferLeaderRequest,
};

use crate::cluster::ClusterClient;
use crate::conn::Reply;
use crate::error::ClientError;
use crate::leader::Route;

impl ClusterClient {
    /// Every member, as the leader sees them (with how far each has
    /// replicated and whether it is healthy), or as a node that knows no
    /// leader sees them (without).
    pub fn member_list(&mut self) -> Result<MemberReply, ClientError> {
        let request = ClientRequest::Member(MemberRequest::List);
        let reply = self.request(&request, Route::Leader)?;
        reply.envelope.success().map_err(|e| unexpected(&reply, e))
    }

    /// Sends `request`, a change once committed (a `list` is sent as
    /// [`ClusterClient::member_list`] sends it). The reply holds the index
    /// the change was committed at and the members after it.
    pub fn member_change(&mut self, request: &MemberRequest) -> Result<MemberReply, ClientError> {
        if *request == MemberRequest::List {
            return self.member_list();
        }
        let reply = self
            .request(&ClientRequest::Member(request.clone()), Route::Change)
            .map_err(|e| check_after(e, "`member list`"))?;
        reply.envelope.success().map_err(|e| unexpected(&reply, e))
    }

    /// Adds `member` (a learner if it says so); `force` skips the check
    /// that enough healthy voters remain.
    pub fn member_add(&mut self, member: Member, force: bool) -> Result<MemberReply, ClientError> {
        self.member_change(&MemberRequest::Add {
            id: member.id,
            addr: member.addr,
            peer_addr: member.peer_addr,
            learner: member.learner,
            force,
        })
    }

    /// Makes learner `id` a voter (refused while it is behind).
    pub fn member_promote(&mut self, id: NodeId, force: bool) -> Result<MemberReply, ClientError> {
        self.member_change(&MemberRequest::Promote { id, force })
    }

    pub fn member_remove(&mut self, id: NodeId, force: bool) -> Result<MemberReply, ClientError> {
        self.member_change(&MemberRequest::Remove { id, force })
    }

    /// Member `id`'s addresses, from now on.
    pub fn member_update(
        &mut self,
        id: NodeId,
        addr: SocketAddr,
        peer_addr: Option<SocketAddr>,
    ) -> Result<MemberReply, ClientError> {
        self.member_change(&MemberRequest::Update {
            id,
            addr,
            peer_addr,
        })
    }

    /// Asks the leader to hand leadership to voter `to`; answered once `to`
    /// leads.
    pub fn transfer_leader(&mut self, to: NodeId) -> Result<TransferLeaderReply, ClientError> {
        let request = ClientRequest::TransferLeader(TransferLeaderRequest { to });
        let reply = self
            .request(&request, Route::Change)
            .map_err(|e| check_after(e, "who leads (`leader`)"))?;
        reply.envelope.success().map_err(|e| unexpected(&reply, e))
    }
}

/// An unknown outcome, with what to look at before repeating the change.
fn check_after(e: ClientError, what: &str) -> ClientError {
    match e {
        ClientError::OutcomeUnknown(m) => {
            ClientError::OutcomeUnknown(format!("{m}: check {what} before repeating it"))
        }
        e => e,
    }
}

/// A reply that is not the payload the table says it has.
fn unexpected(reply: &Reply, e: ReplyError) -> ClientError {
    ClientError::Protocol(format!("unexpected reply from {}: {e}", reply.addr))
}
