"""The independent validator singer-check-tap (PyPI singer-tools) accepts the tap's output on real
telemetry, and rejects it once a record is broken (so the check can fail)."""
import json
import os
import subprocess

from common import REAL, ROOT, SHARED, TAP, check

CHECK = os.path.join(ROOT, ".venv-tools", "bin", "singer-check-tap")
config = os.path.join(ROOT, "target", "e2e-check-config.json")
sources = [REAL, os.path.join(SHARED, "data", "meltano-old")]
with open(config, "w") as f:
    json.dump({"sources": sources}, f)
out = subprocess.run([TAP, "--config", config], capture_output=True, check=True).stdout

ok = subprocess.run([CHECK], input=out, capture_output=True)
check(ok.returncode == 0, f"singer-check-tap rejected the output:\n{ok.stdout.decode()[-2000:]}\n{ok.stderr.decode()[-2000:]}")
summary = ok.stdout.decode()
check("cli_executions" in summary, f"summary lacks streams: {summary}")

# negative control: a record that breaks its schema
lines = out.decode().splitlines()
for i, line in enumerate(lines):
    msg = json.loads(line)
    if msg["type"] == "RECORD" and msg["stream"] == "cli_executions":
        msg["record"]["runtime_ms"] = "not a number"
        lines[i] = json.dumps(msg)
        break
bad = subprocess.run([CHECK], input=("\n".join(lines) + "\n").encode(), capture_output=True)
check(bad.returncode != 0, "singer-check-tap accepted a broken record")
print("ok: singer-check-tap accepts the output and rejects a broken record")
