"""Smart Turn v3: features exactly as the model was trained on, and verdicts on real phone-band speech.

The feature checks compare `log_mel` with two independent Whisper front ends (transformers', which the
model was trained with, and faster-whisper's). The model checks assert orderings with a wide margin,
never exact scores: Piper samples its noise afresh on every synthesis and onnxruntime's kernels differ a
little by CPU. The pairs were chosen over repeated syntheses (complete 0.97-0.99, fragment 0.01-0.09).
"""

from __future__ import annotations

import asyncio
import statistics
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from backend.telephony.caller_voice import synthesize_caller
from shared import audio
from shared.errors import ConfigurationError
from shared.turn import SmartTurn, log_mel
from shared.turn import smart_turn as smart_turn_module
from shared.turn.smart_turn import N_FRAMES, N_MELS, WINDOW_SAMPLES, last_window, mel_filterbank
from tests.support.speech import caller_ulaw, gateway_hears

RATE = audio.STT_RATE

# Complete sentence, then a fragment nobody ends a turn on.
PAIRS = [
    ("What time do you close today?", "Because I"),
    ("My name is Sarah Johnson.", "I'm not sure but"),
    ("Thank you, that's all I needed.", "So I was thinking that maybe"),
]


def _speechlike(seconds: float, seed: int = 0) -> np.ndarray:
    """Noise shaped by a syllable-rate envelope plus a gliding tone: broadband, with loud and quiet parts."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2
    glide = np.sin(2 * np.pi * (150 + 400 * t) * t)
    return (0.2 * envelope * (rng.standard_normal(t.size) + glide)).astype(np.float32)


def _heard(text: str) -> np.ndarray:
    """`text` from the simulator's caller voice as the gateway hears it at the first pause:
    300 ms of line before the speech, 150 ms after (the detector's pre-roll and early pause)."""
    silence = bytes([audio.MULAW_SILENCE])
    return gateway_hears(
        silence * (audio.PHONE_RATE * 3 // 10) + caller_ulaw(text) + silence * (audio.PHONE_RATE * 15 // 100)
    )


def _take(text: str) -> np.ndarray:
    """A fresh synthesis of `text` (not the cached one), heard as `_heard` hears it."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        ulaw = pool.submit(asyncio.run, synthesize_caller(text)).result()
    silence = bytes([audio.MULAW_SILENCE])
    return gateway_hears(silence * (audio.PHONE_RATE * 3 // 10) + ulaw + silence * (audio.PHONE_RATE * 15 // 100))


@pytest.fixture(scope="module")
def model() -> SmartTurn:
    """The bundled model, loaded once (scripts/setup.sh installs its wheel: never skipped)."""
    engine = SmartTurn()
    engine.warmup()
    return engine


# --- features -------------------------------------------------------------------------------------


def test_log_mel_is_80_by_800_float32() -> None:
    features = log_mel(_speechlike(2.0))
    assert features.shape == (N_MELS, N_FRAMES) == (80, 800)
    assert features.dtype == np.float32
    assert np.isfinite(features).all()


def test_short_audio_is_left_padded_with_silence() -> None:
    one_second = _speechlike(1.0)
    features = log_mel(one_second)
    assert np.array_equal(features, log_mel(np.concatenate([np.zeros(3 * RATE, np.float32), one_second])))
    # 7 s of padding: every frame whose 400-sample window ends before the speech sees the same silence.
    silent_frames = (WINDOW_SAMPLES - RATE - 200) // 160
    assert np.allclose(features[:, :silent_frames], features[:, :1])
    assert not np.allclose(features[:, -100:], features[:, :1])
    assert np.array_equal(last_window(one_second)[-RATE:], one_second)


def test_only_the_last_8_seconds_are_heard() -> None:
    ten_seconds = _speechlike(10.0)
    assert np.array_equal(log_mel(ten_seconds), log_mel(ten_seconds[-WINDOW_SAMPLES:]))


def test_log_mel_matches_transformers_whisper_features_as_the_model_was_trained() -> None:
    transformers = pytest.importorskip("transformers")
    extractor = transformers.WhisperFeatureExtractor(chunk_length=8)
    clip = _speechlike(3.0, seed=1)
    reference = extractor(
        last_window(clip),
        sampling_rate=RATE,
        padding="max_length",
        max_length=WINDOW_SAMPLES,
        truncation=True,
        do_normalize=True,
        return_tensors="np",
    ).input_features[0]
    assert reference.shape == (80, 800)
    np.testing.assert_allclose(log_mel(clip), reference, atol=1e-4)


def test_log_mel_matches_faster_whisper_on_the_normalised_window() -> None:
    feature_extractor = pytest.importorskip("faster_whisper.feature_extractor")
    clip = _speechlike(5.0, seed=2)
    window = last_window(clip)
    normalised = (window - window.mean()) / np.sqrt(window.var() + 1e-7)
    reference = feature_extractor.FeatureExtractor(chunk_length=8)(normalised, padding=0)
    assert reference.shape == (80, 800)
    np.testing.assert_allclose(log_mel(clip), reference, atol=1e-4)
    slaney = feature_extractor.FeatureExtractor.get_mel_filters(RATE, 400, n_mels=80)
    np.testing.assert_allclose(mel_filterbank(), slaney, atol=1e-7)


def test_loudness_does_not_change_the_features() -> None:
    clip = _speechlike(2.0, seed=3)
    np.testing.assert_allclose(log_mel(clip), log_mel(clip * 0.05), atol=1e-3)


# --- the model ------------------------------------------------------------------------------------


@pytest.mark.models
@pytest.mark.parametrize(("complete", "fragment"), PAIRS)
def test_a_finished_phone_sentence_scores_far_above_a_fragment(
    model: SmartTurn, complete: str, fragment: str
) -> None:
    # Piper draws its noise afresh on every synthesis, and one take in many of a fragment scores as
    # high as 0.53 (measured in CI): the median of three takes each is what is compared.
    done = statistics.median(model.probability(_take(complete)) for _ in range(3))
    not_done = statistics.median(model.probability(_take(fragment)) for _ in range(3))
    assert 0.0 <= not_done < done <= 1.0
    assert done - not_done >= 0.5, (done, not_done)


@pytest.mark.models
def test_the_same_audio_scores_the_same_from_many_threads(model: SmartTurn) -> None:
    clips = [_heard(text) for pair in PAIRS[:2] for text in pair]
    alone = [model.probability(clip) for clip in clips]
    with ThreadPoolExecutor(max_workers=4) as pool:
        together = list(pool.map(model.probability, clips * 2))
    np.testing.assert_allclose(together, alone * 2, atol=1e-5)


@pytest.mark.models
def test_the_session_is_loaded_once_per_process(model: SmartTurn) -> None:
    assert SmartTurn()._session is model._session


# --- configuration --------------------------------------------------------------------------------


def test_missing_wheel_is_a_configuration_error_naming_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(smart_turn_module, "_BUNDLED_PACKAGE", "relayx_no_such_package")
    with pytest.raises(ConfigurationError, match=r"pip install --no-deps pipecat-ai==1\.14\.0"):
        SmartTurn()


def test_missing_model_file_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="not found"):
        SmartTurn(tmp_path / "smart-turn.onnx")
