#!/usr/bin/env bash
# Runs the fuzz targets one after another, at nice $NICE (default 19: spare
# CPU only), each until 10 million executions or MAX_TIME seconds, and
# prints one summary line per target from libFuzzer's final output. Build
# first:
#
#   CARGO_TARGET_DIR=... cargo +nightly fuzz build -s none
#   fuzz/run.sh [target ...]      (default: every target)
#
# Crashing inputs land in artifacts/<target>/; logs in logs/<target>.log.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"
bin="${CARGO_TARGET_DIR:-target}/x86_64-unknown-linux-gnu/release"
runs="${RUNS:-10000000}"
max_time="${MAX_TIME:-480}"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo +nightly fuzz list)

mkdir -p logs
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    start=$(date +%s)
    # -rss_limit_mb/-timeout: an input that needs more than 2 GB or 10 s is a
    # finding (unbounded memory or time), not something to wait out.
    nice -n "${NICE:-19}" "$bin/$t" "corpus/$t" -runs="$runs" -max_total_time="$max_time" \
        -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
        -artifact_prefix="artifacts/$t/" >"logs/$t.log" 2>&1
    rc=$?
    secs=$(( $(date +%s) - start ))
    last=$(grep -E '^#[0-9]+' "logs/$t.log" | tail -1)
    execs=$(grep -E '^stat::number_of_executed_units' "logs/$t.log" | awk '{print $2}')
    crashes=$(find "artifacts/$t" -type f | wc -l)
    echo "$t rc=$rc execs=${execs:-?} secs=$secs crashes=$crashes last: $last"
done
