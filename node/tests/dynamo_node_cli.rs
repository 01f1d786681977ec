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
