"""`relayx bench analysis`: post-call analysis over the labelled transcripts in tests/data/.

Prints, for the configured analysis engine (ANALYSIS_LLM_*, else LLM_*, or `--model`): outcome and
sentiment accuracy, how many extraction fields came out right, the rate of answers that were valid
JSON for the schema (first try, and after the one retry), and seconds per call. Figures, never
verdicts: nothing here asserts a bound.

A field is scored where its label says something: a value the caller gave (the answer must name it:
"Thursday at 10" names "Thursday"), or an empty string where the call does not answer a text field
(the answer must be empty too). A boolean the call does not answer is labelled null and not scored.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from shared import analysis
from shared.llm import build_analysis_llm
from shared.llm.base import ChatMessage, GenerationOptions, StructuredLLM
from shared.settings import Settings
from shared.storage.base import TranscriptLine

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "analysis_transcripts.json"
MODEL_CHOICES = {"0.5b": None, "1.5b": "qwen2.5-coder-1.5b"}
"""`--model` names: the bundled 0.5B (the default) or Qwen2.5-Coder-1.5B (the `analysis-1.5b` extra)."""


def load_cases(path: Path = DATA) -> tuple[analysis.AnalysisSpec, str, list[dict[str, Any]]]:
    raw = json.loads(path.read_text())
    spec = analysis.AnalysisSpec(data_schema=analysis.normalize_data_schema(raw["schema"]))
    return spec, raw["agent_prompt"], raw["calls"]


def settings_for_model(settings: Settings, model: str) -> Settings:
    """The settings with the analysis model chosen by `--model`: 0.5b, 1.5b, or a path to a GGUF."""
    if not model:
        return settings
    if model in MODEL_CHOICES:
        update: dict[str, Any] = {"analysis_llm_model": MODEL_CHOICES[model], "analysis_llm_model_path": None}
    else:
        update = {"analysis_llm_model_path": Path(model)}
    return settings.model_copy(update={"analysis_llm_engine": "llama-cpp", **update})


def _lines(case: dict[str, Any]) -> list[TranscriptLine]:
    start = datetime.now(UTC)
    return [
        TranscriptLine(id=str(i), call_id=case["name"], speaker=speaker, text=text,
                       timestamp=start + timedelta(seconds=5 * i))
        for i, (speaker, text) in enumerate(case["lines"])
    ]


def _words(value: Any) -> list[str]:
    return re.findall(r"[a-z0-9]+", str(value).lower())


def field_right(want: Any, got: Any) -> bool | None:
    """Whether an extracted value matches its label; None where the label scores nothing (null)."""
    if want is None:
        return None
    if isinstance(want, bool):
        return got is want
    if isinstance(want, str) and not want:
        return got in ("", None, [], 0, False)
    wanted = _words(want)
    got_words = set(_words(got))
    return bool(wanted) and all(w in got_words for w in wanted)


class _Recording:
    """The analysis engine, keeping its last raw answer (the evidence quote is not stored)."""

    def __init__(self, llm: StructuredLLM) -> None:
        self._llm = llm
        self.model_name = getattr(llm, "model_name", type(llm).__name__)
        self.last = ""

    def stream(self, messages: list[ChatMessage], options: GenerationOptions) -> Any:
        return self._llm.stream(messages, options)

    async def complete_json(self, messages: list[ChatMessage], schema: dict[str, Any],
                            options: GenerationOptions) -> str:
        self.last = await self._llm.complete_json(messages, schema, options)
        return self.last


async def run(settings: Settings, *, verbose: bool = False) -> dict[str, Any]:
    """Analyse every case; returns the figures (and prints one line per call)."""
    spec, prompt, cases = load_cases()
    llm = _Recording(build_analysis_llm(settings))
    rows = []
    said = Counter[str]()
    empty = Counter[str]()
    for case in cases:
        started = time.perf_counter()
        values = await analysis.analyze(llm, _lines(case), spec,  # type: ignore[arg-type]
                                        context_tokens=settings.analysis_llm_context_tokens, agent_prompt=prompt)
        seconds = time.perf_counter() - started
        rows.append((case, values, seconds))
        wrong = []
        for name, want in case.get("data", {}).items():
            right = field_right(want, (values.get("data") or {}).get(name))
            if right is None:
                continue
            tally = empty if want == "" else said
            tally["total"] += 1
            tally["right"] += right
            if not right:
                wrong.append(f"{name}={(values.get('data') or {}).get(name)!r}")
        mark = " " if values.get("outcome") == case["outcome"] else "x"
        print(f"{mark} {case['name']:<27} {values['status']:<9} outcome={values.get('outcome')!s:<18} "
              f"(want {case['outcome']:<18}) sentiment={values.get('sentiment')!s:<8} (want {case['sentiment']:<8}) "
              f"tries={values['attempts']} {seconds:5.1f} s" + (f"  wrong fields: {', '.join(wrong)}" if wrong else ""))
        if verbose and llm.last:
            print(f"    {llm.last}")
        llm.last = ""
    n = len(rows)
    return {
        "engine": llm.model_name,
        "calls": n,
        "outcome_accuracy": sum(v.get("outcome") == c["outcome"] for c, v, _ in rows) / n,
        "sentiment_accuracy": sum(v.get("sentiment") == c["sentiment"] for c, v, _ in rows) / n,
        "fields_said_right": said["right"] / max(1, said["total"]),
        "fields_said": said["total"],
        "fields_unsaid_left_empty": empty["right"] / max(1, empty["total"]),
        "fields_unsaid": empty["total"],
        "fields_right": (said["right"] + empty["right"]) / max(1, said["total"] + empty["total"]),
        "valid_json_first_try": sum(v["status"] == "completed" and v["attempts"] == 1 for _, v, _ in rows) / n,
        "valid_json_after_retry": sum(v["status"] == "completed" for _, v, _ in rows) / n,
        "seconds_per_call": sum(s for *_, s in rows) / n,
    }


def main(settings: Settings | None = None, *, model: str = "", verbose: bool = False,
         json_out: Path | None = None) -> dict[str, Any]:
    """Entry point for `relayx bench analysis`."""
    figures = asyncio.run(run(settings_for_model(settings or Settings(), model), verbose=verbose))
    print(
        f"\n{figures['engine']} on {figures['calls']} calls: outcome accuracy {figures['outcome_accuracy']:.0%}, "
        f"extraction fields right {figures['fields_right']:.0%} (said by the caller "
        f"{figures['fields_said_right']:.0%} of {figures['fields_said']}, not said and left empty "
        f"{figures['fields_unsaid_left_empty']:.0%} of {figures['fields_unsaid']}), "
        f"sentiment accuracy {figures['sentiment_accuracy']:.0%}, valid JSON {figures['valid_json_first_try']:.0%} "
        f"first try / {figures['valid_json_after_retry']:.0%} after retry, "
        f"{figures['seconds_per_call']:.1f} s per call"
    )
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(figures, indent=2) + "\n")
    return figures


if __name__ == "__main__":
    main()
