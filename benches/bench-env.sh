# Sourced by the benchmarks (e2e.sh, ab.sh) from the repository root with `repo` set: builds
# hsmca and the load generator (release), makes a work directory that is removed on exit,
# a fresh SoftHSM2 token, the dev ceremony's hierarchy, TLS material for one load client, and
# $work/hsmca.toml serving it on 127.0.0.1:18443 (operations on :19090).
echo "==> building hsmca and the load generator (release)" >&2
cargo build --release --locked --quiet --bin hsmca --example loadgen
hsmca=$repo/target/release/hsmca
loadgen=$repo/target/release/examples/loadgen

work=$(mktemp -d)
results=$work/results
mkdir -p "$results"
cleanup() {
    # Whatever the benchmark still has running: servers, a load run.
    kill $(jobs -p) 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

softhsm/new-token.sh "$work/token" hsmca-bench >/dev/null
export SOFTHSM2_CONF=$work/token/softhsm2.conf
HSMCA=$hsmca deploy/dev-ceremony.sh "$work/ceremony" hsmca-bench "$work/token/user.pin" 2>/dev/null
"$hsmca" dev-tls --out-dir "$work/tls" --client load=spiffe://mesh.example/load >/dev/null
token=bench-token
token_sha=$(printf %s "$token" | sha256sum | cut -d' ' -f1)
cat >"$work/hsmca.toml" <<CONF
[hsm]
module = "/usr/lib/softhsm/libsofthsm2.so"
token_label = "hsmca-bench"
pin_file = "$work/token/user.pin"

[server]
listen = "127.0.0.1:18443"
ops_listen = "127.0.0.1:19090"
certificate = "tls/server.pem"
key = "tls/server-key.pem"
client_ca = "tls/tls-ca.pem"

[storage]
ledger = "ledger.sqlite"
audit_log = "audit.log"

[trust]
roots = ["ceremony/out/root-2026.pem"]

[issuers.online-p256]
certificate = "ceremony/out/online-p256-2026.pem"
key_label = "online-p256-2026"

[profiles.issuing-ca]
kind = "issuing-ca"
issuer = "online-p256"
default_ttl = "1h"
max_ttl = "24h"

[profiles.workload]
kind = "workload"
issuer = "online-p256"
default_ttl = "1h"
max_ttl = "24h"

[[clients]]
name = "load"
identity = "spiffe://mesh.example/load"
profiles = ["issuing-ca", "workload"]
trust_domains = ["mesh.example"]
max_ttl = "24h"
requests_per_minute = 100000000
burst = 10000000

[vault]
sign_intermediate_profile = "issuing-ca"

[[vault.static_tokens]]
sha256 = "$token_sha"
identity = "spiffe://mesh.example/load"

[vault.roles]
workload = "workload"
CONF
