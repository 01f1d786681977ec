#!/usr/bin/env python3
"""The cost of growth (issue #17): a large load, the disk it takes after overwrites, a
fourth node joining, and 1 MiB values. Each figure comes with the command that made it.

Phases, in order (``--phases`` picks some):

* ``load``: three ``dynamo-node`` processes (release build, sled) on loopback; ``dynamoctl
  bench`` inserts ``--records`` values of ``--value-size`` bytes. Reports the insert rate
  and latency, then every node's live bytes and bytes on disk (``dynamoctl status``: the
  data directory's allocated blocks against the keys and values it holds).
* ``overwrite``: rewrites the records ``--overwrites`` times over (``dynamoctl bench
  --workload w``: updates only, each carrying the key's context, so versions replace each
  other instead of piling up as siblings), in four steps, with the space after each:
  sled's space amplification as the store ages.
* ``join``: a fourth node joins the loaded cluster (``dynamoctl admin join``) while a
  paced foreground workload runs. Reports the time until the new node is a member (it
  becomes one only after every range it takes over is transferred and acknowledged), the
  MB/s it received, and the foreground p99 in 10 s windows before and during the move
  (the last window may end after it).
* ``large``: a fresh three-node cluster with N=3 R=2 W=2 and values of ``--large-value-size``
  (1 MiB, the paper's upper size): put and get throughput and p99 (workloads W and C).

Durability is ``--durability`` (sync: every acknowledged write fdatasynced, group commit).
``--replication-factor`` defaults to 1 for the first three phases: 10 million 1 KiB
records at N=3 would need 30 GB of live data, beyond this machine's free disk once sled's
amplification and the join's copy are added; at N=1 the three nodes hold 3.3 million
records each, what they hold in a 3.3-million-record cluster at N=3, and the move is the
same per byte. Say so when quoting the figures.

    cargo build --release
    python3 bench/growth.py --json /tmp/growth.json                 # the full run
    python3 bench/growth.py --records 200000 --overwrites 1 --phases load,overwrite,join

Everything runs under ``--base-dir`` (default: a temporary directory, removed at the end
unless ``--keep``). All processes are stopped at exit.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import compare  # noqa: E402  (free_port, spawn, stop_children, http_status)

MIB = 1 << 20


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def wait_for(what, check, timeout):
    """Polls `check` every 0.5 s until it returns a true value, which is returned."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except (OSError, subprocess.CalledProcessError, ValueError) as error:
            last = error
        time.sleep(0.5)
    sys.exit(f"growth.py: timed out after {timeout:.0f}s waiting for {what} (last error: {last})")


class Cluster:
    """dynamo-node processes on loopback, joined through the first one."""

    def __init__(self, bin_dir, base_dir, n, r, w, durability):
        self.bin_dir = bin_dir
        self.base_dir = base_dir
        self.quorum = (n, r, w)
        self.durability = durability
        self.nodes = []
        os.makedirs(base_dir, exist_ok=True)

    def ctl(self, node, *args, check=True):
        """Runs dynamoctl against `node`; returns its stdout."""
        command = [
            os.path.join(self.bin_dir, "dynamoctl"),
            "--endpoint", f"http://127.0.0.1:{node['client']}",
            "--admin-endpoint", f"http://127.0.0.1:{node['internode']}",
            "--timeout", "30s",
            *args,
        ]
        done = subprocess.run(command, check=check, capture_output=True, text=True)
        return done.stdout

    def start_node(self):
        k = len(self.nodes) + 1
        node = {
            "id": f"n{k}",
            "client": compare.free_port(),
            "internode": compare.free_port(),
            "http": compare.free_port(),
            "data": os.path.join(self.base_dir, f"n{k}"),
        }
        n, r, w = self.quorum
        args = [
            os.path.join(self.bin_dir, "dynamo-node"),
            "--node-id", node["id"],
            "--listen", f"127.0.0.1:{node['client']}",
            "--internode-listen", f"127.0.0.1:{node['internode']}",
            "--http-listen", f"127.0.0.1:{node['http']}",
            "--data-dir", node["data"],
            "--replication-factor", str(n),
            "--read-quorum", str(r),
            "--write-quorum", str(w),
            "--durability", self.durability,
            "--log", "warn",
        ]
        if self.nodes:
            args += ["--seeds", f"127.0.0.1:{self.nodes[0]['internode']}"]
        node["pid"] = compare.spawn(args, os.path.join(self.base_dir, f"{node['id']}.log")).pid
        self.nodes.append(node)
        wait_for(f"{node['id']} /healthz",
                 lambda: compare.http_status(f"http://127.0.0.1:{node['http']}/healthz")[0] == 200,
                 60)
        return node

    def join(self, node):
        """Membership is explicit (Dynamo §4.8.1): the first node announces `node`."""
        self.ctl(self.nodes[0], "admin", "join", node["id"], f"127.0.0.1:{node['internode']}")

    def status(self, node):
        return json.loads(self.ctl(node, "--json", "status"))

    def start(self, count):
        for _ in range(count):
            self.start_node()
        for node in self.nodes:
            self.join(node)
        for node in self.nodes:
            wait_for(f"{node['id']} member",
                     lambda n=node: self.status(n)["state"] == "member", 120)
            wait_for(f"{node['id']} /readyz",
                     lambda n=node: compare.http_status(
                         f"http://127.0.0.1:{n['http']}/readyz")[0] == 200, 120)
        return self

    def endpoints(self, nodes=None):
        return ",".join(f"http://127.0.0.1:{n['client']}" for n in (nodes or self.nodes))

    def bench(self, *args, nodes=None):
        """Runs `dynamoctl bench --json` over the nodes; returns its report."""
        command = [
            os.path.join(self.bin_dir, "dynamoctl"), "--timeout", "30s", "bench",
            "--endpoints", self.endpoints(nodes), "--json", *args,
        ]
        log("$ " + " ".join(command))
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"growth.py: bench failed ({done.returncode}): {done.stderr[-2000:]}")
        return json.loads(done.stdout)

    def space(self):
        """Every node's storage figures from `dynamoctl status`, and their sums."""
        per_node = {}
        for node in self.nodes:
            storage = self.status(node)["storage"]
            per_node[node["id"]] = {
                "live_bytes": storage["live_bytes"],
                "disk_bytes": storage["disk_bytes"],
            }
        live = sum(s["live_bytes"] for s in per_node.values())
        disk = sum(s["disk_bytes"] for s in per_node.values())
        return {
            "nodes": per_node,
            "live_bytes": live,
            "disk_bytes": disk,
            "amplification": disk / live if live else None,
        }


def phase_summary(report, phase, op):
    """ops/s and latency percentiles (ms) of one operation of a bench phase."""
    section = report[phase]
    entry = section["operations"].get(op)
    if not entry:
        return None
    latency = entry["latency_us"] or {}
    return {
        "count": entry["count"],
        "ok": entry["ok"],
        "ops_per_s": entry["throughput"],
        "elapsed_s": section["elapsed_s"],
        "p50_ms": latency.get("p50", 0) / 1000,
        "p99_ms": latency.get("p99", 0) / 1000,
        "p999_ms": latency.get("p999", 0) / 1000,
        "errors": section["errors"],
    }


def describe_space(label, space):
    ratio = space["amplification"]
    log(f"{label}: {space['live_bytes'] / MIB:,.0f} MiB live, "
        f"{space['disk_bytes'] / MIB:,.0f} MiB on disk"
        + (f" ({ratio:.2f}x)" if ratio else ""))


def run_load(cluster, args, results):
    report = cluster.bench(
        "--records", str(args.records), "--value-size", str(args.value_size),
        "--concurrency", str(args.concurrency), "--workload", "c", "--operations", "1")
    results["load"] = phase_summary(report, "load", "insert")
    log(f"load: {results['load']}")
    results["space_after_load"] = cluster.space()
    describe_space("after the load", results["space_after_load"])


def run_overwrite(cluster, args, results):
    steps = []
    per_step = max(1, int(args.records * args.overwrites / 4))
    for step in range(1, 5):
        report = cluster.bench(
            "--records", str(args.records), "--value-size", str(args.value_size),
            "--concurrency", str(args.concurrency), "--workload", "w", "--skip-load",
            "--operations", str(per_step), "--seed", str(100 + step))
        summary = phase_summary(report, "run", "update")
        space = cluster.space()
        done = per_step * step / args.records
        describe_space(f"after {done:.2f} overwrites per record", space)
        steps.append({"overwrites_per_record": done, "update": summary, "space": space})
    results["overwrite"] = steps


def paced_window(cluster, args, seconds, seed, nodes):
    """One paced foreground window of workload A on the loaded records."""
    report = cluster.bench(
        "--records", str(args.records), "--value-size", str(args.value_size),
        "--concurrency", "16", "--workload", "a", "--skip-load",
        "--target-rate", str(args.foreground_rate), "--duration", f"{seconds}s",
        "--seed", str(seed), nodes=nodes)
    return {op: phase_summary(report, "run", op) for op in ("read", "update")}


def transfer_bytes_sent(cluster):
    """Sum of the nodes' dynamo_transfer_bytes_sent counters."""
    total = 0
    for node in cluster.nodes:
        status, body = compare.http_status(f"http://127.0.0.1:{node['http']}/metrics")
        if status != 200:
            continue
        for line in body.decode().splitlines():
            if line.startswith("dynamo_transfer_bytes_sent"):
                total += float(line.split()[-1])
    return total


def run_join(cluster, args, results):
    old = list(cluster.nodes)
    before = [paced_window(cluster, args, 10, 200 + i, old) for i in range(3)]
    log(f"foreground before the join: {before}")
    sent_before = transfer_bytes_sent(cluster)
    newcomer = cluster.start_node()
    during = []
    moving = threading.Event()
    moving.set()

    def foreground():
        """Paced windows against the old nodes until the move is over."""
        seed = 300
        while moving.is_set():
            window = paced_window(cluster, args, 10, seed, old)
            window["ended_at_s"] = time.monotonic() - started
            during.append(window)
            log(f"during the join: {window}")
            seed += 1

    started = time.monotonic()
    cluster.join(newcomer)
    worker = threading.Thread(target=foreground, daemon=True)
    worker.start()
    # Polled every half second: the time to member is exact to that, not to a window.
    status = wait_for(f"{newcomer['id']} to be a member",
                      lambda: (lambda st: st if st["state"] == "member" and not st["transfer"]
                               else None)(cluster.status(newcomer)),
                      args.join_timeout)
    member_after = time.monotonic() - started
    moving.clear()
    worker.join()
    received = status["storage"]["live_bytes"]
    results["join"] = {
        "seconds_to_member": member_after,
        "newcomer_live_bytes": received,
        "mib_per_s": received / MIB / member_after,
        "transfer_bytes_sent": transfer_bytes_sent(cluster) - sent_before,
        "foreground_before": before,
        "foreground_during": during,
        "space_after": cluster.space(),
    }
    log(f"join: {newcomer['id']} member after {member_after:.1f}s, "
        f"{received / MIB:,.0f} MiB received, {received / MIB / member_after:.1f} MiB/s")


def run_large(args, base_dir, results):
    cluster = Cluster(args.bin_dir, base_dir, 3, 2, 2, args.durability).start(3)
    records = args.large_records
    # The load phase inserts the records (1 MiB inserts), the run phase rewrites them
    # with their contexts (1 MiB updates); then a read-only run.
    report = cluster.bench(
        "--records", str(records), "--value-size", str(args.large_value_size),
        "--concurrency", str(args.large_concurrency), "--workload", "w",
        "--duration", f"{args.seconds}s")
    inserts = phase_summary(report, "load", "insert")
    writes = phase_summary(report, "run", "update")
    report = cluster.bench(
        "--records", str(records), "--value-size", str(args.large_value_size),
        "--concurrency", str(args.large_concurrency), "--workload", "c", "--skip-load",
        "--duration", f"{args.seconds}s")
    reads = phase_summary(report, "run", "read")
    results["large"] = {
        "value_bytes": args.large_value_size,
        "records": records,
        "insert": inserts,
        "put": writes,
        "get": reads,
        "reads_with_siblings": report["run"]["reads_with_siblings"],
        "reads_not_found": report["run"]["reads_not_found"],
        "space": cluster.space(),
    }
    log(f"1 MiB values: put {writes}, get {reads}")


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin-dir", default=os.path.join(ROOT, "target", "release"))
    parser.add_argument("--base-dir", help="where the nodes keep their data [a temporary directory]")
    parser.add_argument("--keep", action="store_true", help="keep --base-dir at the end")
    parser.add_argument("--phases", default="load,overwrite,join,large")
    parser.add_argument("--records", type=int, default=10_000_000)
    parser.add_argument("--value-size", type=int, default=1024)
    parser.add_argument("--replication-factor", type=int, default=1)
    parser.add_argument("--durability", choices=["sync", "buffered"], default="sync")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--overwrites", type=float, default=1.0,
                        help="updates per record in the overwrite phase, on average")
    parser.add_argument("--foreground-rate", type=float, default=500,
                        help="ops/s of the paced foreground workload around the join")
    parser.add_argument("--join-timeout", type=float, default=3600)
    parser.add_argument("--large-value-size", type=int, default=MIB)
    parser.add_argument("--large-records", type=int, default=300)
    parser.add_argument("--large-concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=30, help="length of each large-value run")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    phases = set(args.phases.split(","))
    unknown = phases - {"load", "overwrite", "join", "large"}
    if unknown:
        parser.error(f"unknown phases: {sorted(unknown)}")
    if phases & {"overwrite", "join"} and "load" not in phases:
        parser.error("overwrite and join run on the loaded cluster: include load")
    for binary in ("dynamo-node", "dynamoctl"):
        if not os.access(os.path.join(args.bin_dir, binary), os.X_OK):
            sys.exit(f"growth.py: {args.bin_dir}/{binary} missing: run `cargo build --release`")

    base_dir = args.base_dir or tempfile.mkdtemp(prefix="dynamo-growth-")
    os.makedirs(base_dir, exist_ok=True)
    rf = args.replication_factor
    results = {
        "settings": {k: v for k, v in vars(args).items() if k not in ("json",)},
        "command": " ".join([sys.executable, *sys.argv]),
    }
    try:
        if "load" in phases:
            quorum = min(2, rf)
            cluster = Cluster(args.bin_dir, os.path.join(base_dir, "growth"), rf, quorum,
                              quorum, args.durability).start(3)
            run_load(cluster, args, results)
            if "overwrite" in phases:
                run_overwrite(cluster, args, results)
            if "join" in phases:
                run_join(cluster, args, results)
            compare.stop_children()
            compare.CHILDREN.clear()
            if not args.keep:
                shutil.rmtree(os.path.join(base_dir, "growth"), ignore_errors=True)
        if "large" in phases:
            run_large(args, os.path.join(base_dir, "large"), results)
    finally:
        compare.stop_children()
        if not args.keep and not args.base_dir:
            shutil.rmtree(base_dir, ignore_errors=True)
    text = json.dumps(results, indent=2)
    if args.json:
        with open(args.json, "w") as out:
            out.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
