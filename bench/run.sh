#!/usr/bin/env bash
# tap-kpis against the same KPIs in DuckDB SQL, side by side on one generated fleet.
# Size: BENCH_PROJECTS (default 2000) and BENCH_DAYS (default 365).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --quiet --features parse-floor --bin parse-floor
exec .venv/bin/python bench/run.py
