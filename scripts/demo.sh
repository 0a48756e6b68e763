#!/usr/bin/env bash
# The main job end to end with no server: a generated Meltano fleet's telemetry -> tap-kpis ->
# target-duckdb, then the KPIs printed from the DuckDB file.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export MELTANO_SEND_ANONYMOUS_USAGE_STATS=false MELTANO_CLI_DISABLE_VERSION_CHECK=true
if [ ! -d demo/telemetry ]; then
  target/release/tap-kpis generate --projects 300 --days 365 --seed 7 --out demo/telemetry
fi
rm -f output/kpis.duckdb
mkdir -p output
# the DuckDB file is recreated, so the run is a full refresh (no state)
.venv/bin/meltano run --full-refresh tap-kpis target-duckdb
.venv/bin/python scripts/show_kpis.py output/kpis.duckdb
target/release/tap-kpis report --duckdb output/kpis.duckdb --out output/kpis-report.html
echo
echo "KPI report (open in a browser, works offline): $(pwd)/output/kpis-report.html"
