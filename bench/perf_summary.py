#!/usr/bin/env python3
"""Where the nodes' CPU went: `perf script` output (DWARF call graphs) in, a table out.

Each row is the share of samples whose stack contains a marker frame (inclusive), or,
for the last rows, whose leaf frame matches (self time). Several files give one column
each, so a before/after pair reads side by side:

    python3 bench/perf_summary.py before.script after.script
"""

import sys

INCLUSIVE = [
    ("sled flush (seal the log buffer, wait for its write)", ("make_stable",)),
    ("sled log writes (write_to_log)", ("write_to_log",)),
    ("sled update (cas_update)", ("cas_update",)),
    ("sled point reads (Tree::get)", ("sled::tree::Tree::get",)),
    ("HTTP/1.1 API server (hyper h1, axum)", ("hyper::proto::h1",)),
    ("gRPC server (tonic, h2 server)", ("tonic::transport::server", "h2::server")),
    ("gRPC client (tonic Channel, h2 client)", ("h2::client", "tonic::client")),
]
SELF = [
    ("allocator (self)", ("malloc", "free", "tcache", "unlink_chunk", "mi_")),
    ("kernel context switches and wake-ups (self)",
     ("finish_task_switch", "_raw_spin_unlock_irqrestore", "__schedule")),
]


def stacks(path):
    """The samples of a `perf script` file, each a list of frame names, leaf first."""
    samples, stack = [], []
    with open(path, errors="replace") as lines:
        for line in lines:
            if not line.strip():
                if stack:
                    samples.append(stack)
                stack = []
            elif line[0] in " \t":
                parts = line.split(None, 1)
                if len(parts) == 2:
                    stack.append(parts[1])
    if stack:
        samples.append(stack)
    return samples


def spawn_blocking(stack):
    # tokio runs its own workers as blocking tasks too ("launch"); count only ours.
    return any("BlockingTask<" in f and "launch" not in f for f in stack)


def main():
    files = sys.argv[1:]
    if not files:
        sys.exit(__doc__)
    data = {name: stacks(name) for name in files}
    share = lambda name, hit: f"{100 * sum(1 for s in data[name] if hit(s)) / max(1, len(data[name])):.1f}%"
    print("| share of the nodes' CPU | " + " | ".join(files) + " |")
    print("|---|" + "---|" * len(files))
    rows = [(label, lambda s, m=markers: any(k in f for f in s for k in m)) for label, markers in INCLUSIVE]
    rows.insert(4, ("spawn_blocking tasks", spawn_blocking))
    rows += [(label, lambda s, m=markers: bool(s) and any(k in s[0] for k in m)) for label, markers in SELF]
    for label, hit in rows:
        print(f"| {label} | " + " | ".join(share(name, hit) for name in files) + " |")
    print("| samples | " + " | ".join(str(len(data[name])) for name in files) + " |")


if __name__ == "__main__":
    main()
