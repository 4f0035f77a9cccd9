//! poncho-shell's --cacert, --cert and --key (and $PONCHO_CACERT...) against
//! an in-process TLS node: a round trip, a plaintext shell on a TLS port, a
//! key others may read, and no key material in --verbose output.

#[path = "../../tests/src/certs.rs"]
#[allow(dead_code)] // expired_leaf
mod certs;
#[path = "../../client/tests/support/tls_node.rs"]
mod tls_node;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

use tls_node::{arg, client_flags, node, pki, text, tls_server};

fn shell(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_poncho-shell"));
    command.args(["--timeout", "2s"]).args(args);
    for var in ["PONCHO_CACERT", "PONCHO_CERT", "PONCHO_KEY"] {
        command.env_remove(var);
    }
    command.envs(env.iter().copied()).output().unwrap()
}

#[test]
fn the_shell_speaks_tls_given_a_ca_and_says_so_when_it_is_missing() {
    let p = pki();
    let n = node(tls_server(&p.node.cert, &p.node.key, None));
    let ca_file = arg(&p.ca.cert_file);
    let out = shell(&["--cluster", &n.addr, "--cacert", ca_file, "health"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "ok");
    let out = shell(
        &["--cluster", &n.addr, "health"],
        &[("PONCHO_CACERT", ca_file)],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    let out = shell(&["--cluster", &n.addr, "health"], &[]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("error: TLS: "), "{stderr}");
    assert!(stderr.contains("speaks TLS: give --cacert"), "{stderr}");
}

#[test]
fn a_readable_key_is_warned_about_and_verbose_output_holds_no_key() {
    let p = pki();
    let n = node(tls_server(&p.node.cert, &p.node.key, Some(&p.ca.cert_file)));
    std::fs::set_permissions(&p.client.key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let ca_file = arg(&p.ca.cert_file);
    let out = shell(
        &[&client_flags(&p, &n.addr)[..], &["--verbose", "health"]].concat(),
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("warning: ") && stderr.contains("chmod 600"),
        "{stderr}"
    );
    assert!(stderr.contains("-> {"), "verbose prints the wire: {stderr}");
    let pem = std::fs::read_to_string(&p.client.key).unwrap();
    for line in pem.lines().filter(|l| l.len() > 16) {
        assert!(!stderr.contains(line) && !text(&out.stdout).contains(line));
    }
    assert!(!stderr.contains("PRIVATE KEY"), "{stderr}");

    // Without the client certificate, this node refuses the shell.
    let out = shell(&["--cluster", &n.addr, "--cacert", ca_file, "health"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("give --cert and --key"),
        "{}",
        text(&out.stderr)
    );
    // A key without its certificate is a usage error.
    let key = arg(&p.client.key);
    let out = shell(&["--cacert", ca_file, "--key", key, "health"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--cert and --key"),
        "{}",
        text(&out.stderr)
    );
}
