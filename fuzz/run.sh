#!/usr/bin/env bash
# Runs one fuzz target under libFuzzer, bounded, as one process at low priority (the machine is
# shared), and prints libFuzzer's final stats (`stat::number_of_executed_units` is the count
# docs/fuzzing.md records). New interesting inputs go to fuzz/corpus-run/<target> (not
# committed); the seeds in fuzz/corpus/<target> are read, never written. A crash, hang (over
# 10 s) or out-of-memory (over 2 GB) leaves its input in fuzz/artifacts/<target>/.
#   fuzz/run.sh TARGET [MAX_SECONDS=600] [MAX_RUNS=10000000]
# Build first (docs/fuzzing.md): RUSTC_BOOTSTRAP=1 cargo fuzz build --sanitizer none
# FUZZ_BIN runs another build of the target (a copy kept while fuzz/target is being rebuilt).
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:?usage: fuzz/run.sh TARGET [MAX_SECONDS] [MAX_RUNS]}
seconds=${2:-600}
runs=${3:-10000000}
bin=${FUZZ_BIN:-fuzz/target/x86_64-unknown-linux-gnu/release/$target}
[ -x "$bin" ] || { echo "fuzz/run.sh: $bin missing; run: RUSTC_BOOTSTRAP=1 cargo fuzz build --sanitizer none" >&2; exit 1; }
mkdir -p "fuzz/corpus-run/$target" "fuzz/artifacts/$target"
exec nice -n 10 "$bin" "fuzz/corpus-run/$target" "fuzz/corpus/$target" \
  -max_total_time="$seconds" -runs="$runs" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
  -print_final_stats=1 -artifact_prefix="fuzz/artifacts/$target/"
