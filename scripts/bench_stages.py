"""Per-stage latency of the embedded voice stack on this machine (run: python scripts/bench_stages.py).

STT on a ~3 s phone-band phrase, LLM first token / first clause / tokens per second on a warm second
turn (KV cache reused), Piper first audio for a short clause, and the VAD's cost per 32 ms window.
Speech comes from espeak-ng, so it must be installed.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from shared import audio
from shared.llm.base import ChatMessage, GenerationOptions
from shared.llm.llama_cpp import LlamaCppLLM
from shared.stt.faster_whisper import FasterWhisperSTT
from shared.text import ClauseSplitter
from shared.tts.piper import PiperTTS
from shared.vad.energy import EnergyVAD
from shared.vad.silero import SileroVAD

SYSTEM = (
    "You are Ava, the phone receptionist of Bright Smile Dental in Springfield. We are open Monday to "
    "Friday, 8 am to 5 pm. A cleaning costs 90 dollars. Answer in one or two short sentences."
)
RUNS = 5


def _espeak(text: str) -> tuple[np.ndarray, int]:
    exe = shutil.which("espeak-ng") or sys.exit("espeak-ng is needed: apt-get install espeak-ng")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.wav"
        subprocess.run([exe, "-v", "en-us", "-s", "160", "-w", str(path), text], check=True)
        with wave.open(str(path)) as w:
            return audio.int16_to_float32(
                np.frombuffer(w.readframes(w.getnframes()), np.int16)
            ), w.getframerate()


def _phone(signal: np.ndarray, rate: int) -> np.ndarray:
    payload = audio.phone_line(signal, rate)
    up = audio.PhoneUpsampler()
    return np.concatenate([up.process(audio.ulaw_to_float32(payload)), up.flush()])


def _row(name: str, values_ms: list[float], note: str = "", digits: int = 1) -> None:
    p50, low, high = statistics.median(values_ms), min(values_ms), max(values_ms)
    print(f"{name:<34} {p50:>9.{digits}f} {low:>9.{digits}f} {high:>9.{digits}f}  {note}")


async def main() -> None:
    print(f"{'stage':<34} {'p50 ms':>9} {'min':>9} {'max':>9}")
    # --- STT
    signal, rate = _espeak("Hi, I would like to book a cleaning for next Tuesday.")
    caller = _phone(signal, rate)
    stt = FasterWhisperSTT()
    stt.warmup()
    times, text = [], ""
    for _ in range(RUNS):
        t = time.perf_counter()
        text = (await stt.transcribe(caller)).text
        times.append((time.perf_counter() - t) * 1000)
    _row("STT faster-whisper tiny.en int8", times, f"{caller.size / 16000:.1f} s audio: {text!r}")
    # --- LLM (warm second turn of a conversation)
    llm = LlamaCppLLM(cache_dir=REPO / "data" / "models", quant="q4_0")  # what live calls load (LLM_QUANT)
    llm.warmup()
    first_tok, first_clause, tps = [], [], []
    for i in range(RUNS):
        history = [ChatMessage("system", SYSTEM), ChatMessage("user", "Hi, are you open on Saturday?")]
        reply = "".join(
            [p async for p in llm.stream(history, GenerationOptions(temperature=0.2, max_tokens=60))]
        )
        history += [
            ChatMessage("assistant", reply),
            ChatMessage("user", f"OK. How much is a cleaning? ({i})"),
        ]
        splitter = ClauseSplitter()
        t = time.perf_counter()
        t_first = t_clause = None
        n = 0
        async for piece in llm.stream(history, GenerationOptions(temperature=0.2, max_tokens=60)):
            now = time.perf_counter()
            n += 1
            t_first = t_first or now
            if t_clause is None and splitter.feed(piece):
                t_clause = now
        end = time.perf_counter()
        t_clause = t_clause or end
        first_tok.append((t_first - t) * 1000)
        first_clause.append((t_clause - t) * 1000)
        tps.append((n - 1) / max(end - t_first, 1e-6))
    _row("LLM first token (2nd turn, warm)", first_tok, "Qwen2.5-Coder-0.5B as Q4_0, output Q5_0")
    _row("LLM first clause", first_clause)
    print(f"{'LLM decode tokens/s':<34} {statistics.median(tps):>9.1f} {min(tps):>9.1f} {max(tps):>9.1f}")
    # --- TTS
    tts = PiperTTS()
    tts.warmup()
    times = []
    for _ in range(RUNS):
        t = time.perf_counter()
        async for _chunk in tts.synthesize("Sure, a cleaning is ninety dollars."):
            times.append((time.perf_counter() - t) * 1000)
            break
    _row("Piper first audio (short clause)", times, f"joe-medium @ {tts.sample_rate} Hz")
    # --- VAD
    windows = [caller[i : i + 512] for i in range(0, caller.size - 512, 512)]
    for name, vad in (("VAD Silero (onnx) per window", SileroVAD()), ("VAD energy per window", EnergyVAD())):
        per = []
        for _ in range(RUNS):
            t = time.perf_counter()
            for w in windows:
                vad.speech_prob(w)
            per.append((time.perf_counter() - t) * 1000 / len(windows))
        _row(name, per, "32 ms window", digits=3)


if __name__ == "__main__":
    asyncio.run(main())
