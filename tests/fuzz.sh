#!/usr/bin/env bash
# Runs every fuzz target of tests/fuzz (cargo-fuzz, libFuzzer) for a bounded time and fails
# on any crash, hang (>10 s for one input) or allocation beyond 2 GiB.
#   tests/fuzz.sh [SECONDS_PER_TARGET]     (default 30; CI runs tests/run.sh's figure)
# Per target it prints the executions, the coverage (libFuzzer's cov: and ft: counts) and the
# crashes; a crash's input is kept under target/fuzz-artifacts/<target>/ — reproduce it with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir tests/fuzz --sanitizer none \
#       --target-dir tests/fuzz/target <target> <file>
# and add it to models/tests/hostile_files.rs as a regression test. Corpora grow in
# target/fuzz-corpus/<target>/ (seeded from tests/fixtures and tests/fuzz/seeds) and are kept
# between runs, so longer or repeated runs go deeper.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-30}

# cargo-fuzz passes -Z flags (sanitizer coverage); stable rustc accepts them with this.
export RUSTC_BOOTSTRAP=1
export PATH="$HOME/.cargo/bin:$PATH"
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

# No sanitizer: safe Rust needs no AddressSanitizer to find panics, aborts, hangs and huge
# allocations, and the build is much shorter (see the README's test section).
flags=(--fuzz-dir tests/fuzz --sanitizer none --target-dir tests/fuzz/target)
start=$SECONDS
cargo fuzz build "${flags[@]}"
echo "fuzz build: $((SECONDS - start)) s"

corpus=target/fuzz-corpus
artifacts=target/fuzz-artifacts
fixtures=tests/fixtures
seed() { # seed TARGET FILE...: copy seeds into the target's corpus (kept names, no overwrite)
    local t=$1
    shift
    for f in "$@"; do
        local to
        to="$corpus/$t/$(echo "${f#"$fixtures"/}" | tr / _)"
        [ -e "$to" ] || cp "$f" "$to"
    done
}

failed=()
for t in $(cargo fuzz list --fuzz-dir tests/fuzz); do
    mkdir -p "$corpus/$t" "$artifacts/$t"
    case $t in
    gguf) seed gguf "$fixtures"/*/*.gguf tests/fuzz/seeds/gguf/* ;;
    safetensors)
        seed safetensors "$fixtures"/qwen2/model.safetensors "$fixtures"/llama_gqa/*.index.json \
            tests/fuzz/seeds/safetensors/*
        ;;
    pth) seed pth "$fixtures"/rwkv7_blink/model.pth "$fixtures"/pth_hostile/*.pth ;;
    config) seed config "$fixtures"/*/config.json ;;
    openai_request) seed "$t" tests/fuzz/seeds/"$t"/* ;;
    tokenizer)
        seed tokenizer "$fixtures"/gla/tokenizer.json "$fixtures"/llada/tokenizer.json
        printf '%s\0%s' "$(cat "$fixtures"/gla/tokenizer.json)" "Hello wörld <|endoftext|> 12" \
            >"$corpus/tokenizer/with_text"
        ;;
    chat_template)
        i=0
        for f in "$fixtures"/*/tokenizer_config.json "$fixtures"/smollm2/chat_template_cases.json; do
            python3 -c 'import json,sys; t=json.load(open(sys.argv[1])).get("chat_template"); print(t if isinstance(t,str) else "",end="")' "$f" \
                >"$corpus/chat_template/template_$i"
            printf '\0system\0Be brief.\0user\0Hello\0assistant\0Hi!\0user\0Bye' >>"$corpus/chat_template/template_$i"
            i=$((i + 1))
        done
        ;;
    esac
    before=$(find "$artifacts/$t" -type f | wc -l)
    log="$artifacts/$t.log"
    status=0
    cargo fuzz run "${flags[@]}" "$t" "$corpus/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -malloc_limit_mb=2048 -timeout=10 \
        -artifact_prefix="$artifacts/$t/" -print_final_stats=1 >"$log" 2>&1 || status=$?
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
    cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -1 || true)
    crashes=$(($(find "$artifacts/$t" -type f | wc -l) - before))
    echo "fuzz $t: ${execs} executions in ${secs} s, ${cov:-cov: ?}, crashes: $crashes"
    if [ "$status" -ne 0 ] || [ "$crashes" -ne 0 ]; then
        failed+=("$t")
        grep -E 'panicked|ERROR: libFuzzer|SUMMARY|Test unit written' "$log" | head -5 || true
    fi
done
echo "fuzz step: $((SECONDS - start)) s"
if [ ${#failed[@]} -ne 0 ]; then
    echo "fuzz targets that failed: ${failed[*]} (logs and inputs in $artifacts/)"
    exit 1
fi
