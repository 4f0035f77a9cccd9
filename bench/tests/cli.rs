//! The command line of poncho-bench. (Also makes `cargo test` build the
//! binary, which the end-to-end tests in tests/ use to generate load.)

use std::process::Command;

#[test]
fn help_names_the_options() {
    let out = Command::new(env!("CARGO_BIN_EXE_poncho-bench"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--cluster",
        "--clients",
        "--duration",
        "--requests",
        "--mix",
        "--keys",
        "--value-size",
        "--pipeline",
        "--json",
    ] {
        assert!(text.contains(flag), "help lacks {flag}");
    }
}

#[test]
fn a_bad_mix_or_an_unreachable_cluster_fails_with_a_reason() {
    let bin = env!("CARGO_BIN_EXE_poncho-bench");
    let out = Command::new(bin)
        .args(["--mix", "frob:1", "--cluster", "127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown op"));
    let out = Command::new(bin)
        .args(["--cluster", "127.0.0.1:1", "--duration", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no leader found"));
}
