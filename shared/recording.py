"""Where call recordings live; the gateway writes them (voice_gateway/recorder.py), the backend serves them."""

from __future__ import annotations

import uuid
from pathlib import Path


def recording_path(recordings_dir: Path, call_id: str) -> Path:
    """`<dir>/<call id>.wav`; the id is checked to be a UUID so it can never name another path."""
    return Path(recordings_dir) / f"{uuid.UUID(str(call_id))}.wav"
