//! Membership changes (single-server changes with learners, see
//! `membership`): named scenarios, in the simulator where the whole
//! cluster matters and on one core where one rule does. The random
//! membership campaign is `tests::membership_seeds_*`.

use poncho_protocol::{Membership, NodeId, RaftMessage, RequestVote};

use super::*;

/// A configuration of `voters` and `learners` (addresses as `voters_of`'s).
fn config_of(voters: &[NodeId], learners: &[NodeId], removed: &[NodeId]) -> Membership {
    let all: Vec<NodeId> = voters.iter().chain(learners).copied().collect();
    let mut m = voters_of(&all);
    for member in &mut m.members {
        member.learner = learners.contains(&member.id);
    }
    m.removed = removed.to_vec();
    m
}

/// One core, `id`, in term `term`, starting from `base`.
fn core(id: NodeId, term: u64, base: Membership) -> Raft {
    let hard_state = HardState { term, vote: None };
    Raft::new(Config::new(id), hard_state, base, Vec::new(), 7).expect("valid")
}

fn vote_request(term: u64, candidate: NodeId) -> RaftMessage {
    RaftMessage::RequestVote(RequestVote {
        term,
        candidate_id: candidate,
        last_log_index: 100,
        last_log_term: term,
        pre_vote: false,
        leader_transfer: false,
    })
}

/// Thesis 4.2.3: a node removed from the cluster, which has not heard of
/// its removal, campaigns with a higher term. No member that knows the
/// configuration lets it raise its term: not a voter, and not a learner
/// either (a learner in a higher term answers the leader with it, and the
/// leader steps down: the disruption the rule exists to prevent). A node
/// that is to join, knowing no configuration yet, still answers.
#[test]
fn a_removed_node_raises_no_members_term_with_its_campaigns() {
    let m = config_of(&[1, 2, 3], &[5], &[4]);
    for id in [1, 5] {
        let mut r = core(id, 2, m.clone());
        r.step(4, vote_request(3, 4));
        assert_eq!(r.term(), 2, "node {id} ({:?})", r.member_role());
        r.step(6, vote_request(3, 6)); // never a member
        assert_eq!(r.term(), 2, "node {id} ({:?})", r.member_role());
    }
    let mut joining = core(6, 2, Membership::default());
    joining.step(1, vote_request(3, 1));
    assert_eq!(
        joining.term(),
        3,
        "a node that is to join answers any candidate"
    );
}
