#!/usr/bin/env bash
# The test command: sets up what is missing, then runs the whole suite
# (unit, integration on real PostgreSQL and real models, end to end).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "==> ruff check . && mypy shared backend voice_gateway relayx_cli"
.venv/bin/ruff check .
.venv/bin/mypy shared backend voice_gateway relayx_cli
exec .venv/bin/python -m pytest "$@"
