#!/usr/bin/env bash
# Runs hsmca end to end on embedded defaults, on a fresh Debian machine (as root), and leaves
# the appliance serving on https://127.0.0.1:8443 in the foreground (Ctrl-C stops it).
#
# On the way: install SoftHSM2, build hsmca, make a development token, run the development
# key ceremony on it (root, online intermediates, root CRL), make development TLS material
# (a throwaway TLS CA, a localhost server certificate, an `istiod` client certificate), and
# write .dev/hsmca.toml. Idempotent: a second run reuses the token, the ceremony outputs and
# the TLS material, and serves again.
set -euo pipefail
cd "$(dirname "$0")/.."

softhsm/install-deps.sh
echo "==> building hsmca (release)" >&2
cargo build --release --locked --quiet
hsmca=$PWD/target/release/hsmca

dev=$PWD/.dev
token_dir=$dev/token
if [ ! -f "$token_dir/softhsm2.conf" ]; then
    echo "==> creating the development SoftHSM2 token in $token_dir" >&2
    softhsm/new-token.sh "$token_dir" hsmca-dev >/dev/null
fi
export SOFTHSM2_CONF=$token_dir/softhsm2.conf

# The development ceremony: the shipped hierarchy on the one development token.
HSMCA=$hsmca deploy/dev-ceremony.sh "$dev/ceremonies" hsmca-dev "$token_dir/user.pin"

if [ ! -f "$dev/tls/officer.pem" ]; then
    rm -rf "$dev/tls"
    echo "==> development TLS material in $dev/tls" >&2
    "$hsmca" dev-tls --out-dir "$dev/tls" --client istiod=spiffe://mesh.example/istiod \
        --client officer=spiffe://mesh.example/officer >/dev/null
fi

# Derived from the steps above, so rewritten on every run.
config=$dev/hsmca.toml
mkdir -p "$dev/witness"
cat >"$config" <<CONF
# Development configuration written by deploy/quickstart.sh; see docs/api.md.
[hsm]
module = "/usr/lib/softhsm/libsofthsm2.so"
token_label = "hsmca-dev"
pin_file = "$token_dir/user.pin"

[server]
listen = "127.0.0.1:8443"
certificate = "tls/server.pem"
key = "tls/server-key.pem"
client_ca = "tls/tls-ca.pem"

[storage]
ledger = "ledger.sqlite"
# The ceremonies' log: one hash chain from the root ceremony to every issuance.
audit_log = "ceremonies/out/audit.log"

# Signed checkpoints of the audit chain (docs/operations.md, "Checkpoints and witnesses"). In
# production the witness file lives on another disk or host, and syslog ships off the machine.
[audit]
checkpoint_key = "audit-checkpoint-2026"
checkpoint_interval = "5m"
witness_file = "witness/checkpoints.jsonl"

[trust]
roots = ["ceremonies/out/root-2026.pem"]

[issuers.online-p256]
certificate = "ceremonies/out/online-p256-2026.pem"
key_label = "online-p256-2026"

[issuers.online-rsa2048]
certificate = "ceremonies/out/online-rsa2048-2026.pem"
key_label = "online-rsa2048-2026"

[profiles.issuing-ca]
kind = "issuing-ca"
issuer = "online-p256"
default_ttl = "720h"
max_ttl = "2160h"

[profiles.workload]
kind = "workload"
issuer = "online-p256"
default_ttl = "1h"
max_ttl = "24h"

[[officers]]
name = "Developer (dev officer, not for production)"
identity = "spiffe://mesh.example/officer"

[[clients]]
name = "istiod"
identity = "spiffe://mesh.example/istiod"
profiles = ["issuing-ca", "workload"]
trust_domains = ["mesh.example"]
max_ttl = "2160h"

# The Vault PKI dialect, for SPIRE, cert-manager and hvac (docs/integrations/).
[vault]
mount = "pki"
sign_intermediate_profile = "issuing-ca"

[vault.roles]
workload = "workload"
CONF

out=$dev/istio-cacerts-$(date +%Y%m%d-%H%M%S)
cat >&2 <<MSG

==> hsmca serves on https://127.0.0.1:8443 (Ctrl-C stops it). From another shell, request an
    Istio intermediate (cacerts files; the key is made on your machine and never sent):

  $hsmca request --server https://127.0.0.1:8443 --cert $dev/tls/istiod.pem --key $dev/tls/istiod-key.pem --ca $dev/tls/tls-ca.pem --trust-domain mesh.example --layout istio --out-dir $out

    Revoke as the dev officer:  $hsmca revoke --server https://127.0.0.1:8443 --cert $dev/tls/officer.pem --key $dev/tls/officer-key.pem --ca $dev/tls/tls-ca.pem --serial SERIAL --reason superseded
    Audit log and its checkpoints: $hsmca audit verify $dev/ceremonies/out/audit.log --checkpoint-key $dev/ceremonies/out/audit-checkpoint-2026.pub.pem --witness $dev/witness/checkpoints.jsonl
MSG
exec "$hsmca" --config "$config" serve
