#!/usr/bin/env bash
# Installs the Debian packages hsmca's SoftHSM2 tooling and tests need, only when missing.
# Idempotent: a second run installs nothing and does not touch the network.
#   softhsm2      - the PKCS#11 module that stands in for a hardware HSM
#   opensc        - pkcs11-tool (inspects key attributes) and pkcs11-spy (traces PKCS#11 calls)
#   openssl       - independent verification of signatures and certificates
#   python3-venv  - python3 -m venv, for the test venv of tests/run.sh (pkilint, cryptography)
#   systemd       - systemd-analyze, which scores the hardening of deploy/systemd/hsmca.service
set -euo pipefail

# More packages may be named as arguments (tests/run.sh adds the ones only the tests need).
packages=(softhsm2 opensc openssl python3-venv systemd "$@")
missing=()
for pkg in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "error: Debian packages missing (${missing[*]}) and not running as root: run 'apt-get install ${missing[*]}' as root" >&2
    exit 1
fi

echo "installing Debian packages: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
