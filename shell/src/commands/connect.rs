//! `connect HOST:PORT`: talk to another node from now on.

use serde_json::json;

use super::{looks_like_host_port, Action, Args, FirstArg, Kind, Spec, UsageError};
use crate::client::ClusterClient;
use crate::exec::{Done, Outcome};

pub const SPEC: Spec = Spec {
    name: "connect",
    aliases: &[],
    args: "HOST:PORT",
    summary: "talk to this node from now on",
    details: "Reads and writes still follow the leader: a follower redirects them.",
    kind: Kind::Cluster,
    first_arg: FirstArg::Addr,
    subs: &[],
    parse,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub addr: String,
}

fn parse(args: &Args<'_>) -> Result<Box<dyn Action>, UsageError> {
    let addr = args.text(0);
    if !looks_like_host_port(&addr) {
        return Err(args.usage());
    }
    Ok(Box::new(Connect { addr }))
}

impl Action for Connect {
    fn run(&self, client: &mut ClusterClient) -> Outcome {
        let addr = &self.addr;
        client.connect_to(addr)?;
        let role = client
            .quiet_status()
            .map_or("unknown role".to_string(), |s| s.role);
        Ok(Done::new(
            "OK",
            format!("connected to {addr} ({role})"),
            json!({"node": addr, "role": role}),
        ))
    }
}
