#!/usr/bin/env bash
# Profiles the three Dynamo nodes of a bench/compare.py run with perf (software cpu-clock
# sampling, DWARF call graphs) during one wrk phase, and prints where their CPU went.
#
#   bench/profile.sh put            # durability=sync, binaries from target/release
#   bench/profile.sh get buffered /tmp/old-build   # another durability / build
#
# Writes OUT.perf.data and OUT.script (perf script text, for flamegraph tools) under
# $PROFILE_DIR (default: a new temporary directory), then prints bench/perf_summary.py's
# table for it. Needs perf, wrk and a release build.
set -euo pipefail
phase=${1:?usage: profile.sh put|get [sync|buffered] [BIN_DIR]}
durability=${2:-sync}
here=$(cd "$(dirname "$0")" && pwd)
bin_dir=$(cd "${3:-$here/../target/release}" && pwd)
out_dir=${PROFILE_DIR:-$(mktemp -d -t dynamo-profile-XXXXXX)}
out="$out_dir/$phase-$durability"
python3 "$here/compare.py" --only-dynamo --seconds 12 --durability "$durability" \
    --bin-dir "$bin_dir" > "$out.compare.txt" 2> "$out.compare.err" &
compare=$!
for _ in $(seq 1 600); do
    grep -q "wrk: dynamo $phase" "$out.compare.err" 2>/dev/null && break
    sleep 0.5
done
sleep 2   # past wrk's connection set-up
pids=$(pgrep -f "^$bin_dir/dynamo-node --node-id n" | paste -sd, -)
perf record -F 199 --call-graph dwarf,16384 -p "$pids" -o "$out.perf.data" -- sleep 8 \
    2> "$out.perf.err"
wait "$compare"
tail -n 2 "$out.compare.txt"
perf script -i "$out.perf.data" > "$out.script" 2> /dev/null
python3 "$here/perf_summary.py" "$out.script"
echo "perf data and script in $out_dir" >&2
