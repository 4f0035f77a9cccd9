//! Messages in: one term check for every message (section 5.1 and thesis
//! 9.6), the vote request that any role answers, then the step of the
//! node's role (`step_follower`, `step_candidate`, `step_leader`), as
//! etcd-io/raft's `Step` does.

use poncho_protocol::{NodeId, RaftMessage, RequestVote, RequestVoteReply};

use super::{BrokenRule, MemberRole, Outbound, Raft, RoleState};

impl Raft {
    /// Hands the core a message from peer `from`.
    pub fn step(&mut self, from: NodeId, message: RaftMessage) {
        if from == self.config.id || !self.accepts(from, &message) {
            return;
        }
        self.step_message(from, message);
        // An appended or truncated configuration, or a snapshot's.
        self.refresh_membership();
    }

    /// Whether a message from `from` may be heard at all. A leader's
    /// entries and snapshots are taken from any proven node: a node whose
    /// log lags (a new member, or one that was away while members were
    /// added) may not know its leader yet, and term checks keep a stale one
    /// out. Everything else comes only from members of this node's latest
    /// configuration; and a member (voter or learner) ignores vote requests
    /// from anyone its configuration does not count as a voter, so a
    /// removed node (or one never added) cannot start elections or raise
    /// terms (thesis 4.2.3): a learner whose term a removed node raised
    /// would answer the leader in that term and depose it. Two exceptions,
    /// both for candidates not known as removed, because this node's
    /// configuration may not be the cluster's: a node that is to join
    /// answers any of them, and a member answers one whose log is strictly
    /// more up to date than its own. That log may hold the change that made
    /// the candidate a voter; ignoring it could leave no electable quorum
    /// (membership seed 4756: a lagging member that never saw the candidate
    /// added withheld the vote it needed, and the only longer log was the
    /// leader's that removed itself in it). Either
    /// answer counts only where the candidate's configuration counts it,
    /// and a removed node's log cannot be more up to date than a quorum's
    /// that committed its removal.
    fn accepts(&self, from: NodeId, message: &RaftMessage) -> bool {
        match message {
            RaftMessage::AppendEntries(_) | RaftMessage::InstallSnapshot(_) => true,
            RaftMessage::RequestVote(m) => {
                self.voters.contains(&from)
                    || (!self.membership().was_removed(from)
                        && (self.member_role() == MemberRole::Joining
                            || self.log.is_behind(m.last_log_index, m.last_log_term)))
            }
            // A leader removing itself hands over once the removal commits
            // (`step_down_if_removed`), when its heir's configuration no
            // longer lists it: the leader this node follows is heard.
            RaftMessage::TimeoutNow(_) => {
                self.peers.contains(&from) || self.leader_id == Some(from)
            }
            RaftMessage::AppendEntriesReply(_)
            | RaftMessage::RequestVoteReply(_)
            | RaftMessage::InstallSnapshotReply(_) => self.peers.contains(&from),
            // The node's, not the core's: the node never steps them, and
            // one that came here anyway is dropped.
            RaftMessage::LeaseKeepalive(_) | RaftMessage::LeaseKeepaliveReply(_) => false,
        }
    }

    fn step_message(&mut self, from: NodeId, message: RaftMessage) {
        let term = message.term();
        if term > self.term {
            if !self.enter_message_term(&message) {
                return;
            }
        } else if term < self.term {
            self.reject_stale(from, message);
            return;
        }
        match message {
            RaftMessage::RequestVote(m) => self.handle_request_vote(from, m),
            message => match self.role {
                RoleState::Follower => self.step_follower(from, message),
                RoleState::Campaigning(_) => self.step_candidate(from, message),
                RoleState::Leader(_) => self.step_leader(from, message),
            },
        }
    }

    /// A message of a later term: follow it into that term, unless it is a
    /// vote request this node ignores or a granted pre-vote. Returns whether
    /// the message is to be handled further.
    fn enter_message_term(&mut self, message: &RaftMessage) -> bool {
        let term = message.term();
        match message {
            RaftMessage::RequestVote(m) => {
                // A node that heard from a live leader within the minimum
                // election timeout ignores vote requests (thesis 9.6), so
                // a node rejoining with a higher term cannot disrupt it.
                let in_lease = self.config.check_quorum
                    && self.leader_id.is_some()
                    && self.election_elapsed < self.config.election_timeout_ticks;
                if in_lease && !m.leader_transfer {
                    return false;
                }
                if !m.pre_vote {
                    self.become_follower(term, None);
                }
            }
            // A granted pre-vote carries the term the candidate asked for,
            // which is not a term anyone is in yet.
            RaftMessage::RequestVoteReply(m) if m.pre_vote && m.vote_granted => {}
            RaftMessage::AppendEntries(m) => self.become_follower(term, Some(m.leader_id)),
            RaftMessage::InstallSnapshot(m) => self.become_follower(term, Some(m.leader_id)),
            RaftMessage::TimeoutNow(m) => self.become_follower(term, Some(m.leader_id)),
            _ => self.become_follower(term, None),
        }
        true
    }

    /// A request of an earlier term is refused. A stale leader or candidate
    /// (or one that was partitioned) learns it has been replaced; without
    /// this, PreVote and CheckQuorum could leave it waiting for heartbeats
    /// that never come. The reply names the request's term, so should the
    /// sender lead again by the time it arrives, it is not mistaken for an
    /// answer in the new term. Replies of an earlier term are dropped.
    fn reject_stale(&mut self, from: NodeId, message: RaftMessage) {
        if let Some(reply) = message.refusal(self.term) {
            self.send(from, reply);
        }
    }

    /// A vote request of this node's term (or a pre-vote for the next), in
    /// any role: grant at most one vote a term (section 5.2), and only to a
    /// log at least as up to date as ours (5.4.1).
    fn handle_request_vote(&mut self, from: NodeId, m: RequestVote) {
        let can_vote = self.vote == Some(m.candidate_id)
            || (self.vote.is_none() && self.leader_id.is_none())
            || (m.pre_vote && m.term > self.term)
            || self.broken(|r| r == BrokenRule::VoteTwiceInATerm);
        let log_ok = self.log.is_up_to_date(m.last_log_index, m.last_log_term)
            || self.broken(|r| r == BrokenRule::VoteWithoutLogCheck);
        let granted = can_vote && log_ok && from == m.candidate_id;
        if granted && !m.pre_vote {
            self.vote = Some(m.candidate_id);
            self.reset_election_timer();
        }
        let reply = RaftMessage::RequestVoteReply(RequestVoteReply {
            term: if granted && m.pre_vote {
                m.term
            } else {
                self.term
            },
            request_term: m.term,
            vote_granted: granted,
            pre_vote: m.pre_vote,
        });
        if self.broken(|r| r == BrokenRule::VoteBeforeDurable) {
            self.outbox.push(Outbound {
                to: from,
                message: reply,
            });
            return;
        }
        self.send(from, reply);
    }
}
