#!/usr/bin/env bash
# The storage backends side by side, in one run on this machine: hsmca on SQLite (the
# embedded default), on PostgreSQL with one replica, and on PostgreSQL with two replicas on
# the same token, each at 1, 16 and 64 keep-alive mTLS connections of issuing-ca requests
# (two replicas: the connections split between them). Reports throughput, p50/p99, the
# servers' CPU time per certificate and the group commit's entries per group, and writes the
# table into docs/performance.md (between the storage markers).
#
#   bash benches/storage.sh        # HSMCA_BENCH_SECONDS per run (default 5)
#
# PostgreSQL (Debian's 15) runs in a temporary directory as the postgres user, fsync on,
# synchronous_commit on: every group commit is durable, as SQLite's is.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
seconds=${HSMCA_BENCH_SECONDS:-5}
connections=(1 16 64)

softhsm/install-deps.sh postgresql
# shellcheck source=benches/bench-env.sh
source benches/bench-env.sh

# PostgreSQL, owned by postgres in the work directory (initdb refuses root).
pg_bin=/usr/lib/postgresql/15/bin
pg_port=15432
mkdir -p "$work/pg/data" "$work/pg/socket"
chmod 755 "$work"
chown -R postgres:postgres "$work/pg"
runuser -u postgres -- "$pg_bin/initdb" --auth-local=trust --auth-host=scram-sha-256 \
    --username=postgres -D "$work/pg/data" >/dev/null
cat >>"$work/pg/data/postgresql.conf" <<PGCONF
listen_addresses = '127.0.0.1'
port = $pg_port
unix_socket_directories = '$work/pg/socket'
PGCONF
runuser -u postgres -- "$pg_bin/pg_ctl" -D "$work/pg/data" -l "$work/pg/server.log" -w start >/dev/null
stop_pg() { runuser -u postgres -- "$pg_bin/pg_ctl" -D "$work/pg/data" -m fast -w stop >/dev/null || true; }
psql_pg() { runuser -u postgres -- psql -X -q -h "$work/pg/socket" -p "$pg_port" -d postgres -c "$1" >/dev/null; }
trap 'stop_pg; cleanup' EXIT
(umask 077 && printf 'bench-password\n' >"$work/pg-password")

tls=(--cert "$work/tls/load.pem" --key "$work/tls/load-key.pem" --ca "$work/tls/tls-ca.pem")
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
clk_tck=$(getconf CLK_TCK)

# SETUP: sqlite | pg1 | pg2. Starts the replicas of SETUP on a fresh store, runs every
# connection count, stops them.
bench() {
    local setup=$1 replicas=1
    local storage
    if [ "$setup" = sqlite ]; then
        rm -f "$work/ledger.sqlite"* "$work/audit.log"
        storage='ledger = "ledger.sqlite"\naudit_log = "audit.log"'
    else
        psql_pg "DROP DATABASE IF EXISTS hsmca"
        psql_pg "DROP ROLE IF EXISTS hsmca"
        psql_pg "CREATE ROLE hsmca LOGIN PASSWORD 'bench-password'"
        psql_pg "CREATE DATABASE hsmca OWNER hsmca"
        storage="postgres = \"postgresql://hsmca@127.0.0.1:$pg_port/hsmca\"\npassword_file = \"$work/pg-password\"\nsslmode = \"disable\""
        [ "$setup" = pg2 ] && replicas=2
    fi
    local pids=() side
    for side in $(seq 0 $((replicas - 1))); do
        python3 - "$work/hsmca.toml" "$work/$setup-$side.toml" "$side" "$storage" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
side, storage = int(sys.argv[3]), sys.argv[4].replace("\\n", "\n")
text = re.sub(r'\[storage\]\nledger = "ledger.sqlite"\naudit_log = "audit.log"\n', f"[storage]\n{storage}\n", text)
text = text.replace(":18443", f":{18443 + side}").replace(":19090", f":{19090 + side}")
open(sys.argv[2], "w").write(text)
PY
        "$hsmca" --config "$work/$setup-$side.toml" serve >"$work/$setup-$side.out" 2>"$work/$setup-$side.log" &
        pids+=($!)
        "$loadgen" ready --url "http://127.0.0.1:$((19090 + side))/readyz" --seconds 30 >/dev/null \
            || { cat "$work/$setup-$side.log" >&2; exit 1; }
    done
    # Warm-up: TLS sessions, the pool's connections, the HSM sessions.
    for side in $(seq 0 $((replicas - 1))); do
        "$loadgen" http --target hsmca --profile issuing-ca --connections 4 --seconds 1 \
            --url "https://127.0.0.1:$((18443 + side))" "${tls[@]}" >/dev/null
    done
    local n
    for n in "${connections[@]}"; do
        local before=0 after=0 pid
        for pid in "${pids[@]}"; do before=$((before + $(cpu_ticks "$pid"))); done
        local share=$(( n / replicas )) jobs=() used=$replicas
        [ "$share" -lt 1 ] && { share=1; used=1; }
        for side in $(seq 0 $((used - 1))); do
            "$loadgen" http --target hsmca --profile issuing-ca --connections "$share" \
                --url "https://127.0.0.1:$((18443 + side))" --seconds "$seconds" "${tls[@]}" \
                --json "$results/$setup-$n-$side.json" >/dev/null &
            jobs+=($!)
        done
        wait "${jobs[@]}"
        for pid in "${pids[@]}"; do after=$((after + $(cpu_ticks "$pid"))); done
        echo "{\"cpu_ticks\": $((after - before)), \"clk_tck\": $clk_tck, \"seconds\": $seconds, \"replicas\": $used}" \
            >"$results/$setup-$n-cpu.json"
        for side in $(seq 0 $((replicas - 1))); do
            python3 -c "import sys,urllib.request; print(urllib.request.urlopen(sys.argv[1]).read().decode())" \
                "http://127.0.0.1:$((19090 + side))/metrics" >"$results/$setup-$n-metrics-$side.txt"
        done
        echo "$setup, $n connections: done" >&2
    done
    for pid in "${pids[@]}"; do kill -TERM "$pid"; wait "$pid" || true; done
}

for setup in sqlite pg1 pg2; do
    echo "==> $setup" >&2
    bench "$setup"
done

python3 - "$results" docs/performance.md "$seconds" <<'PY'
import glob, json, os, platform, re, subprocess, sys, datetime
results, doc, seconds = sys.argv[1], sys.argv[2], sys.argv[3]

def counters(setup, n):
    groups = entries = 0.0
    for path in glob.glob(f"{results}/{setup}-{n}-metrics-*.txt"):
        for line in open(path):
            if line.startswith("hsmca_record_groups_total"):
                groups += float(line.split()[1])
            if line.startswith("hsmca_record_entries_total"):
                entries += float(line.split()[1])
    return entries / max(groups, 1)

labels = {"sqlite": "SQLite + audit file", "pg1": "PostgreSQL, 1 replica", "pg2": "PostgreSQL, 2 replicas"}
rows = ["| storage | connections | certificates /s | p50 ms | p99 ms | errors | server CPU µs / certificate | entries per group (cumulative) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|"]
throughput = {}
for setup in ("sqlite", "pg1", "pg2"):
    for n in (1, 16, 64):
        runs = [json.load(open(p)) for p in sorted(glob.glob(f"{results}/{setup}-{n}-[0-9].json"))]
        cpu = json.load(open(f"{results}/{setup}-{n}-cpu.json"))
        ok = sum(r["requests"] - r["errors"] for r in runs)
        rate = sum(r["throughput"] for r in runs)
        throughput[(setup, n)] = rate
        p50 = max(r["p50_ms"] for r in runs)
        p99 = max(r["p99_ms"] for r in runs)
        errors = sum(r["errors"] for r in runs)
        cpu_us = cpu["cpu_ticks"] / cpu["clk_tck"] * 1e6 / max(ok, 1)
        rows.append(f"| {labels[setup]} | {n} | {rate:.0f} | {p50:.2f} | {p99:.2f} | {errors} | {cpu_us:.0f} | {counters(setup, n):.1f} |")
ratio = throughput[("pg1", 64)] / max(throughput[("sqlite", 64)], 1)
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
text = "\n".join([
    f"Measured {datetime.date.today()} at {commit} on {platform.node()} ({os.cpu_count()} cores, {platform.machine()}), "
    f"`bash benches/storage.sh` ({seconds} s per run, issuing-ca, P-256, SoftHSM2; two replicas share the one token "
    "and the two cores, each taking half the connections; p50/p99 are the worse replica's).",
    "",
    *rows,
    "",
    f"PostgreSQL with one replica at 64 connections: {ratio:.0%} of SQLite's throughput in the same run.",
])
doc_text = open(doc).read()
block = f"<!-- storage:begin -->\n{text}\n<!-- storage:end -->"
if "<!-- storage:begin -->" in doc_text:
    doc_text = re.sub(r"<!-- storage:begin -->.*<!-- storage:end -->", lambda _: block, doc_text, flags=re.S)
else:
    doc_text += "\n## Storage backends: SQLite and PostgreSQL\n\n" + block + "\n"
open(doc, "w").write(doc_text)
print(text)
PY
echo "==> docs/performance.md updated" >&2
