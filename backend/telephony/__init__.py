"""Telephony: pick the provider from settings."""

from __future__ import annotations

from backend.telephony.base import Telephony
from shared.settings import Settings


def build_telephony(settings: Settings) -> Telephony:
    """Twilio's SDK for real calls; the local simulator for the embedded default."""
    if settings.telephony_provider == "twilio":
        from backend.telephony.twilio import TwilioTelephony

        return TwilioTelephony(settings)
    from backend.telephony.simulator import SimulatorTelephony

    return SimulatorTelephony(settings)
