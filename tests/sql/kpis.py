"""Run the DuckDB SQL implementation of the KPI definitions (kpis.sql) over raw telemetry files."""
import os

import duckdb

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))

STREAMS = [
    "cli_executions", "projects", "pipelines", "pipeline_runs", "daily_active_projects", "active_projects_daily",
    "monthly_kpis", "project_monthly_segments", "plugin_usage", "cohort_retention",
]


def sql_streams(files, as_of=None, threads=2, memory_limit=None, spill_dir=None):
    """Rows of every KPI stream, by stream name. `memory_limit` (e.g. "8GB") and `spill_dir` bound DuckDB
    on inputs larger than memory."""
    text = open(os.path.join(HERE, "kpis.sql")).read()
    text = text.replace("__FILES__", "[" + ", ".join(f"'{f}'" for f in files) + "]")
    text = text.replace("__KNOWN__", "'" + os.path.join(ROOT, "src", "normalize", "known_plugin_names.txt") + "'")
    text = text.replace("__AS_OF__", f"DATE '{as_of}'" if as_of else "CAST(NULL AS DATE)")
    con = duckdb.connect()
    con.execute(f"set threads = {threads}")
    if memory_limit:
        con.execute(f"set memory_limit = '{memory_limit}'")
    if spill_dir:
        con.execute(f"set temp_directory = '{spill_dir}'")
    statement = []
    for line in text.splitlines():
        if line.strip().startswith("--"):
            continue
        statement.append(line)
        if line.rstrip().endswith(";"):
            con.execute("\n".join(statement))
            statement = []
    out = {}
    for stream in STREAMS:
        cur = con.execute(f"select * from out_{stream}")
        cols = [d[0] for d in cur.description]
        out[stream] = [dict(zip(cols, row)) for row in cur.fetchall()]
    return out
