#!/usr/bin/env bash
# Run every cargo-fuzz target (fuzz/fuzz_targets) for <minutes> in total, split evenly.
#
#   scripts/fuzz.sh <minutes>
#
# Ends with one parseable line per target and a total:
#   fuzz target=<name> execs=<N> crashes=<N>
#   fuzz total execs=<N> crashes=<N>
# Exit status: 0 no crash, 1 crashes found (inputs in fuzz/artifacts/<target>/), 2 build failed.
#
# Build: `cargo fuzz build -O` (cargo-fuzz 0.13) on stable Rust with RUSTC_BOOTSTRAP=1, which
# lets stable accept the -Z flags cargo-fuzz passes; AddressSanitizer by default
# (PRIMA_FUZZ_SANITIZER=none to skip it). Without cargo-fuzz, the same instrumentation is
# requested with stable -C flags and libfuzzer-sys links libFuzzer (no sanitizer).
# Builds go to PRIMA_FUZZ_TARGET_DIR (default "$CARGO_TARGET_DIR-fuzz"): the flags differ
# from normal builds, so sharing a target dir would rebuild both each time.
#
# A crash does not end a target's run: the fuzzer restarts for the time left (at most
# PRIMA_FUZZ_MAX_CRASHES restarts). New corpus entries go to a scratch directory; the
# committed seeds (fuzz/corpus) and regressions (fuzz/regressions) are read, never written.
set -uo pipefail

minutes=${1:?usage: scripts/fuzz.sh <minutes>}
root=$(cd "$(dirname "$0")/.." && pwd)
# Same default target location as every other script (~/.cache/prima-node/...), so the
# sanitizer build of the dependencies is made once per machine.
. "$root/scripts/env.sh"
targets=(dimse_command pdata_pdu instance_header imaging_slice structured_dataset)
sanitizer=${PRIMA_FUZZ_SANITIZER:-address}
max_crashes=${PRIMA_FUZZ_MAX_CRASHES:-10}
target_dir=${PRIMA_FUZZ_TARGET_DIR:-${CARGO_TARGET_DIR:-$root/target}-fuzz}
triple=$(rustc -vV | sed -n 's/^host: //p')

total_s=$(awk -v m="$minutes" 'BEGIN { printf "%d", m * 60 }')
per_s=$((total_s / ${#targets[@]}))
((per_s < 5)) && per_s=5

build() {
    if cargo fuzz --version >/dev/null 2>&1; then
        echo "fuzz: building with cargo fuzz (sanitizer: $sanitizer) into $target_dir" >&2
        if (cd "$root/fuzz" && RUSTC_BOOTSTRAP=1 cargo fuzz build -O --sanitizer "$sanitizer" \
            --target-dir "$target_dir" >&2); then
            return 0
        fi
        echo "fuzz: cargo fuzz build failed; trying the plain libfuzzer-sys build" >&2
    else
        echo "fuzz: cargo-fuzz not installed (cargo install cargo-fuzz); plain libfuzzer-sys build" >&2
    fi
    # What cargo-fuzz passes, minus the sanitizer's -Z flag: all stable -C options.
    RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks" \
        cargo build --release --manifest-path "$root/fuzz/Cargo.toml" --target "$triple" \
        --target-dir "$target_dir" --bins >&2
}

if ! build; then
    echo "fuzz: build failed" >&2
    for t in "${targets[@]}"; do echo "fuzz target=$t execs=0 crashes=0"; done
    echo "fuzz total execs=0 crashes=0"
    exit 2
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/prima-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT
export PRIMA_FUZZ_SCRATCH=$work
summary=()
all_execs=0
all_crashes=0
for t in "${targets[@]}"; do
    bin=$target_dir/$triple/release/$t
    mkdir -p "$work/corpus/$t" "$root/fuzz/artifacts/$t"
    seeds=("$root/fuzz/corpus/$t")
    [[ -d $root/fuzz/regressions/$t ]] && seeds+=("$root/fuzz/regressions/$t")
    execs=0
    crashes=0
    end=$((SECONDS + per_s))
    run=0
    while ((SECONDS < end && crashes <= max_crashes)); do
        run=$((run + 1))
        log=$work/$t.$run.log
        "$bin" -max_total_time=$((end - SECONDS)) -print_final_stats=1 -rss_limit_mb=2048 \
            -timeout=20 -artifact_prefix="$root/fuzz/artifacts/$t/" \
            "$work/corpus/$t" "${seeds[@]}" >"$log" 2>&1
        rc=$?
        n=$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\).*/\1/p' "$log" | tail -1)
        if [[ -z $n ]]; then
            n=$(grep -o '^#[0-9]*' "$log" | tail -1 | tr -d '#')
        fi
        execs=$((execs + ${n:-0}))
        if ((rc != 0)); then
            crashes=$((crashes + 1))
            echo "fuzz: $t crashed (exit $rc):" >&2
            grep -E 'panicked at|panic escaped|ERROR: (libFuzzer|AddressSanitizer)|SUMMARY|Test unit written' "$log" | head -8 >&2
        fi
    done
    echo "fuzz: $t: $execs executions in ${per_s}s, $crashes crashes, $(find "$work/corpus/$t" -type f | wc -l) new corpus entries" >&2
    summary+=("fuzz target=$t execs=$execs crashes=$crashes")
    all_execs=$((all_execs + execs))
    all_crashes=$((all_crashes + crashes))
done
printf '%s\n' "${summary[@]}"
echo "fuzz total execs=$all_execs crashes=$all_crashes"
((all_crashes == 0)) || exit 1
