#!/usr/bin/env bash
# Builds Drover, starts a local cluster (one master, two agents), runs a demo batch job of
# 20 tasks and one `drover run` on it, shows the tasks, and shuts the cluster down.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --workspace --bins
BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug"
DATA="$PWD/.drover/demo"
export DROVER_MASTER=127.0.0.1:5050

"$BIN/drover" local --fresh --data-dir "$DATA" &
LOCAL=$!
trap 'kill -INT $LOCAL 2>/dev/null || true; wait $LOCAL 2>/dev/null || true' EXIT

for _ in $(seq 1 120); do
  if "$BIN/drover" agents --json 2>/dev/null | grep -q '"state": 1' ; then
    n=$("$BIN/drover" agents --json | grep -c '"state": 1' || true)
    [ "$n" -ge 2 ] && break
  fi
  sleep 0.5
done

echo "== batch job: 20 tasks"
"$BIN/drover-batch" --name demo --tasks 20 -- 'echo "task $DROVER_TASK_INDEX of $DROVER_JOB_NAME ran in $DROVER_SANDBOX"'
echo "== drover run"
"$BIN/drover" run -- sh -c 'echo hello from a Drover task; uname -sr'
echo "== drover agents"
"$BIN/drover" agents
echo "== drover frameworks"
"$BIN/drover" frameworks
echo "== drover tasks --all"
"$BIN/drover" tasks --all | tail -n 8
