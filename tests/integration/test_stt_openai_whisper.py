"""The optional openai-whisper engine loads a checkpoint from a path and decodes (tiny random weights)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shared.settings import Settings
from shared.stt import build_stt
from shared.stt.base import Transcription

whisper = pytest.importorskip("whisper")
torch = pytest.importorskip("torch")

pytestmark = pytest.mark.models


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-layer English-only Whisper with random weights, saved in the official checkpoint layout."""
    from whisper.model import ModelDimensions, Whisper

    dims = ModelDimensions(
        n_mels=80, n_audio_ctx=1500, n_audio_state=64, n_audio_head=2, n_audio_layer=1,
        n_vocab=51864, n_text_ctx=448, n_text_state=64, n_text_head=2, n_text_layer=1,
    )  # fmt: skip
    torch.manual_seed(0)
    model = Whisper(dims)
    with torch.no_grad():  # some Whisper parameters start as torch.empty: give every one a finite value
        for param in model.parameters():
            param.normal_(0.0, 0.02)
    path = tmp_path_factory.mktemp("whisper") / "tiny-random.pt"
    torch.save({"dims": dims.__dict__, "model_state_dict": model.state_dict()}, path)
    return path


async def test_openai_whisper_loads_a_checkpoint_path_and_decodes(checkpoint: Path) -> None:
    stt = build_stt(Settings(_env_file=None, STT_ENGINE="openai-whisper", STT_MODEL=str(checkpoint)))
    stt.warmup()
    rng = np.random.default_rng(0)
    result = await stt.transcribe((rng.standard_normal(16000) * 0.1).astype(np.float32), prompt="Hello")
    assert isinstance(result, Transcription)
    assert isinstance(result.text, str)
    assert 0.0 <= result.no_speech_prob <= 1.0
