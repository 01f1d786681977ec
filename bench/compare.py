#!/usr/bin/env python3
"""Dynamo vs etcd vs Redis, side by side, in one run, with one load driver.

Starts on loopback:
  * a 3-node Dynamo cluster (release `dynamo-node`, sled, N=3 R=2 W=2, HTTP API on),
  * a 3-member etcd cluster (Debian's `etcd-server`; its JSON gateway on the client port),
  * one Redis (`redis-server`), the ceiling,
then preloads the same keys into Dynamo and etcd and drives both with the same wrk Lua
scripts (bench/wrk/): puts of 1 KiB values to fresh keys, and gets of random preloaded
keys (etcd's gets are linearizable, its default). Redis gets `redis-benchmark` with the
same value size and client count. Prints a table and the ratios the project targets, and
writes the figures as JSON when `--json FILE` is given.

Needs: a release build (`cargo build --release`), and `apt-get install etcd-server
redis-server wrk`. Run from the repository root:

    python3 bench/compare.py                  # sync durability, 15 s per phase
    python3 bench/compare.py --durability buffered --seconds 30

Every process it starts is stopped at exit; data lives in a temporary directory that is
removed at exit.
"""

import argparse
import atexit
import base64
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CHILDREN = []
DYNAMO_HTTP = []  # the Dynamo nodes' HTTP base URLs, for --keep-logs metric snapshots


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(args, log_path):
    log = open(log_path, "wb")
    child = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    CHILDREN.append(child)
    return child


def stop_children():
    for child in CHILDREN:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    for child in CHILDREN:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)


def wait_until(what, check, timeout=30.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError as error:  # connection refused while starting
            last = error
        time.sleep(0.1)
    sys.exit(f"compare.py: timed out after {timeout:.0f}s waiting for {what} (last error: {last})")


def http_status(url, method="GET", body=None, headers=None):
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


# ---- the systems under test ----------------------------------------------------------


def cpu_seconds(pids):
    """User plus system CPU time, in seconds, of the processes `pids` so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as stat:
            # The command name (field 2) may hold spaces: split after its closing paren.
            fields = stat.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / ticks


def start_dynamo(tmp, durability, bin_dir, log_filter="warn"):
    binary = os.path.join(bin_dir, "dynamo-node")
    ctl = os.path.join(bin_dir, "dynamoctl")
    for path in (binary, ctl):
        if not os.access(path, os.X_OK):
            sys.exit(f"compare.py: {path} missing: run `cargo build --release` first")
    nodes = []
    for k in range(1, 4):
        node = {
            "id": f"n{k}",
            "client": free_port(),
            "internode": free_port(),
            "http": free_port(),
        }
        args = [
            binary,
            "--node-id", node["id"],
            "--listen", f"127.0.0.1:{node['client']}",
            "--internode-listen", f"127.0.0.1:{node['internode']}",
            "--http-listen", f"127.0.0.1:{node['http']}",
            "--data-dir", os.path.join(tmp, "dynamo", node["id"]),
            "--replication-factor", "3",
            "--read-quorum", "2",
            "--write-quorum", "2",
            "--durability", durability,
            "--log", log_filter,
        ]
        if nodes:
            args += ["--seeds", f"127.0.0.1:{nodes[0]['internode']}"]
        node["pid"] = spawn(args, os.path.join(tmp, f"dynamo-{node['id']}.log")).pid
        nodes.append(node)
    for node in nodes:
        wait_until(f"dynamo {node['id']} /healthz",
                   lambda n=node: http_status(f"http://127.0.0.1:{n['http']}/healthz")[0] == 200)
    # Membership is explicit (Dynamo §4.8.1): join every node through node 1.
    for node in nodes:
        subprocess.run(
            [ctl, "--endpoint", f"http://127.0.0.1:{nodes[0]['client']}",
             "--admin-endpoint", f"http://127.0.0.1:{nodes[0]['internode']}",
             "admin", "join", node["id"], f"127.0.0.1:{node['internode']}"],
            check=True, stdout=subprocess.DEVNULL)
    for node in nodes:
        wait_until(f"dynamo {node['id']} /readyz",
                   lambda n=node: http_status(f"http://127.0.0.1:{n['http']}/readyz")[0] == 200)
    url = f"http://127.0.0.1:{nodes[0]['http']}"
    DYNAMO_HTTP[:] = [f"http://127.0.0.1:{n['http']}" for n in nodes]
    # Every node must see all three before W=2 puts can land on the right replicas.
    wait_until("a W=2 put on dynamo",
               lambda: http_status(f"{url}/v1/kv/compare-probe", "PUT", b"x")[0] == 204)
    return url, [node["pid"] for node in nodes]


def start_etcd(tmp):
    members = [{"name": f"m{k}", "client": free_port(), "peer": free_port()} for k in range(1, 4)]
    initial = ",".join(f"{m['name']}=http://127.0.0.1:{m['peer']}" for m in members)
    pids = []
    for m in members:
        pids.append(spawn([
            "etcd",
            "--name", m["name"],
            "--data-dir", os.path.join(tmp, "etcd", m["name"]),
            "--listen-client-urls", f"http://127.0.0.1:{m['client']}",
            "--advertise-client-urls", f"http://127.0.0.1:{m['client']}",
            "--listen-peer-urls", f"http://127.0.0.1:{m['peer']}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{m['peer']}",
            "--initial-cluster", initial,
            "--initial-cluster-state", "new",
            "--initial-cluster-token", "compare",
            "--log-level", "warn",
        ], os.path.join(tmp, f"etcd-{m['name']}.log")).pid)
    url = f"http://127.0.0.1:{members[0]['client']}"
    wait_until("etcd /health", lambda: b'"true"' in http_status(f"{url}/health")[1])
    return url, pids


def start_redis(tmp):
    port = free_port()
    spawn(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
           "--appendonly", "no", "--dir", tmp], os.path.join(tmp, "redis.log"))
    wait_until("redis", lambda: socket.create_connection(("127.0.0.1", port), 1).close() is None)
    return port


# ---- load ------------------------------------------------------------------------------


def preload(url, keys, value, kind, threads=8):
    """Writes bench-1..bench-K once, with keep-alive connections from a few threads."""
    host, port = url.removeprefix("http://").split(":")
    failures = []

    def worker(first):
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        for i in range(first, keys + 1, threads):
            key = f"bench-{i}"
            if kind == "dynamo":
                connection.request("PUT", f"/v1/kv/{key}", body=value)
            else:
                body = json.dumps({
                    "key": base64.b64encode(key.encode()).decode(),
                    "value": base64.b64encode(value).decode(),
                })
                connection.request("POST", "/v3/kv/put", body=body,
                                   headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            if not 200 <= response.status < 300:
                failures.append((key, response.status))
                return

    pool = [threading.Thread(target=worker, args=(t + 1,)) for t in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    if failures:
        sys.exit(f"compare.py: preloading {kind} failed: {failures[:3]}")


WRK_LATENCY = re.compile(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$", re.M)
WRK_RATE = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
WRK_TOTAL = re.compile(r"^\s*(\d+) requests in", re.M)
WRK_ERRORS = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)|Socket errors:.*", re.M)
UNIT = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def run_wrk(url, script, args, env, pids):
    """One wrk phase; with the server's CPU time per request (`pids`' utime + stime over
    the phase, divided by the requests wrk completed): a figure that, unlike ops/s,
    hardly moves when other work shares the machine."""
    command = ["wrk", "--latency", "-t", str(args.threads), "-c", str(args.clients),
               "-d", f"{args.seconds}s", "-s", os.path.join(HERE, "wrk", script), url]
    cpu_before = cpu_seconds(pids)
    output = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    cpu = cpu_seconds(pids) - cpu_before
    rate = WRK_RATE.search(output)
    total = WRK_TOTAL.search(output)
    if not rate or not total:
        sys.exit(f"compare.py: could not parse wrk output:\n{output}")
    latency = {f"p{p}": float(v) * UNIT[u] for p, v, u in WRK_LATENCY.findall(output)}
    errors = [m.group(0) for m in WRK_ERRORS.finditer(output)]
    if errors:
        print(f"warning: {script}: {'; '.join(errors)}", file=sys.stderr)
    requests = int(total.group(1))
    return {"ops_per_sec": float(rate.group(1)), "latency_ms": latency, "errors": errors,
            "requests": requests, "cpu_ms_per_op": 1000 * cpu / max(1, requests)}


def snapshot_metrics(path):
    """The Dynamo nodes' anti-entropy and background-budget series, one block per node."""
    with open(path, "w") as out:
        for base in DYNAMO_HTTP:
            status, body = http_status(f"{base}/metrics")
            out.write(f"# {base} at {time.time():.1f} (HTTP {status})\n")
            for line in body.decode(errors="replace").splitlines():
                if line.startswith(("dynamo_antientropy", "dynamo_background")):
                    out.write(line + "\n")


def run_redis_benchmark(port, args):
    command = ["redis-benchmark", "-p", str(port), "-t", "set,get", "-d", str(args.value_bytes),
               "-c", str(args.clients), "-r", str(args.keys), "-n", str(args.redis_requests),
               "--threads", str(args.threads), "--csv"]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    lines = [line.replace('"', "").split(",") for line in output.strip().splitlines()]
    header, rows = lines[0], lines[1:]
    results = {}
    for row in rows:
        fields = dict(zip(header, row))
        results[fields["test"].lower()] = {
            "ops_per_sec": float(fields["rps"]),
            "latency_ms": {"p50": float(fields["p50_latency_ms"]),
                           "p99": float(fields["p99_latency_ms"])},
        }
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--durability", choices=["sync", "buffered"], default="sync",
                        help="Dynamo's durability; etcd always fsyncs its log [default: sync]")
    parser.add_argument("--seconds", type=int, default=15, help="wrk duration per phase")
    parser.add_argument("--clients", type=int, default=64, help="concurrent connections")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--keys", type=int, default=10000, help="preloaded keys")
    parser.add_argument("--value-bytes", type=int, default=1024)
    parser.add_argument("--redis-requests", type=int, default=200000)
    parser.add_argument("--json", metavar="FILE", help="also write the figures here")
    parser.add_argument("--bin-dir", default=os.path.join(ROOT, "target", "release"),
                        help="where dynamo-node and dynamoctl are (to compare two builds) "
                             "[default: target/release]")
    parser.add_argument("--dynamo-log", default="warn", metavar="FILTER",
                        help="the Dynamo nodes' log filter, e.g. "
                             "warn,dynamo_node::antientropy=debug [default: warn]")
    parser.add_argument("--keep-logs", metavar="DIR",
                        help="keep the servers' logs here, with the Dynamo nodes' "
                             "anti-entropy and background metrics after each phase")
    parser.add_argument("--only-dynamo", action="store_true",
                        help="skip etcd and Redis (for profiling runs; prints no ratios)")
    args = parser.parse_args()
    tools = ("wrk",) if args.only_dynamo else ("wrk", "etcd", "redis-server", "redis-benchmark")
    for tool in tools:
        if shutil.which(tool) is None:
            sys.exit(f"compare.py: `{tool}` not found: apt-get install etcd-server redis-server wrk")

    tmp = tempfile.mkdtemp(prefix="dynamo-compare-")
    atexit.register(lambda: shutil.rmtree(tmp, ignore_errors=True))
    if args.keep_logs:
        os.makedirs(args.keep_logs, exist_ok=True)
        # Runs after stop_children (atexit is last in, first out): the logs are complete.
        atexit.register(lambda: [shutil.copy(os.path.join(tmp, name), args.keep_logs)
                                 for name in os.listdir(tmp) if name.endswith(".log")])
    atexit.register(stop_children)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))

    value = b"v" * args.value_bytes
    systems = [("dynamo", *start_dynamo(tmp, args.durability, args.bin_dir, args.dynamo_log))]
    if not args.only_dynamo:
        systems.append(("etcd", *start_etcd(tmp)))
        redis_port = start_redis(tmp)
    print(f"preloading {args.keys} keys of {args.value_bytes} bytes ...", file=sys.stderr)
    for system, url, _ in systems:
        preload(url, args.keys, value, system)

    env = dict(os.environ, BENCH_WRK_DIR=os.path.join(HERE, "wrk"), BENCH_KEYS=str(args.keys),
               BENCH_VALUE_BYTES=str(args.value_bytes))
    results = {}
    for system, url, pids in systems:
        for op in ("put", "get"):
            print(f"wrk: {system} {op} for {args.seconds}s ...", file=sys.stderr)
            results[f"{system}_{op}"] = run_wrk(url, f"{system}_{op}.lua", args, env, pids)
            if system == "dynamo" and args.keep_logs:
                snapshot_metrics(os.path.join(args.keep_logs, f"metrics-after-{op}.txt"))
    if not args.only_dynamo:
        print("redis-benchmark ...", file=sys.stderr)
        redis = run_redis_benchmark(redis_port, args)
        results["redis_put"], results["redis_get"] = redis["set"], redis["get"]

    print(f"\n{args.clients} clients, {args.value_bytes}-byte values, {args.keys} keys; "
          f"Dynamo N=3 R=2 W=2 durability={args.durability}; etcd 3 members; Redis 1\n")
    print(f"load average (1 min) at the end: {os.getloadavg()[0]:.1f}; CPU ms/op is the "
          "servers' user + system CPU time per request over the phase\n")
    print(f"| {'system / op':<14} | {'ops/s':>9} | {'p50 ms':>7} | {'p99 ms':>7} | "
          f"{'CPU ms/op':>9} |")
    print(f"|{'-' * 16}|{'-' * 11}|{'-' * 9}|{'-' * 9}|{'-' * 11}|")
    for name, figures in results.items():
        lat = figures["latency_ms"]
        cpu = figures.get("cpu_ms_per_op")
        print(f"| {name.replace('_', ' '):<14} | {figures['ops_per_sec']:>9.0f} | "
              f"{lat.get('p50', float('nan')):>7.2f} | {lat.get('p99', float('nan')):>7.2f} | "
              f"{'' if cpu is None else f'{cpu:.3f}':>9} |")
    if args.only_dynamo:
        if args.json:
            with open(args.json, "w") as out:
                json.dump({"settings": vars(args), "results": results}, out, indent=2)
        return
    ratios = {
        "put_throughput_vs_etcd": results["dynamo_put"]["ops_per_sec"] / results["etcd_put"]["ops_per_sec"],
        "get_throughput_vs_etcd": results["dynamo_get"]["ops_per_sec"] / results["etcd_get"]["ops_per_sec"],
        "put_p99_vs_etcd": results["dynamo_put"]["latency_ms"]["p99"] / results["etcd_put"]["latency_ms"]["p99"],
        "get_p99_vs_etcd": results["dynamo_get"]["latency_ms"]["p99"] / results["etcd_get"]["latency_ms"]["p99"],
    }
    targets = {"put_throughput_vs_etcd": (">=", 2.0), "get_throughput_vs_etcd": (">=", 1.5),
               "put_p99_vs_etcd": ("<=", 0.5), "get_p99_vs_etcd": ("<=", 0.5)}
    print()
    for name, ratio in ratios.items():
        sense, target = targets[name]
        met = ratio >= target if sense == ">=" else ratio <= target
        print(f"{name:<24} {ratio:6.2f}  (target {sense} {target}: {'met' if met else 'NOT met'})")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"settings": vars(args), "results": results, "ratios": ratios}, out, indent=2)


if __name__ == "__main__":
    main()
