#!/usr/bin/env bash
# Runs hsmca end to end on embedded defaults, on a fresh Debian machine (as root).
#
# Today that means: install SoftHSM2, build hsmca, make a development token, run the
# development key ceremony on it (root, online intermediates, root CRL; transcripts and
# audit log in .dev/ceremonies/out/), and show `hsmca hsm info`. Idempotent: a second run
# reuses the token, skips the ceremonies already done and shows the inventory again.
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

# The development ceremony: the shipped hierarchy (root, two online intermediate keys and
# their certificates, the root CRL) on the one development token. Each ceremony runs once;
# a second quick start finds its outputs and skips it.
ceremonies=$dev/ceremonies
mkdir -p "$ceremonies"
for file in deploy/ceremonies/0[1-6]-*.toml; do
    target=$ceremonies/$(basename "$file")
    if [ ! -f "$target" ]; then
        sed -e 's/^token_label = .*/token_label = "hsmca-dev"/' \
            -e "s|^pin_env = .*|pin_file = \"$token_dir/user.pin\"|" \
            -e 's/^officers = .*/officers = ["Developer (dev ceremony, not for production)"]/' \
            "$file" >"$target"
    fi
done
run_ceremony() { # kind config output
    if [ -f "$ceremonies/$3" ]; then
        echo "==> ceremony $1 ($2): done earlier, $3 exists" >&2
    else
        echo "==> ceremony $1 ($2)" >&2
        "$hsmca" ceremony "$1" --config "$ceremonies/$2"
    fi
}
run_ceremony root 01-root.toml out/root-2026.pem
run_ceremony key 02-key-online-p256.toml out/online-p256-2026.pub.pem
run_ceremony key 03-key-online-rsa2048.toml out/online-rsa2048-2026.pub.pem
run_ceremony intermediate 04-intermediate-p256.toml out/online-p256-2026.pem
run_ceremony intermediate 05-intermediate-rsa2048.toml out/online-rsa2048-2026.pem
run_ceremony crl 06-root-crl.toml out/root-2026-crl-1.pem
openssl verify -CAfile "$ceremonies/out/root-2026.pem" \
    "$ceremonies/out/online-p256-2026.pem" "$ceremonies/out/online-rsa2048-2026.pem"
"$hsmca" audit verify "$ceremonies/out/audit.log"

echo "==> hsmca hsm info" >&2
"$hsmca" --config "$config" hsm info
cat >&2 <<MSG

Done. To use this token from your shell:
  export SOFTHSM2_CONF=$SOFTHSM2_CONF
  $hsmca --config $config hsm info
  ls $PWD/$ceremonies/out    # certificates, transcripts, audit log
MSG
