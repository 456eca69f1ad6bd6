#!/usr/bin/env bash
# Compares two builds of hsmca on this machine, taking turns, so a drift in the machine's speed
# (a VM's steal time) hits both alike. Both serve at once on one fresh SoftHSM2 token, each
# with its own ledger and audit log. The load generator runs issuing-ca requests against one,
# then the other, ROUNDS times. Each run prints its throughput and latency, and the server's
# CPU time per answered request. At the end it prints each build's group commit
# (entries per group). Writes nothing to docs/: see benches/e2e.sh for the recorded figures.
#
#   bash benches/ab.sh OLD_HSMCA NEW_HSMCA [ROUNDS=3] [CONNECTIONS=64] [SECONDS=5]
#
# e.g. build the old commit in a worktree with `cargo build --release --bin hsmca` and
# compare its target/release/hsmca with this checkout's.
set -euo pipefail
builds=("$(realpath "$1")" "$(realpath "$2")")
rounds=${3:-3}
connections=${4:-64}
seconds=${5:-5}
cd "$(dirname "$0")/.."
repo=$PWD

softhsm/install-deps.sh
# shellcheck source=benches/bench-env.sh
source benches/bench-env.sh

names=(A B)
pids=()
for side in 0 1; do
    name=${names[$side]}
    sed -e "s/:18443/:$((18443 + side))/" -e "s/:19090/:$((19090 + side))/" \
        -e "s/ledger\.sqlite/ledger-$name.sqlite/" -e "s/audit\.log/audit-$name.log/" \
        "$work/hsmca.toml" >"$work/$name.toml"
    "${builds[$side]}" --config "$work/$name.toml" serve >"$work/$name.out" 2>"$work/$name.log" &
    pids+=($!)
    "$loadgen" ready --url "http://127.0.0.1:$((19090 + side))/readyz" >/dev/null \
        || { cat "$work/$name.log" >&2; exit 1; }
    echo "$name = ${builds[$side]}" >&2
done

tls=(--cert "$work/tls/load.pem" --key "$work/tls/load-key.pem" --ca "$work/tls/tls-ca.pem")
load() { # SIDE SECONDS [--json FILE]
    "$loadgen" http --target hsmca --profile issuing-ca --connections "$connections" \
        --url "https://127.0.0.1:$((18443 + $1))" --seconds "$2" "${tls[@]}" "${@:3}"
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

for side in 0 1; do load "$side" 2 >/dev/null; done # warm-up
for _ in $(seq "$rounds"); do
    for side in 0 1; do
        before=$(cpu_ticks "${pids[$side]}")
        line=$(load "$side" "$seconds" --json "$work/run.json")
        after=$(cpu_ticks "${pids[$side]}")
        cpu=$(python3 -c '
import json, os, sys
run = json.load(open(sys.argv[1]))
ticks = int(sys.argv[3]) - int(sys.argv[2])
print(round(ticks / os.sysconf("SC_CLK_TCK") * 1e6 / max(run["requests"], 1)))
' "$work/run.json" "$before" "$after")
        echo "${names[$side]} $line  server CPU ${cpu} µs/request"
    done
done
for side in 0 1; do
    python3 -c '
import sys, urllib.request
counters = dict(line.split(" ", 1) for line in urllib.request.urlopen(sys.argv[1]).read().decode().splitlines()
                if line.startswith("hsmca_record_"))
groups, entries = float(counters["hsmca_record_groups_total"]), float(counters["hsmca_record_entries_total"])
print(f"{sys.argv[2]} group commit: {entries:.0f} entries in {groups:.0f} groups, {entries / max(groups, 1):.1f} per group")
' "http://127.0.0.1:$((19090 + side))/metrics" "${names[$side]}"
done
