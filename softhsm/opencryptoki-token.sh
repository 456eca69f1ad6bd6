#!/usr/bin/env bash
# Sets up openCryptoki's software token (the "IBM SoftTok") as a second PKCS#11 module.
#
#   eval "$(softhsm/opencryptoki-token.sh DIR LABEL)"
#
# Run as root on Debian (root is in group pkcs11, which every openCryptoki user must be in).
# Writes DIR/so.pin and DIR/user.pin (mode 0600) and prints eval-able exports:
#   HSMCA_OCK_MODULE    the PKCS#11 library to load (the openCryptoki API library)
#   HSMCA_OCK_SLOT      the soft token's slot number (for tools; hsmca finds tokens by label)
#   HSMCA_OCK_LABEL     LABEL
#   HSMCA_OCK_PIN_FILE  DIR/user.pin
#
# Unlike SoftHSM2, openCryptoki has ONE soft token per machine, stored under
# /var/lib/opencryptoki/swtok and served through pkcsslotd. So "idempotent" means: a second
# run with the same DIR reuses the token (its PINs still log in, its label still matches);
# a run with another DIR re-creates the token, destroying the keys of the previous one, which
# is only done when the token was made by this script (owner file in the token directory) or
# when HSMCA_OCK_WIPE=1 is set.
#
# openCryptoki 3.8 (Debian 12) quirks that shape this script (see docs/pkcs11-modules.md):
#  - PINs are 4-8 characters; the factory SO PIN is 87654321 and 12345678 is refused as a
#    user PIN (CKR_PIN_INVALID), so the PINs are 8 random digits, never those two.
#  - C_InitToken on an initialised token leaves the SO unable to log in
#    (CKR_FUNCTION_FAILED), so re-creating the token means wiping its files instead.
#  - pkcsconf reads the label from stdin (no option for it).
set -euo pipefail

if [ "$#" -ne 2 ]; then
    echo "usage: $0 DIR LABEL" >&2
    exit 2
fi
dir=$1
label=$2
[ "${#label}" -le 32 ] || { echo "error: label longer than 32 characters" >&2; exit 2; }

module=/usr/lib/x86_64-linux-gnu/pkcs11/libopencryptoki.so
tokdir=/var/lib/opencryptoki/swtok
log() { echo "opencryptoki-token: $*" >&2; }

# Packages, only when missing (opensc for pkcs11-tool, which checks the user PIN below).
missing=()
for pkg in opencryptoki opensc; do
    [ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)" = "install ok installed" ] ||
        missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=600 \
        "${missing[@]}" >&2
fi
[ -e "$module" ] || module=$(dpkg -L libopencryptoki0 opencryptoki 2>/dev/null |
    grep -m1 '/pkcs11/libopencryptoki\.so$')

# pkcsslotd must run: the library talks to it over /var/run/pkcsslotd.socket. No init
# system here, so start the daemon itself (it forks). Zombies of an old one do not count.
slotd_running() { ps -eo stat=,comm= | awk '$2 == "pkcsslotd" && $1 !~ /^Z/ {f=1} END {exit !f}'; }
start_slotd() {
    slotd_running && return 0
    log "starting pkcsslotd"
    # Detach its stdio: a daemon holding our stdout would hang `eval "$(...)"`.
    pkcsslotd </dev/null >/dev/null 2>&1
    for _ in $(seq 50); do [ -S /var/run/pkcsslotd.socket ] && slotd_running && return 0; sleep 0.1; done
    log "error: pkcsslotd did not start"; exit 1
}
stop_slotd() {
    local pid
    for pid in $(ps -eo pid=,stat=,comm= | awk '$3 == "pkcsslotd" && $2 !~ /^Z/ {print $1}'); do
        kill "$pid"
    done
    for _ in $(seq 50); do slotd_running || return 0; sleep 0.1; done
    log "error: pkcsslotd did not stop"; exit 1
}
start_slotd

# The soft token's slot: the one whose token model is "IBM SoftTok" (slot 3 in Debian's
# default /etc/opencryptoki/opencryptoki.conf, but read it rather than assume it).
find_slot() {
    pkcsconf -t | awk '/^Token #[0-9]+ Info:/ {s=$2; sub(/^#/, "", s)}
        /Model: IBM SoftTok/ && !f {print s; f=1}'
}
slot=$(find_slot)
[ -n "$slot" ] || { log "error: no IBM SoftTok token in 'pkcsconf -t'"; exit 1; }
token_field() { pkcsconf -t -c "$slot" | sed -n "s/^[[:space:]]*$1: //p" | sed 's/[[:space:]]*$//'; }

umask 077
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

emit() {
    echo "export HSMCA_OCK_MODULE=$module"
    echo "export HSMCA_OCK_SLOT=$slot"
    printf 'export HSMCA_OCK_LABEL=%q\n' "$label"
    echo "export HSMCA_OCK_PIN_FILE=$dir/user.pin"
}

# Reuse: this DIR made the token, the label matches and the user PIN logs in.
flags=$(token_field Flags)
ours=false
if [ -s "$dir/user.pin" ] && [ -s "$dir/so.pin" ] &&
    [ "$(cat "$tokdir/hsmca-owner" 2>/dev/null)" = "$dir" ] &&
    [ "$(token_field Label)" = "$label" ] && [[ $flags == *USER_PIN_INITIALIZED* ]]; then
    ours=true
fi
if $ours && [[ $flags == *USER_PIN_LOCKED* ]]; then
    # Three wrong user PINs lock it for good (tests try wrong PINs on purpose); the SO
    # re-setting the same PIN (C_InitPIN) unlocks it and keeps the keys.
    log "user PIN locked: resetting it with the SO PIN"
    pkcsconf -u -c "$slot" -S "$(cat "$dir/so.pin")" -n "$(cat "$dir/user.pin")"
fi
if $ours &&
    pkcs11-tool --module "$module" --slot "$slot" --login --pin "$(cat "$dir/user.pin")" \
        --list-objects >/dev/null 2>&1; then
    log "reusing token '$label' in slot $slot"
    emit
    exit 0
fi

# (Re)create. Refuse to destroy a token this script did not make, unless told to.
if [[ $flags == *TOKEN_INITIALIZED* ]] && [ ! -e "$tokdir/hsmca-owner" ] &&
    [ "${HSMCA_OCK_WIPE:-0}" != 1 ]; then
    log "error: the soft token is initialised ('$(token_field Label)') and was not made by" \
        "this script; set HSMCA_OCK_WIPE=1 to destroy it"
    exit 1
fi
if [[ $flags == *TOKEN_INITIALIZED* ]] || [ -e "$tokdir/NVTOK.DAT" ]; then
    log "wiping the soft token in $tokdir"
    stop_slotd
    # The token's state is its files plus a shared-memory copy that outlives pkcsslotd.
    rm -f "$tokdir"/NVTOK.DAT "$tokdir"/MK_SO "$tokdir"/MK_USER "$tokdir"/TOK_OBJ/* \
        "$tokdir"/hsmca-owner /dev/shm/var.lib.opencryptoki.swtok
    start_slotd
fi
echo "$dir" >"$tokdir/hsmca-owner"

random_pin() {
    local p
    while :; do
        p=$(od -An -N8 -tu8 /dev/urandom | tr -d ' \n' | cut -c1-8)
        [ "${#p}" -eq 8 ] && [ "$p" != 12345678 ] && [ "$p" != 87654321 ] && break
    done
    echo "$p"
}
so_pin=$(random_pin)
user_pin=$(random_pin)
printf '%s' "$so_pin" >"$dir/so.pin"
printf '%s' "$user_pin" >"$dir/user.pin"
chmod 600 "$dir/so.pin" "$dir/user.pin"

# Factory SO PIN -> init with label -> new SO PIN -> set the user PIN (C_InitPIN). In 3.8
# C_InitPIN leaves no USER_PIN_TO_BE_CHANGED flag, so no C_SetPIN step is needed (checked).
echo "$label" | pkcsconf -I -c "$slot" -S 87654321 >/dev/null
pkcsconf -P -c "$slot" -S 87654321 -n "$so_pin"
pkcsconf -u -c "$slot" -S "$so_pin" -n "$user_pin"
flags=$(token_field Flags)
if [[ $flags == *USER_PIN_TO_BE_CHANGED* ]]; then
    # Newer openCryptoki versions want the user PIN changed once; do it with a fresh one.
    new_pin=$(random_pin)
    pkcsconf -p -c "$slot" -U "$user_pin" -n "$new_pin"
    printf '%s' "$new_pin" >"$dir/user.pin"
fi
log "initialised token '$label' in slot $slot"
emit
