#!/usr/bin/env bash
# The end-to-end benchmark, in one run on this machine: the raw SoftHSM2 C_Sign ceiling,
# hsmca (native issuing-ca and workload, Vault sign/<role>) at 1, 16, 64 and 256 keep-alive
# mTLS connections with the durable ledger and audit log on, and cfssl serve signing the
# same CSRs with a P-256 key in memory over plain HTTP, all driven by examples/loadgen.rs.
# Writes the table and a plot into docs/performance.md (between the e2e markers) and
# docs/performance-e2e.svg.
#
#   bash benches/e2e.sh            # HSMCA_BENCH_SECONDS per run (default 5)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
seconds=${HSMCA_BENCH_SECONDS:-5}
connections=(1 16 64 256)

softhsm/install-deps.sh
if ! command -v cfssl >/dev/null; then
    echo "==> installing golang-cfssl (the peer)" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends golang-cfssl >/dev/null
fi
# shellcheck source=benches/bench-env.sh
source benches/bench-env.sh

start_hsmca() { # RESULT-NAME: starts hsmca, records the milliseconds from exec to /readyz 200
    local start_ns
    start_ns=$(date +%s%N)
    "$hsmca" --config "$work/hsmca.toml" serve >>"$work/hsmca.out" 2>>"$work/hsmca.log" &
    hsmca_pid=$!
    # The poller is the load generator (Rust, polls every millisecond), so the figure is
    # the service's start, not a poller's.
    "$loadgen" ready --url http://127.0.0.1:19090/readyz --seconds 30 >/dev/null \
        || { cat "$work/hsmca.log" >&2; exit 1; }
    local ready_ms=$(( ($(date +%s%N) - start_ns) / 1000000 ))
    local records
    records=$("$hsmca" audit verify "$work/audit.log" | sed -n 's/.*: \([0-9]*\) records.*/\1/p')
    echo "{\"start_to_ready_ms\": $ready_ms, \"audit_records\": ${records:-0}}" >"$results/$1.json"
}
echo "==> starting hsmca" >&2
start_hsmca startup

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
peak_rss_kib() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
clk_tck=$(getconf CLK_TCK)

run() { # name pid loadgen-args...
    local name=$1 pid=$2
    shift 2
    local before after
    before=$(cpu_ticks "$pid")
    "$loadgen" http "$@" --seconds "$seconds" --json "$results/$name.json" >&2
    after=$(cpu_ticks "$pid")
    python3 - "$results/$name.json" "$before" "$after" "$clk_tck" "$seconds" "$(peak_rss_kib "$pid")" <<'PY'
import json, sys
path, before, after, tck, seconds, rss = sys.argv[1:]
r = json.load(open(path))
r["server_cpu_percent"] = (int(after) - int(before)) / int(tck) / float(seconds) * 100
r["server_peak_rss_mib"] = int(rss) / 1024
json.dump(r, open(path, "w"), indent=2)
PY
}

echo "==> raw SoftHSM2 C_Sign ceiling" >&2
for threads in 1 2; do
    "$loadgen" raw --token-label hsmca-bench --key-label online-p256-2026 --mechanism ecdsa \
        --pin-file "$work/token/user.pin" --threads "$threads" --seconds "$seconds" \
        --json "$results/raw-p256-$threads.json" >&2
done
"$loadgen" raw --token-label hsmca-bench --key-label online-rsa2048-2026 --mechanism rsa \
    --pin-file "$work/token/user.pin" --threads 2 --seconds "$seconds" \
    --json "$results/raw-rsa2048-2.json" >&2

tls=(--cert "$work/tls/load.pem" --key "$work/tls/load-key.pem" --ca "$work/tls/tls-ca.pem")
for n in "${connections[@]}"; do
    run "hsmca-issuing-ca-$n" "$hsmca_pid" --target hsmca --profile issuing-ca \
        --url https://127.0.0.1:18443 --connections "$n" "${tls[@]}"
    run "hsmca-workload-$n" "$hsmca_pid" --target hsmca --profile workload \
        --url https://127.0.0.1:18443 --connections "$n" "${tls[@]}"
    run "vault-workload-$n" "$hsmca_pid" --target vault --token "$token" \
        --url https://127.0.0.1:18443 --connections "$n" "${tls[@]}"
done
python3 -c "import sys,urllib.request; print(urllib.request.urlopen(sys.argv[1]).read().decode())" \
    http://127.0.0.1:19090/metrics >"$results/metrics.txt"
echo "==> restarting hsmca on the full ledger and audit log" >&2
kill -TERM "$hsmca_pid"
wait "$hsmca_pid"
start_hsmca restart
kill -TERM "$hsmca_pid"
wait "$hsmca_pid"
hsmca_pid=
"$hsmca" audit verify "$work/audit.log" >&2

echo "==> cfssl serve (P-256 key in memory, plain HTTP, writes nothing)" >&2
(cd "$work" && echo '{"CN":"cfssl bench CA","key":{"algo":"ecdsa","size":256}}' \
    | cfssl gencert -initca - 2>/dev/null | cfssljson -bare cfssl-ca)
cfssl serve -address 127.0.0.1 -port 18888 -ca "$work/cfssl-ca.pem" \
    -ca-key "$work/cfssl-ca-key.pem" >"$work/cfssl.log" 2>&1 &
cfssl_pid=$!
until python3 -c "import socket; socket.create_connection(('127.0.0.1', 18888), 1)" 2>/dev/null; do
    sleep 0.05
done
for n in "${connections[@]}"; do
    run "cfssl-sign-$n" "$cfssl_pid" --target cfssl --url http://127.0.0.1:18888 --connections "$n"
done

python3 benches/e2e_report.py "$results" docs/performance.md docs/performance-e2e.svg
echo "==> docs/performance.md and docs/performance-e2e.svg updated" >&2
