#!/usr/bin/env bash
# Runs every check and test of hsmca, on a fresh Debian machine (as root). Installs what it
# needs (Debian packages, cargo-nextest if missing, a Python venv in .venv) and is idempotent.
#
# The tests drive real SoftHSM2 tokens made fresh per run; they fail, never skip, when a tool
# is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# golang-go: Go's crypto/x509, the verifier of SPIRE and istiod (tests/go/svid_verify.go);
# postgresql: the server tests/common/postgres.rs starts per test, as the postgres user;
# haproxy: the load balancer tests/replicas.rs puts in front of the replicas;
# opencryptoki, swtpm, tpm2-pkcs11 and p11-kit: the other PKCS#11 modules tests/modules.rs and
# tests/p11kit_remote.rs run hsmca on (softhsm/*-token.sh, softhsm/p11kit-remote.sh set them up).
softhsm/install-deps.sh golang-go postgresql haproxy opencryptoki swtpm swtpm-tools \
    libtpm2-pkcs11-1 libtpm2-pkcs11-tools tpm2-tools p11-kit p11-kit-modules
if ! cargo nextest --version >/dev/null 2>&1; then
    echo "==> installing cargo-nextest" >&2
    cargo install cargo-nextest --locked --quiet
fi
# Fuzzing needs a nightly toolchain (sanitizers) and cargo-fuzz.
if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "tests/run.sh: the fuzz targets need a nightly toolchain: rustup toolchain install nightly" >&2
    exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "==> installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked --quiet
fi

# The tools that check our output from outside (pkilint, pyca cryptography, hvac,
# kubernetes-validate, schemathesis), in a venv
# rebuilt only when tests/py-requirements.txt changes. The tests find it as HSMCA_PYTHON.
requirements=tests/py-requirements.txt
stamp=.venv/requirements.sha256
if [ ! -x .venv/bin/python ] || ! sha256sum --status -c "$stamp" 2>/dev/null; then
    echo "==> creating the test venv .venv ($requirements)" >&2
    rm -rf .venv
    python3 -m venv .venv
    .venv/bin/pip install --quiet --disable-pip-version-check -r "$requirements"
    sha256sum "$requirements" >"$stamp"
fi
export HSMCA_PYTHON=$PWD/.venv/bin/python

echo "==> cargo fmt --check" >&2
cargo fmt --all -- --check
echo "==> no circle of imports between files of src/" >&2
python3 .ci/import-cycles.py
echo "==> cargo clippy -D warnings" >&2
cargo clippy --all-targets --locked --quiet -- -D warnings
echo "==> cargo test --doc" >&2
cargo test --doc --locked --quiet
echo "==> fuzzing: CSR parsing, the config loader, Vault request decoding (${HSMCA_FUZZ_SECONDS:-20}s each)" >&2
tests/fuzz/run.sh "${HSMCA_FUZZ_SECONDS:-20}"
# The fault-injecting PKCS#11 module the fault tests load: nextest builds test targets only.
cargo build --locked --quiet -p hsmca-fault-pkcs11
# Last, so that its summary line closes the output.
echo "==> cargo nextest run (unit and integration tests)" >&2
cargo nextest run --locked --no-fail-fast
