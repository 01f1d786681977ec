#!/usr/bin/env python3
"""Client-driven against server-driven routing on one `dynamoctl dev` cluster, with the
CPU time each operation cost.

Wall-clock throughput on a small shared machine moves with whatever else runs; the CPU
the cluster and the load generator spend per operation does not (much). So besides
`dynamoctl bench`'s ops/s and latencies this prints, for every run, the CPU time (user +
system, from /proc/PID/stat of the node processes and the rusage of the bench process)
divided by the operations the run completed.

    bench/routing_cpu.py --nodes 5 --workloads a,c --rounds 2 --duration 15
    bench/routing_cpu.py --nodes 3 --bin-dir /tmp/other-build/release

One cluster per invocation: it loads the records once (server routing), then alternates
the routings on the same records (`--skip-load`) for each workload, `--rounds` times.
Prints one Markdown table row per run and the load average before and after.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """utime + stime of a process, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # Fields after the command name: state is index 0, utime 11, stime 12.
    return (int(fields[11]) + int(fields[12])) / TICKS


def children(pid):
    """The direct children of a process."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        if ppid == pid:
            found.append(int(entry))
    return found


def start_cluster(bin_dir, nodes):
    """Starts `dynamoctl dev`; returns the process, the client URLs and the node PIDs."""
    dev = subprocess.Popen(
        [f"{bin_dir}/dynamoctl", "--json", "dev", "--nodes", str(nodes), "--base-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    text = ""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = dev.stdout.readline()
        if not line:
            sys.exit("dynamoctl dev ended before announcing the cluster")
        text += line
        try:
            doc = json.loads(text)
            break
        except json.JSONDecodeError:
            continue
    else:
        sys.exit("dynamoctl dev did not announce the cluster within 120 s")
    pids = children(dev.pid)
    if len(pids) != nodes:
        sys.exit(f"expected {nodes} node processes under dynamoctl dev, found {pids}")
    return dev, [n["client"] for n in doc["nodes"]], pids


def bench(bin_dir, endpoint, args, extra):
    """Runs `dynamoctl bench --json`; returns its report and the CPU seconds it used."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    command = [f"{bin_dir}/dynamoctl", "--endpoint", endpoint, "--json", "bench",
               "--records", str(args.records), "--concurrency", str(args.concurrency),
               "--value-size", str(args.value_size)] + extra
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed: {result.stderr}")
    used = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return json.loads(result.stdout), used


def latency(report, op, quantile):
    entry = report["run"]["operations"].get(op)
    if not entry or not entry["latency_us"]:
        return ""
    return f"{entry['latency_us'][quantile]:,}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    here = os.path.dirname(os.path.abspath(__file__))
    parser.add_argument("--bin-dir", default=os.path.join(here, "..", "target", "release"))
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--workloads", default="a,c")
    parser.add_argument("--routings", default="server,client",
                        help="comma-separated: server, client (client-coordinated reads), "
                             "client-replica (client routing, replica-coordinated reads)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=int, default=15, help="seconds per run")
    parser.add_argument("--records", type=int, default=10000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--value-size", type=int, default=1024)
    args = parser.parse_args()
    bin_dir = os.path.abspath(args.bin_dir)

    print(f"load average at start: {os.getloadavg()}", file=sys.stderr)
    dev, endpoints, pids = start_cluster(bin_dir, args.nodes)
    try:
        # The load phase, once: server routing, one run-phase operation.
        bench(bin_dir, endpoints[0], args, ["--workload", "c", "--operations", "1"])
        print(f"| nodes | workload | routing | ops/s | read p50 µs | read p99 µs "
              f"| update p50 µs | update p99 µs | CPU µs/op (nodes + bench) "
              f"| bench CPU µs/op | routed | client reads | repairs |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for _ in range(args.rounds):
            for workload in args.workloads.split(","):
                for routing in args.routings.split(","):
                    nodes_before = sum(cpu_seconds(p) for p in pids)
                    mode, _, reads = routing.partition("-")
                    flags = ["--skip-load", "--workload", workload, "--routing", mode,
                             "--duration", f"{args.duration}s"]
                    if reads:
                        flags += ["--read-coordinator", reads]
                    report, bench_cpu = bench(bin_dir, endpoints[0], args, flags)
                    nodes_cpu = sum(cpu_seconds(p) for p in pids) - nodes_before
                    run = report["run"]
                    ops = max(1, run["count"] - run["errors"])
                    routed = report["routing"]
                    print(f"| {args.nodes} | {workload.upper()} | {routing} "
                          f"| {run['throughput']:,.0f} "
                          f"| {latency(report, 'read', 'p50')} | {latency(report, 'read', 'p99')} "
                          f"| {latency(report, 'update', 'p50')} | {latency(report, 'update', 'p99')} "
                          f"| {1e6 * (nodes_cpu + bench_cpu) / ops:,.0f} "
                          f"| {1e6 * bench_cpu / ops:,.0f} "
                          f"| {routed['routed']:,} | {routed.get('client_reads', 0):,} "
                          f"| {routed.get('read_repairs', 0):,} |", flush=True)
                    if run["errors"]:
                        print(f"  ({run['errors']} errors: "
                              f"{ {k: v['errors'] for k, v in run['operations'].items()} })",
                              flush=True)
    finally:
        dev.terminate()
        dev.wait(timeout=60)
    print(f"load average at end: {os.getloadavg()}", file=sys.stderr)


if __name__ == "__main__":
    main()
