"""The whole loop with the real Meltano CLI: Meltano's telemetry goes to `tap-kpis collect` on 127.0.0.1,
then `tap-kpis` over the collector's files finds exactly the executions that ran, and their pipelines."""
import collections
import os
import signal
import socket
import stat
import subprocess
import tempfile
import time

from common import ROOT, TAP, check, run_tap

MELTANO = os.path.join(ROOT, ".venv", "bin", "meltano")

TAP_SCRIPT = """#!/usr/bin/env bash
# a tiny Singer tap: discovery, or one stream with two records and a state
for a in "$@"; do
  if [ "$a" = "--discover" ]; then echo '{"streams": []}'; exit 0; fi
done
echo '{"type": "SCHEMA", "stream": "items", "schema": {"type": "object", "properties": {"id": {"type": "integer"}}}, "key_properties": ["id"]}'
echo '{"type": "RECORD", "stream": "items", "record": {"id": 1}}'
echo '{"type": "RECORD", "stream": "items", "record": {"id": 2}}'
echo '{"type": "STATE", "value": {"done": true}}'
"""

TARGET_SCRIPT = """#!/usr/bin/env bash
# a tiny Singer target: reads everything, echoes the last state
last=""
while IFS= read -r line; do
  case "$line" in *'"STATE"'*) last="$line";; esac
done
[ -n "$last" ] && echo '{"done": true}'
exit 0
"""

PLUGINS = """
plugins:
  extractors:
  - name: tap-demo
    namespace: tap_demo
    executable: ./bin/tap-demo
  loaders:
  - name: target-demo
    namespace: target_demo
    executable: ./bin/target-demo
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


with tempfile.TemporaryDirectory() as tmp:
    captures = os.path.join(tmp, "captures")
    port = free_port()
    collector = subprocess.Popen([TAP, "collect", "--listen", f"127.0.0.1:{port}", "--out", captures],
                                 stderr=subprocess.PIPE, text=True)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    env = dict(os.environ)
    env.update(
        MELTANO_SEND_ANONYMOUS_USAGE_STATS="true",
        MELTANO_SNOWPLOW_COLLECTOR_ENDPOINTS=f'["http://127.0.0.1:{port}"]',
        MELTANO_CLI_DISABLE_VERSION_CHECK="true",
    )
    ran = []

    def meltano(*args, cwd, expect):
        proc = subprocess.run([MELTANO, *args], cwd=cwd, env=env, capture_output=True, text=True)
        check(proc.returncode == expect, f"meltano {' '.join(args)} exited {proc.returncode}: {proc.stderr[-3000:]}")
        ran.append((args[0], proc.returncode))

    try:
        meltano("init", "proj", cwd=tmp, expect=0)
        project = os.path.join(tmp, "proj")
        with open(os.path.join(project, "meltano.yml"), "a") as f:
            f.write(PLUGINS)
        os.makedirs(os.path.join(project, "bin"))
        for name, body in [("tap-demo", TAP_SCRIPT), ("target-demo", TARGET_SCRIPT)]:
            path = os.path.join(project, "bin", name)
            with open(path, "w") as f:
                f.write(body)
            os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)
        meltano("run", "tap-demo", "target-demo", cwd=project, expect=0)
        meltano("invoke", "tap-demo", cwd=project, expect=0)
        meltano("elt", "tap-demo", "target-demo", "--state-id", "demo", cwd=project, expect=0)
        meltano("run", "nonexistent-plugin", cwd=project, expect=1)
    finally:
        collector.send_signal(signal.SIGTERM)
        collector.wait(timeout=30)
    check(collector.returncode == 0, f"collector exit {collector.returncode}: {collector.stderr.read()[-2000:]}")

    records, _, _ = run_tap({"sources": [captures]})
    execs = records.get("cli_executions", [])
    got = collections.Counter((r["command"], r["exit_code"]) for r in execs)
    want = collections.Counter(ran)
    check(got == want, f"executions {dict(got)} != commands run {dict(want)}")
    errors = [e for e in records.get("telemetry_errors", []) if e["reason"] != "unattributed_state_change"]
    check(not errors, f"errors reading the collector's files: {errors[:3]}")
    runs = records.get("pipeline_runs", [])
    check(sorted(r["command"] for r in runs) == ["elt", "run"], f"pipeline runs {runs}")
    check(all(r["is_success"] for r in runs), "pipeline runs succeeded")
    pipelines = records.get("pipelines", [])
    check(len(pipelines) == 1 and pipelines[0]["runs"] == 2, f"run and elt of the same plugins are one pipeline: {pipelines}")
    projects = records.get("projects", [])
    check(len(projects) == 1, f"one project: {projects}")
    print(f"ok: {dict(got)}; 1 pipeline with 2 runs")
