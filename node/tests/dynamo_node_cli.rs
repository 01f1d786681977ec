//! The real `dynamo-node` binary: exit codes and output of `--check-config`, `--help`
//! and `--version`.

use std::process::{Command, Output};

/// Runs the binary with `args` and only the given `DYNAMO_*` variables.
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dynamo-node"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("the binary starts")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn check_config_refuses_read_quorum_above_replication_factor() {
    // Dynamo §4.5: R replies are waited for among N replicas, so R > N can never succeed.
    let out = run(
        &[
            "--check-config",
            "--node-id",
            "n1",
            "--storage",
            "memory",
            "--replication-factor",
            "3",
            "--read-quorum",
            "4",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("read-quorum (4) is larger than replication-factor (3)"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn check_config_prints_the_effective_config_with_the_token_redacted() {
    let out = run(
        &[
            "--check-config",
            "--storage",
            "memory",
            "--write-quorum",
            "3",
        ],
        &[
            ("DYNAMO_NODE_ID", "dynamo-0"),
            ("DYNAMO_ADMIN_TOKEN", "hunter2"),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stdout = text(&out.stdout);
    for line in [
        "node-id: dynamo-0",
        "write-quorum: 3",
        "read-quorum: 2",
        "admin-token: <redacted>",
    ] {
        assert!(stdout.lines().any(|l| l == line), "{line:?} in\n{stdout}");
    }
    assert!(!stdout.contains("hunter2"), "{stdout}");
}

#[test]
fn bad_env_value_exits_2_naming_the_variable() {
    let out = run(
        &["--check-config", "--node-id", "n1", "--storage", "memory"],
        &[("DYNAMO_WEIGHT", "heavy")],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(text(&out.stderr).contains("DYNAMO_WEIGHT"), "{out:?}");
}

#[test]
fn unknown_flag_exits_2() {
    let out = run(&["--node-id", "n1", "--replicas", "3"], &[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(text(&out.stderr).contains("--replicas"), "{out:?}");
}

#[test]
fn help_and_version_exit_0() {
    let help = run(&["--help"], &[]);
    assert_eq!(help.status.code(), Some(0), "{help:?}");
    let stdout = text(&help.stdout);
    assert!(stdout.contains("--check-config"), "{stdout}");
    assert!(stdout.contains("DYNAMO_REPLICATION_FACTOR"), "{stdout}");

    let version = run(&["--version"], &[]);
    assert_eq!(version.status.code(), Some(0), "{version:?}");
    assert!(
        text(&version.stdout).contains(env!("CARGO_PKG_VERSION")),
        "{version:?}"
    );
}

#[test]
fn a_node_reachable_from_other_hosts_refuses_to_start_without_internode_authentication() {
    let reachable = [
        "--node-id",
        "n1",
        "--storage",
        "memory",
        "--listen",
        "0.0.0.0:0",
        "--internode-listen",
        "0.0.0.0:0",
        "--advertise",
        "n1.example:7001",
    ];
    // Started for real, not only checked: it must not serve.
    let out = run(&reachable, &[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("internode-listen (0.0.0.0:0) is not a loopback address")
            && stderr.contains("internode-token-file"),
        "{stderr}"
    );
    // Saying so explicitly is accepted, and shows in the effective config.
    let mut insecure = reachable.to_vec();
    insecure.extend(["--check-config", "--insecure-internode"]);
    let out = run(&insecure, &[]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        text(&out.stdout)
            .lines()
            .any(|l| l == "insecure-internode: true")
    );
    // As is a cluster secret, from the environment like every setting.
    let mut checked = reachable.to_vec();
    checked.push("--check-config");
    let out = run(
        &checked,
        &[("DYNAMO_INTERNODE_TOKEN_FILE", "/etc/dynamo/internode/token")],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

#[test]
fn an_unusable_internode_token_file_stops_the_start_without_showing_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "hunter2\n").unwrap();
    let start_with = |token_file: &std::path::Path| {
        run(
            &[
                "--node-id",
                "n1",
                "--storage",
                "memory",
                "--listen",
                "127.0.0.1:0",
                "--internode-token-file",
                token_file.to_str().unwrap(),
            ],
            &[],
        )
    };
    let out = start_with(&file);
    assert!(!out.status.success(), "{out:?}");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("line 1: the token is shorter than 16 bytes"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
    let out = start_with(&dir.path().join("missing"));
    assert!(!out.status.success(), "{out:?}");
    assert!(text(&out.stderr).contains("missing"), "{out:?}");
}
