"""Voice-activity detection: Silero by default, an energy threshold as the dependency-free fallback."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.vad.base import VAD

if TYPE_CHECKING:
    from shared.settings import Settings

__all__ = ["VAD", "build_vad"]


def build_vad(settings: Settings) -> VAD:
    """A new detector for one call (detectors hold per-call state: never share one between calls)."""
    if settings.vad_engine == "energy":
        from shared.vad.energy import EnergyVAD

        return EnergyVAD()
    from shared.vad.silero import SileroVAD

    return SileroVAD()
