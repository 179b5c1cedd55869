"""`relayx bench`: the voice path's figures on this machine (a benchmark that prints, never a test).

Callers dial a real gateway on the configured engines and speak Twilio's Media Streams in real time:
1. A level: N calls starting together (or staggered), each saying K caller lines. Realistic lines
   (the default) last 3–5 s, in several voices, over a noisy phone band; `--quick` uses the old five
   short clean lines. Per call and overall: turns answered, voice-to-voice p50/p95, gaps heard inside
   replies, the gateway's stage timings and `max_frame_late_ms`, CPU and RSS per call.
2. `--find-capacity`: levels 1, 2, 3… until one fails (a turn unanswered, a gap over 40 ms, or
   voice-to-voice p95 over 2.5 s); the largest passing level is the real-time concurrency.
3. The media path alone: a gateway with instant engines (named so) under many streams; its CPU
   time gives streams per core.
4. `--set phone`: the committed phone-band test set (tests/data/phone_set) instead of generated
   lines: its calls, N at a time, scored against what the callers said (relayx_cli.turn_scoring):
   WER of the stored caller lines, lines split or merged, end-of-turn p50, repeated replies,
   refusals, and for lines said over the agent, speech onset → `clear` and whether the reply resumed.
The gateway runs in its own process so that its CPU and memory are its own.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx

from backend.telephony.virtual_phone import CallerLine
from relayx_cli import phone_set, turn_scoring
from relayx_cli.caller_lines import call_script, load_line, noise_bed
from relayx_cli.voice_bench import (
    BENCH_LINES,
    CallPlan,
    CallResult,
    caller_lines,
    fmt,
    run_calls,
    run_plans,
    summarise,
    table,
    write_json,
)
from shared.settings import Settings

SETTLE_S = 3.0
"""Pause between levels, so one level's last writes and warm caches do not weigh on the next."""


@dataclass(frozen=True)
class Scenario:
    """How the callers of every level behave."""

    lines: int = 5
    start: Literal["together", "staggered"] = "together"
    stagger_s: float = 2.3
    realistic: bool = True
    test_set: str | None = None
    """"phone": play tests/data/phone_set (its calls and lines; `lines` and `realistic` do not apply)."""


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


class _Plans:
    """Caller plans for any level, synthesised (or read from the cache) before the gateway starts."""

    def __init__(self, scenario: Scenario, cache_dir: Path, voice_path: Path | None) -> None:
        self.scenario = scenario
        self.cache_dir = cache_dir
        self.voice_path = voice_path
        self._scripts: dict[int, CallPlan] = {}
        self._quick: list[CallerLine] = []
        self.test_set: phone_set.PhoneSet | None = None
        self._set_plans: list[CallPlan] = []

    async def prepare(self, calls: int) -> None:
        if self.scenario.test_set is not None:
            if not self._set_plans:
                self.test_set = phone_set.load()
                self._set_plans = [set_plan(self.test_set, c) for c in self.test_set.calls]
            return
        if not self.scenario.realistic:
            if not self._quick:
                self._quick = await caller_lines(BENCH_LINES)
            return
        for c in range(calls):
            if c not in self._scripts:
                specs = call_script(c, self.scenario.lines)
                audio = [await asyncio.to_thread(load_line, s, self.cache_dir, voice_path=self.voice_path)
                         for s in specs]
                bed = await asyncio.to_thread(noise_bed, specs[0].voice)
                self._scripts[c] = CallPlan([CallerLine(s.text, a) for s, a in zip(specs, audio, strict=True)],
                                            voice=specs[0].voice.name, bed=bed)

    def level(self, n: int) -> list[CallPlan]:
        """The plans of n calls, each dialling at its offset (0 for all, or c × stagger).

        A test set plays all its calls whatever n is: n at a time (see `_level`)."""
        if self._set_plans:
            return list(self._set_plans)
        out = []
        for c in range(n):
            delay = c * self.scenario.stagger_s if self.scenario.start == "staggered" else 0.0
            if self.scenario.realistic:
                plan = self._scripts[c]
            else:
                lines = [self._quick[j % len(self._quick)] for j in range(self.scenario.lines)]
                plan = CallPlan(lines, voice="piper (quick)")
            out.append(CallPlan(plan.lines, voice=plan.voice, bed=plan.bed, start_delay_s=delay))
        return out


def set_plan(test_set: phone_set.PhoneSet, call: phone_set.SetCall) -> CallPlan:
    """One call of the test set as a bench caller's plan (its line noise between lines)."""
    return CallPlan(test_set.caller_lines(call), voice=call.voice, bed=test_set.audio(call.bed), label=call.id,
                    overlaps={i: line.overlap for i, line in enumerate(call.lines) if line.overlap})


def set_figures(test_set: phone_set.PhoneSet, results: list[CallResult]) -> dict[str, Any]:
    """Score each call of the set against its references (results in the set's call order)."""
    by_id = {c.id: c for c in test_set.calls}
    calls = [by_id[r.phone.label] for r in results]
    return turn_scoring.set_summary(
        [[line.reference for line in c.lines] for c in calls],
        [r.rows for r in results],
        [o for r in results for o in r.phone.overlaps],
        tags=[[line.tags for line in c.lines] for c in calls],
    )


async def _level(settings: Settings, ws: str, plans: list[CallPlan], proc: _Proc, *,
                 at_once: int | None = None, test_set: phone_set.PhoneSet | None = None) -> dict[str, Any]:
    """Run the plans (all together, or `at_once` at a time) and sum up the level (scored against the
    test set's references when the plans are its calls)."""
    n = at_once or len(plans)
    cpu0, wall0, rss0 = proc.cpu_s(), time.monotonic(), proc.rss_mb()
    peak = {"rss": rss0}

    async def sample() -> None:
        while True:
            peak["rss"] = max(peak["rss"], proc.rss_mb())
            await asyncio.sleep(0.5)

    sampler = asyncio.create_task(sample())
    try:
        results = []
        for i in range(0, len(plans), n):
            results += await run_plans(settings, ws, plans[i : i + n])
    finally:
        sampler.cancel()
    cpu, wall = proc.cpu_s() - cpu0, time.monotonic() - wall0
    summary = summarise(results)
    summary["cpu_cores_per_call"] = round(cpu / wall / n, 3)
    summary["gateway_rss_mb"] = round(peak["rss"], 1)
    summary["rss_mb_per_call"] = round(max(0.0, peak["rss"] - rss0) / n, 1)
    summary["transcripts"] = [r.transcript for r in results]
    if test_set is not None:
        summary["set"] = set_figures(test_set, results)
    return summary


async def ramp(run_level: Callable[[int], Awaitable[dict[str, Any]]], *, max_calls: int) -> tuple[int, dict[int, Any]]:
    """Levels 1, 2, 3… up to `max_calls`, stopping at the first that fails; returns the largest
    passing level (0 if even one call fails) and every level's figures."""
    passed, levels = 0, {}
    for n in range(1, max_calls + 1):
        summary = await run_level(n)
        levels[n] = summary
        if summary["failures"]:
            break
        passed = n
    return passed, levels


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


def run_bench(
    settings: Settings, *, calls: int, scenario: Scenario, levels: list[int], find_capacity: bool,
    max_calls: int, media_streams: int, json_out: Path,
) -> int:
    """Run the levels asked for, print a table per level, write JSON; returns the exit code."""
    work = Path(tempfile.mkdtemp(prefix="relayx-bench-"))
    db = f"sqlite:///{work}/bench.db"
    bench_settings = settings.model_copy(update={"database_url": db, "data_dir": work})
    env = {"DATABASE_URL": db, "RELAYX_DATA_DIR": str(work), "MODEL_CACHE_DIR": str(settings.model_cache_dir.resolve()),
           "STREAM_RATE_LIMIT_PER_MINUTE": "0",  # hundreds of benchmark streams come from one address
           "GATEWAY_MAX_CALLS": "0"}  # the bench measures the capacity: the gateway must not cap it
    plans = _Plans(scenario, settings.data_dir / "bench" / "caller_lines", settings.tts_voice_path)
    report: dict[str, Any] = {
        "machine": {"cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M")},
        "scenario": {"lines": scenario.lines, "start": scenario.start, "stagger_s": scenario.stagger_s,
                     "realistic": scenario.realistic, "find_capacity": find_capacity, "set": scenario.test_set},
        "levels": {},
    }
    wanted = [calls, *levels] if not find_capacity else []

    async def run() -> None:
        _say("preparing caller lines (cached under the data dir after the first run)…")
        await plans.prepare(max_calls if find_capacity else max(wanted, default=1))
        port = _free_port()
        _say("starting the gateway on the configured engines (loading models)…")
        gateway = _start_gateway(bench_settings, env, ["-m", "uvicorn", "voice_gateway.main:create_app", "--factory", "--port",
                                                       str(port), "--ws", "websockets-sansio"], port, work / "gw.log")
        proc = _Proc(gateway.pid)
        ws = f"ws://127.0.0.1:{port}"

        async def one(n: int) -> dict[str, Any]:
            if report["levels"]:
                await asyncio.sleep(SETTLE_S)
            if plans.test_set is not None:
                _say(f"test set {scenario.test_set}: {len(plans.test_set.calls)} calls, {n} at a time…")
                summary = await _level(bench_settings, ws, plans.level(n), proc, at_once=n,
                                       test_set=plans.test_set)
            else:
                _say(f"{n} call(s), {scenario.start}, {scenario.lines} line(s) each…")
                summary = await _level(bench_settings, ws, plans.level(n), proc)
            key, k = str(n), 1
            while key in report["levels"]:  # the same level run again (--calls 1 --concurrency 1)
                k += 1
                key = f"{n}#{k}"
            report["levels"][key] = summary
            print(f"\n{n} call(s) {scenario.start}:\n{table(summary)}", flush=True)
            if "set" in summary:
                print(turn_scoring.set_table(summary["set"]), flush=True)
            return summary

        try:
            if find_capacity:
                report["max_realtime_concurrency"], _ = await ramp(one, max_calls=max_calls)
            else:
                for n in wanted:
                    await one(n)
                passing = [s["calls"] for s in report["levels"].values() if s["realtime"]]
                report["max_realtime_concurrency"] = max(passing, default=0)
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
    print()
    print(render(report))
    write_json(json_out, report)
    _say(f"figures written to {json_out} (gateway log: {work / 'gw.log'})")
    return 0


def render(report: dict[str, Any]) -> str:
    """The closing summary: one row per level, the real-time concurrency, the media path."""
    sc = report["scenario"]
    kind = "realistic lines (3–5 s, several voices, phone band + noise)" if sc["realistic"] else "quick lines"
    start = "together" if sc["start"] == "together" else f"staggered by {sc['stagger_s']} s"
    what = f"{sc['lines']} {kind} per call" if not sc.get("set") else f"the {sc['set']} test set's calls"
    out = [f"machine: {report['machine']['cores']} cores, {report['machine']['date']}; {what}, calls start {start}", ""]
    out.append(f"{'calls':>5} {'answered':>9} {'v2v p50':>8} {'v2v p95':>8} {'gaps>40':>8} {'worst gap':>9} "
               f"{'gw late':>8} {'cpu/call':>9} {'rss/call':>9} {'real-time':>9}")
    for n, s in report["levels"].items():
        v = s["voice_to_voice_ms"]
        out.append(f"{n:>5} {s['answered']:>4}/{s['turns']:<4} {fmt(v['p50']):>8} {fmt(v['p95']):>8} "
                   f"{s['gaps_over_40ms']:>8} {fmt(s['worst_gap_ms']):>9} {s['max_frame_late_ms']:>8} "
                   f"{s['cpu_cores_per_call']:>9} {s['rss_mb_per_call']:>8}M {'yes' if s['realtime'] else 'no':>9}")
    how = "ramp 1, 2, 3… to the first failing level" if sc["find_capacity"] else "among the levels run"
    out.append(f"largest real-time concurrency ({how}; every turn answered, no gap > 40 ms at the phone or "
               f"the gateway, voice-to-voice p95 ≤ 2.5 s): {report.get('max_realtime_concurrency', 0)}")
    for n, s in report["levels"].items():
        if "set" in s:
            out += ["", f"test set, {n} call(s) at a time:", turn_scoring.set_table(s["set"])]
    media = report.get("media_path_instant_engines")
    if media:
        out.append("")
        out.append(f"media path alone (instant STT/LLM/TTS, real Silero VAD): {media['streams']} streams used "
                   f"{media['gateway_cpu_cores']} cores → {media['streams_per_core']} streams per core; "
                   f"answered {media['answered']}/{media['turns']}, latest frame {media['max_frame_late_ms']} ms")
    return "\n".join(out)
