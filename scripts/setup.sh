#!/usr/bin/env bash
# Everything tap-kpis needs on a fresh machine, installed only when missing: the Rust build, a Python
# virtualenv with Meltano (and its plugins, through `meltano install`), singer-tools in a separate
# virtualenv, and a running PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."
export MELTANO_SEND_ANONYMOUS_USAGE_STATS=false MELTANO_CLI_DISABLE_VERSION_CHECK=true
say() { printf '[setup] %s\n' "$*" >&2; }

if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
  # shellcheck disable=SC1091
  . "$HOME/.cargo/env"
fi
command -v cargo >/dev/null || { say "cargo is required (https://rustup.rs)"; exit 1; }

if ! command -v psql >/dev/null 2>&1 || [ ! -d /etc/postgresql ]; then
  say "installing PostgreSQL"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
  say "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  for _ in $(seq 1 30); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 1; done
fi

if [ ! -x .venv/bin/meltano ] || [ ! -x .venv/bin/duckdb ] || ! .venv/bin/python -c 'import duckdb, playwright' 2>/dev/null; then
  say "creating .venv (meltano, duckdb, the DuckDB CLI, playwright driver)"
  python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q 'meltano==4.4.1' 'duckdb==2.0.1' 'duckdb-cli==1.5.6' 'playwright==1.65.2'
fi
if ! command -v chromium >/dev/null 2>&1; then
  say "installing Chromium (Debian) for the report's browser test"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
if [ ! -x .venv-tools/bin/singer-check-tap ]; then
  say "creating .venv-tools (singer-tools)"
  python3 -m venv .venv-tools
  .venv-tools/bin/pip install -q 'singer-tools==0.4.1'
fi

say "building tap-kpis (release)"
cargo build --release --quiet

stamp=.meltano/.installed-$(cat meltano.yml Cargo.toml | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ] || [ ! -x .meltano/extractors/tap-kpis/venv/bin/tap-kpis ]; then
  say "meltano install (plugins: tap-kpis, target-postgres, target-duckdb)"
  .venv/bin/meltano install >/dev/null
  mkdir -p .meltano && touch "$stamp"
else
  # keep the installed tap in step with the sources
  .venv/bin/meltano install extractor tap-kpis >/dev/null
fi
say "ready"
