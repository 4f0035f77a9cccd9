//! Membership changes (Raft thesis 4.1, single-server changes): which
//! configuration each index of the log belongs to, and the leader's rules
//! for proposing the next one.
//!
//! A configuration takes effect on a node as soon as its entry is in the
//! node's log, committed or not, and a node always uses the latest one its
//! log holds; when a conflicting leader truncates the entry away, the node
//! falls back to the one before. Each change adds one member, promotes one
//! learner or removes one member, so any majority of the voters before it
//! overlaps any majority after it, and the leader allows one change in
//! flight at a time: the next is refused until the last one commits.
//!
//! The rule Ongaro added in 2015 to the thesis's algorithm: a new leader
//! proposes no change before an entry of its own term has committed (its
//! no-op). Without it, a change left uncommitted by one leader and a
//! different change by the next, each one step from the committed
//! configuration, can have disjoint majorities.

use std::sync::Arc;

use poncho_protocol::{Member, MemberChangeError, Membership, NodeId};

/// The configurations a log holds: the one in effect at its start (from the
/// snapshot, or a new cluster's first one) and one for each `CONFIG` entry
/// after it, in index order.
#[derive(Clone, Debug)]
pub(super) struct Configs {
    /// `(index, configuration)`, never empty; the first is the base.
    list: Vec<(u64, Arc<Membership>)>,
    /// Bumped on every change to the latest configuration, so the node
    /// can tell cheaply that it must recompute who votes.
    version: u64,
}

impl Configs {
    pub(super) fn new(base_index: u64, base: Membership) -> Configs {
        Configs {
            list: vec![(base_index, Arc::new(base))],
            version: 0,
        }
    }

    pub(super) fn version(&self) -> u64 {
        self.version
    }

    /// The latest configuration and the index it comes from.
    pub(super) fn latest(&self) -> (u64, &Arc<Membership>) {
        let (index, m) = self.list.last().expect("configs are never empty");
        (*index, m)
    }

    /// The configuration in effect at `index`: the latest at or before it.
    pub(super) fn at(&self, index: u64) -> &Arc<Membership> {
        let after = self.list.partition_point(|(i, _)| *i <= index);
        &self.list[after.saturating_sub(1)].1
    }

    /// A `CONFIG` entry at `index` joined the log.
    pub(super) fn push(&mut self, index: u64, membership: Membership) {
        debug_assert!(index > self.latest().0);
        self.list.push((index, Arc::new(membership)));
        self.version += 1;
    }

    /// The log lost its entries from `index` on.
    pub(super) fn truncate_from(&mut self, index: u64) {
        let keep = self.list.partition_point(|(i, _)| *i < index).max(1);
        if keep < self.list.len() {
            self.list.truncate(keep);
            self.version += 1;
        }
    }

    /// The log dropped its entries through `index` into a snapshot: the
    /// configuration in effect there becomes the base.
    pub(super) fn compact(&mut self, index: u64) {
        let at = self.list.partition_point(|(i, _)| *i <= index);
        if at > 1 {
            self.list.drain(..at - 1);
        }
    }

    /// The log was replaced by a snapshot through `index` holding `base`.
    pub(super) fn reset(&mut self, index: u64, base: Membership) {
        self.list = vec![(index, Arc::new(base))];
        self.version += 1;
    }
}

/// What a node is in its latest configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberRole {
    Voter,
    Learner,
    /// Removed from the cluster: it takes part in nothing again.
    Removed,
    /// Not a member yet (a node started to join, waiting to be added).
    Joining,
}

impl MemberRole {
    pub fn of(id: NodeId, membership: &Membership) -> MemberRole {
        match membership.get(id) {
            Some(Member { learner: false, .. }) => MemberRole::Voter,
            Some(_) => MemberRole::Learner,
            None if membership.was_removed(id) => MemberRole::Removed,
            None => MemberRole::Joining,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            MemberRole::Voter => "voter",
            MemberRole::Learner => "learner",
            MemberRole::Removed => "removed",
            MemberRole::Joining => "joining",
        }
    }
}

/// Why the leader refused a membership change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChangeError {
    /// Not the leader (the leader, if known).
    NotLeader { leader_id: Option<NodeId> },
    /// A leadership transfer is under way.
    TransferInProgress,
    /// The change at `index` is not committed yet.
    ChangeInProgress { index: u64 },
    /// This leader has not committed an entry of its term yet.
    TermNotCommitted,
    /// The change makes no sense for the configuration.
    Invalid(MemberChangeError),
    /// The learner to promote matches the leader's log only through
    /// `match_index`, more than the allowed lag behind `last_index`.
    LearnerBehind {
        id: NodeId,
        match_index: u64,
        last_index: u64,
        max_lag: u64,
    },
    /// After the change, `healthy` voters would be up and caught up, fewer
    /// than the `quorum` the new configuration needs.
    Unsafe {
        healthy: usize,
        quorum: usize,
        voters: usize,
    },
}

impl std::fmt::Display for ChangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChangeError::NotLeader { leader_id } => super::ProposeError::NotLeader {
                leader_id: *leader_id,
            }
            .fmt(f),
            ChangeError::TransferInProgress => {
                f.write_str("leadership is being transferred; retry shortly")
            }
            ChangeError::ChangeInProgress { index } => write!(
                f,
                "the membership change at index {index} is not committed yet; one change \
                 at a time: retry once it is"
            ),
            ChangeError::TermNotCommitted => f.write_str(
                "this leader was just elected and has not committed an entry of its term \
                 yet; retry shortly",
            ),
            ChangeError::Invalid(e) => write!(f, "{e}"),
            ChangeError::LearnerBehind {
                id,
                match_index,
                last_index,
                max_lag,
            } => write!(
                f,
                "learner {id} has the log through index {match_index} of {last_index}, more \
                 than {max_lag} entries behind; promote it once it has caught up (`member \
                 list` shows its progress)"
            ),
            ChangeError::Unsafe {
                healthy,
                quorum,
                voters,
            } => write!(
                f,
                "after this change only {healthy} of {voters} voters would be healthy and \
                 caught up, fewer than the {quorum} a quorum needs; bring members back \
                 first, or force the change"
            ),
        }
    }
}

impl std::error::Error for ChangeError {}

/// The leader's view of one member, for `member list`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberProgress {
    pub id: NodeId,
    pub match_index: u64,
    /// Heard from within an election timeout (the leader itself always).
    pub healthy: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(ids: &[NodeId]) -> Membership {
        Membership::bootstrap(ids.iter().map(|&id| Member {
            id,
            addr: format!("127.0.0.1:{}", 10_000 + id).parse().unwrap(),
            peer_addr: None,
            learner: false,
        }))
    }

    #[test]
    fn each_index_belongs_to_the_latest_configuration_at_or_before_it() {
        let mut c = Configs::new(0, config(&[1, 2, 3]));
        c.push(5, config(&[1, 2, 3, 4]));
        c.push(9, config(&[1, 2, 4]));
        assert_eq!(c.at(4).ids().len(), 3);
        assert_eq!(c.at(5).ids().len(), 4);
        assert_eq!(c.at(100).ids().into_iter().collect::<Vec<_>>(), [1, 2, 4]);
        let v = c.version();
        c.truncate_from(9);
        assert!(c.version() > v, "truncating a configuration is a change");
        assert_eq!(c.latest().0, 5);
        let v = c.version();
        c.truncate_from(7);
        assert_eq!(c.version(), v, "nothing to truncate");
        c.compact(6);
        assert_eq!(c.latest().0, 5);
        assert_eq!(c.at(0).ids().len(), 4, "the base is the one in effect at 6");
        c.truncate_from(1);
        assert_eq!(c.latest().0, 5, "the base is never truncated");
    }
}
