#!/usr/bin/env bash
# Runs Drover's whole test suite: the formatting and clippy gates, then unit and property
# tests, doctests, and the multi-process cluster tests in tests/ (one at a time: see
# .config/nextest.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# Style gates first, so CI holds them: formatting, then clippy with every warning an error
# (including the workspace lints in Cargo.toml).
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
# The cluster tests start the real daemons, so build every binary first.
cargo build --workspace --bins
cargo test --workspace --doc
cargo nextest run --workspace --no-fail-fast "$@"
