"""The simulated phone line (TELEPHONY_PROVIDER=simulator): placeholder until the virtual phone lands."""

from __future__ import annotations

import secrets

from backend.telephony.base import PlacedCall
from shared.settings import Settings
from shared.storage.base import Agent, Call


class SimulatorTelephony:
    """Accepts calls without dialing anything."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    async def place_call(self, call: Call, agent: Agent) -> PlacedCall:
        return PlacedCall(sid="CA" + secrets.token_hex(16), status="queued")

    async def hangup(self, call: Call) -> None:
        return None

    async def close(self) -> None:
        return None
