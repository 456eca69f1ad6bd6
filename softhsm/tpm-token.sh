#!/usr/bin/env bash
# Sets up a tpm2-pkcs11 token backed by a software TPM (swtpm) as another PKCS#11 module.
#
#   eval "$(softhsm/tpm-token.sh DIR LABEL)"
#
# Run as root on Debian. Everything lives in DIR:
#   DIR/tpm/          swtpm's TPM state (NVRAM: seeds, the persistent primary key)
#   DIR/swtpm.pid     the swtpm daemon; DIR/swtpm.port its TPM port P (control port P+1)
#   DIR/swtpm.log     swtpm's log
#   DIR/store/        the tpm2-pkcs11 database (tpm2_pkcs11.sqlite3: keys as TPM-wrapped blobs)
#   DIR/so.pin, DIR/user.pin (mode 0600)
# Prints eval-able exports: HSMCA_TPM_MODULE, HSMCA_TPM_LABEL, HSMCA_TPM_PIN_FILE,
# TPM2_PKCS11_TCTI, TPM2_PKCS11_STORE, TPM2TOOLS_TCTI. The module reads TPM2_PKCS11_TCTI and
# TPM2_PKCS11_STORE from the environment, so the process that loads it needs them.
# Idempotent: a second run reuses the running swtpm (or restarts it on the same state and
# port), the store and the token, as long as DIR/user.pin still logs in.
#
# Why it looks like this (details in docs/pkcs11-modules.md):
#  - No resource manager (no tpm2-abrmd, no dbus): the TCTI talks straight to swtpm. Then
#    transient objects that a process leaves loaded stay in the TPM, which has only 3 slots;
#    `tpm2_ptool addtoken` runs out of them (TPM_RC_OBJECT_MEMORY, 0x902), so the token is made
#    through the PKCS#11 module itself (C_InitToken, C_InitPIN), which flushes what it loads,
#    and leftovers are flushed on every run.
#  - The TPM's dictionary-attack protection locks every key after 3 wrong PINs for 1000 s
#    (CKR_PIN_LOCKED, then TPM_RC_LOCKOUT even for the right PIN); hsmca's tests use wrong
#    PINs on purpose, so this dev TPM has DA lockout disabled (recovery time 0).
set -euo pipefail

if [ "$#" -ne 2 ]; then
    echo "usage: $0 DIR LABEL" >&2
    exit 2
fi
dir=$1
label=$2
[ "${#label}" -le 32 ] || { echo "error: label longer than 32 characters" >&2; exit 2; }
log() { echo "tpm-token: $*" >&2; }

missing=()
for pkg in swtpm swtpm-tools libtpm2-pkcs11-1 libtpm2-pkcs11-tools tpm2-tools opensc; do
    [ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)" = "install ok installed" ] ||
        missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=600 \
        "${missing[@]}" >&2
fi
module=/usr/lib/x86_64-linux-gnu/pkcs11/libtpm2_pkcs11.so
[ -e "$module" ] || module=$(dpkg -L libtpm2-pkcs11-1 | grep -m1 '/libtpm2_pkcs11\.so[.0-9]*$')

umask 077
mkdir -p "$dir/tpm" "$dir/store"
dir=$(cd "$dir" && pwd)

# --- swtpm -------------------------------------------------------------------------------
swtpm_alive() {
    local pid
    pid=$(cat "$dir/swtpm.pid" 2>/dev/null) || return 1
    [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = swtpm ] &&
        [[ "$(tr '\0' ' ' <"/proc/$pid/cmdline")" == *" dir=$dir/tpm "* ]]
}
port_free() { [ -z "$(ss -Htln "sport = :$1")" ]; }
tpm_env() {
    export TPM2TOOLS_TCTI="swtpm:host=127.0.0.1,port=$port"
    export TPM2_PKCS11_TCTI="$TPM2TOOLS_TCTI" TPM2_PKCS11_STORE="$dir/store"
}

if swtpm_alive; then
    port=$(cat "$dir/swtpm.port")
    log "reusing swtpm (pid $(cat "$dir/swtpm.pid"), port $port)"
else
    # Keep the port of an earlier run when it is free; else pick a free pair P, P+1.
    port=$(cat "$dir/swtpm.port" 2>/dev/null || true)
    if [ -z "$port" ] || ! port_free "$port" || ! port_free $((port + 1)); then
        for _ in $(seq 100); do
            port=$((20000 + 2 * (RANDOM % 5000)))
            port_free "$port" && port_free $((port + 1)) && break
        done
    fi
    echo "$port" >"$dir/swtpm.port"
    # startup-clear: swtpm sends TPM2_Startup itself (nothing else would); stdio detached
    # so the daemon does not hold the caller's `$(...)` open.
    swtpm socket --tpm2 --tpmstate dir="$dir/tpm" \
        --server type=tcp,port="$port",bindaddr=127.0.0.1 \
        --ctrl type=tcp,port=$((port + 1)),bindaddr=127.0.0.1 \
        --flags not-need-init,startup-clear --daemon \
        --pid file="$dir/swtpm.pid" --log file="$dir/swtpm.log" </dev/null >/dev/null 2>&1
    tpm_env
    for _ in $(seq 50); do tpm2_getcap properties-fixed >/dev/null 2>&1 && break; sleep 0.1; done
    swtpm_alive || { log "error: swtpm did not start (see $dir/swtpm.log)"; exit 1; }
    log "started swtpm (pid $(cat "$dir/swtpm.pid"), port $port)"
fi
tpm_env

# Leftovers of earlier processes (no resource manager to flush them), then DA settings.
tpm2_flushcontext -t >/dev/null
tpm2_flushcontext -s >/dev/null
tpm2_dictionarylockout --clear-lockout >/dev/null
tpm2_dictionarylockout --setup-parameters --max-tries=32 --recovery-time=0 \
    --lockout-recovery-time=0 >/dev/null

# --- store and token -----------------------------------------------------------------------
export TPM2_PKCS11_LOG_LEVEL=${TPM2_PKCS11_LOG_LEVEL:-0}
# The store's primary id 1 is a persistent key of this TPM (its handle opens the serialised
# ESYS_TR); a store whose key is not in the TPM (DIR/tpm was reset) is useless.
primary=$(tpm2_ptool listprimaries --path "$dir/store" 2>/dev/null |
    sed -n 's/^ *esys-tr: \(81[0-9a-f]\{6\}\).*/0x\1/p' | head -1)
if [ -z "$primary" ] || [[ "$(tpm2_getcap handles-persistent)" != *"- $primary"* ]]; then
    # A fresh DIR/tpm has no primary key yet: init creates one (persistent) as primary id 1.
    rm -f "$dir/store/tpm2_pkcs11.sqlite3"
    tpm2_ptool init --path "$dir/store" >/dev/null
    tpm2_flushcontext -t >/dev/null
fi

emit() {
    echo "export HSMCA_TPM_MODULE=$module"
    printf 'export HSMCA_TPM_LABEL=%q\n' "$label"
    echo "export HSMCA_TPM_PIN_FILE=$dir/user.pin"
    echo "export TPM2_PKCS11_TCTI=$TPM2_PKCS11_TCTI"
    echo "export TPM2_PKCS11_STORE=$TPM2_PKCS11_STORE"
    echo "export TPM2TOOLS_TCTI=$TPM2TOOLS_TCTI"
}
# (No `cmd | grep -q` anywhere: with pipefail, grep quitting early can fail the pipeline.)
has_token() {
    local out
    out=$(tpm2_ptool listtokens --pid 1 --path "$dir/store" 2>/dev/null) || return 1
    [[ $'\n'"$out"$'\n' == *$'\n'"  label: $label"$'\n'* ]]
}

if has_token && [ -s "$dir/user.pin" ] &&
    pkcs11-tool --module "$module" --token-label "$label" --login \
        --pin "$(cat "$dir/user.pin")" --list-objects >/dev/null 2>&1; then
    log "reusing token '$label'"
    emit
    exit 0
fi
if has_token; then
    log "token '$label' does not take $dir/user.pin: re-creating it"
    tpm2_ptool rmtoken --label "$label" --path "$dir/store" >/dev/null
fi

random_pin() { od -An -N8 -tx8 /dev/urandom | tr -d ' \n'; }
so_pin=$(random_pin)
user_pin=$(random_pin)
printf '%s' "$so_pin" >"$dir/so.pin"
printf '%s' "$user_pin" >"$dir/user.pin"
chmod 600 "$dir/so.pin" "$dir/user.pin"

# The module always offers one uninitialised slot; C_InitToken there creates the token.
slot=$(pkcs11-tool --module "$module" -L 2>/dev/null | awk '
    /^Slot [0-9]+ \(0x[0-9a-f]+\)/ {s=$3; gsub(/[()]/, "", s)}
    /token state: *uninitialized/ && !f {print s; f=1}')
[ -n "$slot" ] || { log "error: no uninitialised slot in the tpm2-pkcs11 store"; exit 1; }
pkcs11-tool --module "$module" --slot "$slot" --init-token --label "$label" \
    --so-pin "$so_pin" >/dev/null
pkcs11-tool --module "$module" --token-label "$label" --init-pin --so-pin "$so_pin" \
    --pin "$user_pin" >/dev/null
log "created token '$label'"
emit
