//! The real `dynamoctl` binary: help, exit codes and messages for an unreachable server,
//! a bad context and a node that fails to start; and a `dev` cluster of real
//! `dynamo-node` processes driven end to end; and the TLS flags against a TLS node.

#[path = "../../node/tests/support/mod.rs"]
mod support;

use std::io::BufReader;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn dynamoctl() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dynamoctl"));
    // A developer's DYNAMO_ENDPOINT or token must not change what these tests see.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("DYNAMO_") {
            command.env_remove(name);
        }
    }
    command
}

fn run(args: &[&str]) -> Output {
    dynamoctl().args(args).output().expect("dynamoctl starts")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn help_lists_the_commands_and_exit_codes() {
    let out = run(&["--help"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let help = text(&out.stdout);
    for word in [
        "get",
        "put",
        "delete",
        "ring",
        "status",
        "admin",
        "dev",
        "Exit codes",
    ] {
        assert!(help.contains(word), "{word} missing from:\n{help}");
    }
}

#[test]
fn get_with_nothing_listening_exits_3_with_a_clear_message() {
    let out = run(&["get", "k", "--endpoint", "http://127.0.0.1:1"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with("dynamoctl: cannot reach http://127.0.0.1:1: "),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn put_with_a_bad_context_exits_2_before_connecting() {
    // Nothing listens on port 1: exit 2 (not 3) shows the context was refused first.
    let out = run(&[
        "put",
        "k",
        "v",
        "--context",
        "%%% not base64",
        "--endpoint",
        "http://127.0.0.1:1",
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with("dynamoctl: invalid --context: not base64"),
        "{stderr}"
    );
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["frobnicate"][..],
        &["put", "k"],
        &["get", "k", "--r", "many"],
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
    }
}

#[test]
fn admin_commands_without_a_server_exit_3() {
    let out = run(&["ring", "--admin-endpoint", "127.0.0.1:1", "--timeout", "2s"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(text(&out.stderr).contains("cannot reach http://127.0.0.1:1"));
}

#[test]
fn dev_reports_a_node_that_dies_before_it_is_ready() {
    let base = tempfile::tempdir().unwrap();
    let out = run(&[
        "dev",
        "--nodes",
        "2",
        "--node-bin",
        "/bin/false",
        "--base-dir",
        base.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("dynamoctl: node1 exited before it was ready"),
        "{stderr}"
    );
    assert!(base.path().join("node1.log").exists());
    assert!(
        !base.path().join("node2.log").exists(),
        "node2 must not start"
    );
}

#[test]
fn dev_without_a_node_binary_is_a_usage_error() {
    let out = run(&["dev", "--node-bin", "/nonexistent/dynamo-node"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(text(&out.stderr).contains("no dynamo-node binary at /nonexistent/dynamo-node"));
}

/// Dynamo §4.1 and §4.4 end to end: a three-node `dev` cluster; a put and a get that
/// returns it; two blind puts make siblings, a put with the get's context reconciles them.
#[test]
fn dev_cluster_serves_put_and_get() {
    let (dev, doc) = start_dev_cluster();
    let client = doc["nodes"][0]["client"].as_str().unwrap().to_owned();
    let admin = doc["nodes"][2]["admin"].as_str().unwrap().to_owned();

    let put = run(&["put", "greeting", "hello", "--endpoint", &client, "--json"]);
    assert_eq!(put.status.code(), Some(0), "{put:?}");
    let get = run(&["get", "greeting", "--endpoint", &client, "--json"]);
    assert_eq!(get.status.code(), Some(0), "{get:?}");
    let got: serde_json::Value = serde_json::from_slice(&get.stdout).unwrap();
    assert_eq!(got["values"], serde_json::json!(["aGVsbG8="]));

    let blind = run(&["put", "greeting", "bonjour", "--endpoint", &client]);
    assert_eq!(blind.status.code(), Some(0), "{blind:?}");
    let get = run(&["get", "greeting", "--endpoint", &client, "--json"]);
    let got: serde_json::Value = serde_json::from_slice(&get.stdout).unwrap();
    assert_eq!(got["values"].as_array().unwrap().len(), 2, "{got}");
    let context = got["context"].as_str().unwrap();
    let reconcile = run(&[
        "put",
        "greeting",
        "hi",
        "--context",
        context,
        "--endpoint",
        &client,
    ]);
    assert_eq!(reconcile.status.code(), Some(0), "{reconcile:?}");
    let get = run(&["get", "greeting", "--endpoint", &client]);
    assert_eq!(text(&get.stdout), "hi\n");

    // `resolve`: two blind puts make siblings again; keep the second one `get` lists.
    for value in ["salut", "hola"] {
        let blind = run(&["put", "greeting", value, "--endpoint", &client]);
        assert_eq!(blind.status.code(), Some(0), "{blind:?}");
    }
    let get = run(&["get", "greeting", "--endpoint", &client, "--json"]);
    let got: serde_json::Value = serde_json::from_slice(&get.stdout).unwrap();
    let versions = got["values"].as_array().unwrap().clone();
    assert_eq!(versions.len(), 3, "{got}");
    let out_of_range = run(&["resolve", "greeting", "--pick", "4", "--endpoint", &client]);
    assert_eq!(out_of_range.status.code(), Some(2), "{out_of_range:?}");
    assert!(text(&out_of_range.stderr).contains("--pick takes 1..=3"));
    let resolve = run(&["resolve", "greeting", "--pick", "2", "--endpoint", &client]);
    assert_eq!(resolve.status.code(), Some(0), "{resolve:?}");
    let get = run(&["get", "greeting", "--endpoint", &client, "--json"]);
    let got: serde_json::Value = serde_json::from_slice(&get.stdout).unwrap();
    assert_eq!(got["values"], serde_json::json!([versions[1]]), "{got}");
    let resolve = run(&["resolve", "greeting", "merged", "--endpoint", &client]);
    assert_eq!(resolve.status.code(), Some(0), "{resolve:?}");
    let get = run(&["get", "greeting", "--endpoint", &client]);
    assert_eq!(text(&get.stdout), "merged\n");
    let nothing = run(&["resolve", "nobody", "--pick", "1", "--endpoint", &client]);
    assert_eq!(nothing.status.code(), Some(1), "{nothing:?}");

    let missing = run(&["get", "nobody", "--endpoint", &client]);
    assert_eq!(missing.status.code(), Some(1), "{missing:?}");
    let ring = run(&["ring", "--admin-endpoint", &admin, "--json"]);
    assert_eq!(ring.status.code(), Some(0), "{ring:?}");
    let ring: serde_json::Value = serde_json::from_slice(&ring.stdout).unwrap();
    assert_eq!(ring["members"].as_array().unwrap().len(), 3);

    // `admin remove` is for dead nodes: a live one is refused with the reason (exit 3),
    // an unknown one is "not found" (exit 1).
    let live_id = ring["members"][0]["node_id"].as_str().unwrap().to_owned();
    let live = run(&["--admin-endpoint", &admin, "admin", "remove", &live_id]);
    assert_eq!(live.status.code(), Some(3), "{live:?}");
    let stderr = text(&live.stderr);
    assert!(
        stderr.contains("remove failed (FailedPrecondition)") && stderr.contains("reachable"),
        "{stderr}"
    );
    let unknown = run(&["--admin-endpoint", &admin, "admin", "remove", "n9"]);
    assert_eq!(unknown.status.code(), Some(1), "{unknown:?}");

    stop_dev_cluster(dev);
}

/// [`run`] off the async runtime (the TLS test's node is driven by tokio).
async fn run_async(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&args)
    })
    .await
    .expect("dynamoctl runs")
}

fn owned(args: &[&str]) -> Vec<String> {
    args.iter().map(ToString::to_string).collect()
}

/// The TLS flags against a node serving TLS with mutual TLS on its admin port: join and
/// put/get succeed with them; without a trusted CA, or without a client certificate on
/// the admin port, the call fails with exit 3; `http://` with TLS flags and an
/// unreadable file are usage errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_flags_reach_a_tls_node() {
    let cert = support::TestCert::generate();
    let root = tempfile::tempdir().unwrap();
    let node = support::TestNode::start(
        root.path(),
        "n1",
        &[],
        &[&cert.node_args()[..], &support::ONE_REPLICA[..]].concat(),
    )
    .await;
    let client = node.client.to_string();
    let admin = node.internode.to_string();
    let tls = [
        "--tls-ca",
        cert.cert_arg(),
        "--tls-cert",
        cert.cert_arg(),
        "--tls-key",
        cert.key_arg(),
    ];
    let with_tls = |args: &[&str]| -> Vec<String> { owned(&[&tls[..], args].concat()) };

    let join = run_async(with_tls(&[
        "--admin-endpoint",
        &admin,
        "admin",
        "join",
        "n1",
        &admin,
    ]))
    .await;
    assert_eq!(join.status.code(), Some(0), "{join:?}");
    // The node serves once it has marked itself a member (its next gossip round).
    let put_args = with_tls(&["--endpoint", &client, "put", "k", "over tls"]);
    support::eventually("a put over TLS", || {
        let put_args = put_args.clone();
        async move { run_async(put_args).await.status.success() }
    })
    .await;
    let get = run_async(with_tls(&["--endpoint", &client, "get", "k"])).await;
    assert_eq!(get.status.code(), Some(0), "{get:?}");
    assert_eq!(text(&get.stdout), "over tls\n");

    let https = format!("https://{client}");
    let untrusted = run_async(owned(&["get", "k", "--endpoint", &https])).await;
    assert_eq!(untrusted.status.code(), Some(3), "{untrusted:?}");
    let stderr = text(&untrusted.stderr);
    assert!(
        stderr.starts_with(&format!("dynamoctl: cannot reach {https}: "))
            && stderr.contains("--tls-ca"),
        "{stderr}"
    );
    // Mutual TLS on the admin port: trusting the node is not enough.
    let anonymous = run_async(owned(&[
        "--tls-ca",
        cert.cert_arg(),
        "--admin-endpoint",
        &admin,
        "ring",
    ]))
    .await;
    assert_eq!(anonymous.status.code(), Some(3), "{anonymous:?}");

    let plain = run_async(with_tls(&[
        "--endpoint",
        &format!("http://{client}"),
        "get",
        "k",
    ]))
    .await;
    assert_eq!(plain.status.code(), Some(2), "{plain:?}");
    assert!(text(&plain.stderr).contains("plain http://"), "{plain:?}");
    let missing = root.path().join("missing.pem");
    let unreadable = run_async(owned(&[
        "--tls-ca",
        missing.to_str().unwrap(),
        "--endpoint",
        &client,
        "get",
        "k",
    ]))
    .await;
    assert_eq!(unreadable.status.code(), Some(2), "{unreadable:?}");
    assert!(
        text(&unreadable.stderr).contains(&format!("reading --tls-ca {}", missing.display())),
        "{unreadable:?}"
    );
}

/// A running `dynamoctl dev`: stopped with SIGTERM when dropped, so a failing test
/// does not leave it (and its node processes) behind.
struct DevCluster(Option<std::process::Child>);

impl Drop for DevCluster {
    fn drop(&mut self) {
        if let Some(mut dev) = self.0.take() {
            if let Ok(raw) = i32::try_from(dev.id())
                && let Some(pid) = rustix::process::Pid::from_raw(raw)
            {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
            // dev stops its nodes on SIGTERM; waiting reaps it.
            let _ = dev.wait();
        }
    }
}

/// Starts `dynamoctl dev` (three in-memory nodes, OS-chosen ports) and returns the process
/// and the endpoints document it printed.
fn start_dev_cluster() -> (DevCluster, serde_json::Value) {
    let mut dev = dynamoctl()
        .args([
            "dev",
            "--nodes",
            "3",
            "--storage",
            "memory",
            "--base-port",
            "0",
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("dynamoctl dev starts");
    let stdout = dev.stdout.take().expect("piped");
    let doc: serde_json::Value = serde_json::Deserializer::from_reader(BufReader::new(stdout))
        .into_iter()
        .next()
        .expect("dev prints its endpoints")
        .expect("as JSON");
    (DevCluster(Some(dev)), doc)
}

/// Sends SIGTERM to `dev` and waits for a clean exit.
fn stop_dev_cluster(mut guard: DevCluster) {
    let mut dev = guard.0.take().expect("dev runs");
    let pid = rustix::process::Pid::from_raw(i32::try_from(dev.id()).unwrap()).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = dev.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "dev did not stop");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status.code(), Some(0));
}

/// `dynamoctl bench` end to end: load 200 records into a three-node cluster, run 500
/// operations of workload A (server routing), then 100 of workload F without reloading
/// (client routing), and check the JSON reports add up.
#[test]
fn bench_loads_and_runs_workload_a_against_a_dev_cluster() {
    let (dev, doc) = start_dev_cluster();
    let client = doc["nodes"][0]["client"].as_str().unwrap().to_owned();
    let out = run(&[
        "--endpoint",
        &client,
        "bench",
        "--records",
        "200",
        "--operations",
        "500",
        "--concurrency",
        "8",
        "--workload",
        "a",
        "--distribution",
        "zipfian",
        "--value-size",
        "100",
        "--json",
    ]);
    // 100 more operations on the loaded records, client-routed, as JSON.
    let client_routed = |workload: &str, extra: &[&str]| {
        let mut args = vec![
            "--endpoint",
            &client,
            "bench",
            "--skip-load",
            "--records",
            "200",
            "--operations",
            "100",
            "--workload",
            workload,
            "--routing",
            "client",
            "--json",
        ];
        args.extend_from_slice(extra);
        run(&args)
    };
    // Workload F: each read-modify-write puts with its get's context.
    let rmw = client_routed("f", &["--concurrency", "4"]);
    // Replica-coordinated reads: each get goes to one replica of its key, which
    // coordinates it; the client merges nothing itself.
    let replica_reads = client_routed("c", &["--read-coordinator", "replica"]);
    stop_dev_cluster(dev);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(rmw.status.code(), Some(0), "{rmw:?}");
    assert_eq!(replica_reads.status.code(), Some(0), "{replica_reads:?}");
    let replica_reads: serde_json::Value =
        serde_json::from_slice(&replica_reads.stdout).expect("one JSON document");
    assert_eq!(
        replica_reads["settings"]["read_coordinator"], "replica",
        "{replica_reads}"
    );
    assert_eq!(replica_reads["run"]["errors"], 0, "{replica_reads}");
    assert_eq!(
        replica_reads["routing"]["client_reads"], 0,
        "{replica_reads}"
    );
    assert_eq!(replica_reads["routing"]["routed"], 100, "{replica_reads}");
    let rmw: serde_json::Value = serde_json::from_slice(&rmw.stdout).expect("one JSON document");
    assert!(rmw["load"].is_null(), "--skip-load: {rmw}");
    let rmw_run = &rmw["run"];
    let rmw_count = |op: &str| rmw_run["operations"][op]["count"].as_u64().unwrap_or(0);
    assert_eq!(rmw_count("read") + rmw_count("rmw"), 100, "{rmw_run}");
    assert!(rmw_count("rmw") > 0, "{rmw_run}");
    assert_eq!(rmw_run["errors"], 0, "{rmw_run}");
    // Client routing: every request went straight to a replica of its key, and the
    // client coordinated every read itself (Dynamo §6.4): one per read and per rmw.
    assert_eq!(rmw["settings"]["routing"], "client", "{rmw}");
    assert_eq!(rmw["settings"]["read_coordinator"], "client", "{rmw}");
    assert!(rmw["routing"]["routed"].as_u64().unwrap() >= 100, "{rmw}");
    assert_eq!(rmw["routing"]["fallback"], 0, "{rmw}");
    assert_eq!(
        rmw["routing"]["client_reads"].as_u64(),
        Some(rmw_count("read") + rmw_count("rmw")),
        "{rmw}"
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(report["settings"]["routing"], "server", "{report}");
    assert!(report["settings"]["read_coordinator"].is_null(), "{report}");
    assert_eq!(report["routing"]["routed"], 0, "{report}");
    assert_eq!(report["routing"]["fallback"], 700, "load and run: {report}");

    let load = &report["load"];
    assert_eq!(load["operations"]["insert"]["count"], 200, "{load}");
    assert_eq!(load["errors"], 0, "{load}");

    let run = &report["run"];
    let count = |op: &str| run["operations"][op]["count"].as_u64().unwrap_or(0);
    assert_eq!(count("read") + count("update"), 500, "{run}");
    assert!(count("read") > 0 && count("update") > 0, "{run}");
    assert_eq!(run["errors"], 0, "{run}");
    assert_eq!(
        run["reads_not_found"], 0,
        "every read key was loaded: {run}"
    );
    for op in ["read", "update"] {
        let latency = &run["operations"][op]["latency_us"];
        let field = |name: &str| latency[name].as_u64().expect(name);
        assert!(field("p50") > 0, "{latency}");
        assert!(field("p50") <= field("p90"), "{latency}");
        assert!(field("p90") <= field("p99"), "{latency}");
        assert!(field("p99") <= field("p999"), "{latency}");
        assert!(field("p999") <= field("max"), "{latency}");
    }
    assert!(run["operations"]["read"]["throughput"].as_f64().unwrap() > 0.0);
    // Dynamo §6.3's figure: reads that found a value and saw one version.
    let one = run["reads_with_one_version"].as_u64().expect("a count");
    let several = run["reads_with_siblings"].as_u64().expect("a count");
    let pct = run["one_version_pct"].as_f64().expect("a percentage");
    assert!(one > 0, "{run}");
    #[allow(clippy::cast_precision_loss)]
    let expected = 100.0 * one as f64 / (one + several) as f64;
    assert!((pct - expected).abs() < 1e-9, "{run}");
}

/// After `--skip-load` the bench knows no key's context, so an update reads the key first
/// instead of writing blind: one task updating loaded records never makes a sibling (a
/// blind write would be concurrent with the stored version and kept beside it, §4.4).
#[test]
fn bench_updates_after_skip_load_replace_the_loaded_versions() {
    let (dev, doc) = start_dev_cluster();
    let client = doc["nodes"][0]["client"].as_str().unwrap().to_owned();
    let bench = |extra: &[&str]| {
        let mut args = vec![
            "--endpoint",
            &client,
            "bench",
            "--records",
            "100",
            "--concurrency",
            "1",
            "--value-size",
            "10",
            "--json",
        ];
        args.extend_from_slice(extra);
        run(&args)
    };
    let load = bench(&["--operations", "1", "--workload", "c"]);
    let updates = bench(&["--skip-load", "--operations", "400", "--workload", "a"]);
    stop_dev_cluster(dev);
    assert_eq!(load.status.code(), Some(0), "{load:?}");
    assert_eq!(updates.status.code(), Some(0), "{updates:?}");
    let report: serde_json::Value =
        serde_json::from_slice(&updates.stdout).expect("one JSON document");
    let run = &report["run"];
    let count = |op: &str| run["operations"][op]["count"].as_u64().unwrap_or(0);
    assert!(count("update") > 100 && count("read") > 100, "{run}");
    assert_eq!(run["errors"], 0, "{run}");
    assert_eq!(run["reads_not_found"], 0, "{run}");
    assert_eq!(
        run["reads_with_siblings"], 0,
        "an update after --skip-load wrote blind: {run}"
    );
}

#[test]
fn bench_with_nothing_listening_exits_3() {
    let out = run(&[
        "bench",
        "--endpoint",
        "http://127.0.0.1:1",
        "--timeout",
        "2s",
        "--operations",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(text(&out.stderr).contains("cannot reach http://127.0.0.1:1"));
}
