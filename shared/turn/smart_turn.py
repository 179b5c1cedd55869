"""Smart Turn v3: an audio model that says whether the caller has finished their thought.

A fixed silence timeout cannot tell "my name is…" (a pause to think) from "my name is Ana." (done):
both end in silence. Smart Turn v3 (Daily, BSD-2-Clause) listens to the last 8 s of the turn, words and
intonation both, and returns the probability that the turn is complete. Its CPU ONNX (8.7 MB) ships
inside the `pipecat-ai` wheel; RelayX reads that file and runs it with onnxruntime, never importing
Pipecat's code, and never touches the network.

The model was trained on Whisper features computed by `transformers.WhisperFeatureExtractor`
(`chunk_length=8`, `do_normalize=True`) on audio left-padded to 8 s: `log_mel` reproduces exactly
that, because a model only means what it was trained to mean on the input it was trained on.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from shared.bundled import bundled_file
from shared.errors import ConfigurationError

if TYPE_CHECKING:
    import onnxruntime

SAMPLE_RATE = 16000
"""The model's rate; the gateway's 8 kHz caller audio is upsampled to this already (STT_RATE)."""
WINDOW_SECONDS = 8
WINDOW_SAMPLES = SAMPLE_RATE * WINDOW_SECONDS
"""The model sees the last 8 s of the turn; shorter turns are padded with silence at the start."""
N_FFT = 400
HOP_LENGTH = 160
N_MELS = 80
N_FRAMES = WINDOW_SAMPLES // HOP_LENGTH
"""800 frames of 10 ms."""

_NORM_EPS = 1e-7
"""transformers' `zero_mean_unit_var_norm` epsilon, under the square root."""
_LOG_FLOOR = 1e-10
_DYNAMIC_RANGE = 8.0
"""Whisper keeps 8 decades (80 dB) below the loudest mel bin; quieter bins are raised to that floor."""

_BUNDLED_PACKAGE = "pipecat"
_BUNDLED_MODEL = "audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx"
INSTALL_HINT = (
    "Smart Turn needs its model file from the pipecat-ai wheel (data only, none of its code runs): "
    "pip install --no-deps pipecat-ai==1.14.0"
)


# --- features -------------------------------------------------------------------------------------


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz (3 mels per 200 Hz), logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = 3.0 * hz / 200.0
    logarithmic = 15.0 + np.log(np.maximum(hz, 1e-12) / 1000.0) * 27.0 / np.log(6.4)
    return np.where(hz >= 1000.0, logarithmic, linear)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    """Inverse of `_hz_to_mel`."""
    mel = np.asarray(mel, dtype=np.float64)
    linear = 200.0 * mel / 3.0
    logarithmic = 1000.0 * np.exp((mel - 15.0) * np.log(6.4) / 27.0)
    return np.where(mel >= 15.0, logarithmic, linear)


@lru_cache(maxsize=1)
def mel_filterbank() -> np.ndarray:
    """Whisper's 80 triangular mel filters for 16 kHz / n_fft 400, Slaney area-normalised: [80, 201].

    The same matrix as librosa's `mel(sr=16000, n_fft=400, n_mels=80)` and Whisper's mel_filters.npz.
    """
    fft_hz = np.linspace(0.0, SAMPLE_RATE / 2, N_FFT // 2 + 1)
    edges_hz = _mel_to_hz(
        np.linspace(_hz_to_mel(np.array(0.0)), _hz_to_mel(np.array(SAMPLE_RATE / 2)), N_MELS + 2)
    )
    widths = np.diff(edges_hz)
    ramps = edges_hz[:, None] - fft_hz[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    filters = np.maximum(0.0, np.minimum(rising, falling))
    filters *= (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, None]  # equal area: each band sums the same energy
    filters.setflags(write=False)
    return filters


@lru_cache(maxsize=1)
def _hann() -> np.ndarray:
    """Periodic Hann window of 400 (torch.hann_window's default, which Whisper uses)."""
    window = np.hanning(N_FFT + 1)[:-1]
    window.setflags(write=False)
    return window


def last_window(audio_16k: np.ndarray) -> np.ndarray:
    """The last 8 s of the turn as float32, left-padded with zeros when shorter (the model's framing)."""
    audio = np.asarray(audio_16k, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"expected mono 1-D audio, got shape {audio.shape}")
    if audio.shape[0] >= WINDOW_SAMPLES:
        return audio[-WINDOW_SAMPLES:].copy()
    return np.concatenate([np.zeros(WINDOW_SAMPLES - audio.shape[0], np.float32), audio])


def log_mel(audio_16k: np.ndarray) -> np.ndarray:
    """The model's input for one turn: Whisper log-mel features of its last 8 s, float32 [80, 800].

    Steps, each as the model was trained: left-pad or crop to 8 s; normalise the whole window to zero
    mean and unit variance (so a quiet phone line scores like a loud one); centred STFT (reflect-padded,
    periodic Hann 400, hop 160) of |X|^2; 80 Slaney mel bins; log10 floored at 1e-10; clamp to 8 decades
    below the peak; (x + 4) / 4. The STFT yields 801 frames and the last is dropped, as Whisper does.
    """
    window = last_window(audio_16k)
    # float32 mean/variance over the padded window, as transformers computes them before the STFT.
    window = (window - window.mean()) / np.sqrt(window.var() + _NORM_EPS)
    padded = np.pad(window.astype(np.float64), N_FFT // 2, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP_LENGTH]
    power = np.abs(np.fft.rfft(frames * _hann(), axis=-1)) ** 2  # [801, 201]
    mel = np.log10(np.maximum(mel_filterbank() @ power[:-1].T, _LOG_FLOOR))  # [80, 800]
    mel = np.maximum(mel, mel.max() - _DYNAMIC_RANGE)
    return ((mel + 4.0) / 4.0).astype(np.float32)


# --- the model ------------------------------------------------------------------------------------


def bundled_model_path() -> Path:
    """Where pipecat-ai keeps smart-turn-v3.2-cpu.onnx (found without importing the package)."""
    return bundled_file(_BUNDLED_PACKAGE, _BUNDLED_MODEL, install_hint=INSTALL_HINT)


_sessions: dict[tuple[str, int], onnxruntime.InferenceSession] = {}
_sessions_lock = threading.Lock()


def _load(path: str, threads: int) -> onnxruntime.InferenceSession:
    """One session per process and thread count: 8.7 MB of weights and their arenas, loaded once."""
    key = (path, threads)
    with _sessions_lock:
        if key not in _sessions:
            import onnxruntime

            if not Path(path).is_file():
                raise ConfigurationError(f"Smart Turn model not found: {path}")
            options = onnxruntime.SessionOptions()
            # One thread by default: the model takes ~0.1 s and competes with Whisper and the LLM for
            # two cores; one thread per inference lets two calls score at once without thrashing.
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
            options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
            _sessions[key] = onnxruntime.InferenceSession(
                path, sess_options=options, providers=["CPUExecutionProvider"]
            )
        return _sessions[key]


class SmartTurn:
    """Scores a caller's turn: the probability (0-1) that they have finished speaking.

    Blocking (~60-140 ms on two busy cores): call it from a worker thread, never on the event loop.
    Safe to share between calls and threads: onnxruntime's `run` is thread-safe and the session holds
    no per-call state (each score sees only the audio it is given).
    """

    def __init__(self, model_path: Path | None = None, *, threads: int = 1) -> None:
        self.model_path = str(model_path or bundled_model_path())
        self.threads = threads
        self._session = _load(self.model_path, threads)

    def probability(self, audio_16k: np.ndarray) -> float:
        """P(turn complete) for the turn so far: 16 kHz mono float32 in [-1, 1], any length.

        Give it the whole utterance including the short silence after the last word (the model was
        trained on turns that end in a pause); only the last 8 s are heard.
        """
        features = log_mel(audio_16k)[np.newaxis]
        (scores,) = self._session.run(["logits"], {"input_features": features})
        # The exported graph ends in a sigmoid: "logits" is already a probability.
        return float(np.asarray(scores).reshape(-1)[0])

    def warmup(self) -> None:
        """Score one silent window so onnxruntime allocates its buffers before the first call."""
        self.probability(np.zeros(SAMPLE_RATE, np.float32))
