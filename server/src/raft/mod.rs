//! The Raft core: a deterministic state machine that does no I/O.
//!
//! It implements the Raft paper (Ongaro & Ousterhout, extended version) with
//! these parts of Ongaro's thesis: PreVote and CheckQuorum (9.6), ReadIndex
//! reads (6.4), leader transfer (3.10), the leader writing its log in
//! parallel with replication (10.2.1), and membership changes one server at
//! a time (4.1, with learners; see `membership`).
//!
//! # Driving it
//! Inputs go in through [`Raft::tick`], [`Raft::step`], [`Raft::propose`],
//! [`Raft::propose_change`], [`Raft::read_index`],
//! [`Raft::transfer_leadership`], and the two notices
//! [`Raft::on_persisted`] and [`Raft::advance_applied`]. After a batch of
//! inputs, the driver calls [`Raft::ready`] and carries out the [`Ready`]
//! strictly in this order:
//!
//! 1. `messages` may be sent at once (they promise nothing about local disk).
//! 2. Make `hard_state` and `entries` durable (stored entries at and after
//!    `entries[0].index` are replaced). Then, and only then, send
//!    `messages_after_persist` and call `on_persisted` with the last entry's
//!    index and term. Readies must be made durable in the order they were
//!    handed out.
//! 3. Apply `committed_entries` in order, then call `advance_applied`. They
//!    are durable on a majority already, so this may happen before step 2's
//!    write completes (the simulator does so whenever its writes lag).
//! 4. Serve `reads` from the state machine; answer `failed_reads` with an
//!    error (leadership was lost before the read was confirmed).
//!
//! Everything the core needs comes in as an input: time as ticks, randomness
//! from a seeded RNG it owns. The same inputs always give the same outputs,
//! which is what lets the simulator in `sim` replay a failing seed exactly.

mod candidate;
mod follower;
mod leader;
mod log;
mod membership;
mod progress;
mod read;
mod snapshot;
mod step;

#[cfg(test)]
mod membership_tests;
#[cfg(test)]
mod script;
#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

use poncho_protocol::{
    Entry, EntryKind, InstallSnapshot, MemberChange, Membership, NodeId, RaftMessage,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use self::candidate::{Campaign, CandidateState};
use self::leader::LeaderState;
pub use self::log::{AppendOutcome, RaftLog};
pub use self::membership::{ChangeError, MemberProgress, MemberRole};
pub use self::progress::{Progress, ProgressState};
pub use self::snapshot::{Restored, SnapshotAck};

/// Static configuration of one node.
#[derive(Clone, Debug)]
pub struct Config {
    pub id: NodeId,
    /// The minimum election timeout. Each wait is drawn from
    /// `[election_timeout_ticks, 2 * election_timeout_ticks)`.
    pub election_timeout_ticks: u64,
    pub heartbeat_interval_ticks: u64,
    /// Limits on one AppendEntries. A single entry larger than
    /// `max_bytes_per_message` is still sent, alone.
    pub max_entries_per_message: usize,
    pub max_bytes_per_message: usize,
    /// Unacknowledged AppendEntries allowed per follower in `Replicate`.
    pub max_inflight_messages: usize,
    /// The leader refuses proposals while this many entries are uncommitted,
    /// so a slow quorum pushes back on clients instead of growing memory.
    pub max_uncommitted_entries: u64,
    /// A snapshot transfer with no progress for this long is given up (and
    /// retried), so a follower that vanished mid-transfer is not stuck.
    pub snapshot_stall_ticks: u64,
    pub pre_vote: bool,
    pub check_quorum: bool,
    /// The `is_leader` hint: campaign at once on start instead of waiting.
    pub bootstrap_leader: bool,
    /// A learner is promoted only once its log is within this many entries
    /// of the leader's; so is a voter counted as caught up by the check
    /// that a change leaves a quorum of healthy voters.
    pub promote_max_lag_entries: u64,
    /// Deliberately broken rules, so tests can show the simulator finds them.
    #[cfg(test)]
    pub(crate) broken_rule: Option<BrokenRule>,
}

/// A rule a test may break on purpose (see `tests::sim_catches_*`). Only
/// tests can set one (`Config::broken_rule`); elsewhere `Raft::broken` is
/// always false, so the checks compile away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BrokenRule {
    /// Commit an entry of an earlier term by counting replicas (Figure 8).
    CommitOlderTermByCounting,
    /// Grant a vote without the up-to-date log check of section 5.4.1.
    VoteWithoutLogCheck,
    /// Grant every vote request in a term, not just the first.
    VoteTwiceInATerm,
    /// Serve a ReadIndex read without a quorum confirming leadership.
    ReadWithoutQuorum,
    /// Take the read round a reply echoes whatever term its request was of
    /// (issue 10, defect 1).
    ReadRoundsFromOlderTerms,
    /// Move a follower's progress on a reply to a request of an older term
    /// (issue 10, defect 2).
    ProgressFromOlderTerms,
    /// Count a vote reply whatever election it answers (issue 10, defect 3).
    VotesFromOlderElections,
    /// Send a vote before the vote is durable.
    VoteBeforeDurable,
    /// Acknowledge entries before they are durable.
    AckBeforeDurable,
    /// Propose a membership change while another is uncommitted.
    TwoChangesInFlight,
    /// Propose a membership change before an entry of the leader's term
    /// has committed (the rule Ongaro added to single-server changes).
    ChangeBeforeTermCommit,
}

impl Config {
    pub fn new(id: NodeId) -> Config {
        Config {
            id,
            election_timeout_ticks: 10,
            heartbeat_interval_ticks: 1,
            max_entries_per_message: 512,
            max_bytes_per_message: 1 << 20,
            max_inflight_messages: 64,
            max_uncommitted_entries: 100_000,
            snapshot_stall_ticks: 100,
            pre_vote: true,
            check_quorum: true,
            bootstrap_leader: false,
            promote_max_lag_entries: 1000,
            #[cfg(test)]
            broken_rule: None,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.id == 0 {
            return Err("node id 0 is reserved; ids start at 1".into());
        }
        if self.heartbeat_interval_ticks == 0 || self.election_timeout_ticks == 0 {
            return Err("timeouts must be at least one tick".into());
        }
        if self.election_timeout_ticks <= self.heartbeat_interval_ticks {
            return Err(format!(
                "the election timeout ({} ticks) must exceed the heartbeat interval ({} ticks)",
                self.election_timeout_ticks, self.heartbeat_interval_ticks
            ));
        }
        if self.max_entries_per_message == 0 || self.max_inflight_messages == 0 {
            return Err("batch and in-flight limits must be at least 1".into());
        }
        Ok(())
    }
}

/// A configuration of `voters`, for tests (addresses made up from ids).
#[cfg(test)]
pub(crate) fn voters_of(voters: &[NodeId]) -> Membership {
    Membership::bootstrap(voters.iter().map(|&id| poncho_protocol::Member {
        id,
        addr: std::net::SocketAddr::from(([127, 0, 0, 1], 10_000 + id as u16)),
        peer_addr: None,
        learner: false,
    }))
}

/// A new cluster's first entry: its first configuration, at index 1 of
/// term 0, written alike by every founding member before it starts (so a
/// member added later learns it from the log, as it learns every later
/// one).
pub fn bootstrap_entry(membership: &Membership) -> Entry {
    Entry {
        index: 1,
        term: 0,
        kind: EntryKind::Config,
        data: Arc::from(membership.encode()),
    }
}

/// What must be durable before a vote or an acknowledgement leaves the node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HardState {
    pub term: u64,
    pub vote: Option<NodeId>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Follower => "follower",
            Role::PreCandidate => "pre-candidate",
            Role::Candidate => "candidate",
            Role::Leader => "leader",
        })
    }
}

/// Role, term and known leader: reported in a `Ready` whenever one changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoftState {
    pub role: Role,
    pub term: u64,
    pub leader_id: Option<NodeId>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outbound {
    pub to: NodeId,
    pub message: RaftMessage,
}

/// A read the driver may now serve from its state machine: leadership was
/// confirmed after the read arrived and the state machine has applied `index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadState {
    pub id: u64,
    pub index: u64,
}

/// Outputs of the core since the last `ready()`. See the module docs for the
/// order in which the driver must carry them out.
#[derive(Debug, Default)]
pub struct Ready {
    pub soft_state: Option<SoftState>,
    pub hard_state: Option<HardState>,
    pub entries: Vec<Entry>,
    pub messages: Vec<Outbound>,
    pub messages_after_persist: Vec<Outbound>,
    pub committed_entries: Vec<Entry>,
    pub reads: Vec<ReadState>,
    pub failed_reads: Vec<u64>,
    /// Leader: followers that need the latest snapshot, which the driver
    /// streams with `send_snapshot_chunk` from offset 0.
    pub snapshots_to_send: Vec<NodeId>,
    /// Leader: a follower acknowledged a chunk; send the next from here.
    pub snapshot_acks: Vec<SnapshotAck>,
    /// Follower: chunks of a snapshot from the leader, for the driver to
    /// write, acknowledge (`snapshot_chunk_received`) and, once complete and
    /// verified, install (`restore_snapshot`).
    pub snapshot_chunks: Vec<(NodeId, InstallSnapshot)>,
    /// What a peer asked that breaks Raft's guarantees, refused: for the
    /// driver to report loudly. The core never stops for what a remote sent.
    pub alerts: Vec<Alert>,
}

/// A request from a peer that would break Raft's guarantees, refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Alert {
    /// `leader`, in `leader_term`, sent entries that conflict with the
    /// committed entry at `index` (of `term` here; theirs start in
    /// `their_term`). The log was not changed and the message not answered.
    OverwriteCommitted {
        leader: NodeId,
        leader_term: u64,
        index: u64,
        term: u64,
        their_term: u64,
    },
    /// `leader` sent a configuration entry at `index` that does not decode
    /// or is not a valid configuration; the message was not taken.
    BadConfig {
        leader: NodeId,
        index: u64,
        error: String,
    },
}

impl fmt::Display for Alert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Alert::OverwriteCommitted {
                leader,
                leader_term,
                index,
                term,
                their_term,
            } => write!(
                f,
                "leader {leader} (term {leader_term}) asked to overwrite committed entry \
                 {index} (term {term}) with one of term {their_term}; refused. Two leaders \
                 disagree on committed history: a node may have lost its data directory and \
                 voted twice"
            ),
            Alert::BadConfig {
                leader,
                index,
                error,
            } => write!(
                f,
                "leader {leader} sent a configuration at index {index} that is not valid                  ({error}); refused"
            ),
        }
    }
}

impl Ready {
    /// Whether anything here must be written before `messages_after_persist`.
    pub fn must_persist(&self) -> bool {
        self.hard_state.is_some() || !self.entries.is_empty()
    }

    /// The (index, term) to report through `on_persisted` once durable.
    pub fn last_entry_id(&self) -> Option<(u64, u64)> {
        self.entries.last().map(|e| (e.index, e.term))
    }

    pub fn is_empty(&self) -> bool {
        self.soft_state.is_none()
            && !self.must_persist()
            && self.messages.is_empty()
            && self.messages_after_persist.is_empty()
            && self.committed_entries.is_empty()
            && self.reads.is_empty()
            && self.failed_reads.is_empty()
            && self.snapshots_to_send.is_empty()
            && self.snapshot_acks.is_empty()
            && self.snapshot_chunks.is_empty()
            && self.alerts.is_empty()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProposeError {
    /// Not the leader; the request was not applied. The leader, if known.
    NotLeader { leader_id: Option<NodeId> },
    /// A leader transfer is under way; retry shortly at the new leader.
    TransferInProgress,
    /// Too many uncommitted entries; retry later.
    Overloaded,
}

impl fmt::Display for ProposeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProposeError::NotLeader {
                leader_id: Some(id),
            } => write!(f, "not the leader; node {id} is"),
            ProposeError::NotLeader { leader_id: None } => {
                f.write_str("not the leader; no leader is known")
            }
            ProposeError::TransferInProgress => f.write_str("leadership is being transferred"),
            ProposeError::Overloaded => f.write_str("too many uncommitted entries"),
        }
    }
}

impl std::error::Error for ProposeError {}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FollowerStatus {
    pub id: NodeId,
    pub match_index: u64,
    pub next_index: u64,
    pub state: ProgressState,
    pub inflight_messages: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub id: NodeId,
    pub role: Role,
    pub term: u64,
    pub vote: Option<NodeId>,
    pub leader_id: Option<NodeId>,
    pub commit_index: u64,
    pub applied_index: u64,
    pub last_log_index: u64,
    pub last_log_term: u64,
    pub persisted_index: u64,
    /// Per-follower replication state; empty unless this node leads.
    pub followers: Vec<FollowerStatus>,
    /// What this node is in its latest configuration.
    pub member_role: MemberRole,
}

/// What a node keeps only while in one role.
#[derive(Debug)]
enum RoleState {
    Follower,
    /// A pre-candidate or a candidate, by the kind of its campaign.
    Campaigning(CandidateState),
    Leader(LeaderState),
}

pub struct Raft {
    config: Config,
    /// The other members of the latest configuration, voters and learners,
    /// in id order (iteration order must be deterministic).
    peers: Vec<NodeId>,
    /// The latest configuration's voters (this node among them or not).
    voters: Vec<NodeId>,
    /// A majority of `voters`.
    quorum: usize,
    /// The `Configs::version` the three above were computed from.
    config_version: u64,
    term: u64,
    vote: Option<NodeId>,
    role: RoleState,
    leader_id: Option<NodeId>,
    log: RaftLog,
    rng: StdRng,
    /// Ticks since the last election-timer reset (followers, candidates) or
    /// since the last CheckQuorum round (leader).
    election_elapsed: u64,
    randomized_election_timeout: u64,
    /// Index the driver has applied (reported through `advance_applied`).
    applied_index: u64,

    // Outputs waiting for `ready()`, not role state: they outlive a role
    // change (a confirmed read stays valid after its leader steps down; a
    // snapshot start is checked again by `send_snapshot_chunk`).
    /// Confirmed reads waiting for the state machine to reach their index.
    reads_confirmed: VecDeque<ReadState>,
    failed_reads: Vec<u64>,

    snapshots_to_send: Vec<NodeId>,
    snapshot_acks: Vec<SnapshotAck>,
    snapshot_chunks: Vec<(NodeId, InstallSnapshot)>,
    alerts: Vec<Alert>,

    outbox: Vec<Outbound>,
    outbox_after_persist: Vec<Outbound>,
    reported_hard_state: HardState,
    reported_soft_state: Option<SoftState>,
}

impl Raft {
    /// A node recovered from its durable `hard_state` and log `entries` (empty
    /// for a new node), `base` being the configuration before the log's
    /// first entry (a new cluster's first one; a node that is to join one
    /// has none of its own: it passes the cluster's, or any configuration
    /// without itself, and learns the real one from the leader). `seed`
    /// drives every random choice the node makes.
    pub fn new(
        config: Config,
        hard_state: HardState,
        base: Membership,
        entries: Vec<Entry>,
        seed: u64,
    ) -> Result<Raft, String> {
        Raft::with_snapshot(config, hard_state, (0, 0), base, entries, seed)
    }

    /// A node recovered from a snapshot through (index, term) = `snapshot`,
    /// whose state and configuration (`base`) the driver has loaded, and
    /// the log `entries` after it.
    pub fn with_snapshot(
        config: Config,
        hard_state: HardState,
        snapshot: (u64, u64),
        base: Membership,
        entries: Vec<Entry>,
        seed: u64,
    ) -> Result<Raft, String> {
        config.validate()?;
        // Empty: a node that is to join a cluster, or a new one whose first
        // configuration is its first entry (`bootstrap_entry`).
        if !base.members.is_empty() {
            base.check()
                .map_err(|e| format!("the configuration to start from: {e}"))?;
        }
        if entries.first().is_some_and(|e| e.index != snapshot.0 + 1) {
            return Err(format!(
                "the log does not continue the snapshot at index {}",
                snapshot.0
            ));
        }
        let log = RaftLog::new(snapshot.0, snapshot.1, base, entries)?;
        let mut raft = Raft {
            peers: Vec::new(),
            voters: Vec::new(),
            quorum: 1,
            config_version: u64::MAX,
            term: hard_state.term,
            vote: hard_state.vote,
            role: RoleState::Follower,
            leader_id: None,
            log,
            rng: StdRng::seed_from_u64(seed),
            election_elapsed: 0,
            randomized_election_timeout: config.election_timeout_ticks,
            applied_index: snapshot.0,
            reads_confirmed: VecDeque::new(),
            failed_reads: Vec::new(),
            snapshots_to_send: Vec::new(),
            snapshot_acks: Vec::new(),
            snapshot_chunks: Vec::new(),
            alerts: Vec::new(),
            outbox: Vec::new(),
            outbox_after_persist: Vec::new(),
            reported_hard_state: hard_state,
            reported_soft_state: None,
            config,
        };
        raft.refresh_membership();
        raft.reset_election_timer();
        if raft.config.bootstrap_leader {
            // A fresh cluster gets a predictable first leader; on a restart the
            // hint only skips the wait, and PreVote keeps it from disrupting a
            // live leader.
            raft.campaign_now();
        }
        Ok(raft)
    }

    /// Campaigns now, as the bootstrap hint does at start: a real election
    /// on a fresh node, a pre-vote otherwise. A driver uses it to delay the
    /// hint until it can reach a quorum, so the vote requests are not lost.
    pub fn campaign_now(&mut self) {
        if self.is_leader() || !self.is_voter() {
            return;
        }
        let fresh = self.term == 0 && self.log.last_term() == 0;
        self.campaign(if fresh || !self.config.pre_vote {
            Campaign::Election
        } else {
            Campaign::PreElection
        });
    }

    pub fn quorum(&self) -> usize {
        self.quorum
    }

    /// The latest configuration in this node's log: the one it acts on.
    pub fn membership(&self) -> &Membership {
        self.log.configs().latest().1
    }

    /// Changes whenever the latest configuration does (an entry appended or
    /// truncated, a snapshot installed): a cheap way to notice one.
    pub fn membership_version(&self) -> u64 {
        self.log.configs().version()
    }

    /// The index of the entry the latest configuration comes from (the
    /// snapshot's, or 0, for the one the log started from).
    pub fn membership_index(&self) -> u64 {
        self.log.configs().latest().0
    }

    /// The configuration in effect at `index` (what a snapshot through
    /// `index` records).
    pub fn membership_at(&self, index: u64) -> Arc<Membership> {
        Arc::clone(self.log.configs().at(index))
    }

    /// What this node is in its latest configuration.
    pub fn member_role(&self) -> MemberRole {
        MemberRole::of(self.config.id, self.membership())
    }

    fn is_voter(&self) -> bool {
        self.voters.contains(&self.config.id)
    }

    /// Recomputes who votes and who is replicated to, if the latest
    /// configuration changed (an entry appended or truncated, a snapshot
    /// installed). A leader starts tracking new members and forgets
    /// removed ones; a candidate that is no longer a voter gives up.
    fn refresh_membership(&mut self) {
        let version = self.log.configs().version();
        if version == self.config_version {
            return;
        }
        self.config_version = version;
        let own = self.config.id;
        let latest = Arc::clone(self.log.configs().latest().1);
        self.voters = latest.voters().into_iter().collect();
        self.peers = latest.ids().into_iter().filter(|&id| id != own).collect();
        self.quorum = self.voters.len() / 2 + 1;
        let next_index = self.log.last_index() + 1;
        let voter = self.is_voter();
        match &mut self.role {
            RoleState::Leader(leader) => {
                leader.progress.retain(|id, _| latest.contains(*id));
                for &peer in &self.peers {
                    leader
                        .progress
                        .entry(peer)
                        .or_insert_with(|| Progress::new(next_index));
                }
                if leader.transfer.is_some_and(|t| !latest.is_voter(t.to)) {
                    leader.transfer = None;
                }
            }
            RoleState::Campaigning(_) if !voter => {
                let term = self.term;
                self.become_follower(term, None);
            }
            RoleState::Campaigning(_) | RoleState::Follower => {}
        }
    }

    pub fn id(&self) -> NodeId {
        self.config.id
    }

    pub fn role(&self) -> Role {
        match &self.role {
            RoleState::Follower => Role::Follower,
            RoleState::Campaigning(c) if c.is_pre_vote() => Role::PreCandidate,
            RoleState::Campaigning(_) => Role::Candidate,
            RoleState::Leader(_) => Role::Leader,
        }
    }

    fn is_leader(&self) -> bool {
        matches!(self.role, RoleState::Leader(_))
    }

    pub fn term(&self) -> u64 {
        self.term
    }

    pub fn leader_id(&self) -> Option<NodeId> {
        self.leader_id
    }

    pub fn log(&self) -> &RaftLog {
        &self.log
    }

    pub fn status(&self) -> Status {
        Status {
            id: self.config.id,
            role: self.role(),
            term: self.term,
            vote: self.vote,
            leader_id: self.leader_id,
            commit_index: self.log.committed(),
            applied_index: self.applied_index,
            last_log_index: self.log.last_index(),
            last_log_term: self.log.last_term(),
            persisted_index: self.log.persisted(),
            followers: match self.leader() {
                Some(leader) => leader
                    .progress
                    .iter()
                    .map(|(&id, p)| FollowerStatus {
                        id,
                        match_index: p.match_index,
                        next_index: p.next_index,
                        state: p.state,
                        inflight_messages: p.inflight_count(),
                    })
                    .collect(),
                None => Vec::new(),
            },
            member_role: self.member_role(),
        }
    }

    // ---------------------------------------------------------------- inputs

    /// Advances logical time by one tick.
    pub fn tick(&mut self) {
        self.election_elapsed += 1;
        match self.role {
            RoleState::Leader(_) => self.tick_leader(),
            RoleState::Follower | RoleState::Campaigning(_) => self.tick_election(),
        }
    }

    /// Appends a client command. Returns its (index, term): the command is
    /// committed if the entry at that index commits with that term.
    pub fn propose(&mut self, data: impl Into<Arc<str>>) -> Result<(u64, u64), ProposeError> {
        self.propose_entry(EntryKind::Command, data.into())
    }

    fn propose_entry(
        &mut self,
        kind: EntryKind,
        data: Arc<str>,
    ) -> Result<(u64, u64), ProposeError> {
        let Some(leader) = self.leader() else {
            return Err(ProposeError::NotLeader {
                leader_id: self.leader_id,
            });
        };
        if leader.transfer.is_some() {
            return Err(ProposeError::TransferInProgress);
        }
        if kind == EntryKind::Command
            && self.log.last_index() - self.log.committed() >= self.config.max_uncommitted_entries
        {
            return Err(ProposeError::Overloaded);
        }
        let index = self.log.last_index() + 1;
        self.log.append(
            Entry {
                index,
                term: self.term,
                kind,
                data,
            },
            None,
        );
        // Sent from `ready()`, so all proposals of one batch share a message.
        Ok((index, self.term))
    }

    /// Proposes one membership change (see `membership`): it takes effect
    /// at once, on this node as on each that appends it, and is final once
    /// committed at the returned index. Refused while another change is
    /// uncommitted, before this leader has committed an entry of its term,
    /// for a learner more than `promote_max_lag_entries` behind, and, unless
    /// `force`, when fewer healthy, caught-up voters than the new
    /// configuration's quorum would remain.
    pub fn propose_change(
        &mut self,
        change: &MemberChange,
        force: bool,
    ) -> Result<u64, ChangeError> {
        let two_in_flight = self.broken(|r| r == BrokenRule::TwoChangesInFlight);
        let before_term_commit = self.broken(|r| r == BrokenRule::ChangeBeforeTermCommit);
        let Some(leader) = self.leader() else {
            return Err(ChangeError::NotLeader {
                leader_id: self.leader_id,
            });
        };
        if leader.transfer.is_some() {
            return Err(ChangeError::TransferInProgress);
        }
        let committed = self.log.committed();
        if self.log.term(committed) != Some(self.term) && !before_term_commit {
            return Err(ChangeError::TermNotCommitted);
        }
        let (latest_index, latest) = self.log.configs().latest();
        if latest_index > committed && !two_in_flight {
            return Err(ChangeError::ChangeInProgress {
                index: latest_index,
            });
        }
        let next = latest.with_change(change).map_err(ChangeError::Invalid)?;
        let last_index = self.log.last_index();
        let max_lag = self.config.promote_max_lag_entries;
        // A member the leader has not heard from in this term is not known
        // to hold anything, whatever the log's length.
        let caught_up = |id: NodeId| {
            id == self.config.id
                || leader.progress.get(&id).is_some_and(|p| {
                    p.heard_at.is_some() && p.match_index.saturating_add(max_lag) >= last_index
                })
        };
        if let MemberChange::Promote(id) = change {
            if !caught_up(*id) {
                return Err(ChangeError::LearnerBehind {
                    id: *id,
                    match_index: leader.progress.get(id).map_or(0, |p| p.match_index),
                    last_index,
                    max_lag,
                });
            }
        }
        if change.changes_voters() && !force {
            let voters = next.voters();
            let healthy = voters
                .iter()
                .filter(|&&v| caught_up(v) && self.recently_heard(v))
                .count();
            if healthy < next.quorum() {
                return Err(ChangeError::Unsafe {
                    healthy,
                    quorum: next.quorum(),
                    voters: voters.len(),
                });
            }
        }
        let index = last_index + 1;
        let entry = Entry {
            index,
            term: self.term,
            kind: EntryKind::Config,
            data: Arc::from(next.encode()),
        };
        self.log.append(entry, Some(next));
        self.refresh_membership();
        Ok(index)
    }

    /// Leader: whether `id` (this node always) was heard from within an
    /// election timeout.
    fn recently_heard(&self, id: NodeId) -> bool {
        id == self.config.id
            || self.leader().is_some_and(|l| {
                l.progress.get(&id).is_some_and(|p| {
                    p.heard_at
                        .is_some_and(|t| l.ticks - t <= self.config.election_timeout_ticks)
                })
            })
    }

    /// Leader: each member's replication, for `member list` (empty on
    /// other nodes). The leader lists itself, matching its whole log.
    pub fn member_progress(&self) -> Vec<MemberProgress> {
        let Some(leader) = self.leader() else {
            return Vec::new();
        };
        let mut out: Vec<MemberProgress> = leader
            .progress
            .iter()
            .map(|(&id, p)| MemberProgress {
                id,
                match_index: p.match_index,
                healthy: self.recently_heard(id),
            })
            .collect();
        out.push(MemberProgress {
            id: self.config.id,
            match_index: self.log.last_index(),
            healthy: true,
        });
        out.sort_by_key(|p| p.id);
        out
    }

    /// Asks for a linearizable read (ReadIndex, thesis 6.4). Once leadership is
    /// confirmed and the state machine has applied the read index, `id` comes
    /// out in `Ready::reads`; if leadership is lost first, in `failed_reads`.
    pub fn read_index(&mut self, id: u64) -> Result<(), ProposeError> {
        // Until an entry of its own term commits, the leader does not know
        // the commit index (thesis 6.4 step 1).
        let term_commit =
            (self.log.term(self.log.committed()) == Some(self.term)).then(|| self.log.committed());
        let leader_id = self.leader_id;
        let leader = self
            .leader_mut()
            .ok_or(ProposeError::NotLeader { leader_id })?;
        leader.reads.push(id, term_commit);
        Ok(())
    }

    /// Hands leadership to `to` (thesis 3.10): stop taking proposals, bring it
    /// up to date, then tell it to start an election at once.
    pub fn transfer_leadership(&mut self, to: NodeId) -> Result<(), ProposeError> {
        if !self.is_leader() {
            return Err(ProposeError::NotLeader {
                leader_id: self.leader_id,
            });
        }
        if to == self.config.id || !self.voters.contains(&to) {
            return Ok(()); // nothing to do, or not a voter we can hand to
        }
        if let Some(leader) = self.leader_mut() {
            leader.start_transfer(to);
        }
        self.maybe_send_timeout_now(to);
        Ok(())
    }

    /// The driver reports everything up to (`index`, `term`) durable.
    pub fn on_persisted(&mut self, index: u64, term: u64) {
        self.log.persisted_to(index, term);
        self.maybe_commit(); // a leader's own write counts towards a majority
    }

    /// The driver reports its state machine has applied up to `index`.
    pub fn advance_applied(&mut self, index: u64) {
        assert!(
            index <= self.log.applied(),
            "applied {index} was never handed out"
        );
        self.applied_index = self.applied_index.max(index);
    }

    /// The driver has made a snapshot of its state machine through `index`
    /// durable: entries through it may be dropped from the log. Returns the
    /// index actually compacted to (never beyond what was applied).
    pub fn compact(&mut self, index: u64) -> u64 {
        let index = index.min(self.applied_index).min(self.log.persisted());
        self.log.compact(index);
        self.log.snapshot_index()
    }

    pub fn snapshot_index(&self) -> u64 {
        self.log.snapshot_index()
    }

    // ---------------------------------------------------------------- output

    /// Whether `ready()` would return anything.
    pub fn has_ready(&self) -> bool {
        !self.outbox.is_empty()
            || !self.outbox_after_persist.is_empty()
            || self.log.has_unstable()
            || self.log.has_committed_to_apply()
            || self.leader().is_some_and(|l| l.reads.round_wanted())
            || !self.failed_reads.is_empty()
            || !self.snapshots_to_send.is_empty()
            || !self.snapshot_acks.is_empty()
            || !self.snapshot_chunks.is_empty()
            || !self.alerts.is_empty()
            || self
                .reads_confirmed
                .front()
                .is_some_and(|r| r.index <= self.applied_index)
            || self.hard_state() != self.reported_hard_state
            || Some(self.soft_state()) != self.reported_soft_state
            || (self.is_leader() && self.peers.iter().any(|p| self.can_send_entries(*p)))
    }

    pub fn ready(&mut self) -> Ready {
        if self.is_leader() {
            if self.leader_mut().is_some_and(|l| l.reads.start_round()) {
                for peer in self.peers.clone() {
                    self.send_append(peer, true);
                }
                self.confirm_reads();
            }
            for peer in self.peers.clone() {
                while self.send_append(peer, false) {}
            }
        }
        let mut reads = Vec::new();
        while self
            .reads_confirmed
            .front()
            .is_some_and(|r| r.index <= self.applied_index)
        {
            reads.extend(self.reads_confirmed.pop_front());
        }
        let hard_state = self.hard_state();
        let soft_state = self.soft_state();
        let ready = Ready {
            soft_state: (Some(soft_state) != self.reported_soft_state).then_some(soft_state),
            hard_state: (hard_state != self.reported_hard_state).then_some(hard_state),
            entries: self.log.take_unstable(),
            messages: std::mem::take(&mut self.outbox),
            messages_after_persist: std::mem::take(&mut self.outbox_after_persist),
            committed_entries: self.log.take_committed(),
            reads,
            failed_reads: std::mem::take(&mut self.failed_reads),
            snapshots_to_send: std::mem::take(&mut self.snapshots_to_send),
            snapshot_acks: std::mem::take(&mut self.snapshot_acks),
            snapshot_chunks: std::mem::take(&mut self.snapshot_chunks),
            alerts: std::mem::take(&mut self.alerts),
        };
        self.reported_hard_state = hard_state;
        self.reported_soft_state = Some(soft_state);
        ready
    }

    fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
        }
    }

    fn soft_state(&self) -> SoftState {
        SoftState {
            role: self.role(),
            term: self.term,
            leader_id: self.leader_id,
        }
    }

    // ---------------------------------------------------------------- roles

    fn reset_election_timer(&mut self) {
        self.election_elapsed = 0;
        let min = self.config.election_timeout_ticks;
        self.randomized_election_timeout = self.rng.gen_range(min..2 * min);
    }

    /// Moves to a later term: no vote yet, and what was queued in the old term
    /// and not yet handed out is dropped. Messages waiting for persistence
    /// promise things of a term this node has left: an acknowledgement of
    /// entries that a message of the new term, in this same batch, may have
    /// truncated, so that by the time the write completes the disk no longer
    /// backs it. Snapshot chunks received in the old term go too, so every
    /// chunk the driver acknowledges (`snapshot_chunk_received`) was received
    /// in the term its reply names. Dropping a message is always safe: the
    /// others resend what they do not hear answered.
    fn enter_term(&mut self, term: u64) {
        debug_assert!(term > self.term);
        self.term = term;
        self.vote = None;
        self.outbox_after_persist
            .retain(|out| out.message.term() >= term);
        self.snapshot_chunks.clear();
    }

    fn become_follower(&mut self, term: u64, leader_id: Option<NodeId>) {
        if term > self.term {
            self.enter_term(term);
        }
        let was_leader = self.is_leader();
        if let RoleState::Leader(leader) = &mut self.role {
            leader.reads.fail_all(&mut self.failed_reads);
        }
        self.role = RoleState::Follower;
        self.leader_id = leader_id;
        // Figure 2: only a leader's AppendEntries, a granted vote or a new
        // election resets the timer. Stepping down because a candidate has a
        // higher term does not, or candidates with stale logs could keep
        // postponing the elections that nodes with current logs would win.
        if leader_id.is_some() || was_leader {
            self.reset_election_timer();
        }
    }

    /// Queues a message. A leader's messages promise nothing about its own
    /// disk and leave at once; anything else (votes, acknowledgements, and a
    /// candidate's requests, which rely on its vote for itself) leaves only
    /// after this ready's hard state and entries are durable.
    fn send(&mut self, to: NodeId, message: RaftMessage) {
        let out = Outbound { to, message };
        if self.is_leader() {
            self.outbox.push(out);
        } else {
            self.outbox_after_persist.push(out);
        }
    }

    /// The answers a (pre-)candidate has counted in its campaign, for the
    /// simulator's check that each is a real answer to this election.
    #[cfg(test)]
    pub(crate) fn votes_counted(&self) -> &std::collections::BTreeMap<NodeId, bool> {
        static NONE: std::collections::BTreeMap<NodeId, bool> = std::collections::BTreeMap::new();
        match &self.role {
            RoleState::Campaigning(c) => c.votes(),
            _ => &NONE,
        }
    }

    #[cfg(test)]
    fn broken(&self, rule: impl Fn(BrokenRule) -> bool) -> bool {
        self.config.broken_rule.is_some_and(rule)
    }

    #[cfg(not(test))]
    #[inline(always)]
    fn broken(&self, _rule: impl Fn(BrokenRule) -> bool) -> bool {
        false
    }
}
