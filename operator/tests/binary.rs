//! The `dynamo-operator` binary: its command line, and a clear failure without a
//! Kubernetes API to talk to.

use std::process::Command;

fn operator() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dynamo-operator"));
    command.env_clear();
    command
}

#[test]
fn help_lists_the_flags() {
    let output = operator().arg("--help").output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for flag in [
        "--namespace",
        "--http-listen",
        "--no-leader-election",
        "--lease-name",
        "--admin-timeout",
        "--poll-interval",
        "--log-format",
    ] {
        assert!(help.contains(flag), "{flag} missing from\n{help}");
    }
}

#[test]
fn bad_flags_exit_with_usage_errors() {
    let output = operator()
        .args(["--poll-interval", "soon"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--poll-interval"));
}

#[test]
fn without_a_cluster_it_says_so_and_fails() {
    let home = tempfile::tempdir().unwrap();
    let output = operator()
        .args(["--http-listen", "127.0.0.1:0", "--log-format", "text"])
        .env("HOME", home.path())
        .env("KUBECONFIG", home.path().join("missing-kubeconfig"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("building the Kubernetes client"),
        "{stderr}"
    );
}
