//! `exit`: leave the shell (or end a script).

use super::{no_args, Action, FirstArg, Kind, Spec};
use crate::client::ClusterClient;
use crate::exec::{Done, Outcome};

pub const SPEC: Spec = Spec {
    name: "exit",
    aliases: &["quit"],
    args: "",
    summary: "leave the shell (Ctrl-D does too)",
    details: "",
    kind: Kind::Exit,
    first_arg: FirstArg::Free,
    subs: &[],
    parse: no_args::<Exit>,
};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Exit;

impl Action for Exit {
    /// Callers stop before running it (see [`super::Command::is_exit`]).
    fn run(&self, _: &mut ClusterClient) -> Outcome {
        Ok(Done::default())
    }
}
