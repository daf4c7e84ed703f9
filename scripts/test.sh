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
