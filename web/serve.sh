#!/usr/bin/env bash
# Build the browser engine and serve the chat page on http://127.0.0.1:${PORT:-8000}/.
# SmolLM2-135M-Instruct is the default model when it is in Kestrel's cache
# (run `kestrel chat` once to fetch it); any other .gguf works by URL or file.
set -euo pipefail
cd "$(dirname "$0")/.."
web/build.sh
exec node web/serve.mjs --port "${PORT:-8000}" "$@"
