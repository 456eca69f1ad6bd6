#!/usr/bin/env bash
# p11-kit remoting as a network-HSM stand-in: `p11-kit server` exports one SoftHSM2 token on a
# unix socket, and hsmca loads p11-kit's client module, which forwards every PKCS#11 call over
# that socket.
#
#   eval "$(bash softhsm/p11kit-remote.sh)"
#
# Installs the Debian packages `p11-kit` (the `p11-kit` command with its `server` tool) and
# `p11-kit-modules` (p11-kit-client.so) when missing, and prints one eval-able line:
#   HSMCA_P11KIT_CLIENT=/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so
# Diagnostics go to stderr. Idempotent: a second run installs nothing.
#
# Serving a token (foreground; -f keeps it attached, -n names the socket; without -f the
# server daemonises and prints P11_KIT_SERVER_ADDRESS/P11_KIT_SERVER_PID as shell exports):
#   SOFTHSM2_CONF=DIR/softhsm2.conf p11-kit server -f -n /path/p11.sock \
#       --provider /usr/lib/softhsm/libsofthsm2.so "pkcs11:token=LABEL"
# Using it (the client needs nothing but the address; it reads no module config):
#   P11_KIT_SERVER_ADDRESS=unix:path=/path/p11.sock \
#       pkcs11-tool --module "$HSMCA_P11KIT_CLIENT" -L
# The server accepts any number of clients, each on its own connection; every client's
# PKCS#11 calls are run by a forked child of the server against its own instance of the
# provider. Killing the server (and its children) drops every client's link, and a server
# started again on the same socket path serves new connections.
set -euo pipefail

log() { echo "p11kit-remote: $*" >&2; }

missing=()
for pkg in p11-kit p11-kit-modules; do
    [ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)" = "install ok installed" ] ||
        missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        log "error: Debian packages missing (${missing[*]}) and not running as root: run 'apt-get install ${missing[*]}' as root"
        exit 1
    fi
    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 update -qq >/dev/null
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

command -v p11-kit >/dev/null || { log "error: p11-kit is not on PATH after installing"; exit 1; }

# Where the package puts the client module: ask dpkg rather than guessing the multiarch path.
client=$(dpkg-query -L p11-kit-modules 2>/dev/null | grep '/p11-kit-client\.so$' | head -n 1 || true)
if [ -z "$client" ] || [ ! -f "$client" ]; then
    for candidate in /usr/lib/*/pkcs11/p11-kit-client.so /usr/lib/pkcs11/p11-kit-client.so; do
        if [ -f "$candidate" ]; then
            client=$candidate
            break
        fi
    done
fi
[ -n "$client" ] && [ -f "$client" ] || { log "error: p11-kit-client.so not found"; exit 1; }

printf 'HSMCA_P11KIT_CLIENT=%q\n' "$client"
