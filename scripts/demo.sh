#!/usr/bin/env bash
# Command one: install everything into ./.venv, start backend + gateway on the embedded defaults
# (SQLite, bundled models, simulated phone line), place a demo call and print its live transcript.
# The services keep running afterwards for curl, until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/relayx demo "$@"
