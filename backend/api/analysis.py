"""After the call: its analysis (read, re-run), its webhook deliveries, and its recording."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status
from fastapi.responses import FileResponse, Response

from backend.deps import SettingsDep, StorageDep
from backend.errors import CONFLICT, NOT_FOUND, ResponseDocs
from backend.schemas import AnalysisOut, AnalysisRequested, WebhookEventOut
from shared import jobs
from shared.recording import recording_path

router = APIRouter(prefix="/calls", tags=["after the call"])


_WAV: ResponseDocs = {
    200: {"description": "The recording", "content": {"audio/wav": {"schema": {"type": "string", "format": "binary"}}}}
}


@router.get("/{call_id}/analysis", response_model=AnalysisOut, responses=NOT_FOUND)
async def get_analysis(call_id: str, storage: StorageDep) -> AnalysisOut:
    await storage.get_call(call_id)
    row = await storage.get_analysis(call_id)  # not there yet: 404 "analysis of call … not found"
    return AnalysisOut.model_validate(row.model_dump())


@router.post(
    "/{call_id}/analysis", status_code=status.HTTP_202_ACCEPTED, response_model=AnalysisRequested,
    responses={**NOT_FOUND, **CONFLICT},
)
async def rerun_analysis(call_id: str, storage: StorageDep) -> AnalysisRequested:
    """Queue a fresh analysis; it replaces the stored one and sends call.analyzed again."""
    await storage.get_call(call_id)
    try:
        request = await jobs.request_analysis(storage, call_id)
    except ValueError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    return AnalysisRequested(call_id=call_id, request=request)


@router.get("/{call_id}/webhooks", response_model=list[WebhookEventOut], responses=NOT_FOUND)
async def list_webhooks(call_id: str, storage: StorageDep) -> list[WebhookEventOut]:
    """Every event of the call with every delivery attempt (status code or error, duration)."""
    await storage.get_call(call_id)
    return [WebhookEventOut.model_validate(e.model_dump()) for e in await storage.list_webhook_events(call_id)]


@router.get("/{call_id}/recording", response_class=FileResponse, responses={**_WAV, **NOT_FOUND})
async def get_recording(call_id: str, storage: StorageDep, settings: SettingsDep) -> FileResponse:
    """The two-channel 8 kHz WAV (caller left, agent right); streamed from disk."""
    await storage.get_call(call_id)
    path = recording_path(settings.recordings_path, call_id)
    if not path.is_file():
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"call {call_id} has no recording")
    return FileResponse(path, media_type="audio/wav", filename=f"{call_id}.wav")


@router.delete(
    "/{call_id}/recording", status_code=status.HTTP_204_NO_CONTENT, response_class=Response, responses=NOT_FOUND
)
async def delete_recording(call_id: str, storage: StorageDep, settings: SettingsDep) -> Response:
    await storage.get_call(call_id)
    path = recording_path(settings.recordings_path, call_id)
    try:
        path.unlink()
    except FileNotFoundError:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"call {call_id} has no recording") from None
    return Response(status_code=status.HTTP_204_NO_CONTENT)
