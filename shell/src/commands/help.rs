//! `help [COMMAND]`: the list of commands, or one command's help, from the
//! table.

use serde_json::json;

use super::{find, Action, Args, FirstArg, Kind, Spec, UsageError, COMMANDS};
use crate::client::ClusterClient;
use crate::exec::{Done, Outcome};

pub const SPEC: Spec = Spec {
    name: "help",
    aliases: &["?"],
    args: "[COMMAND]",
    summary: "the list of commands, or one command's help",
    details: "",
    kind: Kind::Local,
    first_arg: FirstArg::Command,
    subs: &[],
    parse,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Help {
    /// The command's name (not an alias).
    pub topic: Option<String>,
}

fn parse(args: &Args<'_>) -> Result<Box<dyn Action>, UsageError> {
    let topic = match args.get(0) {
        None => None,
        Some(t) => Some(
            find(&t.text)
                .ok_or_else(|| UsageError::NoTopic(t.text.clone()))?
                .name
                .to_string(),
        ),
    };
    Ok(Box::new(Help { topic }))
}

impl Action for Help {
    fn run(&self, _: &mut ClusterClient) -> Outcome {
        let text = help_text(self.topic.as_deref());
        Ok(Done::new(text.clone(), text.clone(), json!({"text": text})))
    }
}

/// The text of `help` or `help COMMAND`.
pub fn help_text(topic: Option<&str>) -> String {
    match topic.and_then(find) {
        Some(spec) => command_help(spec),
        None => {
            let width = COMMANDS.iter().map(|s| s.usage().len()).max().unwrap_or(0);
            let mut out = String::from("Commands:\n");
            for spec in COMMANDS {
                out.push_str(&format!("  {:width$}  {}\n", spec.usage(), spec.summary));
            }
            out.push_str(
                "Quote values with spaces: set greeting \"hello world\". An unquoted nil is\n\
                 \"absent\" for cas. help COMMAND tells more. Lines starting with # are comments.",
            );
            out
        }
    }
}

fn command_help(spec: &Spec) -> String {
    let mut out = format!("usage: {}\n  {}", spec.usage(), spec.summary);
    if !spec.aliases.is_empty() {
        out.push_str(&format!("\n  also spelt: {}", spec.aliases.join(", ")));
    }
    for line in spec.details.lines() {
        out.push_str("\n  ");
        out.push_str(line.trim_start());
    }
    let width = spec
        .subs
        .iter()
        .map(|sub| spec.sub_usage(sub).len())
        .max()
        .unwrap_or(0);
    for sub in spec.subs {
        let usage = spec.sub_usage(sub);
        out.push_str(&format!("\n  {usage:width$}  {}", sub.summary));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_has_help_and_usage() {
        let all = help_text(None);
        for spec in COMMANDS {
            assert!(all.contains(&spec.usage()), "{}", spec.name);
            let own = help_text(Some(spec.name));
            assert!(own.starts_with(&format!("usage: {}", spec.usage())));
            for sub in spec.subs {
                assert!(own.contains(&spec.sub_usage(sub)), "{own}");
                assert!(own.contains(sub.summary), "{own}");
            }
        }
        for name in ["login", "auth", "user", "role"] {
            assert!(all.contains(&format!("\n  {name} ")), "{name}: {all}");
        }
        assert!(help_text(Some("user")).contains("user add NAME[:PASSWORD]"));
    }
}
