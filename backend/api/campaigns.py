"""Campaigns and the do-not-call list: create (JSON or a CSV upload), start, pause, resume, cancel,
progress, contacts; list, add, import and remove do-not-call numbers."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, HTTPException, Path, Query, Request, UploadFile, status
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, ValidationError, field_validator

from backend.deps import StorageDep
from backend.errors import CONFLICT, MALFORMED_BODY, NOT_FOUND, ResponseDocs, unprocessable
from backend.schemas import MAX_OFFSET
from shared.campaigns.config import MAX_CONTACTS, CampaignIn, CampaignSettings, ContactIn
from shared.campaigns.csv_import import MAX_CSV_BYTES, CsvRejected, parse_contacts
from shared.campaigns.models import Campaign, Contact, DoNotCall
from shared.errors import ConfigurationError
from shared.phone import PHONE_NUMBER, e164
from shared.storage.base import Storage
from shared.storage.campaigns import CampaignStateError, CampaignStore, campaign_store

router = APIRouter(prefix="/campaigns", tags=["campaigns"])
dnc_router = APIRouter(prefix="/do-not-call", tags=["do-not-call"])


class Problems(BaseModel):
    """A 422: every problem with its location, as FastAPI reports invalid input."""

    detail: list[dict[str, Any]]


INVALID_INPUT: ResponseDocs = {
    422: {
        "model": Problems,
        "description": "Invalid settings or contacts, every problem located (a CSV row: `body.file.<row>.<column>`, "
        "the header being row 1); nothing is created",
    }
}
UNAVAILABLE: ResponseDocs = {
    501: {"description": "Campaigns need SQLite or PostgreSQL (DATABASE_URL), not Supabase's REST API"}
}


class ContactPage(BaseModel):
    """One page of a campaign's contacts, in file order."""

    data: list[Contact]
    limit: int
    offset: int
    has_more: bool


class DoNotCallIn(BaseModel):
    """Numbers to add to the do-not-call list."""

    numbers: list[str] = Field(
        min_length=1,
        max_length=MAX_CONTACTS,
        json_schema_extra={"items": {"type": "string", "pattern": PHONE_NUMBER}},
    )
    reason: str | None = Field(default=None, max_length=500)

    @field_validator("numbers")
    @classmethod
    def _e164(cls, value: list[str]) -> list[str]:
        return [e164(number, f"numbers[{i}]") for i, number in enumerate(value)]


class DoNotCallAdded(BaseModel):
    added: int
    total_given: int


def _store(storage: Storage) -> CampaignStore:
    try:
        return campaign_store(storage)
    except ConfigurationError as exc:
        raise HTTPException(status.HTTP_501_NOT_IMPLEMENTED, str(exc)) from None


def _csv_rejected(exc: CsvRejected, field: str) -> RequestValidationError:
    return RequestValidationError(
        [
            {
                "type": "value_error",
                "loc": ("body", field, e.row, *([e.column] if e.column else [])),
                "msg": e.message,
                "input": None,
            }
            for e in exc.errors
        ]
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=Campaign,
    responses={**NOT_FOUND, **MALFORMED_BODY, **UNAVAILABLE},
)
async def create_campaign(body: CampaignIn, request: Request, storage: StorageDep) -> Campaign:
    """A campaign with its contacts. Every bad contact is named and nothing is created unless all are
    good; `start: true` starts dispatching at once (else it is a draft, started by POST .../start)."""
    _no_duplicates(body.contacts)
    return await _create(request, storage, body, body.contacts)


@router.post(
    "/upload",
    status_code=status.HTTP_201_CREATED,
    response_model=Campaign,
    responses={**NOT_FOUND, **MALFORMED_BODY, **INVALID_INPUT, **UNAVAILABLE},
)
async def upload_campaign(
    request: Request,
    storage: StorageDep,
    file: Annotated[
        UploadFile,
        File(
            description="CSV: phone_number (required), timezone (optional), and any "
            "other columns as the agent's {placeholders}"
        ),
    ],
    config: Annotated[str, Form(description="The campaign's settings (CampaignSettings) as JSON")],
) -> Campaign:
    """A campaign from a CSV upload. Every bad row is named by its row number (the header is row 1:
    `body.file.<row>.<column>`) and nothing is created unless every row is good."""
    try:
        settings = CampaignSettings.model_validate_json(config)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", "config", *e["loc"])} for e in exc.errors()]
        ) from None
    try:
        contacts = parse_contacts(await _read(file))
    except CsvRejected as exc:
        raise _csv_rejected(exc, "file") from None
    return await _create(request, storage, settings, contacts)


async def _read(file: UploadFile) -> bytes:
    data = await file.read(MAX_CSV_BYTES + 1)
    if len(data) > MAX_CSV_BYTES:
        raise unprocessable(("body", "file"), f"the file is larger than {MAX_CSV_BYTES // 1024 // 1024} MB")
    return data


async def _create(
    request: Request, storage: Storage, settings: CampaignSettings, contacts: list[ContactIn]
) -> Campaign:
    store = _store(storage)
    await storage.get_agent(settings.agent_id)  # 404 for an unknown agent, before anything is written
    fields = settings.model_dump(include=set(CampaignSettings.model_fields))
    campaign = await store.create(CampaignSettings.model_validate(fields), contacts)
    if campaign.status == "running":
        _dispatch_soon(request)
    return await store.get(campaign.id, progress=True)


def _no_duplicates(contacts: list[ContactIn]) -> None:
    seen: dict[str, int] = {}
    problems = []
    for index, contact in enumerate(contacts):
        if contact.phone_number in seen:
            problems.append(
                {
                    "type": "value_error",
                    "loc": ("body", "contacts", index, "phone_number"),
                    "msg": f"{contact.phone_number} is already contacts[{seen[contact.phone_number]}]",
                    "input": contact.phone_number,
                }
            )
        seen.setdefault(contact.phone_number, index)
    if problems:
        raise RequestValidationError(problems)


def _dispatch_soon(request: Request) -> None:
    background = getattr(request.app.state, "background", None)
    if background is not None:
        background.dispatch_soon()


@router.get("", response_model=list[Campaign], responses=UNAVAILABLE)
async def list_campaigns(
    storage: StorageDep,
    status_filter: Annotated[
        Literal["draft", "running", "paused", "cancelled", "completed"] | None, Query(alias="status")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> list[Campaign]:
    return await _store(storage).list_campaigns(status=status_filter, limit=limit, offset=offset)


@router.get("/{campaign_id}", response_model=Campaign, responses={**NOT_FOUND, **UNAVAILABLE})
async def get_campaign(campaign_id: str, storage: StorageDep) -> Campaign:
    """The campaign with its progress: contacts per status and calls placed so far."""
    return await _store(storage).get(campaign_id, progress=True)


async def _move(campaign_id: str, action: str, request: Request, storage: Storage) -> Campaign:
    try:
        campaign = await _store(storage).move(campaign_id, action)
    except CampaignStateError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    if campaign.status == "running":
        _dispatch_soon(request)
    return campaign


_MOVE_DOCS: ResponseDocs = {**NOT_FOUND, **CONFLICT, **UNAVAILABLE}


@router.post("/{campaign_id}/start", response_model=Campaign, responses=_MOVE_DOCS)
async def start_campaign(campaign_id: str, request: Request, storage: StorageDep) -> Campaign:
    """Start dispatching a draft (409 from any other status)."""
    return await _move(campaign_id, "start", request, storage)


@router.post("/{campaign_id}/pause", response_model=Campaign, responses=_MOVE_DOCS)
async def pause_campaign(campaign_id: str, request: Request, storage: StorageDep) -> Campaign:
    """Stop placing new calls; calls in progress finish and their retries wait for `resume`."""
    return await _move(campaign_id, "pause", request, storage)


@router.post("/{campaign_id}/resume", response_model=Campaign, responses=_MOVE_DOCS)
async def resume_campaign(campaign_id: str, request: Request, storage: StorageDep) -> Campaign:
    """Dispatch a paused campaign again."""
    return await _move(campaign_id, "resume", request, storage)


@router.post("/{campaign_id}/cancel", response_model=Campaign, responses=_MOVE_DOCS)
async def cancel_campaign(campaign_id: str, request: Request, storage: StorageDep) -> Campaign:
    """Contacts not yet called are cancelled; calls in progress finish and are not retried."""
    return await _move(campaign_id, "cancel", request, storage)


@router.get("/{campaign_id}/contacts", response_model=ContactPage, responses={**NOT_FOUND, **UNAVAILABLE})
async def list_contacts(
    campaign_id: str,
    storage: StorageDep,
    status_filter: Annotated[
        Literal["pending", "calling", "completed", "failed", "skipped", "cancelled"] | None,
        Query(alias="status"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> ContactPage:
    """Each contact's attempts, last outcome and last call (its transcript: GET /calls/{id})."""
    store = _store(storage)
    await store.get(campaign_id)
    found = await store.contacts(campaign_id, status=status_filter, limit=limit + 1, offset=offset)
    return ContactPage(data=found[:limit], limit=limit, offset=offset, has_more=len(found) > limit)


# --- do not call -----------------------------------------------------------------------------------

_DNC_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/DoNotCallIn"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "CSV with a phone_number (or number) column",
                        }
                    },
                }
            },
        },
    }
}


@dnc_router.get("", response_model=list[DoNotCall], responses=UNAVAILABLE)
async def list_dnc(
    storage: StorageDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> list[DoNotCall]:
    return await _store(storage).list_dnc(limit=limit, offset=offset)


@dnc_router.post("", response_model=DoNotCallAdded, responses={**MALFORMED_BODY, **UNAVAILABLE})
async def add_dnc(body: DoNotCallIn, storage: StorageDep) -> DoNotCallAdded:
    """Add numbers; those already listed are kept as they were."""
    added = await _store(storage).add_dnc(body.numbers, reason=body.reason, source="api")
    return DoNotCallAdded(added=added, total_given=len(body.numbers))


@dnc_router.post(
    "/upload", response_model=DoNotCallAdded, responses={**MALFORMED_BODY, **INVALID_INPUT, **UNAVAILABLE}
)
async def upload_dnc(
    storage: StorageDep,
    file: Annotated[UploadFile, File(description="CSV with a phone_number (or number) column")],
) -> DoNotCallAdded:
    """Import numbers from a CSV; bad rows are named by row number and nothing is added."""
    numbers = _dnc_numbers(await _read(file))
    added = await _store(storage).add_dnc(numbers, reason="imported", source="import")
    return DoNotCallAdded(added=added, total_given=len(numbers))


def _dnc_numbers(data: bytes) -> list[str]:
    try:
        return [c.phone_number for c in parse_contacts(data, number_columns=("phone_number", "number"))]
    except CsvRejected as exc:
        raise _csv_rejected(exc, "file") from None


@dnc_router.delete(
    "/{number:phone}", status_code=status.HTTP_204_NO_CONTENT, responses={**NOT_FOUND, **UNAVAILABLE}
)
async def remove_dnc(number: Annotated[str, Path(pattern=PHONE_NUMBER)], storage: StorageDep) -> None:
    await _store(storage).remove_dnc(e164(number, "number"))
