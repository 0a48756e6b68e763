"""The embedded default: `meltano run tap-kpis target-duckdb` writes every KPI table into a DuckDB file
with as many rows as the tap emitted."""
import collections
import json
import os
import tempfile

import duckdb

from common import REAL, SHARED, check, meltano, meltano_env, run_tap

sources = [REAL, os.path.join(SHARED, "data", "meltano-old")]
records, _, _ = run_tap({"sources": sources})
expected = {stream: len(rows) for stream, rows in records.items()}

with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "kpis.duckdb")
    env = meltano_env(TAP_KPIS_SOURCES=json.dumps(sources), TARGET_DUCKDB_FILEPATH=path)
    suffix = f"e2e{os.getpid()}"
    meltano("run", "--refresh-catalog", "--state-id-suffix", suffix, "tap-kpis", "target-duckdb", env=env)
    con = duckdb.connect(path, read_only=True)
    got = {
        t: con.execute(f"select count(*) from tap_kpis.{t}").fetchone()[0]
        for (t,) in con.execute("select table_name from duckdb_tables() where schema_name = 'tap_kpis'").fetchall()
    }
    for stream, n in expected.items():
        check(got.get(stream) == n, f"{stream}: duckdb has {got.get(stream)} rows, tap emitted {n}")
    commands = collections.Counter(
        c for (c,) in con.execute("select command from tap_kpis.cli_executions").fetchall()
    )
    check(commands["run"] == 5 + 5 + 5, f"run executions: {commands}")
    con.close()
    meltano("state", "clear", "--force", f"dev:tap-kpis-to-target-duckdb:{suffix}", env=env, check_ok=False)
print(f"ok: {got}")
