"""Coqui loads a model from a local path (a tiny random VITS made here) and streams int16 clause by clause."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shared.errors import ConfigurationError
from shared.settings import Settings
from shared.tts import build_tts
from shared.tts.coqui import CoquiTTS

pytest.importorskip("TTS", reason="the Coqui extra is not installed (pip install '.[coqui]')")

pytestmark = pytest.mark.models

RATE = 16_000  # not Coqui's 22 050 default, so the engine must be reading the model's own config
HOP = 256  # product of the decoder's upsample rates: samples per spectrogram frame


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A VITS of ~200 k random weights on plain characters (no phonemizer), saved as a trainer would."""
    import torch
    from TTS.config.shared_configs import BaseAudioConfig
    from TTS.tts.configs.vits_config import VitsArgs, VitsConfig
    from TTS.tts.models.vits import Vits

    args = VitsArgs(
        hidden_channels=8,
        hidden_channels_ffn_text_encoder=16,
        num_heads_text_encoder=1,
        num_layers_text_encoder=1,
        num_layers_posterior_encoder=1,
        num_layers_flow=1,
        kernel_size_flow=3,
        resblock_kernel_sizes_decoder=[3],
        resblock_dilation_sizes_decoder=[[1, 3, 5]],
        upsample_rates_decoder=[8, 8, 2, 2],
        upsample_initial_channel_decoder=16,
        use_sdp=False,
        init_discriminator=False,
    )
    config = VitsConfig(
        model_args=args,
        audio=BaseAudioConfig(sample_rate=RATE, hop_length=HOP),
        use_phonemes=False,
        text_cleaner="basic_cleaners",
    )
    torch.manual_seed(0)
    model = Vits(config)
    folder = tmp_path_factory.mktemp("coqui-tiny")
    torch.save({"model": model.state_dict()}, folder / "best_model.pth")
    config.save_json(str(folder / "config.json"))
    return folder


@pytest.fixture(scope="module")
def coqui(tiny_model: Path) -> CoquiTTS:
    """The tiny model, loaded from its folder through the engine."""
    return CoquiTTS(tiny_model, threads=1)


async def test_coqui_yields_int16_at_the_models_rate(coqui: CoquiTTS) -> None:
    chunks = [c async for c in coqui.synthesize("Sure, I can book that for you.")]
    assert coqui.sample_rate == RATE
    assert len(chunks) == 1 and chunks[0].dtype == np.int16 and chunks[0].ndim == 1
    # A random model says nothing intelligible, but it says it for a whole number of frames, all of them.
    assert chunks[0].size > 0 and chunks[0].size % HOP == 0
    assert np.any(chunks[0] != 0)


async def test_coqui_streams_one_chunk_per_sentence_in_order(coqui: CoquiTTS) -> None:
    sentences = ["Hi.", "Your appointment is booked for Friday at three in the afternoon."]
    alone = [np.concatenate([c async for c in coqui.synthesize(s)]) for s in sentences]
    together = [c async for c in coqui.synthesize(" ".join(sentences))]
    # VITS' noise makes samples differ run to run, but each clause's length is fixed by its text.
    assert [c.size for c in together] == [a.size for a in alone]
    assert together[0].size < together[1].size


async def test_coqui_yields_nothing_for_blank_text(coqui: CoquiTTS) -> None:
    assert [c async for c in coqui.synthesize("   ")] == []


def test_second_engine_on_the_same_path_reuses_the_loaded_model(coqui: CoquiTTS, tiny_model: Path) -> None:
    again = CoquiTTS(tiny_model / "best_model.pth", config_path=tiny_model / "config.json")
    assert again._synth is coqui._synth and again._executor is coqui._executor


def test_build_tts_picks_coqui_from_settings(coqui: CoquiTTS, tiny_model: Path) -> None:
    engine = build_tts(Settings(_env_file=None, TTS_ENGINE="coqui", COQUI_MODEL_PATH=str(tiny_model)))
    assert isinstance(engine, CoquiTTS) and engine._synth is coqui._synth


def test_build_tts_names_the_missing_coqui_model(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="COQUI_MODEL_PATH"):
        build_tts(Settings(_env_file=None, TTS_ENGINE="coqui"))
    with pytest.raises(ConfigurationError, match="not found"):
        build_tts(Settings(_env_file=None, TTS_ENGINE="coqui", COQUI_MODEL_PATH=str(tmp_path / "absent")))
    with pytest.raises(ConfigurationError, match="no Coqui checkpoint"):
        CoquiTTS(tmp_path)
