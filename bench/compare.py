"""Two builds of tap-kpis, side by side on the same generated fleet, runs alternating.

A change's gain in a run of a third of a second is smaller than what the machine's speed drifts between
two benchmark runs, so it is measured by alternating runs of the two builds on the same input, under the
same conditions: (1) the incremental run adding the last ~1% of the fleet's bytes to the state of the
rest (each build makes its own state), and optionally (2) full refreshes. Prints, per build, the median,
mean, 90th percentile and slowest wall time, the mean CPU time, the median page faults and peak RSS,
and the ratio of this build to the base by median and by mean; then whether the two builds' records
(without `time_extracted`) and final STATE are identical.

    python3 bench/compare.py --base REV          # REV built in a worktree under target/compare/
    python3 bench/compare.py --base-bin PATH     # a binary built before

Options: --size PROJECTS:DAYS:ACTIVITY (default 40000:365:0.015), --runs N incremental runs of each
(default 20), --full N full refreshes of each (default 0), --bin PATH for this build (default: built
with `cargo build --release`), --expect-same to exit with 1 when the outputs differ."""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import ROOT, fill, fleet_files, last_percent, measure_usage, median, parse_size  # noqa: E402


def timed(cmd, out):
    """Wall s, CPU s, page faults and peak RSS (MiB) of `cmd`, its stdout written to `out`."""
    with open(out, "wb") as f:
        wall, rss, _, cpu, faults = measure_usage(cmd, stdout=f)
    return wall, cpu, faults, rss


def build_base(rev):
    """The release binary of `rev`, built in a worktree of its own (its target directory is kept, so
    that building another revision later compiles only what changed)."""
    commit = subprocess.run(["git", "rev-parse", "--short", rev], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.strip()
    tree = os.path.join(ROOT, "target", "compare", commit)
    if not os.path.isdir(tree):
        subprocess.run(["git", "worktree", "add", "--detach", tree, commit], cwd=ROOT, check=True)
    env = dict(os.environ, CARGO_TARGET_DIR=os.path.join(ROOT, "target", "compare", "target"))
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "tap-kpis"], cwd=tree, env=env, check=True)
    binary = os.path.join(ROOT, "target", "compare", f"tap-kpis-{commit}")
    shutil.copy(os.path.join(env["CARGO_TARGET_DIR"], "release", "tap-kpis"), binary)
    return binary, commit


def records_and_state(path):
    """The RECORD lines without their `time_extracted`, sorted, and the last STATE line."""
    records, state = [], None
    with open(path) as f:
        for line in f:
            if line.startswith('{"type":"RECORD"'):
                message = json.loads(line)
                message.pop("time_extracted", None)
                records.append(json.dumps(message, sort_keys=True))
            elif line.startswith('{"type":"STATE"'):
                state = line
    return sorted(records), state


def out_path(work, name, what="out"):
    """Where a build's output is kept (named after the build, without spaces)."""
    return os.path.join(work, f"{name.replace(' ', '-')}.{what}")


def same_output(builds, work):
    """Whether the two builds' last runs wrote the same records and the same final STATE, and a line
    saying so."""
    (base_records, base_state), (this_records, this_state) = (
        records_and_state(out_path(work, name)) for name, _ in builds)
    same = base_records == this_records and base_state == this_state
    return same, (f"records {'identical' if base_records == this_records else 'DIFFER'} "
                  f"({len(this_records):,}), final STATE {'identical' if base_state == this_state else 'DIFFERS'}")


def summary(name, runs):
    walls = sorted(r[0] for r in runs)
    n = len(walls)
    return {
        "name": name,
        "median": median(walls),
        "mean": sum(walls) / n,
        "p90": walls[min(n - 1, int(n * 0.9))],
        "max": walls[-1],
        "cpu": sum(r[1] for r in runs) / n,
        "faults": median([r[2] for r in runs]),
        "rss": median([r[3] for r in runs]),
    }


def print_table(title, rows):
    print(f"\n{title}\n")
    print("| build | median s | mean s | p90 s | slowest s | mean CPU s | page faults | peak RSS MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['name']} | {r['median']:.3f} | {r['mean']:.3f} | {r['p90']:.3f} | {r['max']:.3f} | "
              f"{r['cpu']:.3f} | {r['faults']:,} | {r['rss']:.0f} |")
    base, this = rows
    print(f"\nthis build / base: {this['median'] / base['median']:.3f} by the median, "
          f"{this['mean'] / base['mean']:.3f} by the mean, {this['cpu'] / base['cpu']:.3f} in CPU time")


def alternate(builds, make_cmd, rounds, work):
    """Run each build `rounds` times, alternating (and which goes first alternating too)."""
    runs = {name: [] for name, _ in builds}
    for i in range(rounds):
        for name, binary in (builds if i % 2 == 0 else builds[::-1]):
            runs[name].append(timed(make_cmd(name, binary), out_path(work, name)))
    return runs


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    base_group = parser.add_mutually_exclusive_group(required=True)
    base_group.add_argument("--base", help="git revision to compare with")
    base_group.add_argument("--base-bin", help="binary to compare with")
    parser.add_argument("--bin", help="this build's binary (default: cargo build --release)")
    parser.add_argument("--size", default="40000:365:0.015")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--full", type=int, default=0)
    parser.add_argument("--expect-same", action="store_true",
                        help="exit with 1 if the two builds' records or final STATE differ")
    args = parser.parse_args()

    if args.bin:
        this_bin = os.path.abspath(args.bin)
    else:
        subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "tap-kpis"], cwd=ROOT, check=True)
        this_bin = os.path.join(ROOT, "target", "release", "tap-kpis")
    if args.base:
        base_bin, base_name = build_base(args.base)
        base_name = f"base {base_name}"
    else:
        base_bin, base_name = os.path.abspath(args.base_bin), "base"
    builds = [(base_name, base_bin), ("this build", this_bin)]

    files = fleet_files(*parse_size(args.size))
    work = tempfile.mkdtemp(prefix="tap-kpis-compare-", dir=os.path.join(ROOT, "bench"))
    try:
        src = os.path.join(work, "src")
        os.makedirs(src)
        with open(os.path.join(work, "config.json"), "w") as f:
            json.dump({"sources": [src]}, f)
        config = os.path.join(work, "config.json")
        split = last_percent(files)
        fill(src, files[:split])
        # each build resumes from a state it wrote itself
        state_sizes = []
        for name, binary in builds:
            out = out_path(work, name, "state-run")
            timed([binary, "--config", config], out)
            with open(out) as f:
                states = [line for line in f if line.startswith('{"type":"STATE"')]
            state = json.dumps(json.loads(states[-1])["value"])
            state_sizes.append(f"{len(state) / 1e6:.1f} MB ({name})")
            with open(out_path(work, name, "state.json"), "w") as f:
                f.write(state)
        fill(src, files)
        print(f"fleet {args.size}: {len(files) - split} of {len(files)} files new, states of "
              f"{' and '.join(state_sizes)}, {args.runs} alternating incremental runs of each build")
        inc = alternate(builds, lambda name, binary: [
            binary, "--config", config, "--state", out_path(work, name, "state.json")], args.runs, work)
        print_table("Incremental run (the last ~1% of the bytes)", [summary(n, inc[n]) for n, _ in builds])
        same, line = same_output(builds, work)
        print(line)
        if args.full:
            full = alternate(builds, lambda name, binary: [binary, "--config", config], args.full, work)
            print_table("Full refresh", [summary(n, full[n]) for n, _ in builds])
            same_full, line = same_output(builds, work)
            print(line)
            same = same and same_full
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.expect_same and not same:
        raise SystemExit("the two builds' output differs")


if __name__ == "__main__":
    main()
