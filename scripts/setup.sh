#!/usr/bin/env bash
# Installs what building Drover needs on a fresh Debian machine (run as root or with sudo):
# a C/C++ toolchain and libclang for RocksDB's bindings, cargo-nextest for the tests, and
# busybox-static and skopeo for the image tests.
# Safe to run again: it only installs what is missing.
set -euo pipefail

need_apt=()
command -v cc >/dev/null 2>&1 || need_apt+=(build-essential)
command -v c++ >/dev/null 2>&1 || need_apt+=(g++)
# bindgen (RocksDB's Rust bindings) loads libclang at build time.
# Look for libclang itself: libclang-cpp (installed by other packages) does not satisfy bindgen.
# One match is enough (`ls` of all four patterns fails as soon as one matches nothing).
have_libclang=false
for f in /usr/lib/llvm-*/lib/libclang.so* /usr/lib/llvm-*/lib/libclang-[0-9]*.so* \
         /usr/lib/*-linux-gnu/libclang.so* /usr/lib/*-linux-gnu/libclang-[0-9]*.so*; do
  if [ -e "$f" ]; then have_libclang=true; break; fi
done
$have_libclang || need_apt+=(libclang-dev)
command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
# The image tests build a tiny image around Debian's static busybox.
[ -x /bin/busybox ] || need_apt+=(busybox-static)
# ... and write it as an OCI image layout with another tool than Docker.
command -v skopeo >/dev/null 2>&1 || need_apt+=(skopeo)

if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo is missing; install Rust with rustup first (https://rustup.rs)" >&2
  exit 1
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "setup: installing cargo-nextest"
  cargo install cargo-nextest --locked
fi
