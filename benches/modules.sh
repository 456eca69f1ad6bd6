#!/usr/bin/env bash
# What a PKCS#11 module costs, in one run on this machine: for SoftHSM2, opencryptoki's soft
# token, a TPM 2.0 token (tpm2-pkcs11 over swtpm) and SoftHSM2 behind p11-kit remoting (the
# network HSM stand-in), the raw C_Sign rate of one thread and hsmca serve's issuance
# (issuing-ca, durable ledger and audit log) at 1 and 16 connections, with the online
# intermediate's key on that module. Writes the table into docs/performance.md between the
# modules markers.
#
#   bash benches/modules.sh        # HSMCA_BENCH_SECONDS per run (default 5)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
seconds=${HSMCA_BENCH_SECONDS:-5}

softhsm/install-deps.sh opencryptoki swtpm swtpm-tools libtpm2-pkcs11-1 libtpm2-pkcs11-tools \
    tpm2-tools p11-kit p11-kit-modules
# shellcheck source=benches/bench-env.sh
source benches/bench-env.sh
softhsm_module=/usr/lib/softhsm/libsofthsm2.so
root_pin=$work/token/user.pin

# The online intermediate LABEL (KEY_TYPE) on the module MODULE's token TOKEN, certified by
# the dev root on the bench token; ENV (NAME=VALUE ...) is what the module's process needs.
online_intermediate() { # label key_type module token pin_file env...
    local label=$1 type=$2 module=$3 token=$4 pin_file=$5
    shift 5
    env "$@" HSMCA="$hsmca" softhsm/online-intermediate.sh "$work/ceremony" "$label" "$type" \
        "$module" "$token" "$pin_file" hsmca-bench "$root_pin"
}

# $work/hsmca-NAME.toml: the bench config with [hsm] and the online-p256 issuer replaced.
module_config() { # name "hsm lines" certificate key_label "issuer extra line"
    python3 - "$work/hsmca.toml" "$work/hsmca-$1.toml" "$2" "$3" "$4" "$5" <<'PY'
import sys
src, dst, hsm_lines, certificate, key_label, extra = sys.argv[1:]
text = open(src).read()
start = text.index("module = ")
end = text.index("\n[server]")
text = text[:start] + hsm_lines + "\n" + text[end:]
text = text.replace('certificate = "ceremony/out/online-p256-2026.pem"',
                    f'certificate = "{certificate}"\n{extra}')
text = text.replace('key_label = "online-p256-2026"', f'key_label = "{key_label}"')
open(dst, "w").write(text)
PY
}

tls=(--cert "$work/tls/load.pem" --key "$work/tls/load-key.pem" --ca "$work/tls/tls-ca.pem")
measure() { # name config raw-args env...
    local name=$1 config=$2 raw_args=$3
    shift 3
    echo "==> $name: raw C_Sign" >&2
    # shellcheck disable=SC2086
    env "$@" "$loadgen" raw $raw_args --threads 1 --seconds "$seconds" \
        --json "$results/$name-raw.json" >&2
    echo "==> $name: hsmca serve" >&2
    rm -f "$work/ledger.sqlite"* "$work/audit.log"
    env "$@" "$hsmca" --config "$config" serve >>"$work/hsmca-$name.out" 2>>"$work/hsmca-$name.log" &
    local pid=$!
    "$loadgen" ready --url http://127.0.0.1:19090/readyz --seconds 60 >/dev/null \
        || { cat "$work/hsmca-$name.log" >&2; exit 1; }
    for n in 1 16; do
        "$loadgen" http --target hsmca --profile issuing-ca --url https://127.0.0.1:18443 \
            --connections "$n" "${tls[@]}" --seconds "$seconds" \
            --json "$results/$name-e2e-$n.json" >&2
    done
    kill -TERM "$pid"
    wait "$pid"
    "$hsmca" audit verify "$work/audit.log" >/dev/null
}

# SoftHSM2 itself.
measure softhsm2 "$work/hsmca.toml" \
    "--token-label hsmca-bench --key-label online-p256-2026 --mechanism ecdsa --pin-file $root_pin"

# opencryptoki's soft token: RSA-2048 with PSS (it has neither EC nor SHA256-RSA-PKCS).
eval "$(bash softhsm/opencryptoki-token.sh "$work/ock" hsmca-ock)"
ock_lines="module = \"$HSMCA_OCK_MODULE\"
token_label = \"$HSMCA_OCK_LABEL\"
pin_file = \"$HSMCA_OCK_PIN_FILE\""
online_intermediate bench-ock-rsa rsa-2048 "$HSMCA_OCK_MODULE" "$HSMCA_OCK_LABEL" \
    "$HSMCA_OCK_PIN_FILE"
module_config opencryptoki "$ock_lines" ceremony/out/bench-ock-rsa.pem bench-ock-rsa \
    'signature_algorithm = "rsa-pss-sha256"'
measure opencryptoki "$work/hsmca-opencryptoki.toml" \
    "--module $HSMCA_OCK_MODULE --slot $HSMCA_OCK_SLOT --token-label $HSMCA_OCK_LABEL --key-label bench-ock-rsa --mechanism rsa-pss --pin-file $HSMCA_OCK_PIN_FILE"
# The same algorithm on SoftHSM2, for comparison.
"$loadgen" raw --token-label hsmca-bench --key-label online-rsa2048-2026 --mechanism rsa-pss \
    --pin-file "$root_pin" --threads 1 --seconds "$seconds" \
    --json "$results/softhsm2-rsa-pss-raw.json" >&2

# A TPM 2.0 token over a software TPM: P-256.
eval "$(bash softhsm/tpm-token.sh "$work/tpm" hsmca-tpm)"
tpm_env=(TPM2_PKCS11_TCTI="$TPM2_PKCS11_TCTI" TPM2_PKCS11_STORE="$TPM2_PKCS11_STORE")
tpm_lines="module = \"$HSMCA_TPM_MODULE\"
token_label = \"$HSMCA_TPM_LABEL\"
pin_file = \"$HSMCA_TPM_PIN_FILE\""
online_intermediate bench-tpm-p256 ecdsa-p256 "$HSMCA_TPM_MODULE" "$HSMCA_TPM_LABEL" \
    "$HSMCA_TPM_PIN_FILE" "${tpm_env[@]}"
module_config tpm "$tpm_lines" ceremony/out/bench-tpm-p256.pem bench-tpm-p256 ""
measure tpm "$work/hsmca-tpm.toml" \
    "--module $HSMCA_TPM_MODULE --token-label $HSMCA_TPM_LABEL --key-label bench-tpm-p256 --mechanism ecdsa --pin-file $HSMCA_TPM_PIN_FILE" \
    "${tpm_env[@]}"
kill "$(cat "$work/tpm/swtpm.pid")" 2>/dev/null || true

# SoftHSM2 behind p11-kit remoting: the bench token exported on a unix socket.
eval "$(bash softhsm/p11kit-remote.sh)"
p11-kit server -f -n "$work/p11kit.sock" --provider "$softhsm_module" "pkcs11:token=hsmca-bench" \
    >"$work/p11kit.log" 2>&1 &
address="unix:path=$work/p11kit.sock"
for _ in $(seq 200); do
    P11_KIT_SERVER_ADDRESS=$address pkcs11-tool --module "$HSMCA_P11KIT_CLIENT" -L 2>/dev/null \
        | grep -q hsmca-bench && break
    sleep 0.05
done
P11_KIT_SERVER_ADDRESS=$address pkcs11-tool --module "$HSMCA_P11KIT_CLIENT" -L 2>/dev/null \
    | grep -q hsmca-bench || { cat "$work/p11kit.log" >&2; exit 1; }
remote_lines="module = \"$HSMCA_P11KIT_CLIENT\"
token_label = \"hsmca-bench\"
pin_file = \"$root_pin\""
module_config p11kit "$remote_lines" ceremony/out/online-p256-2026.pem online-p256-2026 ""
measure p11kit "$work/hsmca-p11kit.toml" \
    "--module $HSMCA_P11KIT_CLIENT --token-label hsmca-bench --key-label online-p256-2026 --mechanism ecdsa --pin-file $root_pin" \
    P11_KIT_SERVER_ADDRESS="$address"

python3 - "$results" docs/performance.md "$seconds" "$(git rev-parse --short HEAD)" <<'PY'
import json, os, platform, subprocess, sys, datetime
results, doc, seconds, commit = sys.argv[1:]
def load(name):
    return json.load(open(os.path.join(results, name + ".json")))
cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"],
                     capture_output=True, text=True).stdout.strip()
rows = [
    ("SoftHSM2 2.6", "softhsm2", "P-256, ECDSA"),
    ("opencryptoki 3.8 soft token", "opencryptoki", "RSA-2048, RSA-PSS SHA-256"),
    ("TPM 2.0 (tpm2-pkcs11 1.9, swtpm)", "tpm", "P-256, ECDSA"),
    ("SoftHSM2 behind p11-kit remoting (unix socket)", "p11kit", "P-256, ECDSA"),
]
lines = [
    "<!-- modules:begin -->",
    f"Measured {datetime.date.today()} at {commit} on {cpu}, {os.cpu_count()} cores, "
    f"`bash benches/modules.sh` ({seconds} s per run; one thread for the raw rate; hsmca with "
    "mTLS, the durable ledger and audit log, the online intermediate's key on the module; the "
    "load generator shares the cores).",
    "",
    "| module | key, signature | raw `C_Sign`/s (1 thread) | ms per `C_Sign` | hsmca issuing-ca/s, 1 conn | p50 ms | 16 conns /s | p50 ms |",
    "|---|---|---:|---:|---:|---:|---:|---:|",
]
for title, name, key in rows:
    raw = load(f"{name}-raw")
    one, many = load(f"{name}-e2e-1"), load(f"{name}-e2e-16")
    rate = raw["throughput"]
    lines.append(
        f"| {title} | {key} | {rate:.0f} | {1000 / rate:.2f} | {one['throughput']:.0f} | "
        f"{one['p50_ms']:.2f} | {many['throughput']:.0f} | {many['p50_ms']:.2f} |")
pss = load("softhsm2-rsa-pss-raw")["throughput"]
lines += [
    "",
    f"For comparison, SoftHSM2 signs RSA-2048 with PSS at {pss:.0f}/s on one thread in the same run.",
    "<!-- modules:end -->",
]
text = open(doc).read()
block = "\n".join(lines)
if "<!-- modules:begin -->" in text:
    start = text.index("<!-- modules:begin -->")
    end = text.index("<!-- modules:end -->") + len("<!-- modules:end -->")
    text = text[:start] + block + text[end:]
else:
    text += "\n## PKCS#11 modules: what a slow token costs\n\n" + block + "\n"
open(doc, "w").write(text)
print(block)
PY
