"""`relayx bench analysis`: post-call analysis over the labelled transcripts in tests/data/.

Prints, for the configured analysis engine (ANALYSIS_LLM_*, else LLM_*): outcome and sentiment
accuracy, the rate of answers that were valid JSON for the schema (first try, and after the one
retry), and seconds per call.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from shared import analysis
from shared.llm import build_analysis_llm
from shared.settings import Settings
from shared.storage.base import TranscriptLine

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "analysis_transcripts.json"


def load_cases(path: Path = DATA) -> tuple[analysis.AnalysisSpec, str, list[dict[str, Any]]]:
    raw = json.loads(path.read_text())
    spec = analysis.AnalysisSpec(data_schema=analysis.normalize_data_schema(raw["schema"]))
    return spec, raw["agent_prompt"], raw["calls"]


def _lines(case: dict[str, Any]) -> list[TranscriptLine]:
    start = datetime.now(UTC)
    return [
        TranscriptLine(id=str(i), call_id=case["name"], speaker=speaker, text=text,
                       timestamp=start + timedelta(seconds=5 * i))
        for i, (speaker, text) in enumerate(case["lines"])
    ]


async def run(settings: Settings) -> dict[str, Any]:
    """Analyse every case; returns the figures (and prints one line per call)."""
    spec, prompt, cases = load_cases()
    llm = build_analysis_llm(settings)
    rows = []
    for case in cases:
        started = time.perf_counter()
        values = await analysis.analyze(llm, _lines(case), spec, context_tokens=settings.analysis_llm_context_tokens,
                                        agent_prompt=prompt)
        seconds = time.perf_counter() - started
        rows.append((case, values, seconds))
        print(f"{case['name']:<28} {values['status']:<9} outcome={values.get('outcome')!s:<20} "
              f"(want {case['outcome']}) sentiment={values.get('sentiment')!s:<8} (want {case['sentiment']}) "
              f"tries={values['attempts']} {seconds:5.1f} s")
    n = len(rows)
    figures = {
        "engine": getattr(llm, "model_name", settings.analysis_llm_engine or settings.llm_engine),
        "calls": n,
        "outcome_accuracy": sum(v.get("outcome") == c["outcome"] for c, v, _ in rows) / n,
        "sentiment_accuracy": sum(v.get("sentiment") == c["sentiment"] for c, v, _ in rows) / n,
        "valid_json_first_try": sum(v["status"] == "completed" and v["attempts"] == 1 for _, v, _ in rows) / n,
        "valid_json_after_retry": sum(v["status"] == "completed" for _, v, _ in rows) / n,
        "seconds_per_call": sum(s for *_, s in rows) / n,
    }
    return figures


def main(settings: Settings | None = None) -> dict[str, Any]:
    """Entry point for `relayx bench analysis`."""
    figures = asyncio.run(run(settings or Settings()))
    print(
        f"\n{figures['engine']}: outcome accuracy {figures['outcome_accuracy']:.0%}, "
        f"sentiment accuracy {figures['sentiment_accuracy']:.0%}, valid JSON {figures['valid_json_first_try']:.0%} "
        f"first try / {figures['valid_json_after_retry']:.0%} after retry, "
        f"{figures['seconds_per_call']:.1f} s per call ({figures['calls']} calls)"
    )
    return figures


if __name__ == "__main__":
    main()
