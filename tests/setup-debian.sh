#!/usr/bin/env bash
# What the tests need on Debian, beyond running Kestrel (desktop/setup-debian.sh, run first):
# Mesa's lavapipe Vulkan and llvmpipe GL drivers (the GPU tests run on both, with no GPU), Rust's
# wasm32 target, a Python virtual environment with the `openai` client (tests/serve_openai.py),
# for the `kestrel app` screenshot test a virtual X server, xdotool, xwd and netpbm and the X11
# libraries winit loads at run time, and for the browser tests Node.js and npm (from Debian when
# missing), Debian's chromium, wasm-bindgen-cli at the version in Cargo.lock and web/tests' npm
# packages (playwright-core, binaryen's wasm-opt).
# Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

desktop/setup-debian.sh

packages=(libvulkan1 mesa-vulkan-drivers libegl1 libgl1-mesa-dri python3-venv
    xvfb xdotool x11-apps netpbm
    libx11-6 libx11-xcb1 libxcursor1 libxi6 libxrandr2 libxkbcommon0 libxkbcommon-x11-0
    chromium)
command -v node >/dev/null 2>&1 || packages+=(nodejs)
command -v npm >/dev/null 2>&1 || packages+=(npm)
missing=()
for p in "${packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "installing ${missing[*]} (test drivers, X server, browser and their tools)"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if command -v rustup >/dev/null 2>&1 && ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
    rustup target add wasm32-unknown-unknown
fi

# The openai client for tests/serve_openai.py, in a venv of its own (KESTREL_PYENV).
pyenv="${KESTREL_PYENV:-$HOME/.cache/kestrel/pyenv}"
if ! "$pyenv/bin/python" -c "import openai" >/dev/null 2>&1; then
    echo "creating $pyenv with the openai client"
    python3 -m venv "$pyenv"
    "$pyenv/bin/pip" install -q --disable-pip-version-check openai
fi

# The browser engine's build and tests (web/build.sh, web/tests/browser.mjs).
wb_version=$(grep -A1 '^name = "wasm-bindgen"$' Cargo.lock | sed -n 's/^version = "\(.*\)"$/\1/p')
if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$wb_version" ]; then
    echo "installing wasm-bindgen-cli $wb_version (the version in Cargo.lock)"
    cargo install -q wasm-bindgen-cli --version "$wb_version"
fi
# npm ci again only when package-lock.json changed since the last install.
if ! cmp -s web/tests/package-lock.json web/tests/node_modules/.kestrel-installed-lock; then
    echo "installing web/tests npm packages"
    (cd web/tests && npm ci --no-audit --no-fund --loglevel=error &&
        cp package-lock.json node_modules/.kestrel-installed-lock)
fi
