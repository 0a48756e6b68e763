"""Incremental runs through the real stack: `meltano run tap-kpis target-postgres`, then new telemetry
arrives (new day files, and lines appended to a file read half-written), and `meltano run` again with the
state Meltano kept. The tables equal those of a `meltano run --full-refresh` into another schema,
compared with SQL EXCEPT both ways; a run with nothing new changes nothing."""
import gzip
import json
import os
import shutil
import subprocess
import tempfile

from common import TAP, check, meltano, meltano_env, psql

COMPARED = [
    "cli_executions",
    "projects",
    "pipelines",
    "pipeline_runs",
    "daily_active_projects",
    "active_projects_daily",
    "monthly_kpis",
    "project_monthly_segments",
    "plugin_usage",
    "cohort_retention",
    "kpi_health",
]


def columns(schema, table):
    rows = psql(
        "select column_name from information_schema.columns "
        f"where table_schema = '{schema}' and table_name = '{table}' and column_name not like '\\_sdc\\_%' "
        "order by column_name"
    )
    return [r[0] for r in rows]


def lines(path):
    with gzip.open(path, "rt") as f:
        return f.read().splitlines(keepends=True)


pid = os.getpid()
inc, full = f"tap_kpis_inc_{pid}", f"tap_kpis_full_{pid}"
with tempfile.TemporaryDirectory() as tmp:
    fleet, src = os.path.join(tmp, "fleet"), os.path.join(tmp, "src")
    os.makedirs(src)
    subprocess.run(
        [TAP, "generate", "--projects", "60", "--days", "70", "--seed", "8", "--out", fleet],
        check=True,
        capture_output=True,
    )
    days = sorted(os.listdir(fleet))
    first, half, rest = days[:45], days[45], days[46:]
    for name in first:
        shutil.copy(os.path.join(fleet, name), src)
    half_path = os.path.join(src, half.removesuffix(".gz"))
    half_lines = lines(os.path.join(fleet, half))
    with open(half_path, "w") as f:
        f.write("".join(half_lines[: len(half_lines) // 2]))

    env_inc = meltano_env(TAP_KPIS_SOURCES=json.dumps([src]), TARGET_POSTGRES_DEFAULT_TARGET_SCHEMA=inc)
    env_full = meltano_env(TAP_KPIS_SOURCES=json.dumps([src]), TARGET_POSTGRES_DEFAULT_TARGET_SCHEMA=full)
    for s in (inc, full):
        psql(f"drop schema if exists {s} cascade")
    try:
        meltano("run", "--refresh-catalog", "--state-id-suffix", f"inc{pid}", "tap-kpis", "target-postgres", env=env_inc)
        first_rows = int(psql(f"select count(*) from {inc}.cli_executions")[0][0])

        # new telemetry: the rest of the half-written file and the following days
        with open(half_path, "a") as f:
            f.write("".join(half_lines[len(half_lines) // 2 :]))
        for name in rest:
            shutil.copy(os.path.join(fleet, name), src)
        second = meltano("run", "--state-id-suffix", f"inc{pid}", "tap-kpis", "target-postgres", env=env_inc)
        check("unchanged since the last run" in second.stderr, "the second run resumed from the state")
        check(int(psql(f"select count(*) from {inc}.cli_executions")[0][0]) > first_rows, "new executions loaded")

        meltano("run", "--full-refresh", "--state-id-suffix", f"full{pid}", "tap-kpis", "target-postgres", env=env_full)
        compared = 0
        for table in COMPARED:
            cols = columns(full, table)
            check(cols and cols == columns(inc, table), f"{table}: same columns in both schemas")
            cl = ", ".join(f'"{c}"' for c in cols)
            for a, b in ((inc, full), (full, inc)):
                diff = psql(f"select count(*) from (select {cl} from {a}.{table} except select {cl} from {b}.{table}) d")
                check(diff[0][0] == "0", f"{table}: {diff[0][0]} rows of {a} are not in {b}")
            compared += int(psql(f"select count(*) from {full}.{table}")[0][0])

        # nothing new: nothing loaded
        before = psql(f"select max(_sdc_batched_at) from {inc}.active_projects_daily")[0][0]
        third = meltano("run", "--state-id-suffix", f"inc{pid}", "tap-kpis", "target-postgres", env=env_inc)
        check("no new input" in third.stderr, "the third run found nothing new")
        after = psql(f"select max(_sdc_batched_at) from {inc}.active_projects_daily")[0][0]
        check(before == after, "a run with no new input loads no rows")
    finally:
        for s in (inc, full):
            psql(f"drop schema if exists {s} cascade")
        for suffix in (f"inc{pid}", f"full{pid}"):
            meltano("state", "clear", "--force", f"dev:tap-kpis-to-target-postgres:{suffix}", env=env_inc, check_ok=False)
print(f"ok: incremental runs equal a full refresh ({compared} rows in {len(COMPARED)} tables, EXCEPT both ways)")
