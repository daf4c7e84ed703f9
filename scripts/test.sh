#!/usr/bin/env bash
# Runs every test: starts the real services (Kafka, Redis, Postgres) on loopback, installing
# what is missing, then the whole workspace's tests in release mode.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tidemark-target}"
if ! command -v cargo >/dev/null; then
  echo "cargo is required (https://rustup.rs)" >&2; exit 1
fi
scripts/services.sh up
eval "$(scripts/services.sh env)"
# librdkafka is built from source by rdkafka-sys
for tool in cmake make gcc g++ perl; do command -v $tool >/dev/null || missing="${missing:-} $tool"; done
if [ -n "${missing:-}" ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake build-essential perl >/dev/null
fi
# a full disk fails tests in ways that look like bugs (checkpoints refused, Kafka stalling):
# say so first (the shared build cache grows with every profile and version built)
free_kb=$(df -Pk "$CARGO_TARGET_DIR" 2>/dev/null | awk 'NR == 2 { print $4 }' || echo "")
if [ -z "$free_kb" ]; then free_kb=$(df -Pk . | awk 'NR == 2 { print $4 }'); fi
if [ "${free_kb:-0}" -lt $((10 * 1024 * 1024)) ]; then
  echo "warning: less than 10 GB free on the disk of $CARGO_TARGET_DIR ($((free_kb / 1024)) MB): the tests may fail for want of space; cargo clean there frees it" >&2
fi
# Feast's Python SDK for tests/feast.rs: pinned, in a venv outside the clone
feast_venv="${TIDEMARK_FEAST_VENV:-$HOME/.cache/tidemark-feast-venv}"
if ! "$feast_venv/bin/python" -c 'import sys, feast; sys.exit(feast.__version__ != "0.67.0")' 2>/dev/null; then
  echo "installing Feast 0.67.0 into $feast_venv" >&2
  python3 -m venv "$feast_venv" 2>/dev/null || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$feast_venv"
  }
  "$feast_venv/bin/pip" install -q "feast==0.67.0"
fi
export TIDEMARK_FEAST_PYTHON="$feast_venv/bin/python"
cargo build --release --bins
log=$(mktemp)
set +e
cargo test --release --workspace -- --test-threads=1 "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# one closing line for the whole run
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
rm -f "$log"
exit "$status"
