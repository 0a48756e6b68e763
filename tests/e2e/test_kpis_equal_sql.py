"""Every row of every KPI stream equals an independent implementation of the same definitions in DuckDB
SQL (tests/sql/kpis.sql), on a generated fleet of 2,000 projects over a year and on the real captures,
with the default as_of and with an as_of in the middle of the fleet. A perturbed record must be caught."""
import datetime
import json
import math
import os
import subprocess
import sys
import tempfile
import time

from common import ROOT, SHARED, TAP, check, fail, run_tap

sys.path.insert(0, os.path.join(ROOT, "tests", "sql"))
from kpis import sql_streams  # noqa: E402

KEYS = {
    "cli_executions": ["execution_id"],
    "projects": ["project_id"],
    "pipelines": ["pipeline_id"],
    "pipeline_runs": ["execution_id"],
    "daily_active_projects": ["project_id", "date"],
    "active_projects_daily": ["date"],
    "monthly_kpis": ["month"],
    "project_monthly_segments": ["project_id", "month"],
    "plugin_usage": ["month", "plugin_category"],
    "cohort_retention": ["cohort_month", "month_number"],
}


def norm(v):
    if isinstance(v, (datetime.date, datetime.datetime)):
        return v.isoformat()[:10] if not isinstance(v, datetime.datetime) else v.isoformat()
    if isinstance(v, dict):
        return {k: norm(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [norm(x) for x in v]
    if hasattr(v, "as_integer_ratio") and not isinstance(v, (int, bool)):
        return float(v)
    return v


def same(a, b):
    if isinstance(a, float) or isinstance(b, float):
        if a is None or b is None:
            return a is b
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def compare(tap, sql, label):
    """Differences between the tap's records and the SQL rows, per stream."""
    problems = []
    for stream, keys in KEYS.items():
        t_rows = {tuple(str(r[k]) for k in keys): r for r in tap.get(stream, [])}
        s_rows = {tuple(str(norm(r[k])) for k in keys): {k: norm(v) for k, v in r.items()} for r in sql[stream]}
        if len(t_rows) != len(tap.get(stream, [])):
            problems.append(f"{label} {stream}: duplicate keys in the tap output")
        missing = sorted(set(s_rows) - set(t_rows))[:3]
        extra = sorted(set(t_rows) - set(s_rows))[:3]
        if missing or extra:
            problems.append(f"{label} {stream}: {len(s_rows)} SQL rows vs {len(t_rows)} tap rows; "
                            f"only in SQL {missing}, only in tap {extra}")
            continue
        diffs = 0
        for key, s in s_rows.items():
            t = t_rows[key]
            if set(t) != set(s):
                problems.append(f"{label} {stream}: columns differ {sorted(set(t) ^ set(s))}")
                break
            for col in s:
                if not same(t[col], s[col]):
                    diffs += 1
                    if diffs <= 3:
                        problems.append(f"{label} {stream} {key} {col}: tap {t[col]!r} sql {s[col]!r}")
        if diffs > 3:
            problems.append(f"{label} {stream}: {diffs} differing values in all")
    return problems


def run_case(files, as_of, label):
    config = {"sources": files}
    if as_of:
        config["as_of"] = as_of
    t0 = time.time()
    tap, _, _ = run_tap(config)
    t1 = time.time()
    sql = sql_streams(files, as_of)
    t2 = time.time()
    counts = {s: len(tap.get(s, [])) for s in KEYS}
    print(f"{label}: tap {t1 - t0:.1f}s, sql {t2 - t1:.1f}s, rows {counts}")
    return tap, sql


def main():
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        fleet = os.path.join(tmp, "fleet")
        projects = int(os.environ.get("SQL_FLEET_PROJECTS", "2000"))
        days = int(os.environ.get("SQL_FLEET_DAYS", "365"))
        subprocess.run([TAP, "generate", "--projects", str(projects), "--days", str(days), "--seed", "11",
                        "--out", fleet], check=True)
        files = sorted(os.path.join(fleet, f) for f in os.listdir(fleet))
        real = [os.path.join(SHARED, "data", "meltano-real", "captures.ndjson"),
                os.path.join(SHARED, "data", "meltano-old", "meltano-2.20.0.ndjson"),
                os.path.join(SHARED, "data", "meltano-old", "meltano-2.1.0.ndjson")]
        middle = (datetime.date(2025, 1, 1) + datetime.timedelta(days=days // 2 + 3)).isoformat()
        cases = [(files, None, "fleet"), (files, middle, f"fleet as_of {middle}"), (real, None, "real captures")]
        first = None
        for files_, as_of, label in cases:
            tap, sql = run_case(files_, as_of, label)
            failures += compare(tap, sql, label)
            if first is None:
                first = (tap, sql)
                check(len(tap["active_projects_daily"]) >= days, "every day of the fleet")
                check(len(tap["projects"]) >= projects, "every project present")
                check(any(r["active_projects"] > 0 for r in tap["active_projects_daily"]), "the North Star is not all zero")
        # negative control: a perturbed tap record is caught
        tap, sql = first
        perturbed = {k: [dict(r) for r in v] for k, v in tap.items()}
        row = perturbed["active_projects_daily"][len(perturbed["active_projects_daily"]) // 2]
        row["active_projects"] += 1
        check(compare(perturbed, sql, "control"), "the comparison did not notice a changed value")
    if failures:
        for f in failures:
            print(f, file=sys.stderr)
        fail(f"{len(failures)} differences between the tap and the SQL implementation")
    print("ok: every row of every KPI stream equals the SQL implementation")


main()
