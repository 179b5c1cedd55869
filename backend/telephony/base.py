"""How a call is placed: one Protocol, implemented by Twilio's SDK and by the local simulator."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from shared.errors import RelayXError
from shared.storage.base import Agent, Call


@dataclass(frozen=True)
class PlacedCall:
    """What the phone network answered when asked to dial."""

    sid: str
    status: str


class TelephonyError(RelayXError):
    """The provider refused the request; `reason` is its own words, `code` its error code."""

    def __init__(self, reason: str, *, code: int | None = None, http_status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code
        self.http_status = http_status


class Telephony(Protocol):
    """Places and ends calls; the provider reaches back through the TwiML and status webhooks."""

    async def place_call(self, call: Call, agent: Agent) -> PlacedCall: ...

    async def hangup(self, call: Call) -> None: ...

    async def close(self) -> None: ...


class CallRedirect(Protocol):
    """Takes a live call away from its current TwiML: what a transfer does (`<Dial>` the person after the
    agent has said its line). Twilio implements it; the simulated line does not (yet)."""

    async def update_twiml(self, call: Call, twiml: str) -> None:
        """Replace what the call is doing with `twiml` (Twilio ends the `<Connect><Stream>` and runs it)."""
        ...


def voice_url(public_base_url: str, call_id: str) -> str:
    """Where the provider fetches the call's TwiML."""
    return f"{public_base_url}/twilio/voice/{call_id}"


def status_url(public_base_url: str, call_id: str) -> str:
    """Where the provider posts the call's status callbacks."""
    return f"{public_base_url}/twilio/status/{call_id}"


def amd_url(public_base_url: str, call_id: str) -> str:
    """Where the provider posts the answering-machine detection result (`AnsweredBy`)."""
    return f"{public_base_url}/twilio/amd/{call_id}"


STATUS_EVENTS = ["initiated", "ringing", "answered", "completed"]
