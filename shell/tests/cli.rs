//! The command line of poncho-shell without a cluster. (Also makes `cargo
//! test` build the binary, which the end-to-end tests in tests/ drive.)

use std::process::Command;

#[test]
fn help_names_the_modes_and_options() {
    let out = Command::new(env!("CARGO_BIN_EXE_poncho-shell"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--cluster",
        "--timeout",
        "--verbose",
        "--json",
        "--stop-on-error",
        "--user",
        "PONCHO_PASSWORD",
    ] {
        assert!(text.contains(flag), "help lacks {flag}:\n{text}");
    }
}

#[test]
fn an_unreachable_cluster_fails_a_one_shot_command_with_status_1() {
    let out = Command::new(env!("CARGO_BIN_EXE_poncho-shell"))
        .args(["--cluster", "127.0.0.1:1", "--timeout", "300ms", "get", "k"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.stderr.is_empty(), "the failure is explained on stderr");
}
