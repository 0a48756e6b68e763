"""`meltano run tap-kpis target-postgres` on the real captures: the rows in PostgreSQL equal the ground
truth of ../shared/data/meltano-real, and a second run upserts instead of duplicating."""
import collections
import json
import os

from common import REAL, check, ground_truth, meltano, meltano_env, psql

schema = f"tap_kpis_e2e_{os.getpid()}"
suffix = f"e2e{os.getpid()}"
env = meltano_env(TAP_KPIS_SOURCES=json.dumps([REAL]), TARGET_POSTGRES_DEFAULT_TARGET_SCHEMA=schema)
psql(f"drop schema if exists {schema} cascade")

truth = ground_truth()
check(len(truth) == 26, f"ground truth table has {len(truth)} rows")
expected_commands = collections.Counter(c for c, _ in truth)


def counts():
    tables = ["cli_executions", "projects", "pipeline_runs", "pipelines", "telemetry_errors", "active_projects_daily"]
    out = {}
    for t in tables:
        out[t] = int(psql(f"select count(*) from {schema}.{t}")[0][0]) if t != "telemetry_errors" or psql(
            f"select 1 from information_schema.tables where table_schema = '{schema}' and table_name = '{t}'"
        ) else 0
    return out


try:
    meltano("run", "--refresh-catalog", "--state-id-suffix", suffix, "tap-kpis", "target-postgres", env=env)
    first = counts()
    check(first["cli_executions"] == 26, f"cli_executions: {first}")
    check(first["projects"] == 2, f"projects: {first}")
    check(first["pipeline_runs"] == 6, f"pipeline_runs: {first}")
    check(first["pipelines"] == 4, f"pipelines: {first}")
    got = collections.Counter(
        None if c == "(none)" else c for (c,) in psql(f"select coalesce(command, '(none)') from {schema}.cli_executions")
    )
    check(got == expected_commands, f"commands {got} != {expected_commands}")
    exits = collections.Counter(
        int(e) for (e,) in psql(f"select exit_code from {schema}.cli_executions where exit_code is not null")
    )
    check(exits == collections.Counter(e for _, e in truth), f"exit codes {exits}")
    failed = psql(f"select count(*) from {schema}.pipeline_runs where not is_success")[0][0]
    check(failed == "0", f"failed pipeline runs: {failed}")
    # typed columns: timestamps and dates landed as such
    types = dict(
        psql(
            f"select column_name, data_type from information_schema.columns where table_schema = '{schema}' "
            "and table_name = 'cli_executions'"
        )
    )
    check(types.get("started_at", "").startswith("timestamp"), f"started_at type {types.get('started_at')}")
    check(types.get("event_date") == "date", f"event_date type {types.get('event_date')}")

    meltano("run", "--state-id-suffix", suffix, "tap-kpis", "target-postgres", env=env)
    second = counts()
    check(second == first, f"second run changed row counts: {first} -> {second}")
    state = meltano("state", "get", f"dev:tap-kpis-to-target-postgres:{suffix}", env=env).stdout
    check("singer_state" in state and "tap_kpis" in state, f"state not stored: {state[:500]}")
    print(f"ok: {first}")
finally:
    psql(f"drop schema if exists {schema} cascade")
    meltano("state", "clear", "--force", f"dev:tap-kpis-to-target-postgres:{suffix}", env=env, check_ok=False)
