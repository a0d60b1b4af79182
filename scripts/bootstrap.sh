#!/usr/bin/env bash
# Installs what the build and tests need, each step skipped when the right version is present.
# Safe to run again and again: on a ready machine it takes well under a second.
set -euo pipefail

WASM_BINDGEN_VERSION=0.2.130
WORKER_BUILD_VERSION=0.8.7
WASM_PACK_VERSION=0.15.1

step() { printf 'bootstrap: %-22s %s\n' "$1" "$2"; }

if rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
  step "wasm32 target" "present"
else
  rustup target add wasm32-unknown-unknown >/dev/null
  step "wasm32 target" "installed"
fi

have_version() { command -v "$1" >/dev/null 2>&1 && "$1" --version 2>/dev/null | grep -q "$2"; }

# wasm-bindgen-cli is installed without --locked: one of its locked dependencies is not on crates.io.
if have_version wasm-bindgen "$WASM_BINDGEN_VERSION"; then
  step "wasm-bindgen" "$WASM_BINDGEN_VERSION present"
else
  cargo install wasm-bindgen-cli --version "$WASM_BINDGEN_VERSION" --force
  step "wasm-bindgen" "$WASM_BINDGEN_VERSION installed"
fi

if have_version worker-build "$WORKER_BUILD_VERSION"; then
  step "worker-build" "$WORKER_BUILD_VERSION present"
else
  cargo install --locked worker-build --version "$WORKER_BUILD_VERSION" --force
  step "worker-build" "$WORKER_BUILD_VERSION installed"
fi

if have_version wasm-pack "$WASM_PACK_VERSION"; then
  step "wasm-pack" "$WASM_PACK_VERSION present"
else
  cargo install --locked wasm-pack --version "$WASM_PACK_VERSION" --force
  step "wasm-pack" "$WASM_PACK_VERSION installed"
fi

if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  step "chromium" "present"
elif [ "${EDGESTREAM_SKIP_BROWSER:-}" = 1 ]; then
  step "chromium" "skipped (EDGESTREAM_SKIP_BROWSER=1)"
else
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
  step "chromium" "installed"
fi

if [ -x node_modules/.bin/wrangler ] && [ -x node_modules/.bin/wasm-opt ]; then
  step "npm packages" "present"
else
  npm install --no-audit --no-fund
  step "npm packages" "installed"
fi
