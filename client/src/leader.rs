//! Leader following: which node to try next, and what an `ERROR` reply asks
//! of a request that is retried (go to the leader it names, ask another node,
//! ask this one again, or give the answer back).
//!
//! A membership change or a leader transfer ([`Route::Change`]) goes to the
//! leader as a write does, but it has no session to make it exactly-once:
//! the client never sends one again after an attempt that may have been
//! applied (see [`crate::membership`]).

use std::time::Duration;

use poncho_protocol::{ErrorCode, ErrorReply};

use crate::auth::Credentials;
use crate::status::status_as;
use crate::tls::Tls;

/// Where a request may be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Reads and writes: follow `NOT_LEADER` to the leader.
    Leader,
    /// HEALTHCHECK, STATUS and probes: whichever node we talk to.
    Here,
    /// `MEMBER` changes and `TRANSFER_LEADER`: to the leader, like writes;
    /// `CHANGE_IN_PROGRESS` is waited out, and an attempt whose outcome is
    /// unknown is not sent again.
    Change,
}

/// What an `ERROR` reply asks of a request retried until a deadline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Retry {
    /// `NOT_LEADER` naming another node: send it there.
    Redirect(String),
    /// This node cannot serve it now (it knows no leader, or its disk is
    /// full and it hands leadership on): ask another node, after a pause.
    Elsewhere,
    /// The leader is busy, timed out or lost leadership while the request
    /// was pending: send it again (the same line), after a pause.
    Again,
    /// The answer: report it.
    Final,
}

/// What `error`, received from the node at `here`, asks of a request sent
/// by `route`.
pub fn retry_for(error: &ErrorReply, route: Route, here: &str) -> Retry {
    match error.code {
        ErrorCode::NotLeader if route != Route::Here => match &error.leader_addr {
            Some(leader) if leader != here => Retry::Redirect(leader.clone()),
            _ => Retry::Elsewhere,
        },
        ErrorCode::NoLeader | ErrorCode::NoSpace => Retry::Elsewhere,
        // A node removed from the cluster serves nothing: the others may.
        ErrorCode::Removed if route != Route::Here => Retry::Elsewhere,
        ErrorCode::ChangeInProgress if route == Route::Change => Retry::Again,
        ErrorCode::Overloaded | ErrorCode::Timeout | ErrorCode::LeadershipLost => Retry::Again,
        _ => Retry::Final,
    }
}

/// The nodes a client knows and the order it tries them in: the leader a
/// redirect named first, then every known address in turn, starting after
/// the one that last failed.
#[derive(Debug, Clone)]
pub struct Targets {
    /// Every address we know: the ones given, then leaders we were sent to.
    addrs: Vec<String>,
    /// Where the next connection attempt starts in `addrs`.
    next: usize,
    /// Where a redirect told us to go.
    preferred: Option<String>,
}

impl Targets {
    pub fn new(addrs: Vec<String>) -> Targets {
        Targets {
            addrs,
            next: 0,
            preferred: None,
        }
    }

    pub fn addrs(&self) -> &[String] {
        &self.addrs
    }

    /// Adds `addr` to the known addresses, if it is new.
    pub fn remember(&mut self, addr: &str) {
        if !self.addrs.iter().any(|a| a == addr) {
            self.addrs.push(addr.to_string());
        }
    }

    /// A redirect: `leader` is tried first next time.
    pub fn redirect(&mut self, leader: &str) {
        self.remember(leader);
        self.preferred = Some(leader.to_string());
    }

    /// `addr` is the node tried first from now on.
    pub fn put_first(&mut self, addr: &str) {
        self.addrs.retain(|a| a != addr);
        self.addrs.insert(0, addr.to_string());
        self.next = 0;
        self.preferred = None;
    }

    /// The node at `addr` failed: the next attempt starts after it.
    pub fn move_past(&mut self, addr: &str) {
        if let Some(i) = self.addrs.iter().position(|a| a == addr) {
            self.next = (i + 1) % self.addrs.len().max(1);
        }
    }

    /// The order of the next connection attempt: the redirect's leader (used
    /// once), then each known address once, in turn.
    pub fn order(&mut self) -> Vec<String> {
        let mut order: Vec<String> = Vec::new();
        if let Some(p) = self.preferred.take() {
            order.push(p);
        }
        let n = self.addrs.len();
        for i in 0..n {
            let a = &self.addrs[(self.next + i) % n];
            if !order.contains(a) {
                order.push(a.clone());
            }
        }
        order
    }
}

/// The leader through STATUS, one try per node with `timeout` each: the
/// first node that answers and either leads (its address as given) or
/// names a leader. `None` if none does.
pub fn find_leader(addrs: &[String], timeout: Duration) -> Option<String> {
    find_leader_with(addrs, timeout, None)
}

/// [`find_leader`], over TLS if `tls` is given.
pub fn find_leader_with(addrs: &[String], timeout: Duration, tls: Option<&Tls>) -> Option<String> {
    find_leader_as(addrs, timeout, tls, None)
}

/// [`find_leader_with`], each connection logged in with `credentials`
/// first if they are given (with auth enabled, STATUS needs a login).
pub fn find_leader_as(
    addrs: &[String],
    timeout: Duration,
    tls: Option<&Tls>,
    credentials: Option<&Credentials>,
) -> Option<String> {
    addrs.iter().find_map(|addr| {
        let status = status_as(addr, timeout, tls, credentials).0.ok()?;
        if status.role == "leader" {
            Some(addr.clone())
        } else {
            status.leader_addr
        }
    })
}
