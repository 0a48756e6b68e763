"""The KPI report end to end: one generated fleet goes through `meltano run tap-kpis target-postgres` and
`meltano run tap-kpis target-duckdb`; `tap-kpis report` reads each warehouse (and the tap's own output)
and all three pages carry the same data. The page is then opened in headless Chromium (Debian's): every
chart is drawn, a screenshot is taken, and the page makes no network request."""
import json
import os
import subprocess
import tempfile

from playwright.sync_api import sync_playwright

from common import ROOT, TAP, check, fail, meltano, meltano_env, psql

CHROMIUM = "/usr/bin/chromium"
CHARTS = [
    "active_projects",
    "project_flow",
    "monthly_active_projects",
    "pipeline_runs",
    "pipeline_success_rate",
    "monthly_pipeline_runs",
    "unique_pipelines",
    "plugin_usage",
    "segments",
    "cohort_retention",
]


def report(out, *source):
    proc = subprocess.run([TAP, "report", "--out", out, *source], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        fail(f"report {source[0]} exited {proc.returncode}: {proc.stderr}")
    check("postgres" not in proc.stderr or "password" not in proc.stderr.lower(), "no password in messages")
    return proc.stderr


def page_data(path):
    html = open(path, encoding="utf-8").read()
    tag = '<script type="application/json" id="kpi-data">'
    start = html.index(tag) + len(tag)
    data = json.loads(html[start : html.index("</script>", start)])
    data.pop("source")
    return data


with tempfile.TemporaryDirectory() as tmp:
    telemetry = os.path.join(tmp, "telemetry")
    subprocess.run(
        [TAP, "generate", "--projects", "120", "--days", "120", "--seed", "5", "--out", telemetry],
        check=True,
        capture_output=True,
    )
    schema = f"tap_kpis_report_{os.getpid()}"
    suffix = f"report{os.getpid()}"
    duck = os.path.join(tmp, "kpis.duckdb")
    env = meltano_env(
        TAP_KPIS_SOURCES=json.dumps([telemetry]),
        TARGET_POSTGRES_DEFAULT_TARGET_SCHEMA=schema,
        TARGET_DUCKDB_FILEPATH=duck,
    )
    psql(f"drop schema if exists {schema} cascade")
    try:
        meltano("run", "--refresh-catalog", "--state-id-suffix", suffix, "tap-kpis", "target-postgres", env=env)
        meltano("run", "--state-id-suffix", suffix, "tap-kpis", "target-duckdb", env=env)

        pages = {
            "postgres": os.path.join(tmp, "pg.html"),
            "duckdb": os.path.join(tmp, "duck.html"),
            "singer": os.path.join(tmp, "singer.html"),
        }
        env_pg = dict(os.environ, PGPASSWORD="not-printed-anywhere")
        proc = subprocess.run(
            [TAP, "report", "--out", pages["postgres"], "--postgres", "host=127.0.0.1 user=postgres dbname=test",
             "--schema", schema],
            capture_output=True, text=True, cwd=ROOT, env=env_pg,
        )
        if proc.returncode != 0:
            fail(f"report --postgres exited {proc.returncode}: {proc.stderr}")
        check("not-printed-anywhere" not in proc.stderr + proc.stdout, "the password is never printed")
        report(pages["duckdb"], "--duckdb", duck)
        config = os.path.join(tmp, "config.json")
        with open(config, "w") as f:
            json.dump({"sources": [telemetry]}, f)
        singer = os.path.join(tmp, "out.jsonl")
        with open(singer, "w") as f:
            subprocess.run([TAP, "--config", config], stdout=f, stderr=subprocess.DEVNULL, check=True)
        report(pages["singer"], "--singer", singer)

        data = {name: page_data(path) for name, path in pages.items()}
        check(len(data["postgres"]["daily"]) > 60, f"daily rows: {len(data['postgres']['daily'])}")
        for name in ("duckdb", "singer"):
            for part in data["postgres"]:
                check(
                    data[name][part] == data["postgres"][part],
                    f"{part}: the page from {name} differs from the page from postgres",
                )
    finally:
        psql(f"drop schema if exists {schema} cascade")
        meltano("state", "clear", "--force", f"dev:tap-kpis-to-target-postgres:{suffix}", env=env, check_ok=False)
        meltano("state", "clear", "--force", f"dev:tap-kpis-to-target-duckdb:{suffix}", env=env, check_ok=False)

    # the page in a real browser, offline
    requests = []
    screenshot = os.path.join(ROOT, "output", "report-screenshot.png")
    os.makedirs(os.path.dirname(screenshot), exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("request", lambda r: requests.append(r.url))
        page.goto("file://" + pages["duckdb"])
        page.wait_for_load_state("networkidle")
        page.screenshot(path=screenshot, full_page=True)
        drawn = page.evaluate(
            """() => Array.from(document.querySelectorAll('figure[data-chart]')).map(f => {
                 const marks = Array.from(f.querySelectorAll('svg polyline, svg rect, svg polygon, svg path'))
                   .filter(e => { const b = e.getBBox(); return b.width > 0 && b.height > 0; });
                 const box = f.querySelector('svg').getBoundingClientRect();
                 return [f.dataset.chart, marks.length, box.width, box.height];
               })"""
        )
        headline = page.evaluate("() => document.querySelectorAll('.headline .kpi').length")
        browser.close()

    names = [d[0] for d in drawn]
    check(names == CHARTS, f"charts on the page: {names}")
    for name, marks, width, height in drawn:
        check(marks > 3, f"chart {name}: {marks} drawn marks")
        check(width > 300 and height > 100, f"chart {name}: shown at {width}x{height}")
    check(headline >= 5, f"headline figures: {headline}")
    check(os.path.getsize(screenshot) > 50_000, "screenshot taken")
    others = [u for u in requests if u != "file://" + pages["duckdb"]]
    check(not others, f"the page made network requests: {others}")
print(f"ok: same data from postgres, duckdb and singer output; {len(drawn)} charts drawn; no requests; {screenshot}")
