#!/usr/bin/env bash
# Installs what Kestrel needs on a fresh Debian machine: Mesa's lavapipe (CPU Vulkan) and
# llvmpipe GL drivers, so the GPU code runs with no GPU, and Rust's wasm32 target; for the
# `kestrel app` screenshot test, a virtual X server, xdotool, xwd and netpbm, and the X11
# libraries winit loads at run time.
# Safe to run again: it installs only what is missing.
set -euo pipefail

packages=(libvulkan1 mesa-vulkan-drivers libegl1 libgl1-mesa-dri
    xvfb xdotool x11-apps netpbm
    libx11-6 libx11-xcb1 libxcursor1 libxi6 libxrandr2 libxkbcommon0 libxkbcommon-x11-0)
missing=()
for p in "${packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "installing: ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found: install Rust from https://rustup.rs first" >&2
    exit 1
fi
if command -v rustup >/dev/null 2>&1 && ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
    rustup target add wasm32-unknown-unknown
fi
