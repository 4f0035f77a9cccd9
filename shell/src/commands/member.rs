//! `member list|add|promote|remove|update`: the cluster's members, in the
//! style of etcdctl's `member` commands. A refused change says what to do
//! next; a change whose outcome is unknown says to check `member list`.

use std::net::SocketAddr;

use poncho_protocol::{ErrorCode, ErrorReply, MemberInfo, MemberReply, MemberRequest, NodeId};
use serde_json::json;

use super::status::render_table;
use super::{Action, Args, FirstArg, Kind, Spec, Sub, UsageError};
use crate::client::{ClientError, ClusterClient};
use crate::exec::{Done, Failure, Outcome};

const PEER_ADDR_FLAG: &str = "--peer-addr";
const LEARNER_FLAG: &str = "--learner";
const FORCE_FLAG: &str = "--force";

pub const SPEC: Spec = Spec {
    name: "member",
    aliases: &[],
    args: "SUBCOMMAND ...",
    summary: "the cluster's members: list, add, promote, remove, update",
    details: "ADDR is IP:PORT, where clients reach the member; --peer-addr is where\n\
              peers reach it, if that is another address. A new member joins as a\n\
              --learner (started with --join), catches up, and is promoted once\n\
              `member list` shows it within reach of the leader. A removed member's\n\
              id is never reused: a replacement joins under a new id. --force skips\n\
              the check that enough healthy voters remain (the cluster may stop\n\
              taking writes until members come back). Changes need root.",
    kind: Kind::Cluster,
    first_arg: FirstArg::Free,
    subs: &[
        Sub {
            name: "list",
            args: "",
            summary: "every member: addresses, voter or learner, match index, health, leader",
            secret: false,
        },
        Sub {
            name: "add",
            args: "ID ADDR [--peer-addr ADDR] [--learner] [--force]",
            summary: "add a member (a learner with --learner)",
            secret: false,
        },
        Sub {
            name: "promote",
            args: "ID [--force]",
            summary: "make a learner that has caught up a voter",
            secret: false,
        },
        Sub {
            name: "remove",
            args: "ID [--force]",
            summary: "remove a member (then stop its server)",
            secret: false,
        },
        Sub {
            name: "update",
            args: "ID ADDR [--peer-addr ADDR]",
            summary: "change a member's addresses",
            secret: false,
        },
    ],
    parse,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member(pub MemberRequest);

/// A subcommand's words: the positional ones, and the flags given.
#[derive(Debug, Default)]
struct Words {
    positional: Vec<String>,
    peer_addr: Option<SocketAddr>,
    learner: bool,
    force: bool,
}

/// Splits the arguments into positional words and the `flags` this
/// subcommand takes (unquoted, anywhere; `--peer-addr ADDR` or
/// `--peer-addr=ADDR`).
fn words(args: &Args<'_>, flags: &[&str]) -> Result<Words, UsageError> {
    let mut out = Words::default();
    let mut tokens = args.tokens().iter();
    while let Some(t) = tokens.next() {
        if t.quoted || !t.text.starts_with("--") {
            out.positional.push(t.text.clone());
            continue;
        }
        let (flag, inline) = match t.text.split_once('=') {
            Some((flag, value)) => (flag, Some(value.to_string())),
            None => (t.text.as_str(), None),
        };
        if !flags.contains(&flag) {
            return Err(args.wrong(format!("{flag} is not a flag of member {}", args.sub())));
        }
        let seen = match flag {
            PEER_ADDR_FLAG => {
                let value = inline.or_else(|| tokens.next().map(|t| t.text.clone()));
                let value = value.ok_or_else(|| args.wrong("--peer-addr needs an address"))?;
                out.peer_addr.replace(addr(args, &value)?).is_some()
            }
            LEARNER_FLAG => std::mem::replace(&mut out.learner, true),
            _ => std::mem::replace(&mut out.force, true),
        };
        if seen {
            return Err(args.wrong(format!("{flag} is given twice")));
        }
    }
    Ok(out)
}

/// A member id: a number from 1.
pub(super) fn id(args: &Args<'_>, word: &str) -> Result<NodeId, UsageError> {
    match word.parse::<NodeId>() {
        Ok(id) if id > 0 => Ok(id),
        _ => Err(args.wrong(format!("{word} is not a member id (a number from 1)"))),
    }
}

fn addr(args: &Args<'_>, word: &str) -> Result<SocketAddr, UsageError> {
    word.parse().map_err(|_| {
        args.wrong(format!(
            "{word} is not an address IP:PORT (like 127.0.0.1:8004)"
        ))
    })
}

fn parse(args: &Args<'_>) -> Result<Box<dyn Action>, UsageError> {
    let (flags, positional): (&[&str], usize) = match args.sub() {
        "list" => (&[], 0),
        "add" => (&[PEER_ADDR_FLAG, LEARNER_FLAG, FORCE_FLAG], 2),
        "promote" | "remove" => (&[FORCE_FLAG], 1),
        "update" => (&[PEER_ADDR_FLAG], 2),
        _ => return Err(args.usage()),
    };
    let w = words(args, flags)?;
    if w.positional.len() != positional {
        return Err(args.usage());
    }
    let request = match args.sub() {
        "list" => MemberRequest::List,
        "add" => MemberRequest::Add {
            id: id(args, &w.positional[0])?,
            addr: addr(args, &w.positional[1])?,
            peer_addr: w.peer_addr,
            learner: w.learner,
            force: w.force,
        },
        "promote" => MemberRequest::Promote {
            id: id(args, &w.positional[0])?,
            force: w.force,
        },
        "remove" => MemberRequest::Remove {
            id: id(args, &w.positional[0])?,
            force: w.force,
        },
        _ => MemberRequest::Update {
            id: id(args, &w.positional[0])?,
            addr: addr(args, &w.positional[1])?,
            peer_addr: w.peer_addr,
        },
    };
    Ok(Box::new(Member(request)))
}

impl Action for Member {
    fn run(&self, client: &mut ClusterClient) -> Outcome {
        if self.0 == MemberRequest::List {
            return Ok(render_list(&client.member_list()?));
        }
        match client.member_change(&self.0) {
            Ok(reply) => Ok(render_change(&self.0, &reply)),
            Err(ClientError::Server(e)) => {
                let behind = match (&self.0, e.code) {
                    (MemberRequest::Promote { id, .. }, ErrorCode::LearnerNotReady) => {
                        client.member_list().ok().and_then(|r| behind(&r, *id))
                    }
                    _ => None,
                };
                Err(Failure::Call(ClientError::Server(advise(
                    e, &self.0, behind,
                ))))
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// How many entries member `id` is behind the leader's last index, if the
/// leader answered.
fn behind(reply: &MemberReply, id: NodeId) -> Option<u64> {
    let matched = reply.members.iter().find(|m| m.id == id)?.match_index?;
    Some(reply.last_index?.saturating_sub(matched))
}

/// The id a change is about.
fn target(request: &MemberRequest) -> NodeId {
    match *request {
        MemberRequest::List => 0,
        MemberRequest::Add { id, .. }
        | MemberRequest::Promote { id, .. }
        | MemberRequest::Remove { id, .. }
        | MemberRequest::Update { id, .. } => id,
    }
}

/// The refusal `e`, its code kept, its message saying what to do next.
/// `behind`: how far the learner to promote is behind, if known.
fn advise(mut e: ErrorReply, request: &MemberRequest, behind: Option<u64>) -> ErrorReply {
    let id = target(request);
    let advice = match e.code {
        ErrorCode::LearnerNotReady => {
            let how_far = match behind {
                Some(n) => format!("{n} entries behind the leader"),
                None => "still behind the leader".to_string(),
            };
            format!(
                "learner {id} is {how_far}; wait until it catches up (`member list`) \
                 and retry `member promote {id}`"
            )
        }
        ErrorCode::UnsafeChange => "refused: it would leave fewer healthy voters than a \
             quorum needs, and the cluster could stop taking writes until they come back; \
             bring the unhealthy members back first (`member list`), or repeat it with \
             --force if you accept that risk"
            .to_string(),
        ErrorCode::ChangeInProgress => "another membership change is not committed yet \
             (or a new leader has not committed an entry of its term); wait for it \
             (`member list`) and retry"
            .to_string(),
        ErrorCode::MembershipRefused => return refused(e, request),
        ErrorCode::Removed => "the node answering was removed from the cluster; \
             connect to a member that was not (--cluster, `connect HOST:PORT`)"
            .to_string(),
        ErrorCode::PermissionDenied => "membership changes need the root role".to_string(),
        _ => return e,
    };
    e.message = format!("{advice} ({})", e.message);
    e
}

/// `MEMBERSHIP_REFUSED`: the server's reason, and for an id that was
/// removed, how to add its replacement.
fn refused(mut e: ErrorReply, request: &MemberRequest) -> ErrorReply {
    let advice = match request {
        MemberRequest::Add { id, .. } if e.message.contains("removed") => format!(
            "the id of a removed member is never reused: add the replacement under a \
             new id (`member add NEW-ID ADDR --learner`, its server started with \
             --id NEW-ID), not {id}"
        ),
        _ => "`member list` shows the members as they are".to_string(),
    };
    if !e.message.contains("new id") {
        e.message = format!("{}; {advice}", e.message);
    }
    e
}

/// What a committed change shows.
fn render_change(request: &MemberRequest, reply: &MemberReply) -> Done {
    let id = target(request);
    let (pretty, hint) = match request {
        MemberRequest::Add { addr, learner, .. } => {
            let what = if *learner { "a learner" } else { "a voter" };
            let hint = learner.then(|| {
                format!(
                    "start node {id} with --join if it is not running; `member list` shows \
                     how far it is behind, and `member promote {id}` makes it a voter once \
                     it has caught up"
                )
            });
            (format!("member {id} added as {what} at {addr}"), hint)
        }
        MemberRequest::Promote { .. } => (format!("member {id} promoted to voter"), None),
        MemberRequest::Remove { .. } => (
            format!("member {id} removed"),
            Some(format!(
                "stop node {id}'s server; its id is never reused (a replacement joins \
                 under a new id)"
            )),
        ),
        MemberRequest::Update {
            addr, peer_addr, ..
        } => {
            let peer = peer_addr.map_or(String::new(), |p| format!(", peers at {p}"));
            (format!("member {id} now at {addr}{peer}"), None)
        }
        MemberRequest::List => (String::new(), None),
    };
    Done::changed(
        pretty,
        reply.index,
        json!({"id": id, "members": reply.members}),
    )
    .with_hint(hint)
}

/// `member list`: the table (plain and pretty alike), and a hint when the
/// node that answered is not the leader (it does not know the progress).
fn render_list(reply: &MemberReply) -> Done {
    let header = [
        "ID",
        "ADDRESS",
        "PEER ADDRESS",
        "ROLE",
        "MATCH",
        "HEALTHY",
        "LEADER",
    ];
    let mut table: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    table.extend(reply.members.iter().map(|m| row(m, reply.last_index)));
    let text = render_table(&table);
    let hint = reply
        .members
        .iter()
        .all(|m| m.match_index.is_none())
        .then(|| {
            "answered by a node that knows no leader: match index and health are the \
         leader's to tell"
                .to_string()
        });
    let json = json!({"members": reply.members, "last_index": reply.last_index});
    Done::new(text.clone(), text, json).with_hint(hint)
}

fn row(m: &MemberInfo, last_index: Option<u64>) -> Vec<String> {
    let yes_no = |b: bool| if b { "yes" } else { "no" }.to_string();
    let matched = match (m.match_index, last_index) {
        (Some(i), Some(last)) if last > i => format!("{i} ({} behind)", last - i),
        (Some(i), _) => i.to_string(),
        (None, _) => "-".to_string(),
    };
    vec![
        m.id.to_string(),
        m.addr.to_string(),
        m.peer_addr.map_or("-".to_string(), |p| p.to_string()),
        if m.learner { "learner" } else { "voter" }.to_string(),
        matched,
        m.healthy.map_or("-".to_string(), yes_no),
        yes_no(m.leader),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: NodeId, learner: bool, leader: bool, progress: Option<(u64, bool)>) -> MemberInfo {
        MemberInfo {
            id,
            addr: format!("127.0.0.1:{}", 8000 + id).parse().unwrap(),
            peer_addr: None,
            learner,
            leader,
            match_index: progress.map(|p| p.0),
            healthy: progress.map(|p| p.1),
        }
    }

    #[test]
    fn the_member_table_shows_roles_progress_health_and_the_leader() {
        let mut with_peer = info(3, false, false, Some((90, false)));
        with_peer.peer_addr = Some("127.0.0.1:9003".parse().unwrap());
        let reply = MemberReply {
            index: None,
            members: vec![
                info(1, false, true, Some((100, true))),
                with_peer,
                info(4, true, false, Some((40, true))),
            ],
            last_index: Some(100),
        };
        let done = render_list(&reply);
        let table = [
            "ID  ADDRESS         PEER ADDRESS    ROLE     MATCH           HEALTHY  LEADER",
            "1   127.0.0.1:8001  -               voter    100             yes      yes",
            "3   127.0.0.1:8003  127.0.0.1:9003  voter    90 (10 behind)  no       no",
            "4   127.0.0.1:8004  -               learner  40 (60 behind)  yes      no",
        ];
        assert_eq!(done.plain, table.join("\n"));
        assert_eq!(done.plain, done.pretty);
        assert!(done.hint.is_none());
        assert_eq!(done.json["last_index"], 100);
        // From a node that knows no leader: no progress, and a hint why.
        let reply = MemberReply {
            index: None,
            members: vec![info(1, false, false, None)],
            last_index: None,
        };
        let done = render_list(&reply);
        assert!(
            done.plain.ends_with("voter  -      -        no"),
            "{}",
            done.plain
        );
        assert!(done.hint.unwrap().contains("knows no leader"));
    }

    #[test]
    fn refusals_say_what_to_do_next_and_keep_their_codes() {
        let e = |code| ErrorReply::new(code, "from the server");
        let promote = MemberRequest::Promote {
            id: 4,
            force: false,
        };
        let a = advise(e(ErrorCode::LearnerNotReady), &promote, Some(1234));
        assert_eq!(a.code, ErrorCode::LearnerNotReady);
        assert_eq!(
            a.message,
            "learner 4 is 1234 entries behind the leader; wait until it catches up \
             (`member list`) and retry `member promote 4` (from the server)"
        );
        let a = advise(e(ErrorCode::LearnerNotReady), &promote, None);
        assert!(
            a.message.contains("learner 4 is still behind"),
            "{}",
            a.message
        );
        let remove = MemberRequest::Remove {
            id: 2,
            force: false,
        };
        let a = advise(e(ErrorCode::UnsafeChange), &remove, None);
        assert!(
            a.message.contains("--force") && a.message.contains("stop taking writes"),
            "{}",
            a.message
        );
        let add = |id| MemberRequest::Add {
            id,
            addr: "127.0.0.1:8006".parse().unwrap(),
            peer_addr: None,
            learner: true,
            force: false,
        };
        let gone = ErrorReply::new(
            ErrorCode::MembershipRefused,
            "node 2 was removed from this cluster",
        );
        let a = advise(gone, &add(2), None);
        assert_eq!(a.code, ErrorCode::MembershipRefused);
        assert!(
            a.message
                .starts_with("node 2 was removed from this cluster; ")
                && a.message.contains("add the replacement under a new id"),
            "{}",
            a.message
        );
        // The server's own advice is not repeated.
        let said = "node 2 was removed; add the replacement under a new id";
        let a = advise(
            ErrorReply::new(ErrorCode::MembershipRefused, said),
            &add(2),
            None,
        );
        assert_eq!(a.message, said);
        let a = advise(e(ErrorCode::MembershipRefused), &add(5), None);
        assert!(a.message.contains("`member list`"), "{}", a.message);
        let a = advise(e(ErrorCode::ChangeInProgress), &add(5), None);
        assert!(a.message.contains("retry"), "{}", a.message);
        // Other errors stay as they are.
        let a = advise(e(ErrorCode::NoLeader), &add(5), None);
        assert_eq!(a.message, "from the server");
    }

    #[test]
    fn how_far_a_learner_is_behind_comes_from_the_leaders_list() {
        let reply = MemberReply {
            index: None,
            members: vec![info(4, true, false, Some((40, true)))],
            last_index: Some(100),
        };
        assert_eq!(behind(&reply, 4), Some(60));
        assert_eq!(behind(&reply, 5), None);
        let follower = MemberReply {
            last_index: None,
            ..reply
        };
        assert_eq!(behind(&follower, 4), None);
    }

    #[test]
    fn a_learner_not_ready_is_told_how_far_behind_the_leader_says_it_is() {
        let not_ready = r#"{"msg_type":"ERROR","req_id":{req_id},"payload":{"code":"LEARNER_NOT_READY","message":"learner 4 is behind"}}"#;
        let list = r#"{"msg_type":"MEMBER","req_id":{req_id},"payload":{"members":[{"id":1,"addr":"127.0.0.1:8001","learner":false,"leader":true,"match_index":100,"healthy":true},{"id":4,"addr":"127.0.0.1:8004","learner":true,"leader":false,"match_index":40,"healthy":true}],"last_index":100}}"#;
        let (addr, node) = crate::fake_node::fake_node(vec![not_ready.into(), list.into()]);
        let mut client = ClusterClient::new(vec![addr], std::time::Duration::from_secs(5), false);
        let promote = Member(MemberRequest::Promote {
            id: 4,
            force: false,
        });
        let failure = promote.run(&mut client).unwrap_err();
        assert_eq!(failure.exit_code(), 1);
        assert_eq!(
            failure.text(),
            "LEARNER_NOT_READY: learner 4 is 60 entries behind the leader; wait until it \
             catches up (`member list`) and retry `member promote 4` (learner 4 is behind)"
        );
        let seen = node.join().unwrap();
        assert!(seen[0].contains(r#""op":"promote","id":4"#), "{}", seen[0]);
        assert!(seen[1].contains(r#""op":"list""#), "{}", seen[1]);
    }

    #[test]
    fn changes_render_ok_for_scripts_and_what_happened_for_people() {
        let reply = MemberReply {
            index: Some(57),
            members: vec![],
            last_index: None,
        };
        let add = MemberRequest::Add {
            id: 4,
            addr: "127.0.0.1:8004".parse().unwrap(),
            peer_addr: None,
            learner: true,
            force: false,
        };
        let done = render_change(&add, &reply);
        assert_eq!(done.plain, "OK");
        assert_eq!(done.pretty, "member 4 added as a learner at 127.0.0.1:8004");
        assert!(done.hint.unwrap().contains("member promote 4"));
        assert_eq!(done.json["index"], 57);
        let remove = MemberRequest::Remove { id: 3, force: true };
        let done = render_change(&remove, &reply);
        assert_eq!(
            (done.plain.as_str(), done.pretty.as_str()),
            ("OK", "member 3 removed")
        );
        let update = MemberRequest::Update {
            id: 2,
            addr: "127.0.0.1:7002".parse().unwrap(),
            peer_addr: Some("127.0.0.1:9002".parse().unwrap()),
        };
        assert_eq!(
            render_change(&update, &reply).pretty,
            "member 2 now at 127.0.0.1:7002, peers at 127.0.0.1:9002"
        );
    }
}
