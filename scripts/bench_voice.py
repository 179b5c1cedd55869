"""Per-stage timings of a few real turns on this machine (a benchmark, not a test).

Starts the gateway in-process on the configured engines (embedded defaults: faster-whisper tiny.en,
Qwen2.5-Coder-0.5B on llama.cpp, Piper), calls it with the virtual phone, prints the figures.
Usage: .venv/bin/python scripts/bench_voice.py [--concurrent N] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from relayx_cli.voice_bench import BENCH_LINES, caller_lines, run_calls, summarise, table, write_json
from shared.settings import Settings
from tests.support.servers import serve
from voice_gateway.main import create_app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--concurrent", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="relayx-bench-"))
    settings = Settings(DATABASE_URL=f"sqlite:///{tmp}/bench.db", RELAYX_DATA_DIR=str(tmp), LOG_LEVEL="WARNING")

    async def run() -> None:
        lines = await caller_lines(BENCH_LINES)
        with serve(create_app(settings), timeout_s=600) as base:
            results = await run_calls(settings, base.replace("http", "ws"), lines, concurrent=args.concurrent)
        summary = summarise(results)
        print(table(summary))
        for speaker, text in results[0].transcript:
            print(f"  {speaker:>6}: {text}")
        if args.json:
            write_json(args.json, summary)

    asyncio.run(run())


if __name__ == "__main__":
    main()
