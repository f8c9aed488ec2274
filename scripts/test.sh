#!/usr/bin/env bash
# Runs Drover's whole test suite: unit and property tests, doctests, and the multi-process
# cluster tests in tests/ (one at a time: see .config/nextest.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# The cluster tests start the real daemons, so build every binary first.
cargo build --workspace --bins
cargo test --workspace --doc
cargo nextest run --workspace --no-fail-fast "$@"
