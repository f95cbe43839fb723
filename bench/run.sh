#!/usr/bin/env bash
# The whole benchmark in one command (also `make bench`): installs what it needs, runs
# every target one after the other, writes BENCHMARKS.md and bench/latency.png.
#   bench/run.sh [--quick] [any bench/run_bench.py option]
# Needs root for apt-get (wrk) the first time; PostgreSQL on 127.0.0.1:5432 for the
# outbox figures. Takes about 10-15 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
LITELLM_PIN=1.106.12

scripts/setup
if ! command -v wrk >/dev/null; then
  apt-get update -qq && apt-get install -y -qq wrk
fi
if [ ! -x bench/.venv-litellm/bin/litellm ] || \
   ! bench/.venv-litellm/bin/python -c "import importlib.metadata as m, sys; sys.exit(m.version('litellm') != '$LITELLM_PIN')"; then
  python3 -m venv bench/.venv-litellm
  bench/.venv-litellm/bin/pip install --quiet "litellm[proxy]==$LITELLM_PIN"
fi
if ! bench/.venv-plot/bin/python -c "import matplotlib" 2>/dev/null; then
  python3 -m venv bench/.venv-plot
  bench/.venv-plot/bin/pip install --quiet matplotlib
fi

.venv/bin/python bench/run_bench.py "$@"
.venv/bin/python bench/report.py bench/results/latest.json BENCHMARKS.md
# The router's own cost per call (issue 12: at most 20 µs), its own section.
.venv/bin/python bench/router_bench.py --write BENCHMARKS.md
# The dashboard's overview over a 1M-call ledger, SQLite and PostgreSQL (its own section).
.venv/bin/python bench/ui_overview.py --write BENCHMARKS.md
bench/.venv-plot/bin/python bench/plot.py bench/results/latest.json bench/latency.png
echo "wrote BENCHMARKS.md and bench/latency.png"
