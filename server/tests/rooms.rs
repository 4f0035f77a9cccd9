//! Which rooms may use which (docs/architecture.md, "Rooms"), checked on the
//! source: the Raft core does no I/O and reads no clock or global randomness,
//! and the protocol, client and shell crates depend only on the crates below
//! them.

use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("server/ has a parent")
        .to_path_buf()
}

/// Whatever would give the core a socket, a file, a thread, the environment,
/// a clock or randomness it was not handed as an input.
const NOT_IN_THE_CORE: &[&str] = &[
    "std::fs",
    "std::net",
    "std::thread",
    "std::env",
    "std::process",
    "mio",
    "socket2",
    "File::",
    "TcpStream",
    "Instant",
    "SystemTime",
    "thread_rng",
    "rand::random",
    "from_entropy",
    "OsRng",
];

/// The core's test-only modules (declared `#[cfg(test)]` in raft/mod.rs) may
/// read their scripts from disk; nothing else in raft/ may.
const CORE_TEST_MODULES: &[&str] = &["script.rs", "sim.rs", "tests.rs"];

fn uses(text: &str, token: &str) -> Vec<usize> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| {
            let code = line.split("//").next().unwrap_or("");
            code.contains(token)
        })
        .map(|(n, _)| n + 1)
        .collect()
}

#[test]
fn the_raft_core_uses_no_io_clock_or_global_randomness() {
    let dir = workspace().join("server/src/raft");
    let module = std::fs::read_to_string(dir.join("mod.rs")).expect("raft/mod.rs");
    for test_module in CORE_TEST_MODULES {
        let name = test_module.trim_end_matches(".rs");
        assert!(
            module.contains(&format!("#[cfg(test)]\nmod {name};")),
            "raft/{test_module} is exempt from this check only as a #[cfg(test)] module"
        );
    }
    let mut files = 0;
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("server/src/raft") {
        let path = entry.expect("a directory entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !name.ends_with(".rs") || CORE_TEST_MODULES.contains(&name) {
            continue;
        }
        files += 1;
        let text = std::fs::read_to_string(&path).expect("a source file");
        // Unit tests at the bottom of a file are not the core.
        let code = text.split("#[cfg(test)]\nmod tests").next().unwrap_or("");
        for token in NOT_IN_THE_CORE {
            for line in uses(code, token) {
                found.push(format!("raft/{name}:{line}: {token}"));
            }
        }
    }
    assert!(files >= 5, "found only {files} core files in {dir:?}");
    assert!(
        found.is_empty(),
        "the Raft core must take these as inputs:\n{}",
        found.join("\n")
    );
}

/// The `poncho-*` crates a crate's `[dependencies]` name.
fn internal_dependencies(krate: &str) -> Vec<String> {
    let manifest =
        std::fs::read_to_string(workspace().join(krate).join("Cargo.toml")).expect("a Cargo.toml");
    let mut in_dependencies = false;
    let mut found = Vec::new();
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_dependencies = line == "[dependencies]";
        } else if in_dependencies && line.starts_with("poncho-") {
            found.push(line.split([' ', '=', '.']).next().unwrap_or("").to_string());
        }
    }
    found
}

#[test]
fn protocol_client_and_shell_depend_only_on_the_rooms_below_them() {
    assert_eq!(internal_dependencies("protocol"), Vec::<String>::new());
    assert_eq!(
        internal_dependencies("client"),
        ["poncho-protocol", "poncho-tls"]
    );
    assert_eq!(
        internal_dependencies("shell"),
        ["poncho-protocol", "poncho-client"]
    );
    // The server may use the protocol and TLS, never a client's crates.
    assert_eq!(
        internal_dependencies("server"),
        ["poncho-protocol", "poncho-tls"]
    );
    assert_eq!(internal_dependencies("tls"), Vec::<String>::new());
}
