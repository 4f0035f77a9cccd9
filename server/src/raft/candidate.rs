//! Campaigns: a pre-candidate asks whether it could win (thesis 9.6), a
//! candidate asks for votes (section 5.2), and a majority of grants moves
//! each on (to candidate, to leader); a majority of rejections ends it.

use std::collections::BTreeMap;

use poncho_protocol::{NodeId, RaftMessage, RequestVote, RequestVoteReply};

use super::{BrokenRule, Raft, RoleState};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Campaign {
    PreElection,
    Election,
    /// An election the leader asked for (TimeoutNow): voters in their lease
    /// answer it.
    Transfer,
}

/// What only a (pre-)candidate keeps: its campaign and the answers counted.
#[derive(Debug)]
pub(super) struct CandidateState {
    kind: Campaign,
    /// The answers counted in this campaign, this node's own grant included.
    votes: BTreeMap<NodeId, bool>,
}

impl CandidateState {
    fn new(kind: Campaign, own_id: NodeId) -> CandidateState {
        CandidateState {
            kind,
            votes: BTreeMap::from([(own_id, true)]),
        }
    }

    pub(super) fn is_pre_vote(&self) -> bool {
        self.kind == Campaign::PreElection
    }

    /// The term a vote request of this campaign names, when in `term`: a
    /// pre-vote asks about the next term without entering it.
    fn vote_term(&self, term: u64) -> u64 {
        if self.is_pre_vote() {
            term + 1
        } else {
            term
        }
    }

    #[cfg(test)]
    pub(super) fn votes(&self) -> &BTreeMap<NodeId, bool> {
        &self.votes
    }

    fn granted(&self) -> usize {
        self.votes.values().filter(|&&g| g).count()
    }
}

impl Raft {
    pub(super) fn campaign(&mut self, kind: Campaign) {
        debug_assert!(!self.is_leader(), "a leader does not campaign");
        if !self.is_voter() {
            return; // learners, removed nodes and joining ones never campaign
        }
        if kind != Campaign::PreElection {
            // Thesis 9.6: a pre-vote asks first whether we could win, without
            // changing our term or vote, so a node that cannot win disrupts
            // no one. A real election enters the next term.
            self.enter_term(self.term + 1);
            self.vote = Some(self.config.id);
        }
        self.role = RoleState::Campaigning(CandidateState::new(kind, self.config.id));
        self.leader_id = None;
        self.reset_election_timer();
        if 1 >= self.quorum {
            self.win_vote(kind);
            return;
        }
        self.request_votes();
    }

    /// A follower's or a candidate's tick: campaign once the election timer
    /// runs out; meanwhile a candidate resends its requests every heartbeat
    /// interval.
    pub(super) fn tick_election(&mut self) {
        if !self.is_voter() {
            return;
        }
        if self.election_elapsed >= self.randomized_election_timeout {
            self.campaign(if self.config.pre_vote {
                Campaign::PreElection
            } else {
                Campaign::Election
            });
        } else if matches!(self.role, RoleState::Campaigning(_))
            && self
                .election_elapsed
                .is_multiple_of(self.config.heartbeat_interval_ticks)
        {
            self.request_votes();
        }
    }

    /// Sends the campaign's vote request to every peer that has not answered
    /// yet. Called when a campaign starts and again every heartbeat interval,
    /// since a request or its answer may be lost (a connection not yet up).
    pub(super) fn request_votes(&mut self) {
        let RoleState::Campaigning(c) = &self.role else {
            return;
        };
        let request = RequestVote {
            term: c.vote_term(self.term),
            candidate_id: self.config.id,
            last_log_index: self.log.last_index(),
            last_log_term: self.log.last_term(),
            pre_vote: c.kind == Campaign::PreElection,
            leader_transfer: c.kind == Campaign::Transfer,
        };
        let own = self.config.id;
        let unanswered: Vec<NodeId> = self
            .voters
            .iter()
            .copied()
            .filter(|&p| p != own && !c.votes.contains_key(&p))
            .collect();
        for peer in unanswered {
            self.send(peer, RaftMessage::RequestVote(request.clone()));
        }
    }

    fn win_vote(&mut self, kind: Campaign) {
        match kind {
            Campaign::PreElection => self.campaign(Campaign::Election),
            Campaign::Election | Campaign::Transfer => self.become_leader(),
        }
    }

    /// A (pre-)candidate's message of its own term (vote requests are
    /// answered before the role's step, in `step`).
    pub(super) fn step_candidate(&mut self, from: NodeId, message: RaftMessage) {
        match message {
            RaftMessage::RequestVoteReply(m) => self.handle_vote_reply(from, m),
            // A candidate that sees a leader of its own term steps down.
            RaftMessage::AppendEntries(_) | RaftMessage::InstallSnapshot(_) => {
                let term = self.term;
                self.become_follower(term, Some(from));
                self.step_follower(from, message);
            }
            RaftMessage::TimeoutNow(_) => self.campaign(Campaign::Transfer),
            RaftMessage::AppendEntriesReply(_)
            | RaftMessage::InstallSnapshotReply(_)
            | RaftMessage::RequestVote(_)
            | RaftMessage::LeaseKeepalive(_)
            | RaftMessage::LeaseKeepaliveReply(_) => {}
        }
    }

    fn handle_vote_reply(&mut self, from: NodeId, m: RequestVoteReply) {
        // Only answers to the election under way count: a reply to a request
        // of an earlier campaign (say, an older term's rejection that arrived
        // late) is not a vote in this one.
        let any_election = self.broken(|r| r == BrokenRule::VotesFromOlderElections);
        let term = self.term;
        let RoleState::Campaigning(c) = &mut self.role else {
            return;
        };
        let expected = if c.is_pre_vote() {
            m.pre_vote && (m.request_term == term + 1 || any_election)
        } else {
            !m.pre_vote && m.term == term && (m.request_term == term || any_election)
        };
        // Only the voters of this node's configuration decide.
        if !expected || !self.voters.contains(&from) {
            return;
        }
        c.votes.entry(from).or_insert(m.vote_granted);
        let granted = c.granted();
        let rejected = c.votes.len() - granted;
        let kind = c.kind;
        if granted >= self.quorum {
            self.win_vote(kind);
        } else if rejected >= self.quorum {
            self.become_follower(term, None);
        }
    }
}
