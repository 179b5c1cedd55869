"""Phone numbers: the numbers callers dial and the agent that answers each, and a simulated caller.

A number's inbound calls reach RelayX through Twilio's incoming-call webhook (`POST /twilio/inbound`,
set as the number's "A call comes in" URL); this resource says which agent answers them.
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status

from backend.deps import SettingsDep, StorageDep
from backend.errors import (
    MALFORMED_BODY,
    NOT_FOUND,
    NUMBER_TAKEN,
    PROVIDER_REFUSED,
    SIMULATION_REFUSED,
    unprocessable,
)
from backend.schemas import (
    MAX_OFFSET,
    PhoneNumberCreate,
    PhoneNumberOut,
    PhoneNumberUpdate,
    SimulatedInboundCall,
    SimulatedInboundRequest,
)
from backend.telephony.base import TelephonyError
from backend.telephony.simulated_inbound import CallRejected, InboundSimulator
from backend.telephony.simulator import parse_script
from shared.errors import NotFound, StorageError, StorageUnavailable
from shared.storage.base import PhoneNumber, Storage

router = APIRouter(prefix="/phone-numbers", tags=["phone numbers"])
log = logging.getLogger(__name__)


def get_inbound_simulator(request: Request) -> InboundSimulator:
    """The process's simulated line for inbound calls, made on first use (tests set their own)."""
    simulator = getattr(request.app.state, "inbound_simulator", None)
    if simulator is None:
        simulator = InboundSimulator(request.app.state.settings)
        request.app.state.inbound_simulator = simulator
    return simulator


def _out(number: PhoneNumber) -> PhoneNumberOut:
    return PhoneNumberOut.model_validate(number, from_attributes=True)


async def _check_free(storage: Storage, number: str, *, keep: str | None = None) -> None:
    """409 when another row already has `number` (`keep`: the row being changed)."""
    existing = await storage.find_phone_number(number)
    if existing is not None and existing.id != keep:
        raise HTTPException(status.HTTP_409_CONFLICT, f"{number} is already configured (phone number {existing.id})")


def _taken(number: str | None, exc: StorageError) -> HTTPException:
    """The database refused the write after the checks passed: another request took the number meanwhile."""
    log.warning("phone number %s: write refused: %s", number, exc)
    return HTTPException(status.HTTP_409_CONFLICT, f"{number} is already configured")


@router.post(
    "", status_code=status.HTTP_201_CREATED, response_model=PhoneNumberOut,
    responses={**NOT_FOUND, **NUMBER_TAKEN, **MALFORMED_BODY},
)
async def create_phone_number(body: PhoneNumberCreate, storage: StorageDep) -> PhoneNumberOut:
    """Configure a number: an unknown agent is a 404 (as for outbound calls), a number already
    configured a 409."""
    agent = await storage.get_agent(body.agent_id)
    await _check_free(storage, body.number)
    try:
        number = await storage.create_phone_number({**body.model_dump(), "agent_id": agent.id})
    except StorageUnavailable:
        raise
    except StorageError as exc:
        raise _taken(body.number, exc) from None
    return _out(number)


@router.get("", response_model=list[PhoneNumberOut])
async def list_phone_numbers(
    storage: StorageDep,
    agent_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> list[PhoneNumberOut]:
    """Every configured number in number order, or those of one agent."""
    try:
        numbers = await storage.list_phone_numbers(agent_id=agent_id, limit=limit, offset=offset)
    except NotFound:  # a malformed agent_id matches nothing
        numbers = []
    return [_out(n) for n in numbers]


@router.get("/{number_id}", response_model=PhoneNumberOut, responses=NOT_FOUND)
async def get_phone_number(number_id: str, storage: StorageDep) -> PhoneNumberOut:
    return _out(await storage.get_phone_number(number_id))


@router.patch(
    "/{number_id}", response_model=PhoneNumberOut, responses={**NOT_FOUND, **NUMBER_TAKEN, **MALFORMED_BODY}
)
async def update_phone_number(number_id: str, body: PhoneNumberUpdate, storage: StorageDep) -> PhoneNumberOut:
    """Change the fields given: move the number to another agent, switch its inbound calls on or off."""
    changes = body.model_dump(exclude_unset=True)
    await storage.get_phone_number(number_id)
    if body.agent_id is not None:
        changes["agent_id"] = (await storage.get_agent(body.agent_id)).id
    if body.number is not None:
        await _check_free(storage, body.number, keep=number_id)
    try:
        number = await storage.update_phone_number(number_id, changes)
    except StorageUnavailable:
        raise
    except StorageError as exc:
        raise _taken(body.number, exc) from None
    return _out(number)


@router.delete("/{number_id}", status_code=status.HTTP_204_NO_CONTENT, responses=NOT_FOUND)
async def delete_phone_number(number_id: str, storage: StorageDep) -> None:
    """Forget the number: its calls stay, and Twilio's next incoming call to it is rejected."""
    await storage.delete_phone_number(number_id)


@router.post(
    "/{number_id}/simulate-inbound",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=SimulatedInboundCall,
    responses={**NOT_FOUND, **SIMULATION_REFUSED, **PROVIDER_REFUSED, **MALFORMED_BODY},
)
async def simulate_inbound(
    number_id: str, body: SimulatedInboundRequest, storage: StorageDep, settings: SettingsDep,
    simulator: Annotated[InboundSimulator, Depends(get_inbound_simulator)],
) -> SimulatedInboundCall:
    """Call the number from the simulated line (TELEPHONY_PROVIDER=simulator), as a caller would: Twilio's
    signed incoming-call webhook, then the stream with `simulate` spoken into it. Answers once the
    backend has answered the call (202: the conversation goes on); a rejected call is a 409."""
    if settings.telephony_provider != "simulator":
        raise HTTPException(status.HTTP_409_CONFLICT, "simulated calls need TELEPHONY_PROVIDER=simulator")
    number = await storage.get_phone_number(number_id)
    try:
        script = parse_script(body.simulate)
    except TelephonyError as exc:
        raise unprocessable(("body", "simulate"), exc.reason) from None
    try:
        answered = await simulator.dial(to_number=number.number, from_number=body.from_number, script=script)
    except CallRejected as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, f"{number.number}: {exc.reason}") from None
    except TelephonyError as exc:
        detail = {"message": f"the simulated line could not place the call: {exc.reason}", "provider_code": None}
        raise HTTPException(status.HTTP_502_BAD_GATEWAY, detail) from None
    return SimulatedInboundCall(
        call_id=answered.call_id, twilio_call_sid=answered.twilio_call_sid, to_number=answered.to_number,
        from_number=answered.from_number,
    )
