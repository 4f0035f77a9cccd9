//! poncho-bench's --cacert, --cert and --key against an in-process TLS node
//! (a stand-in leader that answers STATUS, REGISTER_CLIENT, SET and GET):
//! a run over TLS, with a client certificate, and a plaintext bench on a
//! TLS port failing with the reason.

#[path = "../../tests/src/certs.rs"]
#[allow(dead_code)] // expired_leaf
mod certs;
#[path = "../../client/tests/support/tls_node.rs"]
mod tls_node;

use std::process::{Command, Output};

use tls_node::{arg, client_flags, node, pki, text, tls_server};

fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_poncho-bench"))
        .args(["--clients", "3", "--pipeline", "4", "--keys", "50"])
        .args(["--duration", "30", "--json", "--quiet"])
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn a_run_crosses_tls_and_a_plaintext_bench_on_a_tls_port_says_why_it_fails() {
    let p = pki();
    let n = node(tls_server(&p.node.cert, &p.node.key, Some(&p.ca.cert_file)));
    let ca_file = arg(&p.ca.cert_file);
    let flags = client_flags(&p, &n.addr);
    let run = ["--requests", "3000", "--mix", "set:1,get:1", "--preload"];
    let out = bench(&[&flags[..], &run].concat());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["ops"], 3000, "{summary}");
    assert_eq!(summary["errors"], 0, "{summary}");
    assert!(summary["by_op"]["get"]["count"].as_u64().unwrap() > 1000);

    let out = bench(&["--cluster", &n.addr, "--requests", "10"]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("no leader found"), "{stderr}");
    assert!(stderr.contains("speaks TLS: give --cacert"), "{stderr}");

    let out = bench(&[
        "--cluster",
        &n.addr,
        "--target",
        "etcd",
        "--cacert",
        ca_file,
    ]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("for --target poncho"));
}
