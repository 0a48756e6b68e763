"""Benchmark, measured side by side in one run on the same generated input:

(a) tap-kpis full refresh (every stream, output to /dev/null),
(b) the same KPIs computed in DuckDB SQL straight from the raw files (tests/sql/kpis.sql),
(c) the parse floor: bench/parse_floor.rs, one thread, parsing only (built by bench/run.sh),
(d) an incremental run adding about 1% new events to the state of the other 99%,
plus a run with no new input, and the state size (bytes per project) after 1/4, 1/2, 3/4 and all of the
history. Prints wall time, peak RSS, events/s and ratios; writes bench/RESULTS.md (or BENCH_RESULTS).
Sizes: BENCH_SIZES, projects:days pairs (default "2000:365,10000:30": a year of a mid-size fleet and a
month of a large one); BENCH_PROJECTS and BENCH_DAYS give a single size."""
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
TAP = os.path.join(ROOT, "target", "release", "tap-kpis")
FLOOR = os.path.join(ROOT, "target", "release", "parse-floor")
PY = sys.executable


def measure(cmd, stdout=subprocess.DEVNULL):
    """Wall seconds, peak RSS (MiB) and stderr of one command."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.PIPE)
    err = proc.stderr.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{cmd[0]} failed: {err[-2000:]}")
    return wall, usage.ru_maxrss / 1024, err


def events_read(err):
    return int(next(l for l in err.splitlines() if " events in " in l).split(" read ")[1].split()[0])


def tap_run(workdir, sources, state=None):
    """Run the tap over `sources`; returns wall, RSS, stderr and the last STATE value."""
    config = os.path.join(workdir, "config.json")
    with open(config, "w") as f:
        json.dump({"sources": sources}, f)
    out = os.path.join(workdir, "out.jsonl")
    cmd = [TAP, "--config", config]
    if state is not None:
        path = os.path.join(workdir, "state-in.json")
        with open(path, "w") as f:
            json.dump(state, f)
        cmd += ["--state", path]
    with open(out, "wb") as f:
        wall, rss, err = measure(cmd, stdout=f)
    last = None
    records = 0
    with open(out) as f:
        for line in f:
            if line.startswith('{"type":"STATE"'):
                last = json.loads(line)["value"]
            elif line.startswith('{"type":"RECORD"'):
                records += 1
    return wall, rss, err, last, records


def state_facts(state):
    tap = state["tap_kpis"]
    import base64
    import gzip

    ledger = json.loads(gzip.decompress(base64.b64decode(tap["ledger"])))
    return len(json.dumps(state)), len(ledger["projects"]), tap["executions"]


def bench(projects, days):
    """Every measurement on one generated fleet; returns the lines of its section."""
    fleet = os.path.join(ROOT, "bench", f".fleet-{projects}-{days}")
    if not os.path.isdir(fleet):
        subprocess.run([TAP, "generate", "--projects", str(projects), "--days", str(days), "--seed", "1",
                        "--out", fleet], check=True)
    files = sorted(os.path.join(fleet, f) for f in os.listdir(fleet))
    gz_bytes = sum(os.path.getsize(f) for f in files)
    work = tempfile.mkdtemp(prefix="tap-kpis-bench-")
    try:
        # (a) full refresh
        tap_wall, tap_rss, tap_err, _, _ = tap_run(work, [fleet])
        events = events_read(tap_err)
        # (b) DuckDB SQL over the same files
        sql = ("import sys; sys.path.insert(0, %r); from kpis import sql_streams; sql_streams(%r)"
               % (os.path.join(ROOT, "tests", "sql"), files))
        db_wall, db_rss, _ = measure([PY, "-c", sql])
        # (c) the one-thread parse floor
        if not os.path.exists(FLOOR):
            subprocess.run(["cargo", "build", "--release", "--quiet", "--features", "parse-floor", "--bin",
                            "parse-floor"], cwd=ROOT, check=True)
        floor_out = os.path.join(work, "floor.json")
        with open(floor_out, "wb") as f:
            floor_wall, floor_rss, _ = measure([FLOOR, *files], stdout=f)
        with open(floor_out) as f:
            floor_events = json.load(f)["events"]
        # (d) incremental: the state of the first ~99% of the files, then the rest arrives
        src = os.path.join(work, "src")
        os.makedirs(src)
        sizes = [os.path.getsize(f) for f in files]
        total, acc, split = sum(sizes), 0, len(files)
        for i in range(len(files) - 1, 0, -1):
            acc += sizes[i]
            if acc >= total * 0.01:
                split = i
                break
        for f in files[:split]:
            shutil.copy(f, src)
        _, _, _, state, _ = tap_run(work, [src])
        for f in files[split:]:
            shutil.copy(f, src)
        inc_wall, inc_rss, inc_err, state_after, inc_records = tap_run(work, [src], state)
        new_events = events_read(inc_err)
        idle_wall, idle_rss, _, _, idle_records = tap_run(work, [src], state_after)
        # state size as history grows
        growth = []
        for quarter in (1, 2, 3, 4):
            n = max(1, len(files) * quarter // 4)
            for f in os.listdir(src):
                os.unlink(os.path.join(src, f))
            for f in files[:n]:
                shutil.copy(f, src)
            _, _, _, s, _ = tap_run(work, [src])
            size, n_projects, kept = state_facts(s)
            growth.append((n, size, n_projects, kept))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    lines = [
        f"Input: generated fleet, {projects} projects, {days} days, {events} events, {gz_bytes / 1e6:.0f} MB gzip.",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}.",
        "",
        "| run | wall s | peak RSS MiB | events/s |",
        "|---|---:|---:|---:|",
        f"| (a) tap-kpis full refresh (all streams) | {tap_wall:.2f} | {tap_rss:.0f} | {events / tap_wall:,.0f} |",
        f"| (b) DuckDB SQL, same KPIs from the raw files | {db_wall:.2f} | {db_rss:.0f} | {events / db_wall:,.0f} |",
        f"| (c) parse floor, one thread ({floor_events} events parsed) | {floor_wall:.2f} | {floor_rss:.0f} |"
        f" {floor_events / floor_wall:,.0f} |",
        f"| (d) incremental run, {new_events} new events ({100 * new_events / events:.1f}%) on the state of the rest"
        f" ({inc_records} records) | {inc_wall:.2f} | {inc_rss:.0f} | {new_events / inc_wall:,.0f} |",
        f"| run with no new input ({idle_records} records) | {idle_wall:.2f} | {idle_rss:.0f} | |",
        "",
        f"DuckDB / tap-kpis full refresh wall time: **{db_wall / tap_wall:.1f}x**; peak memory ratio "
        f"{db_rss / tap_rss:.1f}x.",
        f"Full refresh / one-thread parse floor wall time: **{tap_wall / floor_wall:.2f}x**.",
        f"Incremental run ({100 * new_events / events:.1f}% new events) / full refresh wall time: **{100 * inc_wall / tap_wall:.0f}%**.",
        "",
        "State size as history grows (the same fleet, cut after a quarter, half, three quarters, all of it):",
        "",
        "| days of history | state bytes | projects | bytes per project | executions kept |",
        "|---:|---:|---:|---:|---:|",
    ]
    for n, size, n_projects, kept in growth:
        lines.append(f"| {n} | {size:,} | {n_projects:,} | {size / max(n_projects, 1):,.0f} | {kept:,} |")
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def main():
    results = os.environ.get("BENCH_RESULTS", os.path.join(ROOT, "bench", "RESULTS.md"))
    if "BENCH_PROJECTS" in os.environ or "BENCH_DAYS" in os.environ:
        sizes = [(int(os.environ.get("BENCH_PROJECTS", "2000")), int(os.environ.get("BENCH_DAYS", "365")))]
    else:
        sizes = [tuple(int(x) for x in pair.split(":"))
                 for pair in os.environ.get("BENCH_SIZES", "2000:365,10000:30").split(",")]
    sections = [f"## {p:,} projects, {d} days\n\n" + bench(p, d) for p, d in sizes]
    with open(results, "w") as f:
        f.write("# Benchmark results\n\nWritten by `bash bench/run.sh`.\n\n" + "\n\n".join(sections) + "\n")


main()
