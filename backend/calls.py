"""Placing a call: the domain step between the route and the storage/telephony seams."""

from __future__ import annotations

import logging
from typing import Any

from backend.capacity import Admission
from backend.telephony.base import Telephony, TelephonyError
from shared.storage.base import Call, Storage

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
