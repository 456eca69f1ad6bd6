#!/usr/bin/env bash
# Creates a fresh SoftHSM2 token in its own directory.
#
#   softhsm/new-token.sh DIR LABEL
#
# Writes:
#   DIR/softhsm2.conf  - point SOFTHSM2_CONF at it; its tokendir is DIR/tokens
#   DIR/user.pin       - the user PIN (mode 0600), what hsmca reads through `pin_file`
#   DIR/so.pin         - the security officer PIN (mode 0600)
# PINs are random unless HSMCA_USER_PIN / HSMCA_SO_PIN are set (tests set them to exercise
# wrong-PIN handling). Refuses to reuse a DIR that already holds a token: tokens are made fresh.
# Prints the `export SOFTHSM2_CONF=...` line for the caller's shell.
set -euo pipefail

if [ "$#" -ne 2 ]; then
    echo "usage: $0 DIR LABEL" >&2
    exit 2
fi
dir=$1
label=$2

command -v softhsm2-util >/dev/null || {
    echo "error: softhsm2-util not found: run softhsm/install-deps.sh first" >&2
    exit 1
}

if [ -e "$dir/tokens" ] && [ -n "$(ls -A "$dir/tokens" 2>/dev/null)" ]; then
    echo "error: $dir/tokens already holds a token; pick an empty directory" >&2
    exit 1
fi

umask 077
mkdir -p "$dir/tokens"
dir=$(cd "$dir" && pwd)

random_pin() { od -An -N8 -tu8 /dev/urandom | tr -d ' \n' | cut -c1-12; }
user_pin=${HSMCA_USER_PIN:-$(random_pin)}
so_pin=${HSMCA_SO_PIN:-$(random_pin)}
printf '%s' "$user_pin" >"$dir/user.pin"
printf '%s' "$so_pin" >"$dir/so.pin"
chmod 600 "$dir/user.pin" "$dir/so.pin"

cat >"$dir/softhsm2.conf" <<CONF
directories.tokendir = $dir/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
CONF

SOFTHSM2_CONF="$dir/softhsm2.conf" softhsm2-util --init-token --free --label "$label" \
    --so-pin "$so_pin" --pin "$user_pin" >/dev/null
echo "export SOFTHSM2_CONF=$dir/softhsm2.conf"
