#!/usr/bin/env python3
"""YCSB workloads A, B, C and F against Dynamo, Cassandra and replicated Redis, in one go.

For each system in turn (one at a time, so they never share the cores), on loopback:
  * dynamo:    3 `dynamo-node` processes, N=3 R=2 W=2, durability sync (bench/compare.py's
               start_dynamo), YCSB binding org.dynamo.ycsb.DynamoClient over HTTP;
  * cassandra: 3 Apache Cassandra 5.0 nodes (cassandra-all from Maven Central, plain JVMs
               on 127.0.0.1-3), keyspace ycsb with RF=3, QUORUM reads and writes, commit
               log `batch` (default) or `group`; binding org.dynamo.ycsb.CassandraCQLClient;
  * redis:     Debian's redis-server, a primary and two replicas, appendonly with
               appendfsync always on all three; binding org.dynamo.ycsb.RedisWaitClient
               (WAIT 1 after every write, pipelined with it),
it starts the cluster, runs YCSB's load phase (site.ycsb.Client -load), an unreported
warm-up (workload C, --warmup-seconds), then workloads A, B, C and F on the loaded records
with the same thread count, record count and duration, stops the cluster and removes its
data. Prints one table (throughput, average and p99 latency per operation, errors, CPU
per operation of the servers and of YCSB), the ratios Dynamo/Cassandra and Dynamo/Redis
and the project's targets (on A and C: >= 2x Cassandra's throughput, <= half its p99);
`--json FILE` writes the figures.

Needs Java 17 and Maven (`mvn`), a release build of this repository's binaries
(`--bin-dir`, default target/release) and redis-server (installed with apt-get when
missing and run as root). The YCSB jars and Cassandra come from Maven Central on the first
run (bench/ycsb/pom.xml, bench/ycsb/cassandra/pom.xml; ~/.m2), offline after that.

    python3 bench/ycsb.py                                  # all three, 60 s per workload
    python3 bench/ycsb.py --only dynamo --records 10000 --seconds 10

Every process it starts is stopped at exit (also on Ctrl-C and failures), and its
temporary directory removed.
"""

import argparse
import atexit
import glob
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
YCSB_DIR = os.path.join(HERE, "ycsb")
sys.path.insert(0, HERE)
import compare  # noqa: E402  (start_dynamo, spawn, stop_children, wait_until, cpu_seconds)

SYSTEMS = ("dynamo", "cassandra", "redis")
WORKLOADS = ("a", "b", "c", "f")
RUNNING = []  # YCSB and helper JVMs in flight, killed at exit


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def fail(message):
    sys.exit(f"ycsb.py: {message}")


# ---- builds -----------------------------------------------------------------------------


def newest_mtime(paths):
    newest = 0.0
    for path in paths:
        for root, _, files in os.walk(path) if os.path.isdir(path) else [("", [], [path])]:
            for name in files:
                newest = max(newest, os.path.getmtime(os.path.join(root, name)))
    return newest


def maven(directory, goals, what, timeout):
    """Runs Maven offline first (everything in ~/.m2 already), online if that fails."""
    if shutil.which("mvn") is None:
        fail("`mvn` not found: apt-get install maven")
    for offline in (True, False):
        command = ["mvn", "-B", "-q"] + (["-o"] if offline else []) + goals
        log(f"{what}: {' '.join(command)} (in {os.path.relpath(directory, ROOT)})")
        try:
            done = subprocess.run(command, cwd=directory, capture_output=True, text=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            fail(f"{what}: Maven took more than {timeout}s")
        if done.returncode == 0:
            return
        if not offline:
            fail(f"{what} failed:\n{done.stdout[-4000:]}{done.stderr[-4000:]}")
        log(f"{what}: offline build failed, fetching from Maven Central")


def build_bindings():
    jar = os.path.join(YCSB_DIR, "target", "dynamo-ycsb.jar")
    sources = [os.path.join(YCSB_DIR, "src", "main"), os.path.join(YCSB_DIR, "pom.xml")]
    lib = os.path.join(YCSB_DIR, "target", "lib")
    if not os.path.exists(jar) or not glob.glob(os.path.join(lib, "core-*.jar")) \
            or os.path.getmtime(jar) < newest_mtime(sources):
        maven(YCSB_DIR, ["package", "-DskipTests"], "YCSB bindings", timeout=900)
    return f"{jar}{os.pathsep}{os.path.join(lib, '*')}"


def fetch_cassandra():
    directory = os.path.join(YCSB_DIR, "cassandra")
    lib = os.path.join(directory, "target", "lib")
    if not glob.glob(os.path.join(lib, "cassandra-all-*.jar")):
        maven(directory, ["dependency:copy-dependencies"], "Cassandra", timeout=900)
    jars = glob.glob(os.path.join(lib, "cassandra-all-*.jar"))
    if not jars:
        fail(f"no cassandra-all jar in {lib} after Maven")
    return lib, os.path.basename(jars[0])[len("cassandra-all-"):-len(".jar")]


def pom_versions():
    """The versions bench/ycsb/pom.xml pins: YCSB core, Jedis, the DataStax driver."""
    pom = open(os.path.join(YCSB_DIR, "pom.xml")).read()
    return {name: re.search(rf"<{re.escape(name)}>([^<]+)</", pom).group(1)
            for name in ("ycsb.version", "jedis.version", "cassandra.driver.version")}


# ---- processes --------------------------------------------------------------------------


def run_java(args, log_path, timeout, what):
    """Runs a JVM to completion within `timeout` seconds; returns its output and the CPU
    seconds it used (from the kernel's accounting of reaped children)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(log_path, "w") as out:
        child = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        RUNNING.append(child)
        try:
            child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            fail(f"{what} did not finish within {timeout:.0f}s (log: {log_path})")
        finally:
            # Also on Ctrl-C or SIGTERM (SystemExit) while waiting.
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
            RUNNING.remove(child)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    with open(log_path) as out:
        output = out.read()
    if child.returncode != 0:
        fail(f"{what} exited with status {child.returncode}; last lines of {log_path}:\n"
             + "\n".join(output.splitlines()[-25:]))
    return output, cpu


def kill_running():
    for child in RUNNING:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()


def stop_system():
    compare.stop_children()
    compare.CHILDREN.clear()


def port_open(host, port):
    with socket.create_connection((host, port), timeout=1):
        return True


def start_cassandra(tmp, lib, args):
    """Three Cassandra nodes on 127.0.0.1-3 (same ports on each address), one after the
    other, each joining through the seed 127.0.0.1. Returns their pids."""
    template = open(os.path.join(YCSB_DIR, "conf", "cassandra.yaml")).read()
    jvm = [line.strip() for line in open(os.path.join(YCSB_DIR, "conf", "jvm17-server.options"))
           if line.strip() and not line.startswith("#")]
    if args.cassandra_commitlog == "group":
        extra = f"commitlog_sync_group_window: {args.cassandra_group_window_ms}ms"
    else:
        extra = ""
    jamm = glob.glob(os.path.join(lib, "jamm-*.jar"))
    pids = []
    for k in range(1, 4):
        address = f"127.0.0.{k}"
        home = os.path.join(tmp, "cassandra", f"n{k}")
        os.makedirs(home)
        config = (template.replace("@ADDRESS@", address).replace("@DIR@", home)
                  .replace("@COMMITLOG_SYNC@", args.cassandra_commitlog)
                  .replace("@COMMITLOG_EXTRA@", extra))
        with open(os.path.join(home, "cassandra.yaml"), "w") as out:
            out.write(config)
        command = [args.java] + jvm + [
            f"-Xms{args.cassandra_heap}", f"-Xmx{args.cassandra_heap}",
            *([f"-javaagent:{jamm[0]}"] if jamm else []),
            f"-Dcassandra.config=file://{home}/cassandra.yaml",
            "-Dcassandra-foreground=yes",
            f"-Dcassandra.logdir={home}",
            f"-Dcassandra.storagedir={home}",
            f"-Dcassandra.triggers_dir={home}/triggers",
            f"-Dlogback.configurationFile={os.path.join(YCSB_DIR, 'conf', 'logback.xml')}",
            # Nothing to wait for on a fresh loopback cluster: skip gossip settling.
            "-Dcassandra.skip_wait_for_gossip_to_settle=0",
            "-cp", os.path.join(lib, "*"),
            "org.apache.cassandra.service.CassandraDaemon",
        ]
        os.makedirs(os.path.join(home, "triggers"))
        log(f"cassandra: starting node {k} on {address} ...")
        pids.append(compare.spawn(command, os.path.join(home, "stdout.log")).pid)
        wait_for(f"cassandra node {k} to listen for CQL on {address}:9042",
                 lambda a=address: port_open(a, 9042), args.start_timeout,
                 os.path.join(home, "system.log"))
    return pids


def wait_for(what, check, timeout, log_path=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in compare.CHILDREN:
            if child.poll() is not None:
                hint = f"; see {log_path}" if log_path else ""
                fail(f"a server exited (status {child.returncode}) while waiting for {what}"
                     + hint + _tail(log_path))
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.25)
    fail(f"timed out after {timeout:.0f}s waiting for {what}" + _tail(log_path))


def _tail(path, lines=15):
    if not path or not os.path.exists(path):
        return ""
    with open(path, errors="replace") as f:
        return "\n" + "\n".join(f.read().splitlines()[-lines:])


def redis_cli(port, *command):
    return subprocess.run(["redis-cli", "-p", str(port), *command], capture_output=True,
                          text=True, timeout=10).stdout


def start_redis(tmp, args):
    """A primary and two replicas, each `appendonly yes`, `appendfsync always`, no RDB
    snapshots. Returns the primary's port and the three pids."""
    ports = [compare.free_port() for _ in range(3)]
    pids = []
    for k, port in enumerate(ports):
        home = os.path.join(tmp, "redis", f"r{k}")
        os.makedirs(home)
        command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                   "--dir", home, "--save", "", "--appendonly", "yes",
                   "--appendfsync", "always", "--logfile", os.path.join(home, "redis.log")]
        if k > 0:
            command += ["--replicaof", "127.0.0.1", str(ports[0])]
        pids.append(compare.spawn(command, os.path.join(home, "stdout.log")).pid)
    for port in ports:
        wait_for(f"redis on port {port}", lambda p=port: port_open("127.0.0.1", p),
                 args.start_timeout)

    def replicas_online():
        info = redis_cli(ports[0], "INFO", "replication")
        return len(re.findall(r"^slave\d+:.*state=online", info, re.M)) == 2
    wait_for("both redis replicas online", replicas_online, args.start_timeout)
    return ports[0], pids


# ---- YCSB -------------------------------------------------------------------------------


OUTPUT_LINE = re.compile(r"^\[([A-Z-]+)\], ([^,]+), ([\d.eE+-]+|NaN)\s*$", re.M)


def parse_ycsb(output):
    """YCSB's summary: {'OVERALL': {...}, 'READ': {...}, ...} of floats."""
    sections = {}
    for section, name, value in OUTPUT_LINE.findall(output):
        sections.setdefault(section, {})[name.strip()] = float(value)
    if "Throughput(ops/sec)" not in sections.get("OVERALL", {}):
        fail("no [OVERALL] Throughput in YCSB's output:\n" + output[-3000:])
    return sections


def summarize(sections, server_cpu, client_cpu):
    overall = sections["OVERALL"]
    result = {"ops_per_sec": overall["Throughput(ops/sec)"], "runtime_ms": overall["RunTime(ms)"],
              "ops": {}, "errors": 0}
    total = 0
    for name, figures in sections.items():
        # An operation that failed is timed under READ-FAILED (etc.) and counted under
        # its own name as Return=ERROR (or NOT_FOUND, ...): counted once, from the latter.
        if name in ("OVERALL", "CLEANUP") or "-" in name.replace("READ-MODIFY-WRITE", ""):
            continue
        if "Operations" not in figures:
            continue
        returns = {k: int(v) for k, v in figures.items() if k.startswith("Return=")}
        bad = sum(v for k, v in returns.items() if k != "Return=OK")
        result["errors"] += bad
        total += sum(returns.values())  # READ-MODIFY-WRITE has none: its parts count
        result["ops"][name] = {
            "count": int(figures["Operations"]),
            "avg_us": figures.get("AverageLatency(us)"),
            "p50_us": figures.get("50thPercentileLatency(us)"),
            "p95_us": figures.get("95thPercentileLatency(us)"),
            "p99_us": figures.get("99thPercentileLatency(us)"),
            "p999_us": figures.get("99.9PercentileLatency(us)"),
            "max_us": figures.get("MaxLatency(us)"),
            "not_ok": bad,
        }
    result["server_cpu_ms_per_op"] = 1000 * server_cpu / max(1, total)
    result["client_cpu_ms_per_op"] = 1000 * client_cpu / max(1, total)
    return result


def ycsb(phase, workload, db, props, args, classpath, tmp, server_pids, label, seconds=None):
    """One YCSB phase (`-load`, or `-t` for `workload`), bounded by `seconds`, else by
    --operations or --seconds."""
    common = [f"recordcount={args.records}", f"fieldcount={args.fieldcount}",
              f"fieldlength={args.fieldlength}", "hdrhistogram.percentiles=50,95,99,99.9"]
    if seconds is None and phase == "run" and not args.operations:
        seconds = args.seconds
    if phase == "run":
        if seconds:
            common += [f"operationcount={10 ** 9}", f"maxexecutiontime={seconds}"]
        else:
            common.append(f"operationcount={args.operations}")
    command = [args.java, "-Xmx1G", "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
               "-cp", classpath, "site.ycsb.Client", "-load" if phase == "load" else "-t",
               "-db", db, "-P", os.path.join(YCSB_DIR, "workloads", f"workload{workload}"),
               "-threads", str(args.threads), "-s"]
    for prop in common + props:
        command += ["-p", prop]
    what = f"YCSB {phase} {label}"
    log(f"{what} ...")
    cpu_before = compare.cpu_seconds(server_pids)
    # Bounded: the run's own limit plus a generous margin for JVM start and cleanup.
    if seconds:
        timeout = seconds + 300
    else:
        timeout = args.phase_timeout
    output, client_cpu = run_java(command, os.path.join(tmp, f"ycsb-{label}.log"), timeout, what)
    server_cpu = compare.cpu_seconds(server_pids) - cpu_before
    result = summarize(parse_ycsb(output), server_cpu, client_cpu)
    binding = re.search(r"^\[DYNAMO-BINDING\] (reads=.*)$", output, re.M)
    if binding:
        result["dynamo_binding"] = {k: int(v) for k, v in
                                    (kv.split("=") for kv in binding.group(1).split())}
    short = re.search(r"^\[REDIS-BINDING\] writes_short_of_replicas=(\d+)", output, re.M)
    if short:
        result["redis_writes_short_of_replicas"] = int(short.group(1))
    log(f"{what}: {result['ops_per_sec']:.0f} ops/s, {result['errors']} errors")
    return result


# ---- the systems ------------------------------------------------------------------------


def bench_system(system, args, classpath, tmp, cassandra_lib):
    home = os.path.join(tmp, system)
    os.makedirs(home, exist_ok=True)
    try:
        if system == "dynamo":
            log("dynamo: starting 3 nodes (N=3 R=2 W=2, durability sync) ...")
            _, pids = compare.start_dynamo(home, "sync", args.bin_dir, args.dynamo_log)
            db = "org.dynamo.ycsb.DynamoClient"
            props = ["dynamo.endpoints=" + ",".join(compare.DYNAMO_HTTP)]
        elif system == "cassandra":
            pids = start_cassandra(home, cassandra_lib, args)
            hosts = "127.0.0.1,127.0.0.2,127.0.0.3"
            log("cassandra: creating keyspace ycsb (RF=3) and table usertable ...")
            run_java([args.java, "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn", "-cp",
                      classpath, "org.dynamo.ycsb.CassandraSchema", hosts, "3", "3",
                      str(args.fieldcount), str(int(args.start_timeout))],
                     os.path.join(home, "schema.log"), args.start_timeout + 60,
                     "creating the Cassandra schema")
            db = "org.dynamo.ycsb.CassandraCQLClient"
            props = [f"hosts={hosts}", "cassandra.keyspace=ycsb",
                     "cassandra.readconsistencylevel=QUORUM",
                     "cassandra.writeconsistencylevel=QUORUM"]
        else:
            log("redis: starting a primary and two replicas (appendfsync always) ...")
            port, pids = start_redis(home, args)
            db = "org.dynamo.ycsb.RedisWaitClient"
            props = ["redis.host=127.0.0.1", f"redis.port={port}", "redis.wait.replicas=1",
                     f"redis.wait.timeout.ms={args.redis_wait_timeout_ms}"]
        results = {"load": ycsb("load", "a", db, props, args, classpath, home, pids,
                                f"{system}-load")}
        if args.warmup_seconds > 0:
            # Unreported: gives the JVM servers (Cassandra) time to compile their read
            # path, as the load phase did for writes; reads change nothing stored.
            warmup = ycsb("run", "c", db, props, args, classpath, home, pids,
                          f"{system}-warmup", seconds=args.warmup_seconds)
        for workload in args.workloads:
            results[workload] = ycsb("run", workload, db, props, args, classpath, home, pids,
                                     f"{system}-{workload}")
        if args.warmup_seconds > 0:
            results["warmup"] = warmup  # in --json only
        return results
    finally:
        log(f"{system}: stopping ...")
        stop_system()
        if args.keep_logs:
            keep = os.path.join(args.keep_logs, system)
            os.makedirs(keep, exist_ok=True)
            for path in glob.glob(os.path.join(home, "**", "*.log"), recursive=True):
                if "commitlog" in path:  # Cassandra's commit log segments end in .log too
                    continue
                name = os.path.relpath(path, home).replace(os.sep, "-")
                shutil.copy(path, os.path.join(keep, name))
        shutil.rmtree(home, ignore_errors=True)


# ---- report -----------------------------------------------------------------------------


def write_op(figures):
    for name in ("READ-MODIFY-WRITE", "UPDATE", "INSERT"):
        if name in figures["ops"]:
            return name
    return None


def fmt(value, digits=0):
    return "-" if value is None else f"{value:,.{digits}f}"


def report(results, args):
    print()
    print(f"YCSB {args.versions['ycsb.version']}: {args.records:,} records of "
          f"{args.fieldcount} x {args.fieldlength} B, {args.threads} threads, "
          + (f"{args.operations:,} operations" if args.operations else f"{args.seconds} s")
          + " per workload (zipfian). Latencies in µs; CPU ms/op = user + system time of the "
          "servers (and of the YCSB JVM) per operation.")
    if args.warmup_seconds > 0:
        print(f"Each system: load, {args.warmup_seconds} s of unreported workload C (warm-up), "
              "then the workloads below on the same records.")
    settings = {"dynamo": "Dynamo: 3 nodes, N=3 R=2 W=2, durability sync",
                "cassandra": f"Cassandra {args.cassandra_version}: 3 nodes, RF=3, QUORUM reads "
                             f"and writes, commitlog_sync {args.cassandra_commitlog}"
                             + (f" ({args.cassandra_group_window_ms} ms window)"
                                if args.cassandra_commitlog == "group" else ""),
                "redis": f"Redis {args.redis_version}: primary + 2 replicas, appendfsync always, "
                         "WAIT 1 after every write"}
    for system in results:
        print(settings[system])
    print(f"load average (1 min) at the end: {os.getloadavg()[0]:.1f}")
    print()
    header = ("| system | workload | ops/s | read avg | read p99 | write op | write avg | "
              "write p99 | errors | server CPU ms/op | YCSB CPU ms/op |")
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for system, per_workload in results.items():
        for workload, figures in per_workload.items():
            if workload == "warmup":
                continue
            read = figures["ops"].get("READ", {})
            op = write_op(figures)
            write = figures["ops"].get(op, {}) if op else {}
            print(f"| {system} | {workload.upper() if workload != 'load' else 'load'} | "
                  f"{fmt(figures['ops_per_sec'])} | {fmt(read.get('avg_us'))} | "
                  f"{fmt(read.get('p99_us'))} | {op or '-'} | {fmt(write.get('avg_us'))} | "
                  f"{fmt(write.get('p99_us'))} | {figures['errors']} | "
                  f"{fmt(figures['server_cpu_ms_per_op'], 3)} | "
                  f"{fmt(figures['client_cpu_ms_per_op'], 3)} |")
    dynamo = results.get("dynamo", {})
    for workload, figures in dynamo.items():
        binding = figures.get("dynamo_binding")
        if workload == "warmup":
            continue
        if binding and binding.get("reads"):
            print(f"dynamo {workload}: {binding['with_siblings']:,} of {binding['reads']:,} reads "
                  f"met siblings (at most {binding['max_versions']} versions), "
                  f"{binding['context_writes']:,} writes carried a context, "
                  f"{binding['blind_writes']:,} were blind, {binding['conflicts']} conflicts")
    ratios = {}
    for other in ("cassandra", "redis"):
        if not dynamo or other not in results:
            continue
        ratios[other] = {}
        print()
        print(f"Dynamo / {other.capitalize()}: throughput ratio (higher is better), "
              "p99 ratios (lower is better)")
        print("| workload | ops/s ratio | read p99 ratio | write p99 ratio |")
        print("|---|---|---|---|")
        for workload in args.workloads:
            if workload not in dynamo or workload not in results[other]:
                continue
            mine, theirs = dynamo[workload], results[other][workload]
            entry = {"throughput": mine["ops_per_sec"] / theirs["ops_per_sec"]}
            for kind, op_mine, op_theirs in (("read_p99", "READ", "READ"),
                                             ("write_p99", write_op(mine), write_op(theirs))):
                a = mine["ops"].get(op_mine, {}).get("p99_us") if op_mine else None
                b = theirs["ops"].get(op_theirs, {}).get("p99_us") if op_theirs else None
                entry[kind] = a / b if a and b else None
            ratios[other][workload] = entry
            print(f"| {workload.upper()} | {fmt(entry['throughput'], 2)} | "
                  f"{fmt(entry['read_p99'], 2)} | {fmt(entry['write_p99'], 2)} |")
    if "cassandra" in ratios:
        print()
        for workload in ("a", "c"):
            entry = ratios["cassandra"].get(workload)
            if not entry:
                continue
            p99s = [v for k, v in entry.items() if k.endswith("_p99") and v is not None]
            worst = max(p99s) if p99s else None
            met = entry["throughput"] >= 2 and worst is not None and worst <= 0.5
            print(f"target on {workload.upper()}: >= 2x Cassandra's throughput "
                  f"({entry['throughput']:.2f}x) and <= 0.5x its p99 "
                  f"(worst op {fmt(worst, 2)}x): {'met' if met else 'NOT met'}")
    return ratios


# ---- main -------------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", choices=SYSTEMS, metavar="SYSTEM",
                        help="run only this system (dynamo, cassandra, redis); repeatable "
                             "[default: all three]")
    parser.add_argument("--workloads", default="a,b,c,f",
                        help="comma-separated core workloads, run in this order on the "
                             "loaded records [default: a,b,c,f]")
    parser.add_argument("--records", type=int, default=100000,
                        help="YCSB recordcount [default: 100000]")
    parser.add_argument("--threads", type=int, default=16,
                        help="YCSB client threads, the same for every system [default: 16]")
    parser.add_argument("--seconds", type=int, default=60,
                        help="YCSB maxexecutiontime per workload [default: 60]")
    parser.add_argument("--warmup-seconds", type=int, default=60,
                        help="an unreported run of workload C between the load and the "
                             "measured workloads, for every system (JIT warm-up of the "
                             "Cassandra nodes; 0 skips it) [default: 60]")
    parser.add_argument("--operations", type=int, default=0,
                        help="YCSB operationcount per workload instead of --seconds")
    parser.add_argument("--fieldcount", type=int, default=10, help="[default: 10, YCSB's]")
    parser.add_argument("--fieldlength", type=int, default=100, help="[default: 100, YCSB's]")
    parser.add_argument("--bin-dir", default=os.path.join(ROOT, "target", "release"),
                        help="where dynamo-node and dynamoctl are [default: target/release]")
    parser.add_argument("--dynamo-log", default="warn", metavar="FILTER",
                        help="the Dynamo nodes' log filter [default: warn]")
    parser.add_argument("--cassandra-commitlog", choices=("batch", "group"), default="batch",
                        help="Cassandra's commitlog_sync: both fsync before acknowledging; "
                             "batch syncs as soon as writes wait [default: batch]")
    parser.add_argument("--cassandra-group-window-ms", type=int, default=2,
                        help="commitlog_sync_group_window with --cassandra-commitlog group "
                             "[default: 2]")
    parser.add_argument("--cassandra-heap", default="2G",
                        help="-Xms/-Xmx of each Cassandra node [default: 2G]")
    parser.add_argument("--redis-wait-timeout-ms", type=int, default=1000,
                        help="WAIT's timeout; a write WAIT did not see replicated in time "
                             "is an error [default: 1000]")
    parser.add_argument("--java", default=shutil.which("java") or "java",
                        help="the java executable (17 or later) [default: java on PATH]")
    parser.add_argument("--start-timeout", type=float, default=180,
                        help="bound on each server's start, in seconds [default: 180]")
    parser.add_argument("--phase-timeout", type=float, default=3600,
                        help="bound on a load phase or an --operations run, in seconds "
                             "[default: 3600]")
    parser.add_argument("--json", metavar="FILE", help="also write the figures here")
    parser.add_argument("--keep-logs", metavar="DIR",
                        help="copy the servers' and YCSB's logs here before removing the data")
    args = parser.parse_args()
    args.workloads = [w.strip().lower() for w in args.workloads.split(",") if w.strip()]
    for workload in args.workloads:
        if workload not in WORKLOADS:
            parser.error(f"unknown workload {workload!r}: choose from {', '.join(WORKLOADS)}")
    systems = [s for s in SYSTEMS if not args.only or s in args.only]
    args.bin_dir = os.path.abspath(args.bin_dir)

    if "redis" in systems and shutil.which("redis-server") is None:
        if os.geteuid() == 0 and shutil.which("apt-get"):
            log("redis-server missing: apt-get install -y redis-server")
            subprocess.run(["apt-get", "install", "-y", "redis-server"], check=True,
                           stdout=subprocess.DEVNULL, timeout=600)
        else:
            fail("redis-server not found: apt-get install redis-server")

    tmp = tempfile.mkdtemp(prefix="dynamo-ycsb-")
    atexit.register(lambda: shutil.rmtree(tmp, ignore_errors=True))
    atexit.register(compare.stop_children)  # atexit runs last in, first out
    atexit.register(kill_running)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))

    classpath = build_bindings()
    cassandra_lib, cassandra_version = (fetch_cassandra() if "cassandra" in systems
                                        else (None, None))
    args.cassandra_version = cassandra_version
    args.versions = pom_versions()
    args.redis_version = None
    if "redis" in systems:
        version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True)
        found = re.search(r"v=([\d.]+)", version.stdout)
        args.redis_version = found.group(1) if found else "?"
    per_workload = args.operations and f"{args.operations} operations" or f"{args.seconds} s"
    log(f"systems: {', '.join(systems)}; workloads {', '.join(w.upper() for w in args.workloads)}"
        f" of {per_workload} each, {args.threads} threads, {args.records} records")

    results = {}
    for system in systems:
        results[system] = bench_system(system, args, classpath, tmp, cassandra_lib)
    ratios = report(results, args)
    if args.json:
        settings = dict(vars(args))
        settings["java_version"] = subprocess.run([args.java, "-version"], capture_output=True,
                                                  text=True).stderr.splitlines()[0]
        with open(args.json, "w") as out:
            json.dump({"settings": settings, "results": results, "ratios": ratios}, out,
                      indent=2)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("ycsb.py: interrupted; every process it started is being stopped")
