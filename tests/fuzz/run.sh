#!/usr/bin/env bash
# Runs each fuzz target for SECONDS (default 20) from the committed seeds, on nightly with
# AddressSanitizer, as the README's test command does. New inputs go to a scratch corpus,
# so the seeds in the repository never change; a crash leaves its input in
# tests/fuzz/artifacts/<target>/ and fails the run.
#
#   tests/fuzz/run.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-20}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(csr config vault_sign_body)
fi
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
cargo +nightly fuzz build --fuzz-dir .
for target in "${targets[@]}"; do
    echo "==> fuzzing $target for ${seconds}s" >&2
    mkdir -p "$scratch/$target"
    if ! cargo +nightly fuzz run --fuzz-dir . "$target" "$scratch/$target" "seeds/$target" -- \
        -max_total_time="$seconds" -max_len=65536 -timeout=10 -print_final_stats=1 \
        >"$scratch/$target.log" 2>&1; then
        tail -n 60 "$scratch/$target.log" >&2
        echo "fuzz target $target failed: its input is in tests/fuzz/artifacts/$target/" >&2
        exit 1
    fi
    grep -E "^stat::(number_of_executed_units|peak_rss_mb)|^Done" "$scratch/$target.log" >&2 || true
done
