#!/usr/bin/env bash
# Where a certificate's thread switches and CPU go: serves with one build, runs issuing-ca load at
# each given number of connections, and prints per thread kind the voluntary context switches
# and the CPU time (user and system) per certificate, from /proc/PID/task/*/status and stat, and
# the service's own mean time per stage (the HSM, the record, the whole request, from /metrics). Waking a
# sleeping thread costs tens of microseconds of CPU on a VM, so this is where low-load CPU
# goes (docs/performance.md). Writes nothing to docs/.
#
#   bash benches/switches.sh HSMCA_BINARY [SECONDS=5] [CONNECTIONS...=1 4]
set -euo pipefail
build=$(realpath "$1")
seconds=${2:-5}
shift $(($# < 2 ? $# : 2))
connection_counts=("${@:-1 4}")
cd "$(dirname "$0")/.."
repo=$PWD

softhsm/install-deps.sh
# shellcheck source=benches/bench-env.sh
source benches/bench-env.sh

"$build" --config "$work/hsmca.toml" serve >"$work/out" 2>"$work/log" &
pid=$!
"$loadgen" ready --url "http://127.0.0.1:19090/readyz" >/dev/null || { cat "$work/log" >&2; exit 1; }
tls=(--cert "$work/tls/load.pem" --key "$work/tls/load-key.pem" --ca "$work/tls/tls-ca.pem")
load() { # CONNECTIONS SECONDS
    "$loadgen" http --target hsmca --profile issuing-ca --connections "$1" \
        --url https://127.0.0.1:18443 --seconds "$2" "${tls[@]}"
}
# thread id, name, voluntary switches, CPU clock ticks: one line per thread (no thread name
# has a space)
switches() {
    for task in /proc/"$pid"/task/*; do
        echo "${task##*/} $(cat "$task/comm") $(awk '/^voluntary_ctxt/ {print $2}' "$task/status")" \
            "$(awk '{print $14 + $15}' "$task/stat")"
    done
}
# the sum and count of each stage's histogram: one "name sum count" line per stage
stages() {
    curl -s http://127.0.0.1:19090/metrics | awk '
        /^hsmca_(hsm_sign|record|sign_request)_duration_seconds_(sum|count) / {
            name = $1; sub(/_(sum|count)$/, "", name); value[name, ($1 ~ /_sum$/)] = $2; names[name]
        }
        END { for (n in names) print n, value[n, 1], value[n, 0] }'
}
issued() { stages | awk '/^hsmca_sign_request_duration_seconds / {print $3}'; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }

load 1 2 >/dev/null # warm-up
for connections in ${connection_counts[*]}; do
    switches >"$work/before"
    stages >"$work/stages-before"
    requests_before=$(issued)
    ticks_before=$(cpu_ticks)
    line=$(load "$connections" "$seconds")
    ticks_after=$(cpu_ticks)
    requests_after=$(issued)
    stages >"$work/stages-after"
    switches >"$work/after"
    echo "$line"
    python3 - "$work/before" "$work/after" "$requests_before" "$requests_after" \
        "$ticks_before" "$ticks_after" "$work/stages-before" "$work/stages-after" <<'PY'
import os, re, sys
from collections import defaultdict
def read(path):
    return {tid: (name, int(count), int(ticks)) for tid, name, count, ticks in (l.split() for l in open(path))}
before, after = read(sys.argv[1]), read(sys.argv[2])
certificates = max(float(sys.argv[4]) - float(sys.argv[3]), 1)
tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
switches, cpu = defaultdict(int), defaultdict(int)
for tid, (name, count, ticks) in after.items():
    kind = re.sub(r"-?\d+$", "", name)
    _, count_before, ticks_before = before.get(tid, (name, 0, 0))
    switches[kind] += count - count_before
    cpu[kind] += ticks - ticks_before
def per_kind(counts, scale, form):
    ranked = sorted(counts.items(), key=lambda k: -k[1])
    return " ".join(f"{kind} {n * scale / certificates:{form}}" for kind, n in ranked if n)
total_cpu = (int(sys.argv[6]) - int(sys.argv[5])) * tick_us / certificates
print(f"  switches per certificate: {per_kind(switches, 1, '.2f')}; total {sum(switches.values()) / certificates:.2f}")
print(f"  CPU µs per certificate: {per_kind(cpu, tick_us, '.0f')}; server {total_cpu:.0f}")
def histograms(path):
    return {name: (float(total), float(count)) for name, total, count in (l.split() for l in open(path))}
stages_before, stages_after = histograms(sys.argv[7]), histograms(sys.argv[8])
means = []
for stage, name in [("HSM", "hsm_sign"), ("record", "record"), ("request", "sign_request")]:
    total, count = stages_after[f"hsmca_{name}_duration_seconds"]
    total_before, count_before = stages_before.get(f"hsmca_{name}_duration_seconds", (0, 0))
    means.append(f"{stage} {(total - total_before) / max(count - count_before, 1) * 1e3:.3f} ms")
print(f"  mean per stage inside the server: {', '.join(means)}")
PY
done
