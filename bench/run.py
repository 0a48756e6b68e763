"""Benchmark, measured side by side in one run on the same generated input: tap-kpis (full refresh, every
stream, output to /dev/null) against the same KPIs computed in DuckDB SQL straight from the raw files.
Prints wall time, peak RSS and events/s for each, and their ratio; writes bench/RESULTS.md."""
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
TAP = os.path.join(ROOT, "target", "release", "tap-kpis")
PY = sys.executable


def measure(cmd, stdout=subprocess.DEVNULL):
    """Wall seconds and peak RSS (MiB) of one command."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - start
    err = proc.stderr.read().decode(errors="replace")
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{cmd[0]} failed: {err[-2000:]}")
    return wall, usage.ru_maxrss / 1024, err


def main():
    projects = int(os.environ.get("BENCH_PROJECTS", "2000"))
    days = int(os.environ.get("BENCH_DAYS", "365"))
    fleet = os.path.join(ROOT, "bench", f".fleet-{projects}-{days}")
    if not os.path.isdir(fleet):
        subprocess.run([TAP, "generate", "--projects", str(projects), "--days", str(days), "--seed", "1",
                        "--out", fleet], check=True)
    files = sorted(os.path.join(fleet, f) for f in os.listdir(fleet))
    gz_bytes = sum(os.path.getsize(f) for f in files)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({"sources": [fleet]}, f)
        config = f.name
    tap_wall, tap_rss, tap_err = measure([TAP, "--config", config])
    events = int(next(l for l in tap_err.splitlines() if " events in " in l).split(" read ")[1].split()[0])
    sql = ("import sys; sys.path.insert(0, %r); from kpis import sql_streams; sql_streams(%r)"
           % (os.path.join(ROOT, "tests", "sql"), files))
    db_wall, db_rss, _ = measure([PY, "-c", sql])
    os.unlink(config)
    rows = [
        ("tap-kpis full refresh (all streams)", tap_wall, tap_rss),
        ("DuckDB SQL, same KPIs from the raw files", db_wall, db_rss),
    ]
    lines = [
        f"Input: generated fleet, {projects} projects, {days} days, {events} events, {gz_bytes / 1e6:.0f} MB gzip.",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}.",
        "",
        "| run | wall s | peak RSS MiB | events/s |",
        "|---|---:|---:|---:|",
    ]
    for name, wall, rss in rows:
        lines.append(f"| {name} | {wall:.1f} | {rss:.0f} | {events / wall:,.0f} |")
    lines += ["", f"DuckDB / tap-kpis wall time: **{db_wall / tap_wall:.1f}x**; peak memory ratio {db_rss / tap_rss:.1f}x."]
    text = "\n".join(lines)
    print(text)
    with open(os.path.join(ROOT, "bench", "RESULTS.md"), "w") as f:
        f.write("# Benchmark results\n\nWritten by `bash bench/run.sh`.\n\n" + text + "\n")


main()
