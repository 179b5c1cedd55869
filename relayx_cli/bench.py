"""`relayx bench`: the voice path's figures on this machine (a benchmark that prints, never a test).

1. Sequential calls on the configured engines: voice-to-voice p50/p95 and per-stage p50s.
2. Concurrent calls at each level: CPU and RSS per call in the gateway process, and whether every
   outgoing frame stayed within 40 ms of its slot (gap between agent frames ≤ 60 ms) with every
   turn answered — the largest such level is the real-time concurrency.
3. The media path alone: a gateway with instant engines (named so) under many streams; its CPU
   time gives streams per core.
The gateway runs in its own process so that its CPU and memory are its own.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from relayx_cli.voice_bench import (
    BENCH_LINES,
    caller_lines,
    fmt,
    run_calls,
    summarise,
    table,
    write_json,
)
from shared.settings import Settings

REALTIME_LATE_MS = 40  # no outgoing frame later than 40 ms past the moment it had to play


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Proc:
    """Reads a child's CPU time and memory from /proc (Linux)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._tick = os.sysconf("SC_CLK_TCK")

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / self._tick

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0


def _start_gateway(settings: Settings, env_extra: dict[str, str], module: list[str], port: int,
                   log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, **env_extra, "GATEWAY_PORT": str(port), "LOG_LEVEL": "WARNING"}
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, *module], env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited ({proc.returncode}); see {log}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise TimeoutError("gateway did not become healthy")


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def _level(settings: Settings, ws: str, lines: Any, n: int, proc: _Proc) -> dict[str, Any]:
    cpu0, wall0, rss0 = proc.cpu_s(), time.monotonic(), proc.rss_mb()
    peak = {"rss": rss0}

    async def sample() -> None:
        while True:
            peak["rss"] = max(peak["rss"], proc.rss_mb())
            await asyncio.sleep(0.5)

    sampler = asyncio.create_task(sample())
    try:
        results = await run_calls(settings, ws, lines, concurrent=n)
    finally:
        sampler.cancel()
    cpu, wall = proc.cpu_s() - cpu0, time.monotonic() - wall0
    summary = summarise(results)
    summary["cpu_cores_per_call"] = round(cpu / wall / n, 3)
    summary["gateway_rss_mb"] = round(peak["rss"], 1)
    summary["rss_mb_per_call"] = round(max(0.0, peak["rss"] - rss0) / n, 1)
    summary["realtime"] = (
        summary["max_frame_late_ms"] <= REALTIME_LATE_MS and summary["answered"] == summary["turns"]
    )
    return summary


async def _media_path(settings: Settings, ws: str, streams: int, proc: _Proc) -> dict[str, Any]:
    lines = await caller_lines(["Hello there, this is a short test line."])
    cpu0, wall0 = proc.cpu_s(), time.monotonic()
    results = await run_calls(settings, ws, lines, concurrent=streams)
    cpu, wall = proc.cpu_s() - cpu0, time.monotonic() - wall0
    summary = summarise(results)
    core_fraction = cpu / wall
    return {
        "streams": streams,
        "gateway_cpu_cores": round(core_fraction, 3),
        "streams_per_core": round(streams / core_fraction) if core_fraction > 0 else None,
        "turns": summary["turns"],
        "answered": summary["answered"],
        "max_frame_late_ms": summary["max_frame_late_ms"],
    }


def run_bench(settings: Settings, *, calls: int, levels: list[int], media_streams: int, json_out: Path) -> int:
    """Run every part, print a table, write JSON; returns the exit code."""
    work = Path(tempfile.mkdtemp(prefix="relayx-bench-"))
    db = f"sqlite:///{work}/bench.db"
    bench_settings = settings.model_copy(update={"database_url": db, "data_dir": work})
    env = {"DATABASE_URL": db, "RELAYX_DATA_DIR": str(work), "MODEL_CACHE_DIR": str(settings.model_cache_dir.resolve()),
           "STREAM_RATE_LIMIT_PER_MINUTE": "0"}  # hundreds of benchmark streams come from one address
    report: dict[str, Any] = {"machine": {"cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}}

    async def run() -> None:
        lines = await caller_lines(BENCH_LINES)
        port = _free_port()
        _say("starting the gateway on the configured engines (loading models)…")
        gateway = _start_gateway(bench_settings, env, ["-m", "uvicorn", "voice_gateway.main:create_app", "--factory", "--port",
                                                       str(port), "--ws", "websockets-sansio"], port, work / "gw.log")
        proc = _Proc(gateway.pid)
        try:
            ws = f"ws://127.0.0.1:{port}"
            _say(f"sequential: {calls} call(s) of {len(lines)} turns…")
            report["sequential"] = [await _level(bench_settings, ws, lines, 1, proc) for _ in range(calls)]
            report["concurrent"] = {}
            for n in levels:
                _say(f"concurrent: {n} simultaneous calls…")
                report["concurrent"][n] = await _level(bench_settings, ws, lines, n, proc)
        finally:
            gateway.terminate()
            gateway.wait(timeout=30)
        if media_streams:
            port = _free_port()
            _say(f"media path alone (instant engines): {media_streams} streams…")
            gateway = _start_gateway(bench_settings, env, ["-m", "relayx_cli.instant_engines"], port, work / "gw2.log")
            try:
                report["media_path_instant_engines"] = await _media_path(
                    bench_settings, f"ws://127.0.0.1:{port}", media_streams, _Proc(gateway.pid))
            finally:
                gateway.terminate()
                gateway.wait(timeout=30)

    asyncio.run(run())
    print(render(report))
    write_json(json_out, report)
    _say(f"figures written to {json_out}")
    return 0


def render(report: dict[str, Any]) -> str:
    out = [f"machine: {report['machine']['cores']} cores, {report['machine']['date']}", "", "sequential calls:"]
    for i, s in enumerate(report.get("sequential", []), 1):
        out.append(f"  call {i}: " + table(s).replace("\n", "\n          "))
    out.append("")
    out.append(f"{'concurrent':>10} {'v2v p50':>8} {'v2v p95':>8} {'answered':>9} {'late ms':>8} "
               f"{'cpu/call':>9} {'rss/call':>9} {'real-time':>9}")
    realtime = 0
    for n, s in report.get("concurrent", {}).items():
        v = s["voice_to_voice_ms"]
        out.append(f"{n:>10} {fmt(v['p50']):>8} {fmt(v['p95']):>8} {s['answered']:>4}/{s['turns']:<4} "
                   f"{s['max_frame_late_ms']:>8} {s['cpu_cores_per_call']:>9} "
                   f"{s['rss_mb_per_call']:>8}M {'yes' if s['realtime'] else 'no':>9}")
        if s["realtime"]:
            realtime = max(realtime, int(n))
    report["max_realtime_concurrency"] = realtime
    out.append(f"largest real-time concurrency (no frame late by more than 40 ms, every turn answered): {realtime}")
    media = report.get("media_path_instant_engines")
    if media:
        out.append("")
        out.append(f"media path alone (instant STT/LLM/TTS, real Silero VAD): {media['streams']} streams used "
                   f"{media['gateway_cpu_cores']} cores → {media['streams_per_core']} streams per core; "
                   f"answered {media['answered']}/{media['turns']}, latest frame {media['max_frame_late_ms']} ms")
    return "\n".join(out)
