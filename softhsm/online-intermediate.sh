#!/usr/bin/env bash
# An online intermediate on another PKCS#11 module, the ceremony way: a key ceremony makes
# its key on the module's token, then the development root (on a SoftHSM2 token, made by
# deploy/dev-ceremony.sh) certifies the public key in an intermediate ceremony. For the tests
# and benchmarks that run hsmca on opencryptoki, a TPM or p11-kit (tests/modules.rs,
# benches/modules.sh).
#
#   softhsm/online-intermediate.sh CEREMONY_DIR LABEL KEY_TYPE MODULE TOKEN PIN_FILE \
#       ROOT_TOKEN ROOT_PIN_FILE
#
# CEREMONY_DIR is the dev ceremony's directory (its out/ holds root-2026.pem and the
# ceremony audit log). Writes key-LABEL.toml and intermediate-LABEL.toml there and
# out/LABEL.pem, the certificate. SOFTHSM2_CONF must point at the root token's config, and
# whatever the module needs (TPM2_PKCS11_TCTI, ...) must be in the environment; HSMCA may name
# the hsmca binary (default: target/release/hsmca).
set -euo pipefail
if [ "$#" -ne 8 ]; then
    echo "usage: $0 CEREMONY_DIR LABEL KEY_TYPE MODULE TOKEN PIN_FILE ROOT_TOKEN ROOT_PIN_FILE" >&2
    exit 2
fi
dir=$1 label=$2 key_type=$3 module=$4 token=$5 pin_file=$6 root_token=$7 root_pin_file=$8
hsmca=${HSMCA:-$(cd "$(dirname "$0")/.." && pwd)/target/release/hsmca}

header() { # transcript name
    printf '[ceremony]\nofficers = ["Test officer", "Test witness"]\naudit_log = "out/audit.log"\ntranscript = "out/%s"\n' "$1"
}
{
    header "key-$label"
    cat <<TOML

[hsm]
module = "$module"
token_label = "$token"
pin_file = "$pin_file"

[key]
label = "$label"
type = "$key_type"

[outputs]
public_key = "out/$label.pub.pem"
TOML
} >"$dir/key-$label.toml"
{
    header "intermediate-$label"
    cat <<TOML

[hsm]
module = "/usr/lib/softhsm/libsofthsm2.so"
token_label = "$root_token"
pin_file = "$root_pin_file"

[issuer]
certificate = "out/root-2026.pem"
key_label = "mesh-root-2026"

[subject]
public_key = "out/$label.pub.pem"

[certificate]
subject = { country = "US", organization = "Example Corp", common_name = "Example Mesh Online CA $label" }
not_before = 2026-11-01T00:00:00Z
not_after = 2031-11-01T00:00:00Z
signature_algorithm = "ecdsa-p256-sha256"
key_usage = ["key-cert-sign", "crl-sign"]
path_length = 1

[outputs]
certificate = "out/$label.pem"
TOML
} >"$dir/intermediate-$label.toml"
"$hsmca" ceremony key --config "$dir/key-$label.toml" >/dev/null
"$hsmca" ceremony intermediate --config "$dir/intermediate-$label.toml" >/dev/null
