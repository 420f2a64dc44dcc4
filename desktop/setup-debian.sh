#!/usr/bin/env bash
# What running Kestrel needs on Debian: the Vulkan loader, and Mesa's lavapipe (a CPU Vulkan
# driver) only when no Vulkan driver is installed, so `kestrel` runs even without a GPU.
# Needs Rust (https://rustup.rs). Safe to run again: it installs only what is missing.
set -euo pipefail

if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found: install Rust from https://rustup.rs first" >&2
    exit 1
fi

apt_install() {
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

missing=()
dpkg -s libvulkan1 >/dev/null 2>&1 || missing+=(libvulkan1)
# A Vulkan driver registers an ICD manifest; with none, the CPU driver stands in for a GPU.
shopt -s nullglob
drivers=(/usr/share/vulkan/icd.d/*.json /etc/vulkan/icd.d/*.json)
shopt -u nullglob
if [ ${#drivers[@]} -eq 0 ]; then
    missing+=(mesa-vulkan-drivers)
fi
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]} (the Vulkan loader, and a CPU Vulkan driver where no GPU driver is installed)"
    apt_install "${missing[@]}"
fi
