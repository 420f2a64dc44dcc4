#!/usr/bin/env bash
# Build kestrel-web for the browser: the release wasm, wasm-bindgen's ES module glue into
# web/www/pkg, then wasm-opt (npm binaryen; Debian's is broken) when web/tests has it.
# Prints the .wasm size. Needs wasm-bindgen-cli at the version in Cargo.lock
# (tests/setup-debian.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --target wasm32-unknown-unknown -p kestrel-web
wasm-bindgen --target web --no-typescript --out-dir web/www/pkg \
    target/wasm32-unknown-unknown/release/kestrel_web.wasm
wasm=web/www/pkg/kestrel_web_bg.wasm
before=$(stat -c %s "$wasm")
opt=web/tests/node_modules/.bin/wasm-opt
if [ -x "$opt" ]; then
    "$opt" -O2 --enable-bulk-memory --enable-nontrapping-float-to-int --enable-sign-ext \
        --enable-mutable-globals --enable-reference-types --enable-multivalue \
        "$wasm" -o "$wasm.opt"
    mv "$wasm.opt" "$wasm"
fi
after=$(stat -c %s "$wasm")
echo "kestrel_web_bg.wasm: $after bytes ($((after / 1024)) KiB; $before before wasm-opt)"
