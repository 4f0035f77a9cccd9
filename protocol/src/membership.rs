//! Who is in the cluster: the configuration the log carries (a
//! [`Membership`] in an entry of kind `CONFIG`), the one-step changes made
//! to it ([`MemberChange`]), and the `MEMBER` and `TRANSFER_LEADER`
//! requests (modelled on etcd's member API; `docs/protocol.md` has the
//! reference).
//!
//! Changes are single-server changes (Raft thesis 4.1): each adds one
//! member, promotes one learner or removes one member, so any majority of
//! the voters before a change overlaps any majority after it. Learners
//! receive the log and do not vote; a new member normally joins as one and
//! is promoted once it has caught up.

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::client::{InvalidRequest, RequestPayload};
use crate::raft::NodeId;

/// The most members (voters and learners) a configuration holds.
pub const MAX_MEMBERS: usize = 32;
/// The most removed ids a configuration remembers (so none is reused by
/// mistake); past it the oldest is forgotten.
pub const MAX_REMOVED_IDS: usize = 1024;

/// One member: its id, where clients reach it, where peers reach it (when
/// that is another address), and whether it only learns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    pub id: NodeId,
    pub addr: SocketAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_addr: Option<SocketAddr>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub learner: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Member {
    /// Where peers connect to this member.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr.unwrap_or(self.addr)
    }
}

/// A configuration: the members by id, and the ids removed from it (which
/// never come back: a replacement joins with a new id).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Membership {
    pub members: Vec<Member>,
    /// Oldest removal first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<NodeId>,
}

impl Membership {
    /// The first configuration of a new cluster: every member a voter.
    pub fn bootstrap(members: impl IntoIterator<Item = Member>) -> Membership {
        let mut members: Vec<Member> = members.into_iter().collect();
        members.sort_by_key(|m| m.id);
        Membership {
            members,
            removed: Vec::new(),
        }
    }

    pub fn get(&self, id: NodeId) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }

    pub fn contains(&self, id: NodeId) -> bool {
        self.get(id).is_some()
    }

    pub fn is_voter(&self, id: NodeId) -> bool {
        self.get(id).is_some_and(|m| !m.learner)
    }

    pub fn is_learner(&self, id: NodeId) -> bool {
        self.get(id).is_some_and(|m| m.learner)
    }

    pub fn was_removed(&self, id: NodeId) -> bool {
        self.removed.contains(&id)
    }

    pub fn voters(&self) -> BTreeSet<NodeId> {
        self.members
            .iter()
            .filter(|m| !m.learner)
            .map(|m| m.id)
            .collect()
    }

    pub fn learners(&self) -> BTreeSet<NodeId> {
        self.members
            .iter()
            .filter(|m| m.learner)
            .map(|m| m.id)
            .collect()
    }

    /// Every member's id, in order.
    pub fn ids(&self) -> BTreeSet<NodeId> {
        self.members.iter().map(|m| m.id).collect()
    }

    /// A majority of the voters.
    pub fn quorum(&self) -> usize {
        self.voters().len() / 2 + 1
    }

    /// Whether this is a configuration a node may take from a peer: ids
    /// nonzero and distinct, in order, at least one voter, within the
    /// limits, and no removed id still a member.
    pub fn check(&self) -> Result<(), String> {
        if self.members.len() > MAX_MEMBERS {
            return Err(format!(
                "{} members; at most {MAX_MEMBERS}",
                self.members.len()
            ));
        }
        if self.removed.len() > MAX_REMOVED_IDS {
            return Err(format!(
                "{} removed ids; at most {MAX_REMOVED_IDS}",
                self.removed.len()
            ));
        }
        if self.members.iter().any(|m| m.id == 0) {
            return Err("member id 0 is reserved".into());
        }
        if !self.members.windows(2).all(|w| w[0].id < w[1].id) {
            return Err("members must be distinct and in id order".into());
        }
        if !self.members.iter().any(|m| !m.learner) {
            return Err("a configuration needs at least one voter".into());
        }
        if let Some(m) = self.members.iter().find(|m| self.removed.contains(&m.id)) {
            return Err(format!("member {} is also listed as removed", m.id));
        }
        Ok(())
    }

    /// As an entry's data.
    pub fn encode(&self) -> String {
        // Serializing plain data to a string cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// From an entry's data, checked.
    pub fn decode(text: &str) -> Result<Membership, String> {
        let membership: Membership =
            serde_json::from_str(text).map_err(|e| format!("not a configuration: {e}"))?;
        membership.check()?;
        Ok(membership)
    }

    /// The configuration after `change`, if the change makes sense here
    /// (whether it is safe to make now is the leader's question).
    pub fn with_change(&self, change: &MemberChange) -> Result<Membership, MemberChangeError> {
        let mut next = self.clone();
        match change {
            MemberChange::Add(member) => {
                if member.id == 0 {
                    return Err(MemberChangeError::ReservedId);
                }
                if self.contains(member.id) {
                    return Err(MemberChangeError::AlreadyMember(member.id));
                }
                if self.was_removed(member.id) {
                    return Err(MemberChangeError::RemovedId(member.id));
                }
                if self.members.len() >= MAX_MEMBERS {
                    return Err(MemberChangeError::TooManyMembers);
                }
                if let Some(other) = self.address_taken(member, None) {
                    return Err(MemberChangeError::AddressTaken(other));
                }
                next.members.push(member.clone());
                next.members.sort_by_key(|m| m.id);
            }
            MemberChange::Promote(id) => match next.members.iter_mut().find(|m| m.id == *id) {
                None => return Err(MemberChangeError::NotMember(*id)),
                Some(m) if !m.learner => return Err(MemberChangeError::NotLearner(*id)),
                Some(m) => m.learner = false,
            },
            MemberChange::Remove(id) => {
                let Some(position) = self.members.iter().position(|m| m.id == *id) else {
                    return Err(MemberChangeError::NotMember(*id));
                };
                next.members.remove(position);
                if !next.members.iter().any(|m| !m.learner) {
                    return Err(MemberChangeError::LastVoter(*id));
                }
                next.removed.push(*id);
                if next.removed.len() > MAX_REMOVED_IDS {
                    next.removed.remove(0);
                }
            }
            MemberChange::Update {
                id,
                addr,
                peer_addr,
            } => {
                let Some(member) = self.get(*id) else {
                    return Err(MemberChangeError::NotMember(*id));
                };
                let updated = Member {
                    id: *id,
                    addr: *addr,
                    peer_addr: *peer_addr,
                    learner: member.learner,
                };
                if let Some(other) = self.address_taken(&updated, Some(*id)) {
                    return Err(MemberChangeError::AddressTaken(other));
                }
                if let Some(m) = next.members.iter_mut().find(|m| m.id == *id) {
                    *m = updated;
                }
            }
        }
        Ok(next)
    }

    /// Another member (not `except`) that listens where `member` would.
    fn address_taken(&self, member: &Member, except: Option<NodeId>) -> Option<NodeId> {
        let wanted = [member.addr, member.peer_addr()];
        self.members
            .iter()
            .filter(|m| Some(m.id) != except)
            .find(|m| wanted.contains(&m.addr) || wanted.contains(&m.peer_addr()))
            .map(|m| m.id)
    }
}

/// One single-server step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberChange {
    /// A new member, a learner if `learner` says so.
    Add(Member),
    /// A learner becomes a voter.
    Promote(NodeId),
    Remove(NodeId),
    /// A member's addresses.
    Update {
        id: NodeId,
        addr: SocketAddr,
        peer_addr: Option<SocketAddr>,
    },
}

impl MemberChange {
    /// Whether the change alters who votes (a quorum question).
    pub fn changes_voters(&self) -> bool {
        match self {
            MemberChange::Add(m) => !m.learner,
            MemberChange::Promote(_) | MemberChange::Remove(_) => true,
            MemberChange::Update { .. } => false,
        }
    }
}

/// Why a change does not apply to a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberChangeError {
    ReservedId,
    AlreadyMember(NodeId),
    RemovedId(NodeId),
    NotMember(NodeId),
    NotLearner(NodeId),
    LastVoter(NodeId),
    TooManyMembers,
    AddressTaken(NodeId),
}

impl fmt::Display for MemberChangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemberChangeError::ReservedId => f.write_str("member id 0 is reserved; ids start at 1"),
            MemberChangeError::AlreadyMember(id) => write!(
                f,
                "node {id} is already a member (`member update` changes its addresses)"
            ),
            MemberChangeError::RemovedId(id) => write!(
                f,
                "node {id} was removed from this cluster and its id is not reused; \
                 add the replacement under a new id"
            ),
            MemberChangeError::NotMember(id) => {
                write!(f, "node {id} is not a member (see `member list`)")
            }
            MemberChangeError::NotLearner(id) => {
                write!(
                    f,
                    "node {id} is a voter already; only a learner is promoted"
                )
            }
            MemberChangeError::LastVoter(id) => write!(
                f,
                "node {id} is the last voter; add and promote another member first"
            ),
            MemberChangeError::TooManyMembers => {
                write!(
                    f,
                    "the cluster has {MAX_MEMBERS} members, the most it may hold"
                )
            }
            MemberChangeError::AddressTaken(id) => {
                write!(f, "member {id} already uses that address")
            }
        }
    }
}

impl std::error::Error for MemberChangeError {}

/// `MEMBER`: list or change the members. Changes need `root` when auth is
/// on, go to the leader, and are answered once committed, with the index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum MemberRequest {
    List,
    Add {
        id: NodeId,
        addr: SocketAddr,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        peer_addr: Option<SocketAddr>,
        #[serde(default, skip_serializing_if = "is_false")]
        learner: bool,
        /// Skip the check that enough healthy voters remain.
        #[serde(default, skip_serializing_if = "is_false")]
        force: bool,
    },
    Promote {
        id: NodeId,
        #[serde(default, skip_serializing_if = "is_false")]
        force: bool,
    },
    Remove {
        id: NodeId,
        #[serde(default, skip_serializing_if = "is_false")]
        force: bool,
    },
    Update {
        id: NodeId,
        addr: SocketAddr,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        peer_addr: Option<SocketAddr>,
    },
}

impl MemberRequest {
    /// The change it asks for (None for `list`) and whether it is forced.
    pub fn change(&self) -> Option<(MemberChange, bool)> {
        Some(match *self {
            MemberRequest::List => return None,
            MemberRequest::Add {
                id,
                addr,
                peer_addr,
                learner,
                force,
            } => (
                MemberChange::Add(Member {
                    id,
                    addr,
                    peer_addr,
                    learner,
                }),
                force,
            ),
            MemberRequest::Promote { id, force } => (MemberChange::Promote(id), force),
            MemberRequest::Remove { id, force } => (MemberChange::Remove(id), force),
            MemberRequest::Update {
                id,
                addr,
                peer_addr,
            } => (
                MemberChange::Update {
                    id,
                    addr,
                    peer_addr,
                },
                false,
            ),
        })
    }
}

impl RequestPayload for MemberRequest {
    fn validate(&self) -> Result<(), InvalidRequest> {
        Ok(())
    }
}

/// One member as `member list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    pub id: NodeId,
    pub addr: SocketAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_addr: Option<SocketAddr>,
    pub learner: bool,
    /// Whether it leads now.
    pub leader: bool,
    /// The leader's view: how far its log matches the leader's, and whether
    /// the leader heard from it within an election timeout. Absent when the
    /// node answering is not the leader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_index: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberReply {
    /// The log index a change was committed at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u64>,
    /// The members after the change (or, for `list`, now), by id.
    pub members: Vec<MemberInfo>,
    /// The last index of the leader's log, against which `match_index`
    /// says how far behind a member is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_index: Option<u64>,
}

/// `TRANSFER_LEADER`: the leader hands leadership to voter `to` (it brings
/// it up to date, then tells it to campaign at once). Answered once `to`
/// leads, or with an error if it does not within an election timeout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferLeaderRequest {
    pub to: NodeId,
}

impl RequestPayload for TransferLeaderRequest {
    fn validate(&self) -> Result<(), InvalidRequest> {
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferLeaderReply {
    pub leader_id: NodeId,
    pub term: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: NodeId, learner: bool) -> Member {
        Member {
            id,
            addr: format!("127.0.0.1:{}", 9000 + id).parse().unwrap(),
            peer_addr: None,
            learner,
        }
    }

    #[test]
    fn changes_apply_one_step_and_refuse_what_makes_no_sense() {
        let three = Membership::bootstrap([member(3, false), member(1, false), member(2, false)]);
        assert_eq!(three.ids().into_iter().collect::<Vec<_>>(), vec![1, 2, 3]);
        three.check().unwrap();
        let four = three
            .with_change(&MemberChange::Add(member(4, true)))
            .unwrap();
        assert!(four.is_learner(4));
        assert_eq!(four.quorum(), 2, "a learner does not count");
        let promoted = four.with_change(&MemberChange::Promote(4)).unwrap();
        assert_eq!(promoted.quorum(), 3);
        let removed = promoted.with_change(&MemberChange::Remove(2)).unwrap();
        assert!(removed.was_removed(2) && !removed.contains(2));
        assert_eq!(
            removed.with_change(&MemberChange::Add(member(2, true))),
            Err(MemberChangeError::RemovedId(2))
        );
        assert_eq!(
            three.with_change(&MemberChange::Add(member(1, true))),
            Err(MemberChangeError::AlreadyMember(1))
        );
        assert_eq!(
            three.with_change(&MemberChange::Promote(1)),
            Err(MemberChangeError::NotLearner(1))
        );
        let mut clash = member(5, true);
        clash.addr = member(2, false).addr;
        assert_eq!(
            three.with_change(&MemberChange::Add(clash)),
            Err(MemberChangeError::AddressTaken(2))
        );
        let one = Membership::bootstrap([member(1, false), member(2, true)]);
        assert_eq!(
            one.with_change(&MemberChange::Remove(1)),
            Err(MemberChangeError::LastVoter(1))
        );
    }

    #[test]
    fn a_configuration_round_trips_and_bad_ones_are_refused() {
        let m = Membership::bootstrap([member(1, false), member(2, true)]);
        assert_eq!(Membership::decode(&m.encode()).unwrap(), m);
        for bad in [
            r#"{"members":[]}"#,
            r#"{"members":[{"id":2,"addr":"127.0.0.1:1"},{"id":1,"addr":"127.0.0.1:2"}]}"#,
            r#"{"members":[{"id":0,"addr":"127.0.0.1:1"}]}"#,
            r#"{"members":[{"id":1,"addr":"127.0.0.1:1","learner":true}]}"#,
            r#"{"members":[{"id":1,"addr":"127.0.0.1:1"}],"removed":[1]}"#,
            r#"{"members":[{"id":1,"addr":"nowhere"}]}"#,
            "not json",
        ] {
            assert!(Membership::decode(bad).is_err(), "{bad}");
        }
    }
}
