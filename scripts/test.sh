#!/usr/bin/env bash
# The whole test suite: formatting, lints, Rust unit and integration tests, then the end-to-end tests
# that run the real binary, real Meltano, real PostgreSQL and DuckDB.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export MELTANO_SEND_ANONYMOUS_USAGE_STATS=false MELTANO_CLI_DISABLE_VERSION_CHECK=true
echo "[test] cargo fmt --check"; cargo fmt --check
echo "[test] cargo clippy"; cargo clippy --release --all-targets --all-features --quiet -- -D warnings
echo "[test] cargo test"; cargo test --release --quiet
failed=()
for t in tests/e2e/test_*.py; do
  echo "[test] $t"
  start=$(date +%s)
  if .venv/bin/python "$t"; then
    echo "[test] ok   $t ($(( $(date +%s) - start ))s)"
  else
    echo "[test] FAIL $t"
    failed+=("$t")
  fi
done
echo "[test] benchmark at a small size (proves it runs; figures in bench/RESULTS.md come from bash bench/run.sh)"
if ! BENCH_PROJECTS=60 BENCH_DAYS=60 BENCH_STATE_SIZE=60:60 BENCH_MEMORY_SIZES=60:60:1,60:60:2,60:60:3,120:60:1 BENCH_RESULTS="$(mktemp)" .venv/bin/python bench/run.py; then
  failed+=("bench/run.py")
fi
echo "[test] build comparison at a small size (this build against itself: it runs, and its output is deterministic)"
if ! .venv/bin/python bench/compare.py --base-bin target/release/tap-kpis --bin target/release/tap-kpis --size 60:60:1 --runs 2 --full 1 --expect-same; then
  failed+=("bench/compare.py")
fi
if [ ${#failed[@]} -gt 0 ]; then
  echo "[test] failed: ${failed[*]}"
  exit 1
fi
echo "[test] all tests passed"
