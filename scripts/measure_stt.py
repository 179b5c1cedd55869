"""Measure faster-whisper settings on phone-band caller lines (run: .venv/bin/python scripts/measure_stt.py).

`--lines bench` (the default): the bench's realistic lines (relayx_cli.caller_lines: seven calls of
four lines, seven voices, 3–5 s each, 300–3400 Hz with pink noise and hum, μ-law; cached under
data/bench/caller_lines). Each is handed to the engine as the gateway would hand a whole turn: the
line's own noise before (the VAD's pre-roll) and after (the silence that ended the turn), μ-law decoded
frame by frame and streamed to 16 kHz (shared.audio).
`--lines phone`: the phone set's lines said after the agent (tests/data/phone_set), each played into
its call's line noise at four offsets 20 ms apart and cut by the gateway's own turn detector (Silero,
its pre- and post-roll): what the gateway's STT really gets. The cut moves by a few milliseconds from
one offset to the next, and so do some lines' words: four cuts show that spread instead of one draw.
`--lines phone-whole`: all 24 lines as whole files, the 6 said over the agent too (the reference for
"whole utterances": the bench's end-to-end WER is over the same 24).

Printed per configuration: corpus WER (word errors over all reference words; tests/support/wer.py's
normalisation), mean per-line WER, p50/p95 latency over every decode of every repeat, short-window decodes redone, and how many 3 s stretches of bare line noise came
back as words. Greedy and beam decodes are deterministic, so WER is from the first repeat. Latency is
the machine's and noisy on shared cores: the configurations take turns line by line (see `_measure`),
so compare them within one run. `--only` picks configurations by name.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from relayx_cli.caller_lines import VOICES, call_script, load_line, noise_bed
from shared import audio
from shared.stt.decoding import DecodeOptions, options_for
from shared.stt.faster_whisper import FasterWhisperSTT
from tests.support.wer import normalize, wer, word_errors

CALLS, LINES_PER_CALL = 7, 4
"""Seven calls of four lines: every sentence of the set once or more, and each voice four times."""
PRE_ROLL_S, TAIL_S = 0.3, 0.6
"""Line noise around the words: what a turn carries from the VAD's pre-roll and end-of-turn wait."""
NOISE_S = 3.0

DEMO_GREETING = "Hi, this is Ava from Bright Smile Dental. How can I help you today?"
PROMPTS: dict[str, str | None] = {
    "none": None,
    # voice_gateway.prompts.stt_prompt for the demo agent (relayx_cli.main.DEMO_AGENT)
    "names": "RelayX Demo, Bright Smile Dental, cleaning, Tuesday.",
    # shared.stt.prompt.initial_prompt for the same agent: the agent's greeting, as the text before the turn
    "greeting": None,
}


@dataclass(frozen=True)
class Config:
    """One engine setting to measure."""

    name: str
    model: str | None = None
    options: DecodeOptions = field(default_factory=DecodeOptions)
    prompt: str = "none"


def _configs() -> list[Config]:
    d = DecodeOptions()
    b = options_for("base")
    full = DecodeOptions(short_window=False)
    return [
        Config("tiny.en default", options=d),
        Config("tiny.en names prompt", options=d, prompt="names"),
        Config("tiny.en greeting prompt", options=d, prompt="greeting"),
        Config("tiny.en greeting prompt 10 s window", options=replace(d, short_windows_s=(10,)), prompt="greeting"),
        Config("tiny.en greeting prompt 6 s then 10 s", options=replace(d, short_windows_s=(6, 10)),
               prompt="greeting"),
        Config("tiny.en greeting prompt 8 s then 10 s", options=replace(d, short_windows_s=(8, 10)),
               prompt="greeting"),
        Config("tiny.en beam 3", options=DecodeOptions(beam_size=3)),
        Config("tiny.en beam 5", options=DecodeOptions(beam_size=5)),
        Config("tiny.en beam 5 names prompt", options=DecodeOptions(beam_size=5), prompt="names"),
        Config("tiny.en beam 5 greeting prompt", options=DecodeOptions(beam_size=5), prompt="greeting"),
        Config("tiny.en beam 3 greeting prompt", options=DecodeOptions(beam_size=3), prompt="greeting"),
        Config("tiny.en beam 2 greeting prompt", options=DecodeOptions(beam_size=2), prompt="greeting"),
        Config("tiny.en 30 s window", options=full),
        Config("tiny.en 30 s beam 5", options=DecodeOptions(short_window=False, full_window_beam_size=5)),
        Config(
            "tiny.en 30 s temp ladder", options=DecodeOptions(short_window=False, temperature_fallback=True)
        ),
        Config("tiny.en temp ladder", options=DecodeOptions(temperature_fallback=True)),
        Config(
            "tiny.en cond. prev. text",
            options=DecodeOptions(short_window=False, condition_on_previous_text=True),
        ),
        Config("tiny.en no_speech 0.4", options=DecodeOptions(no_speech_threshold=0.4)),
        Config("tiny.en no_speech 0.8", options=DecodeOptions(no_speech_threshold=0.8)),
        Config("tiny.en compression 2.0", options=DecodeOptions(compression_ratio_threshold=2.0)),
        # base's defaults (options_for("base")) drop silence at no-speech 0.4; the 0.6 rows show why
        Config("base default", model="base", options=b),
        Config("base names prompt", model="base", options=b, prompt="names"),
        Config("base greeting prompt", model="base", options=b, prompt="greeting"),
        Config(
            "base greeting prompt no_speech 0.6",
            model="base",
            options=replace(b, no_speech_threshold=0.6),
            prompt="greeting",
        ),
        Config(
            "base names prompt no_speech 0.6",
            model="base",
            options=replace(b, no_speech_threshold=0.6),
            prompt="names",
        ),
        Config(
            "base beam 5 greeting prompt", model="base", options=replace(b, beam_size=5), prompt="greeting"
        ),
        Config("base beam 5", model="base", options=replace(b, beam_size=5)),
        Config("base 30 s window", model="base", options=replace(b, short_window=False)),
    ]


def gateway_hears(ulaw: bytes) -> np.ndarray:
    """μ-law decoded 20 ms frame by frame and streamed to 16 kHz, as the gateway does."""
    up = audio.PhoneUpsampler()
    frames = [ulaw[i : i + audio.FRAME_BYTES] for i in range(0, len(ulaw), audio.FRAME_BYTES)]
    return np.concatenate([*(up.process(audio.ulaw_to_float32(f)) for f in frames), up.flush()])


def _turns(cache_dir: Path) -> tuple[list[tuple[str, np.ndarray]], list[np.ndarray]]:
    """(reference, 16 kHz turn) for every line, and each voice's bare line noise in 3 s stretches."""
    turns = []
    for call in range(CALLS):
        specs = call_script(call, LINES_PER_CALL)
        bed = noise_bed(specs[0].voice)
        pre, tail = bed[: int(PRE_ROLL_S * audio.PHONE_RATE)], bed[-int(TAIL_S * audio.PHONE_RATE) :]
        for spec in specs:
            turns.append((spec.text, gateway_hears(pre + load_line(spec, cache_dir) + tail)))
    n = int(NOISE_S * audio.PHONE_RATE)
    noise = [
        gateway_hears(bed[k * n : (k + 1) * n])
        for bed in map(noise_bed, VOICES)
        for k in range(len(bed) // n)
    ]
    return turns, noise


PHONE_LEADS_S = (0.6, 0.62, 0.64, 0.66)
"""Line noise before the words in `--lines phone`: four cuts, 20 ms apart."""


def _phone_turns(cut: bool) -> tuple[list[tuple[str, np.ndarray]], list[np.ndarray]]:
    """The phone set's lines said after the agent, cut by the gateway's turn detector at each of
    `PHONE_LEADS_S` (or whole), and each call's bare line noise in 3 s stretches."""
    from relayx_cli import phone_set
    from shared.vad.silero import SileroVAD
    from voice_gateway.turns import TurnConfig, TurnDetector, TurnEnded

    test_set = phone_set.load()
    turns: list[tuple[str, np.ndarray]] = []
    for call in test_set.calls:
        bed = test_set.audio(call.bed)
        looped = bed * 8  # the call's line noise, long enough for any lead and the silence after
        for line in call.lines:
            if line.overlap is not None and cut:
                continue  # said over the agent: the detector alone would not cut it as the gateway does
            spoken = test_set.audio(line.file)
            if not cut:
                turns.append((line.reference, gateway_hears(spoken)))
                continue
            for lead_s in PHONE_LEADS_S:
                lead = int(lead_s * audio.PHONE_RATE)
                stream = gateway_hears(looped[:lead] + spoken + looped[lead : lead + 4 * audio.PHONE_RATE])
                # A long end of turn: a caller's 0.8 s pause stays inside the turn, as the gateway
                # keeps it (its turn stays open until the reply is heard).
                detector = TurnDetector(SileroVAD(), TurnConfig(end_of_turn_silence_ms=2500))
                ended = [e for e in detector.feed(stream) if isinstance(e, TurnEnded)]
                if ended:
                    turns.append((line.reference, ended[0].audio))
    n = int(NOISE_S * audio.PHONE_RATE)
    noise = [gateway_hears(bed[k * n : (k + 1) * n])
             for bed in (test_set.audio(c.bed) for c in test_set.calls) for k in range(len(bed) // n)]
    return turns, noise


@dataclass
class _Run:
    """One configuration's engine and what it has measured so far."""

    config: Config
    stt: FasterWhisperSTT
    timings: list[float] = field(default_factory=list)
    per_line: list[float] = field(default_factory=list)
    errors: int = 0
    words: int = 0
    noise_words: int = 0
    redone: int = 0
    """Caller lines (not noise) whose short-window decode was redone, over all repeats."""
    log: list[str] = field(default_factory=list)

    def row(self, repeats: int, noise: int) -> str:
        t = sorted(self.timings)
        p95 = t[min(len(t) - 1, round(0.95 * (len(t) - 1)))]
        return (
            f"| {self.config.name} | {self.errors / self.words:.3f} | {statistics.fmean(self.per_line):.3f} | "
            f"{statistics.median(t):.0f} | {p95:.0f} | {self.redone / repeats:.0f} | "
            f"{self.noise_words}/{noise} |"
        )


async def _measure(
    configs: list[Config],
    turns: list[tuple[str, np.ndarray]],
    noise: list[np.ndarray],
    repeats: int,
    threads: int,
) -> list[_Run]:
    """Every configuration decodes line k before any decodes line k + 1, starting with a different one
    each line: load from the other engineers on these cores drifts, and this spreads it evenly."""
    runs = [_Run(c, FasterWhisperSTT(c.model, threads=threads, options=c.options)) for c in configs]
    for run in runs:
        await asyncio.to_thread(run.stt.warmup)
    for r in range(repeats):
        for k, (reference, turn) in enumerate(turns):
            for run in runs[k % len(runs) :] + runs[: k % len(runs)]:
                start = time.perf_counter()
                heard = await run.stt.transcribe(turn, prompt=PROMPTS[run.config.prompt])
                run.timings.append((time.perf_counter() - start) * 1000)
                if r == 0:
                    run.errors += word_errors(normalize(reference), normalize(heard.text))
                    run.words += len(normalize(reference))
                    run.per_line.append(wer(reference, heard.text))
                    if run.per_line[-1] > 0:
                        run.log.append(f"    {run.per_line[-1]:.2f}  {reference!r} -> {heard.text!r}")
    for run in runs:
        run.redone = run.stt.fallbacks
        for bed in noise:
            heard = await run.stt.transcribe(bed, prompt=PROMPTS[run.config.prompt])
            if heard.text:
                run.noise_words += 1
                run.log.append(f"    noise -> {heard.text!r}")
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, default=REPO / "data" / "bench" / "caller_lines")
    parser.add_argument("--repeat", type=int, default=2, help="decodes of every line, for latency")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", nargs="*", help="configurations whose name contains any of these")
    parser.add_argument("--lines", choices=("bench", "phone", "phone-whole"), default="bench",
                        help="which caller lines (see the module's docstring)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every line with an error")
    args = parser.parse_args()

    from shared.stt.prompt import initial_prompt

    PROMPTS["greeting"] = initial_prompt(
        greeting=DEMO_GREETING, business="Bright Smile Dental", expected_answers=["cleaning", "Tuesday"]
    )
    turns, noise = _turns(args.cache_dir) if args.lines == "bench" else _phone_turns(args.lines == "phone")
    configs = [c for c in _configs() if not args.only or any(o in c.name for o in args.only)]
    print(
        f"{len(turns)} caller lines, {len(noise)} noise stretches, {args.repeat} repeat(s), "
        f"{args.threads} thread(s)\n",
        flush=True,
    )
    runs = asyncio.run(_measure(configs, turns, noise, args.repeat, args.threads))
    if args.verbose:
        for run in runs:
            print(f"{run.config.name}:", *run.log, sep="\n")
        print()
    print("| configuration | WER | mean line WER | p50 ms | p95 ms | redone/run | noise→words |")
    print("|---|---|---|---|---|---|---|")
    for run in runs:
        print(run.row(args.repeat, len(noise)))


if __name__ == "__main__":
    main()
