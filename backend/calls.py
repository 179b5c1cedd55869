"""Placing a call and answering one: the domain steps between the routes and the storage/telephony seams."""

from __future__ import annotations

import logging
from typing import Any

from backend.capacity import Admission
from backend.telephony.base import Telephony, TelephonyError
from shared.errors import NotFound, RelayXError, StorageError, StorageUnavailable
from shared.phone import E164
from shared.storage.base import Agent, Call, PhoneNumber, Storage

log = logging.getLogger(__name__)


async def place_outbound_call(
    storage: Storage, telephony: Telephony, admission: Admission, *, agent_id: str, to_number: str,
    from_number: str | None, metadata: dict[str, Any],
) -> Call:
    """Write the call row first, then dial; a refused dial leaves the row `failed` with the reason.

    Raises `NotFound` for an unknown agent and `AtCapacity` when the voice gateway cannot carry one more
    call (nothing written for either), and `TelephonyError` after marking the row failed, so a caller
    can always find the record of what was attempted.
    """
    agent = await storage.get_agent(agent_id)
    async with admission.admit(storage):  # the row is written inside: the next request counts it
        call = await storage.create_call(
            agent_id=agent.id, to_number=to_number, from_number=from_number, metadata=metadata
        )
    try:
        placed = await telephony.place_call(call, agent)
    except TelephonyError as exc:
        log.warning("call %s: provider refused to dial: %s", call.id, exc.reason)
        await storage.update_call(call.id, {"status": "failed", "error": exc.reason})
        raise
    return await storage.update_call(call.id, {"twilio_call_sid": placed.sid})


class InboundDisabled(RelayXError):
    """The number is configured but its inbound calls are switched off."""


class CallSidTaken(RelayXError):
    """Another call (outbound, or to another number) already has this Twilio call SID."""


async def inbound_agent(storage: Storage, to_number: str) -> tuple[PhoneNumber, Agent]:
    """The number dialed and the agent that answers it.

    Raises `NotFound` for a number not configured (or whose agent was deleted) and `InboundDisabled`
    for one whose inbound calls are off.
    """
    number = await storage.find_phone_number(to_number) if E164.fullmatch(to_number) else None
    if number is None:
        raise NotFound(f"phone number {to_number}")
    if not number.inbound_enabled:
        raise InboundDisabled(f"inbound calls to {to_number} are disabled")
    return number, await storage.get_agent(number.agent_id)


async def answer_inbound_call(
    storage: Storage, admission: Admission, *, to_number: str, from_number: str | None, call_sid: str
) -> Call | None:
    """The call row of an incoming call, or None to reject it (number not configured, inbound off,
    agent deleted).

    Twilio may ask again for the same call (a retried webhook): the first row is returned, never a
    second one. Raises `AtCapacity` when the voice gateway cannot carry one more call (nothing written),
    and `CallSidTaken` when the SID belongs to another call.
    """
    existing = await _same_inbound_call(storage, call_sid, to_number)
    if existing is not None:
        return existing
    try:
        number, agent = await inbound_agent(storage, to_number)
    except (NotFound, InboundDisabled) as exc:
        log.info("incoming call %s to %s rejected: %s", call_sid, to_number, exc)
        return None
    try:
        async with admission.admit(storage):  # an inbound call takes a stream like an outbound one
            return await storage.create_call(
                agent_id=agent.id, to_number=number.number, from_number=from_number,
                metadata={"phone_number_id": number.id}, direction="inbound", twilio_call_sid=call_sid,
            )
    except StorageUnavailable:
        raise
    except StorageError:  # the database refused: the same webhook, twice at once, lost the race for the SID
        existing = await _same_inbound_call(storage, call_sid, to_number)
        if existing is None:
            raise
        return existing


async def _same_inbound_call(storage: Storage, call_sid: str, to_number: str) -> Call | None:
    """The inbound call to `to_number` already written for `call_sid`; `CallSidTaken` if another call has it."""
    existing = await storage.find_call_by_sid(call_sid)
    if existing is None:
        return None
    if existing.direction != "inbound" or existing.to_number != to_number:
        raise CallSidTaken(f"CallSid {call_sid} belongs to another call")
    return existing
