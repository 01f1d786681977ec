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
    for bad in ["Monitoring", "monitoring-", "a_b", ""] {
        let output = operator()
            .arg(format!("--metrics-namespace={bad}"))
            .arg("--help")
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{bad:?}");
        assert!(
            String::from_utf8_lossy(&output.stderr).contains("is not a namespace name"),
            "{bad:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
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

#[test]
fn the_charts_deployment_passes_flags_the_binary_takes() {
    // The Helm chart runs the binary with these flags and variables; a flag the binary
    // does not know would crash-loop every installation.
    let template = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../charts/dynamo-operator/templates/deployment.yaml"
    ))
    .unwrap();
    let args: Vec<String> = template
        .lines()
        .map(str::trim)
        .filter_map(|line| line.strip_prefix("- --"))
        .map(|flag| {
            // The template's values, as a namespace-scoped install with a Prometheus in
            // `monitoring` renders them.
            let flag = flag
                .replace("{{ .Values.metrics.port }}", "8080")
                .replace("{{ .Release.Namespace }}", "dynamo-system")
                .replace("{{ . }}", "monitoring");
            format!("--{flag}")
        })
        .collect();
    for flag in ["--namespace", "--metrics-namespace"] {
        assert!(
            args.iter().any(|a| a.starts_with(&format!("{flag}="))),
            "{flag} missing from {args:?}"
        );
    }
    assert!(!args.is_empty(), "no flags found in the chart's Deployment");
    assert!(args.iter().all(|a| !a.contains("{{")), "{args:?}");
    let env: Vec<&str> = template
        .lines()
        .map(str::trim)
        .skip_while(|line| *line != "env:")
        .take_while(|line| *line != "ports:")
        .filter_map(|line| line.strip_prefix("- name: "))
        .collect();
    assert_eq!(env, ["DYNAMO_OPERATOR_LOG", "POD_NAMESPACE", "POD_NAME"]);
    let help = operator().arg("--help").output().unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    for variable in env {
        assert!(
            help.contains(&format!("env: {variable}")),
            "the chart sets {variable}, which the binary does not read:\n{help}"
        );
    }
    // clap rejects an unknown flag before it gets to `--help`.
    let output = operator().args(&args).arg("--help").output().unwrap();
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn logs_are_json_lines_by_default() {
    // Structured logs: one JSON object per line, with a level and named fields, for log
    // pipelines to index (the chart runs the default).
    let home = tempfile::tempdir().unwrap();
    let output = operator()
        .args(["--http-listen", "127.0.0.1:0"])
        .env("HOME", home.path())
        .env("KUBECONFIG", home.path().join("missing-kubeconfig"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    // The log lines go to stderr; the exit error (anyhow's report, not a log line)
    // follows them.
    let stderr = String::from_utf8(output.stderr).unwrap();
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .take_while(|line| !line.starts_with("Error: "))
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    let serving = lines
        .iter()
        .find(|l| l["fields"]["message"] == "serving /metrics, /healthz, /readyz")
        .unwrap_or_else(|| panic!("no startup line in {stderr}"));
    assert_eq!(serving["level"], "INFO");
    assert!(serving["timestamp"].is_string());
    assert!(
        serving["fields"]["address"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:")),
        "{serving}"
    );
}

/// The args of the chart's `cluster.enabled` Job: `["apply-cluster", "--file", PATH]`.
fn chart_job_args() -> Vec<String> {
    let template = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../charts/dynamo-operator/templates/cluster.yaml"
    ))
    .unwrap();
    let line = template
        .lines()
        .map(str::trim)
        .find_map(|line| line.strip_prefix("args: "))
        .expect("the Job's args");
    serde_json::from_str(line).expect("the args as a JSON list")
}

#[test]
fn apply_cluster_refuses_a_bad_file_before_any_api_call_and_needs_a_cluster_for_a_good_one() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let mut args = chart_job_args();
    assert_eq!(args[..2], ["apply-cluster", "--file"]);
    let file = dir.path().join("cluster.yaml");
    args[2] = file.display().to_string();
    let run = |contents: &str| {
        std::fs::write(&file, contents).unwrap();
        operator()
            .args(&args)
            .args(["--wait-for-crd", "1s"])
            .env("HOME", &home)
            .env("KUBECONFIG", home.join("missing"))
            .output()
            .unwrap()
    };
    // Exit 2 and what is wrong, without a Kubernetes API to talk to.
    for (contents, message) in [
        (
            "kind: StatefulSet\napiVersion: apps/v1\n",
            "kind DynamoCluster, got apps/v1 StatefulSet",
        ),
        (
            "apiVersion: dynamo.example.org/v1alpha1\nkind: DynamoCluster\nmetadata: {name: db}\nspec: {size: 3, image: x, replication: {\"n\": 3, r: 5, w: 2}}\n",
            "invalid spec",
        ),
    ] {
        let output = run(contents);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(message), "{stderr}");
    }
    // A good file gets as far as the client, which there is none of: exit 1.
    let output = run(
        "apiVersion: dynamo.example.org/v1alpha1\nkind: DynamoCluster\nmetadata: {name: db}\nspec: {size: 3, image: x}\n",
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("building the Kubernetes client"),
        "{stderr}"
    );
}
