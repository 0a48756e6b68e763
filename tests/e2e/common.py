"""Helpers shared by the end-to-end tests: paths, running Meltano and the tap, querying PostgreSQL."""
import json
import os
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SHARED = os.path.abspath(os.path.join(ROOT, "..", "shared"))
TAP = os.path.join(ROOT, "target", "release", "tap-kpis")
MELTANO = os.path.join(ROOT, ".venv", "bin", "meltano")
REAL = os.path.join(SHARED, "data", "meltano-real", "captures.ndjson")


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def meltano_env(**extra):
    env = dict(os.environ)
    env.update(
        MELTANO_SEND_ANONYMOUS_USAGE_STATS="false",
        MELTANO_CLI_DISABLE_VERSION_CHECK="true",
        TARGET_POSTGRES_PASSWORD="postgres",
    )
    env.update({k: v for k, v in extra.items()})
    return env


def meltano(*args, env=None, check_ok=True):
    proc = subprocess.run([MELTANO, *args], cwd=ROOT, env=env or meltano_env(), capture_output=True, text=True)
    if check_ok and proc.returncode != 0:
        fail(f"meltano {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    return proc


def psql(sql):
    proc = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-At", "-F", "\t", "-c", sql],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        fail(f"psql {sql!r}: {proc.stderr}")
    return [line.split("\t") for line in proc.stdout.splitlines() if line]


def run_tap(config, *args):
    """Run the tap binary with a config dict; returns (records by stream, messages, stderr)."""
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(config, f)
        path = f.name
    proc = subprocess.run([TAP, "--config", path, *args], capture_output=True, text=True)
    os.unlink(path)
    if proc.returncode != 0:
        fail(f"tap-kpis exited {proc.returncode}: {proc.stderr[-2000:]}")
    records, messages = {}, []
    for line in proc.stdout.splitlines():
        msg = json.loads(line)
        messages.append(msg)
        if msg["type"] == "RECORD":
            records.setdefault(msg["stream"], []).append(msg["record"])
    return records, messages, proc.stderr


def ground_truth():
    """The execution table of ../shared/data/meltano-real/README.md as (command, exit code) rows."""
    rows = []
    with open(os.path.join(SHARED, "data", "meltano-real", "README.md")) as f:
        for line in f:
            cells = [c.strip() for c in line.split("|")]
            if len(cells) > 9 and cells[1].isdigit():
                command = None if cells[5] == "(none)" else cells[5]
                rows.append((command, int(cells[7])))
    return rows
