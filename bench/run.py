"""Benchmark, measured side by side in one run on the same generated input:

(a) tap-kpis full refresh (every stream, output to /dev/null),
(b) the same KPIs computed in DuckDB SQL straight from the raw files (tests/sql/kpis.sql),
(c) the parse floor: bench/parse_floor.rs, one thread, parsing only (built by bench/run.sh),
(d) an incremental run adding about 1% new events to the state of the other 99%,
plus a run with no new input. Then the state size (bytes per project) of a large fleet after a quarter,
half, three quarters and all of a year. Prints wall time, peak RSS, events/s and ratios; writes
bench/RESULTS.md (or BENCH_RESULTS).

Sizes: BENCH_SIZES, comma-separated PROJECTS:DAYS[:ACTIVITY] (default "40000:365:0.015,50000:365:0.015,10000:30":
a year of a large, sparse fleet of about 1.1 million events and 49,000 project ids, the same with a quarter more
projects and events, and a month of 10,000 busy projects);
BENCH_STATE_SIZE, the fleet whose state size is followed over a year (default "100000:365:0.01"; "" skips
it); BENCH_MEMORY_SIZES, fleets of the same projects with more events each, whose full refreshes' peak memory
is compared, with a fleet of more projects, and fitted to a fixed part, a part per project and a part per
event (default "40000:365:0.015,40000:365:0.03,40000:365:0.045,80000:365:0.005"; "" skips them). BENCH_PROJECTS and BENCH_DAYS give a single size. BENCH_DUCKDB_MEMORY caps DuckDB's memory (default:
half the machine's), with spilling to a temporary directory. BENCH_REPEAT (default 5): how many times each
incremental and no-input run is timed; the median is reported. BENCH_LONG_REPEAT (default 3): how many times
the full refresh and the parse floor are timed, in turn; their medians are reported."""
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
TAP = os.path.join(ROOT, "target", "release", "tap-kpis")
FLOOR = os.path.join(ROOT, "target", "release", "parse-floor")
PY = sys.executable
# the short runs (incremental, no new input) are timed this many times and reported by their median
REPEAT = int(os.environ.get("BENCH_REPEAT", "5"))
# the full refresh and the parse floor are timed this many times, taken in turn, and reported by their
# medians: the ratio of the two is then not at the mercy of one slow minute of the machine
LONG_REPEAT = int(os.environ.get("BENCH_LONG_REPEAT", "3"))


def median(values):
    return sorted(values)[len(values) // 2]


# A small process runs each measured command: a child forked straight from this (large) process would
# report this process's resident memory as its own peak.
RUNNER = r"""
import json, os, sys, time
start = time.monotonic()
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
code = os.waitstatus_to_exitcode(status)
sys.stderr.write("\nBENCH-USAGE " + json.dumps([time.monotonic() - start, usage.ru_maxrss, code,
                                                usage.ru_utime + usage.ru_stime, usage.ru_minflt]) + "\n")
sys.exit(code)
"""


def measure_usage(cmd, stdout=subprocess.DEVNULL):
    """Wall seconds, peak RSS (MiB), stderr, CPU seconds and page faults of one command."""
    proc = subprocess.run([PY, "-c", RUNNER, *cmd], stdout=stdout, stderr=subprocess.PIPE)
    err = proc.stderr.decode(errors="replace")
    head, _, tail = err.rpartition("\nBENCH-USAGE ")
    if proc.returncode != 0 or not tail:
        raise SystemExit(f"{cmd[0]} failed: {err[-2000:]}")
    wall, maxrss_kib, _, cpu, faults = json.loads(tail)
    return wall, maxrss_kib / 1024, head, cpu, faults


def measure(cmd, stdout=subprocess.DEVNULL):
    """Wall seconds, peak RSS (MiB) and stderr of one command."""
    wall, rss, err, _, _ = measure_usage(cmd, stdout)
    return wall, rss, err


def events_read(err):
    return int(next(l for l in err.splitlines() if " events in " in l).split(" read ")[1].split()[0])


def tap_run(workdir, sources, state=None, repeat=1):
    """Run the tap over `sources`; returns wall, RSS, stderr and the last STATE value. With `repeat`, the
    same run is made that many times (each from the same state) and the median wall time and peak RSS are
    returned: a run of a second is at the mercy of the machine's page-zeroing and scheduling noise."""
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
    walls, rsses = [], []
    for _ in range(repeat):
        with open(out, "wb") as f:
            wall, rss, err = measure(cmd, stdout=f)
        walls.append(wall)
        rsses.append(rss)
    wall, rss = median(walls), median(rsses)
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
    return len(json.dumps(state)), tap["projects"], tap["executions"]


def fleet_files(projects, days, activity):
    """The files of a generated fleet, generated once and kept under bench/ for later runs."""
    fleet = os.path.join(ROOT, "bench", f".fleet-{projects}-{days}-{activity:g}")
    if not os.path.isdir(fleet):
        subprocess.run([TAP, "generate", "--projects", str(projects), "--days", str(days), "--seed", "1",
                        "--activity", str(activity), "--out", fleet + ".tmp"], check=True)
        os.rename(fleet + ".tmp", fleet)
    return sorted(os.path.join(fleet, f) for f in os.listdir(fleet))


def duckdb_memory():
    if "BENCH_DUCKDB_MEMORY" in os.environ:
        return os.environ["BENCH_DUCKDB_MEMORY"]
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return f"{max(1, total // 2 // 2**30)}GB"


def fill(src, files):
    """Make directory `src` hold exactly `files`."""
    for f in os.listdir(src):
        os.unlink(os.path.join(src, f))
    for f in files:
        if os.stat(f).st_dev == os.stat(src).st_dev:
            os.link(f, os.path.join(src, os.path.basename(f)))
        else:
            shutil.copy(f, src)


def bench(projects, days, activity):
    """Every side-by-side measurement on one generated fleet; returns the lines of its section."""
    files = fleet_files(projects, days, activity)
    fleet = os.path.dirname(files[0])
    gz_bytes = sum(os.path.getsize(f) for f in files)
    work = tempfile.mkdtemp(prefix="tap-kpis-bench-", dir=os.path.join(ROOT, "bench"))
    try:
        # (a) full refresh and (c) the one-thread parse floor, in turn
        if not os.path.exists(FLOOR):
            subprocess.run(["cargo", "build", "--release", "--quiet", "--features", "parse-floor", "--bin",
                            "parse-floor"], cwd=ROOT, check=True)
        floor_out = os.path.join(work, "floor.json")
        taps, floors = [], []
        for _ in range(LONG_REPEAT):
            taps.append(tap_run(work, [fleet]))
            with open(floor_out, "wb") as f:
                floors.append(measure([FLOOR, *files], stdout=f))
        tap_wall, tap_rss = median([t[0] for t in taps]), median([t[1] for t in taps])
        floor_wall, floor_rss = median([f[0] for f in floors]), median([f[1] for f in floors])
        events = events_read(taps[0][2])
        with open(floor_out) as f:
            floor_events = json.load(f)["events"]
        # (b) DuckDB SQL over the same files
        spill = os.path.join(work, "duckdb-spill")
        sql = ("import sys; sys.path.insert(0, %r); from kpis import sql_streams; sql_streams(%r, memory_limit=%r, "
               "spill_dir=%r)" % (os.path.join(ROOT, "tests", "sql"), files, duckdb_memory(), spill))
        db_wall, db_rss, _ = measure([PY, "-c", sql])
        # (d) incremental: the state of the first ~99% of the files, then the rest arrives
        src = os.path.join(work, "src")
        os.makedirs(src)
        split = last_percent(files)
        fill(src, files[:split])
        _, _, _, state, _ = tap_run(work, [src])
        fill(src, files)
        inc_wall, inc_rss, inc_err, state_after, inc_records = tap_run(work, [src], state, repeat=REPEAT)
        new_events = events_read(inc_err)
        idle_wall, idle_rss, _, _, idle_records = tap_run(work, [src], state_after, repeat=REPEAT)
        state_bytes, state_projects, _ = state_facts(state_after)
        # the same inside a month (no month completes): the fleet up to the last 20th of a month
        upto = max((i + 1 for i, f in enumerate(files) if os.path.basename(f)[18:20] == "20"), default=0)
        month_run = None
        if upto > 1:
            split = last_percent(files[:upto])
            fill(src, files[:split])
            _, _, _, state, _ = tap_run(work, [src])
            fill(src, files[:upto])
            wall, rss, err, _, records = tap_run(work, [src], state, repeat=REPEAT)
            month_run = (wall, rss, events_read(err), records, os.path.basename(files[upto - 1])[10:20])
    finally:
        shutil.rmtree(work, ignore_errors=True)

    short_median = f" (median of {REPEAT})" if REPEAT > 1 else ""
    long_median = f" (median of {LONG_REPEAT}, in turn with (c))" if LONG_REPEAT > 1 else ""
    floor_median = f" (median of {LONG_REPEAT})" if LONG_REPEAT > 1 else ""
    text = "\n".join([
        f"Input: generated fleet, {projects:,} projects, {days} days, activity {activity:g}, {events:,} events, "
        f"{gz_bytes / 1e6:.0f} MB gzip.",
        "",
        "| run | wall s | peak RSS MiB | events/s |",
        "|---|---:|---:|---:|",
        f"| (a) tap-kpis full refresh (all streams){long_median} | {tap_wall:.2f} | {tap_rss:.0f} | {events / tap_wall:,.0f} |",
        f"| (b) DuckDB SQL, same KPIs from the raw files | {db_wall:.2f} | {db_rss:.0f} | {events / db_wall:,.0f} |",
        f"| (c) parse floor, one thread{floor_median} ({floor_events:,} events parsed) | {floor_wall:.2f} | {floor_rss:.0f} |"
        f" {floor_events / floor_wall:,.0f} |",
        f"| (d) incremental run{short_median}, {new_events:,} new events ({100 * new_events / events:.1f}%) on the state of the"
        f" rest ({inc_records:,} records) | {inc_wall:.2f} | {inc_rss:.0f} | {new_events / inc_wall:,.0f} |",
        *([f"| (d) the same inside a month{short_median}, {month_run[2]:,} new events up to {month_run[4]} ({month_run[3]:,} "
           f"records) | {month_run[0]:.2f} | {month_run[1]:.0f} | {month_run[2] / month_run[0]:,.0f} |"]
          if month_run else []),
        f"| run with no new input{short_median} ({idle_records} records; state of {state_projects:,} projects, "
        f"{state_bytes / 1e6:.1f} MB) | {idle_wall:.2f} | {idle_rss:.0f} | |",
        "",
        f"DuckDB / tap-kpis full refresh wall time: **{db_wall / tap_wall:.1f}x**; peak memory ratio "
        f"{db_rss / tap_rss:.1f}x.",
        f"Full refresh / one-thread parse floor wall time: **{tap_wall / floor_wall:.2f}x**.",
        f"Incremental run ({100 * new_events / events:.1f}% new events, the last files) / full refresh wall "
        f"time: **{100 * inc_wall / tap_wall:.1f}%**"
        + (f"; the same ending on a month's 20th (no month completes): **{100 * month_run[0] / tap_wall:.1f}%**."
           if month_run else "."),
    ])
    print(text, flush=True)
    return text


def last_percent(files):
    """Index from which the last files hold about 1% of the bytes (at least one file)."""
    sizes = [os.path.getsize(f) for f in files]
    total, acc = sum(sizes), 0
    for i in range(len(files) - 1, 0, -1):
        acc += sizes[i]
        if acc >= total * 0.01:
            return i
    return len(files)


def state_growth(projects, days, activity):
    """The state size of one fleet after a quarter, half, three quarters and all of its history."""
    files = fleet_files(projects, days, activity)
    work = tempfile.mkdtemp(prefix="tap-kpis-bench-", dir=os.path.join(ROOT, "bench"))
    lines = [
        f"Generated fleet, {projects:,} projects, {days} days, activity {activity:g}; a full run over the first "
        "quarter, half, three quarters and all of the days, then a run with no new input on that state.",
        "",
        "| days of history | events | state bytes | projects | bytes per project | executions kept | "
        "full run s | peak RSS MiB | no-input run s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    try:
        src = os.path.join(work, "src")
        os.makedirs(src)
        for quarter in (1, 2, 3, 4):
            n = max(1, len(files) * quarter // 4)
            fill(src, files[:n])
            wall, rss, err, state, _ = tap_run(work, [src])
            idle_wall, _, _, _, _ = tap_run(work, [src], state)
            size, n_projects, kept = state_facts(state)
            lines.append(f"| {n} | {events_read(err):,} | {size:,} | {n_projects:,} | {size / max(n_projects, 1):,.0f}"
                         f" | {kept:,} | {wall:.1f} | {rss:.0f} | {idle_wall:.2f} |")
            print(lines[-1], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return "\n".join(lines)


def read_facts(err):
    """(events, executions, project ids) of a run, from its summary line."""
    line = next(l for l in err.splitlines() if " events in " in l).split(" read ")[1]
    events = int(line.split()[0])
    rest = line.split(": ", 1)[1].split(", ")
    return events, int(rest[0].split()[0]), int(rest[1].split()[0])


def fit_memory(rows):
    """Least-squares fit of peak MiB = fixed + per project x project ids + per event x events (None when the
    sizes cannot tell the two apart)."""
    xs = [(1.0, ids, events) for ids, events, _ in rows]
    ys = [rss for _, _, rss in rows]
    a = [[sum(x[i] * x[j] for x in xs) for j in range(3)] + [sum(x[i] * y for x, y in zip(xs, ys))]
         for i in range(3)]
    for c in range(3):
        pivot = max(range(c, 3), key=lambda r: abs(a[r][c]))
        if abs(a[pivot][c]) < 1e-9 * max(1.0, abs(a[c][c])):
            return None
        a[c], a[pivot] = a[pivot], a[c]
        for r in range(3):
            if r != c:
                f = a[r][c] / a[c][c]
                a[r] = [v - f * w for v, w in zip(a[r], a[c])]
    fixed, per_id, per_event = (a[i][3] / a[i][i] for i in range(3))
    worst = max(abs(fixed + per_id * ids + per_event * events - rss) for ids, events, rss in rows)
    return fixed, per_id, per_event, worst


def memory_growth(sizes):
    """Peak memory of full refreshes over fleets of the same projects sending more events each, and of a fleet
    of more projects, with what each project and each event adds."""
    lines = [
        "Generated fleets: the same projects, each more active than the last, and one of more projects; one full "
        "refresh of each.",
        "",
        "| projects | activity | events | executions | project ids | full refresh s | peak RSS MiB |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    work = tempfile.mkdtemp(prefix="tap-kpis-bench-", dir=os.path.join(ROOT, "bench"))
    rows = []
    try:
        for p, d, a in sizes:
            files = fleet_files(p, d, a)
            wall, rss, err, _, _ = tap_run(work, [os.path.dirname(files[0])])
            events, executions, ids = read_facts(err)
            rows.append((p, ids, events, rss))
            lines.append(f"| {p:,} | {a:g} | {events:,} | {executions:,} | {ids:,} | {wall:.1f} | {rss:.0f} |")
            print(lines[-1], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    same = [r for r in rows if r[0] == rows[0][0]] if rows else []
    if len(same) > 1 and same[-1][2] > same[0][2]:
        (_, _, e0, r0), (_, _, e1, r1) = same[0], same[-1]
        lines += ["", f"Of the same projects, from the first to the last: {e1 / e0:.2f}x the events, {r1 / r0:.2f}x "
                  f"the peak memory ({(r1 - r0) * 2**20 / (e1 - e0):.0f} bytes per added event)."]
    fit = fit_memory([(ids, events, rss) for _, ids, events, rss in rows]) if len(rows) > 3 else None
    if fit:
        fixed, per_id, per_event, worst = fit
        lines += ["", f"Least-squares fit over these fleets: peak = {fixed:.0f} MiB + {per_id * 2**20:.0f} bytes per "
                  f"project id + {per_event * 2**20:.0f} bytes per event (largest miss {worst:.1f} MiB)."]
    return "\n".join(lines)


def parse_size(text):
    parts = text.split(":")
    return int(parts[0]), int(parts[1]), float(parts[2]) if len(parts) > 2 else 1.0


def main():
    results = os.environ.get("BENCH_RESULTS", os.path.join(ROOT, "bench", "RESULTS.md"))
    if "BENCH_PROJECTS" in os.environ or "BENCH_DAYS" in os.environ:
        sizes = [(int(os.environ.get("BENCH_PROJECTS", "2000")), int(os.environ.get("BENCH_DAYS", "365")), 1.0)]
    else:
        sizes = [parse_size(x) for x in os.environ.get("BENCH_SIZES", "40000:365:0.015,50000:365:0.015,10000:30").split(",")]
    growth = os.environ.get("BENCH_STATE_SIZE", "100000:365:0.01")
    machine = (f"Machine: {platform.machine()}, {os.cpu_count()} cores, "
               f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, "
               f"{platform.system()} {platform.release()}.")
    sections = [f"## {p:,} projects, {d} days\n\n" + bench(p, d, a) for p, d, a in sizes]
    dense = os.environ.get("BENCH_MEMORY_SIZES",
                           "40000:365:0.015,40000:365:0.03,40000:365:0.045,80000:365:0.005")
    if dense:
        sizes_dense = [parse_size(x) for x in dense.split(",")]
        sections.append("## Peak memory by projects and by events\n\n" + memory_growth(sizes_dense))
    if growth:
        p, d, a = parse_size(growth)
        sections.append(f"## State size as history grows, {p:,} projects\n\n" + state_growth(p, d, a))
    with open(results, "w") as f:
        f.write("# Benchmark results\n\nWritten by `bash bench/run.sh`.\n\n" + machine + "\n\n"
                + "\n\n".join(sections) + "\n")


if __name__ == "__main__":
    main()
