#!/usr/bin/env bash
# The development key ceremony: the hierarchy shipped in deploy/ceremonies/ (root, two
# online intermediate keys and their certificates, the root CRL, the audit checkpoint key,
# the JWT-SVID signing keys)
# run on ONE development token, with outputs, transcripts and the ceremony audit log in
# OUT_DIR/out/.
#
#   deploy/dev-ceremony.sh OUT_DIR TOKEN_LABEL PIN_FILE
#
# SOFTHSM2_CONF must point at the token's config; HSMCA may name the hsmca binary (default:
# target/release/hsmca). Idempotent: a ceremony whose output exists is skipped.
# Used by deploy/quickstart.sh and by the tests; never by production, where the root lives
# on its own offline token.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${1:?usage: dev-ceremony.sh OUT_DIR TOKEN_LABEL PIN_FILE}
label=${2:?token label}
pin_file=${3:?PIN file}
hsmca=${HSMCA:-$repo/target/release/hsmca}
pin_file=$(cd "$(dirname "$pin_file")" && pwd)/$(basename "$pin_file")

mkdir -p "$out"
for file in "$repo"/deploy/ceremonies/0[1-8]-*.toml "$repo"/deploy/ceremonies/1[0-2]-*.toml; do
    target=$out/$(basename "$file")
    if [ ! -f "$target" ]; then
        sed -e "s/^token_label = .*/token_label = \"$label\"/" \
            -e "s|^pin_env = .*|pin_file = \"$pin_file\"|" \
            -e 's/^officers = .*/officers = ["Developer (dev ceremony, not for production)"]/' \
            "$file" >"$target"
    fi
done
run_ceremony() { # kind config output
    if [ -f "$out/$3" ]; then
        echo "==> ceremony $1 ($2): done earlier, $3 exists" >&2
    else
        echo "==> ceremony $1 ($2)" >&2
        "$hsmca" ceremony "$1" --config "$out/$2" >/dev/null
    fi
}
run_ceremony root 01-root.toml out/root-2026.pem
run_ceremony key 02-key-online-p256.toml out/online-p256-2026.pub.pem
run_ceremony key 03-key-online-rsa2048.toml out/online-rsa2048-2026.pub.pem
run_ceremony intermediate 04-intermediate-p256.toml out/online-p256-2026.pem
run_ceremony intermediate 05-intermediate-rsa2048.toml out/online-rsa2048-2026.pem
run_ceremony crl 06-root-crl.toml out/root-2026-crl-1.pem
run_ceremony root 07-root-2027.toml out/root-2027.pem
run_ceremony cross-sign 08-cross-sign-2027.toml out/root-2027-cross-signed-by-2026.pem
run_ceremony key 10-key-audit-checkpoint.toml out/audit-checkpoint-2026.pub.pem
run_ceremony key 11-key-jwt-es256.toml out/jwt-es256-2026.pub.pem
run_ceremony key 12-key-jwt-rs256.toml out/jwt-rs256-2026.pub.pem
openssl verify -CAfile "$out/out/root-2026.pem" \
    "$out/out/online-p256-2026.pem" "$out/out/online-rsa2048-2026.pem" >&2
"$hsmca" audit verify "$out/out/audit.log" >&2
