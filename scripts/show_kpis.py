"""Print the KPI tables that `meltano run tap-kpis target-duckdb` loaded."""
import sys

import duckdb

path = sys.argv[1] if len(sys.argv) > 1 else "output/kpis.duckdb"
con = duckdb.connect(path, read_only=True)


def show(title, sql):
    print(f"\n== {title}")
    cur = con.execute(sql)
    cols = [d[0] for d in cur.description]
    rows = cur.fetchall()
    widths = [max(len(str(c)), *(len(str(r[i])) for r in rows)) if rows else len(c) for i, c in enumerate(cols)]
    print("  ".join(str(c).ljust(w) for c, w in zip(cols, widths)))
    for r in rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(r, widths)))


show("Tables", "select table_name, estimated_size as rows from duckdb_tables() where schema_name = 'tap_kpis' order by 1")
show(
    "North Star: daily active projects (last 14 days)",
    "select date, active_projects, added, reactivated, churned, pipeline_runs, pipeline_success_rate, unique_pipelines "
    "from tap_kpis.active_projects_daily order by date desc limit 14",
)
show(
    "Monthly KPIs",
    "select month, monthly_active_projects as map, active_projects_any_day as active_any_day, added, reactivated, churned, "
    "new_projects_acquired as acquired, pipeline_runs, round(pipeline_success_rate, 3) as success_rate, unique_pipelines, "
    "guppy_projects as guppy, marlin_projects as marlin, whale_projects as whale from tap_kpis.monthly_kpis order by month",
)
show(
    "Health alarms",
    "select rule, period, value, round(low, 2) as low, round(high, 2) as high, status from tap_kpis.kpi_health "
    "where status in ('low', 'high') order by period desc limit 10",
)
print(f"\nAll KPI tables are in {path} (schema tap_kpis).")
