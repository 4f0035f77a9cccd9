//! Membership changes (single-server changes with learners, see
//! `membership`): named scenarios, in the simulator where the whole
//! cluster matters and on one core where one rule does. The random
//! membership campaign is `tests::membership_seeds_*`.

use poncho_protocol::{MemberChange, Membership, NodeId, RaftMessage, RequestVote};

use super::sim::{member, NetConfig, Sim, SnapshotPolicy, TICK};
use super::tests::sim_with;

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
    vote_request_with_log(term, candidate, 100, term)
}

fn vote_request_with_log(
    term: u64,
    candidate: NodeId,
    last_log_index: u64,
    last_log_term: u64,
) -> RaftMessage {
    RaftMessage::RequestVote(RequestVote {
        term,
        candidate_id: candidate,
        last_log_index,
        last_log_term,
        pre_vote: false,
        leader_transfer: false,
    })
}

/// Thesis 4.2.3: a node removed from the cluster, which has not heard of
/// its removal, campaigns with a higher term. No member that knows the
/// configuration lets it raise its term: not a voter, and not a learner
/// either (a learner in a higher term answers the leader with it, and the
/// leader steps down: the disruption the rule exists to prevent). Nor does
/// a node never added, or a learner, unless its log is strictly more up to
/// date than the member's: then it may hold the change that made it a
/// voter, and ignoring it could leave no electable quorum (membership seed
/// 4756). A node that is to join, knowing no configuration yet, still
/// answers.
#[test]
fn a_removed_node_raises_no_members_term_with_its_campaigns() {
    let m = config_of(&[1, 2, 3], &[5], &[4]);
    for id in [1, 5] {
        let mut r = core(id, 2, m.clone());
        r.step(4, vote_request(3, 4));
        assert_eq!(r.term(), 2, "node {id} ({:?})", r.member_role());
        // Never a member, with a log no longer than this node's (empty).
        r.step(6, vote_request_with_log(3, 6, 0, 0));
        assert_eq!(r.term(), 2, "node {id} ({:?})", r.member_role());
    }
    let mut voter = core(1, 2, m.clone());
    voter.step(5, vote_request_with_log(3, 5, 0, 0));
    assert_eq!(voter.term(), 2, "a learner with no longer a log is ignored");
    voter.step(5, vote_request_with_log(3, 5, 7, 2));
    assert_eq!(
        voter.term(),
        3,
        "a learner whose log is ahead may be a voter in a configuration this node lacks"
    );
    let mut joining = core(6, 2, Membership::default());
    joining.step(1, vote_request(3, 1));
    assert_eq!(
        joining.term(),
        3,
        "a node that is to join answers any candidate"
    );
}

// ------------------------------------------------------ in the simulator

/// A cluster of `nodes` founders in the simulator, founded with the
/// configuration entry (as a real one is), node 1 the first leader.
fn cluster(nodes: usize, seed: u64, tweak: impl Fn(&mut Config) + 'static) -> Sim {
    let mut sim = sim_with(nodes, seed, NetConfig::reliable(), move |c| {
        c.bootstrap_leader = c.id == 1;
        tweak(c);
    });
    sim.found_with_entry();
    sim
}

/// A cluster led by node 1, which has committed a command.
fn led_by_1(nodes: usize, seed: u64, tweak: impl Fn(&mut Config) + 'static) -> Sim {
    let mut sim = cluster(nodes, seed, tweak);
    until_leading(&mut sim, 1);
    sim.commit("before", 50).unwrap();
    sim
}

/// Runs until `id` leads and has committed an entry of its term.
fn until_leading(sim: &mut Sim, id: NodeId) {
    sim.run_until(80, "the leader committing in its term", |s| {
        s.raft(id).is_some_and(|r| {
            r.role() == Role::Leader && r.log().term(r.log().committed()) == Some(r.term())
        })
    })
    .unwrap();
}

/// Ongaro's 2015 counterexample to single-server changes without the
/// commit-in-term rule, step by step (random seeds rarely line it up):
/// leader 1 of {1,2,3,4} adds voter 5 (forced), which reaches only 5; the
/// other side {2,3,4} elects a leader that at once removes 1 and commits
/// that with {2,3} (4 never hears from it); then 1 wins with {1,4,5}, a
/// quorum of {1,2,3,4,5} disjoint from {2,3}. The checker sees a leader
/// elected by voters two changes from the committed configuration. With
/// the rule, the new leader's removal is refused (TermNotCommitted) for as
/// long as its no-op cannot commit (then NotLeader, once CheckQuorum
/// deposes it), and the same steps are safe.
fn change_before_term_commit(broken: bool) -> Result<(u64, u64), String> {
    let mut sim = cluster(4, 3, move |c| {
        c.broken_rule = broken.then_some(BrokenRule::ChangeBeforeTermCommit);
    });
    until_leading(&mut sim, 1);
    sim.commit("before", 50)?;
    let five = sim.add_node();
    sim.partition(&[&[1, five], &[2, 3, 4]]);
    // 4 votes but hears no leader, and cannot lead itself.
    sim.filter = Some(Box::new(|from, to, m| match m {
        RaftMessage::AppendEntries(_) => to != 4,
        RaftMessage::RequestVote(_) => from != 4,
        _ => true,
    }));
    sim.propose_change(1, &MemberChange::Add(member(five, false)), true)
        .map_err(|e| e.to_string())?;
    sim.run_until(80, "a leader among 2 and 3", |s| {
        [2, 3]
            .iter()
            .any(|&i| s.raft(i).is_some_and(|r| r.role() == Role::Leader))
    })?;
    let leader = if sim.raft(2).is_some_and(|r| r.role() == Role::Leader) {
        2
    } else {
        3
    };
    let mut removal = None;
    for _ in 0..30 {
        if removal.is_none() {
            removal = sim
                .propose_change(leader, &MemberChange::Remove(1), false)
                .ok();
        }
        sim.run_ticks(1)?;
    }
    if let Some(index) = removal {
        let committed = sim.raft(leader).map_or(0, |r| r.log().committed());
        assert!(committed >= index, "the removal commits with {{2, 3}}");
    }
    sim.filter = None;
    sim.heal();
    sim.partition(&[&[1, five, 4], &[2, 3]]);
    sim.run_ticks(100)?;
    sim.heal();
    sim.commit("after", 100)?;
    let refused = sim.stats.changes_refused.get("TermNotCommitted").copied();
    Ok((sim.stats.changes_accepted, refused.unwrap_or(0)))
}

#[test]
fn sim_catches_a_change_before_the_terms_first_commit_in_ongaros_counterexample() {
    let caught = change_before_term_commit(true).expect_err("the broken rule is caught");
    assert!(caught.contains("configuration safety"), "{caught}");
    let (accepted, refused) = change_before_term_commit(false).unwrap();
    assert_eq!(accepted, 1, "only the addition of 5 is taken");
    assert!(
        refused > 0,
        "the removal is refused while the no-op cannot commit"
    );
}

/// Runs until the configuration at `leader` is committed there.
fn until_committed(sim: &mut Sim, leader: NodeId) {
    sim.run_until(80, "the configuration committing", |s| {
        s.raft(leader)
            .is_some_and(|r| r.membership_index() <= r.log().committed())
    })
    .unwrap();
}

/// Runs until the leader knows `id` holds its whole log, and `id` has
/// applied what the leader has.
fn until_caught_up(sim: &mut Sim, id: NodeId, leader: NodeId) {
    sim.run_until(100, "the learner catching up", |s| {
        let (Some(l), Some(r)) = (s.raft(leader), s.raft(id)) else {
            return false;
        };
        let last = l.log().last_index();
        let matched = l
            .member_progress()
            .iter()
            .any(|p| p.id == id && p.match_index == last);
        matched && r.log().applied() >= l.log().committed()
    })
    .unwrap();
}

/// Starts a new node and adds it to the cluster led by 1, as a learner.
fn add_learner(sim: &mut Sim) -> NodeId {
    let id = sim.add_node();
    sim.propose_change(1, &MemberChange::Add(member(id, true)), false)
        .unwrap();
    until_committed(sim, 1);
    id
}

fn role(sim: &Sim, id: NodeId) -> MemberRole {
    sim.raft(id).expect("up").member_role()
}

/// Section 4.2.1's learner: it receives the whole log, never campaigns,
/// and its vote does not count: a voter and a learner, of three voters,
/// elect no one (the checker also asserts that no counted vote comes from
/// a non-voter); a second voter back makes a majority.
#[test]
fn a_learner_receives_the_log_and_its_vote_never_counts() {
    let mut sim = cluster(3, 1, |_| {});
    until_leading(&mut sim, 1);
    let four = add_learner(&mut sim);
    sim.commit("for the learner", 50).unwrap();
    until_caught_up(&mut sim, four, 1);
    assert_eq!(role(&sim, four), MemberRole::Learner);
    assert!(sim.applied(four).contains(&"for the learner".to_string()));
    sim.crash(1);
    sim.crash(2);
    sim.run_ticks(150).unwrap();
    assert_eq!(sim.leader(), None, "3 and the learner are no quorum");
    assert_eq!(sim.raft(four).unwrap().role(), Role::Follower);
    sim.restart(2);
    let leader = sim.wait_for_leader(80).unwrap();
    assert!([2, 3].contains(&leader), "a voter leads, not {leader}");
}

/// A learner is promoted only once within `promote_max_lag_entries` of
/// the leader's log: far behind, the promotion is refused with how far,
/// and once it has caught up the same promotion is taken.
#[test]
fn promoting_a_learner_far_behind_is_refused_then_taken_once_caught_up() {
    let mut sim = cluster(3, 2, |c| c.promote_max_lag_entries = 5);
    until_leading(&mut sim, 1);
    let four = add_learner(&mut sim);
    sim.isolate(four);
    for i in 0..20 {
        sim.commit(&format!("c{i}"), 50).unwrap();
    }
    let refused = sim.propose_change(1, &MemberChange::Promote(four), false);
    let Err(ChangeError::LearnerBehind { id, max_lag, .. }) = refused else {
        panic!("refused as behind: {refused:?}");
    };
    assert_eq!((id, max_lag), (four, 5));
    assert!(refused.unwrap_err().to_string().contains("caught up"));
    sim.heal();
    until_caught_up(&mut sim, four, 1);
    sim.propose_change(1, &MemberChange::Promote(four), false)
        .unwrap();
    until_committed(&mut sim, 1);
    sim.run_until(50, "the voter knowing it", |s| {
        s.raft(four)
            .is_some_and(|r| r.member_role() == MemberRole::Voter)
    })
    .unwrap();
}

/// Thesis 4.2.2: a leader removing itself leads until the removal
/// commits (counting only the others), then hands over with TimeoutNow
/// to a caught-up voter and steps down: the next leader is elected at
/// once, not after an election timeout. The removed node runs on without
/// disrupting anyone (the simulator's checks), and never leads again.
#[test]
fn removing_the_leader_hands_over_at_once_after_the_change_commits() {
    let mut sim = led_by_1(3, 3, |_| {});
    let index = sim
        .propose_change(1, &MemberChange::Remove(1), false)
        .unwrap();
    sim.run_until(50, "the leader stepping down", |s| {
        s.raft(1).is_some_and(|r| r.role() != Role::Leader)
    })
    .unwrap();
    assert!(sim.raft(1).unwrap().log().committed() >= index);
    let stepped_down = sim.now;
    let next = sim.wait_for_leader(80).unwrap();
    assert_ne!(next, 1);
    let ticks = (sim.now - stepped_down) / TICK;
    assert!(
        ticks < 5,
        "the handover took {ticks} ticks: an election timeout is 10"
    );
    sim.commit("after", 50).unwrap();
    sim.run_ticks(100).unwrap();
    assert_eq!(role(&sim, 1), MemberRole::Removed);
    assert_eq!(sim.leader(), Some(next));
}

/// The strict reconfiguration check (etcd's): a change that would leave
/// fewer healthy, caught-up voters than the new configuration's quorum is
/// refused with the numbers, a removal as an addition; `force` takes it.
#[test]
fn the_strict_check_refuses_unsafe_changes_and_force_overrides_it() {
    let mut sim = led_by_1(3, 4, |_| {});
    sim.crash(3);
    sim.run_ticks(20).unwrap();
    // {1, 3} with 3 down: 1 healthy of the quorum of 2.
    let removal = sim.propose_change(1, &MemberChange::Remove(2), false);
    assert_eq!(
        removal,
        Err(ChangeError::Unsafe {
            healthy: 1,
            quorum: 2,
            voters: 2
        })
    );
    assert!(removal.unwrap_err().to_string().contains("force"));
    // {1, 2, 3, 4} with 3 down and 4 empty: 2 healthy of 3.
    let four = sim.add_node();
    let addition = MemberChange::Add(member(four, false));
    assert_eq!(
        sim.propose_change(1, &addition, false),
        Err(ChangeError::Unsafe {
            healthy: 2,
            quorum: 3,
            voters: 4
        })
    );
    sim.propose_change(1, &addition, true).unwrap();
    until_committed(&mut sim, 1);
    assert_eq!(role(&sim, four), MemberRole::Voter);
    sim.commit("after", 50).unwrap();
}

/// One change in flight: the next is refused, naming the index of the
/// one not committed yet, and taken once it has committed.
#[test]
fn one_change_in_flight_the_next_is_refused_until_it_commits() {
    let mut sim = cluster(3, 5, |_| {});
    until_leading(&mut sim, 1);
    let (four, five) = (sim.add_node(), sim.add_node());
    let first = sim
        .propose_change(1, &MemberChange::Add(member(four, true)), false)
        .unwrap();
    let second = MemberChange::Add(member(five, true));
    let refused = sim.propose_change(1, &second, false);
    assert_eq!(refused, Err(ChangeError::ChangeInProgress { index: first }));
    until_committed(&mut sim, 1);
    sim.propose_change(1, &second, false).unwrap();
    until_committed(&mut sim, 1);
    let m = sim.raft(1).unwrap().membership().clone();
    assert!(m.is_learner(four) && m.is_learner(five));
}

/// Ongaro's fix to single-server changes: a new leader proposes no change
/// before an entry of its own term (its no-op) has committed.
#[test]
fn a_new_leader_refuses_changes_until_its_no_op_commits() {
    let mut sim = led_by_1(3, 6, |_| {});
    sim.crash(1);
    sim.run_until(80, "a new leader", |s| s.leader().is_some())
        .unwrap();
    let leader = sim.leader().unwrap();
    let four = sim.add_node();
    let change = MemberChange::Add(member(four, true));
    let refused = sim.propose_change(leader, &change, false);
    assert_eq!(refused, Err(ChangeError::TermNotCommitted));
    until_leading(&mut sim, leader);
    sim.propose_change(leader, &change, false).unwrap();
}

/// A node whose removal it never heard of (cut off when it committed)
/// campaigns in ever higher terms without PreVote; no member lets it
/// raise its term (the simulator asserts it at every delivery), before
/// or after the partition heals. The core never tells it: the leader
/// replicates to members only, so it keeps its stale configuration (in
/// which it still votes) until its driver learns of the removal.
#[test]
fn a_removed_node_that_missed_its_removal_disrupts_no_one() {
    let mut sim = led_by_1(4, 7, |c| c.pre_vote = false);
    sim.isolate(4);
    sim.propose_change(1, &MemberChange::Remove(4), false)
        .unwrap();
    until_committed(&mut sim, 1);
    let terms = |s: &Sim| [1, 2, 3].map(|i| s.raft(i).unwrap().term());
    let before = terms(&sim);
    sim.run_ticks(100).unwrap();
    assert!(sim.raft(4).unwrap().term() > before[0] + 2, "4 campaigned");
    sim.heal();
    sim.run_ticks(100).unwrap();
    assert_eq!(terms(&sim), before, "no member's term moved");
    assert_eq!(sim.leader(), Some(1));
    assert_eq!(
        role(&sim, 4),
        MemberRole::Voter,
        "in its own stale configuration"
    );
    assert!(sim.raft(1).unwrap().membership().was_removed(4));
}

/// A leader's `CONFIG` entry that does not decode is refused whole: an
/// `Alert::BadConfig` for the driver, no reply, and neither the log nor
/// the configuration changes.
#[test]
fn a_config_entry_that_does_not_decode_is_refused_with_an_alert() {
    let mut r = core(2, 1, voters_of(&[1, 2, 3]));
    let bad = poncho_protocol::Entry {
        index: 1,
        term: 1,
        kind: poncho_protocol::EntryKind::Config,
        data: "not a configuration".into(),
    };
    let append = RaftMessage::AppendEntries(poncho_protocol::AppendEntries {
        term: 1,
        leader_id: 1,
        prev_log_index: 0,
        prev_log_term: 0,
        entries: vec![bad],
        leader_commit: 1,
        read_round: 0,
    });
    let membership = r.membership().clone();
    r.step(1, append);
    let ready = r.ready();
    assert!(
        matches!(
            &ready.alerts[..],
            [Alert::BadConfig {
                leader: 1,
                index: 1,
                ..
            }]
        ),
        "{:?}",
        ready.alerts
    );
    assert!(ready.entries.is_empty() && ready.messages_after_persist.is_empty());
    assert_eq!((r.log().last_index(), r.log().committed()), (0, 0));
    assert_eq!(*r.membership(), membership);
}

/// Several changes (add 4, promote it, remove 2, add learner 5), then
/// every node down at once: each recovers the final configuration, from
/// its log or, with snapshots through past the last change, from its
/// snapshot; the cluster then elects a leader and commits.
fn restart_after_changes(snapshots: bool) {
    let mut sim = cluster(3, 8, |_| {});
    if snapshots {
        sim.snapshots = Some(SnapshotPolicy {
            every_entries: 4,
            keep_tail: 0,
            max_chunk_bytes: 512,
        });
    }
    until_leading(&mut sim, 1);
    let four = add_learner(&mut sim);
    until_caught_up(&mut sim, four, 1);
    let changes = [MemberChange::Promote(four), MemberChange::Remove(2)];
    for change in &changes {
        sim.propose_change(1, change, false).unwrap();
        until_committed(&mut sim, 1);
    }
    let five = add_learner(&mut sim);
    let last_change = sim.raft(1).unwrap().membership_index();
    for i in 0..12 {
        sim.commit(&format!("c{i}"), 50).unwrap();
    }
    let members = [1, 3, four, five];
    let want = sim.raft(1).unwrap().membership().clone();
    // Past the last change: what each node applied, or with snapshots,
    // what its snapshot covers.
    let past = move |r: &Raft| {
        let through = if snapshots {
            r.snapshot_index()
        } else {
            r.log().applied()
        };
        through > last_change
    };
    sim.run_until(100, "every member past the last change", |s| {
        members.iter().all(|&i| s.raft(i).is_some_and(past))
    })
    .unwrap();
    sim.run_ticks(5).unwrap();
    sim.retire(2);
    for &id in &members {
        sim.crash(id);
    }
    for &id in &members {
        sim.restart(id);
        let r = sim.raft(id).unwrap();
        assert_eq!(*r.membership(), want, "node {id}");
        let from = if snapshots {
            r.snapshot_index()
        } else {
            last_change
        };
        assert_eq!(r.membership_index(), from, "node {id}: where it came from");
        assert!(!snapshots || r.snapshot_index() > last_change, "node {id}");
    }
    sim.wait_for_leader(80).unwrap();
    sim.commit("after the restart", 80).unwrap();
}

#[test]
fn restart_after_several_changes_recovers_the_configuration_from_the_log() {
    restart_after_changes(false);
}

#[test]
fn restart_after_several_changes_recovers_the_configuration_from_a_snapshot() {
    restart_after_changes(true);
}
