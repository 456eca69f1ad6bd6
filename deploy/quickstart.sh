#!/usr/bin/env bash
# Runs hsmca end to end on embedded defaults, on a fresh Debian machine (as root).
#
# Today that means: install SoftHSM2, build hsmca, make a development token, generate the
# development signing key in it, and show `hsmca hsm info`. Idempotent: a second run reuses
# the token and the key under .dev/ and only shows the inventory again.
set -euo pipefail
cd "$(dirname "$0")/.."

softhsm/install-deps.sh
echo "==> building hsmca (release)" >&2
cargo build --release --locked --quiet
hsmca=target/release/hsmca

dev=.dev
token_dir=$dev/token
if [ ! -f "$token_dir/softhsm2.conf" ]; then
    echo "==> creating the development SoftHSM2 token in $token_dir" >&2
    softhsm/new-token.sh "$token_dir" hsmca-dev >/dev/null
fi
token_dir=$(cd "$token_dir" && pwd)
export SOFTHSM2_CONF=$token_dir/softhsm2.conf

config=$dev/hsmca.toml
if [ ! -f "$config" ]; then
    cat >"$config" <<CONF
# Development configuration written by deploy/quickstart.sh.
[hsm]
module = "/usr/lib/softhsm/libsofthsm2.so"
token_label = "hsmca-dev"
pin_file = "$token_dir/user.pin"
CONF
fi

if ! "$hsmca" --config "$config" hsm info 2>/dev/null | grep -q 'CKO_PRIVATE_KEY "dev-intermediate"'; then
    echo "==> generating the development signing key dev-intermediate (ECDSA P-256)" >&2
    "$hsmca" --config "$config" hsm keygen --label dev-intermediate --type ecdsa-p256 \
        --public-key-out "$dev/dev-intermediate.pub.pem"
fi

echo "==> hsmca hsm info" >&2
"$hsmca" --config "$config" hsm info
cat >&2 <<MSG

Done. To use this token from your shell:
  export SOFTHSM2_CONF=$SOFTHSM2_CONF
  $hsmca --config $config hsm info
MSG
