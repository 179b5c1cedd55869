"""The operator console: a page at /console for reading calls, campaigns and agents, and its files.

Like the browser phone, the page is public and holds no data: it asks for the API key once, keeps it
in the browser, and reads everything through the same API any client uses (a Bearer token on each
fetch, the recording fetched into a Blob URL). Plain ES modules, no build step.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException, status
from fastapi.responses import FileResponse

router = APIRouter(tags=["console"])

STATIC = Path(__file__).resolve().parent.parent / "static" / "console"
_TYPES = {".js": "text/javascript", ".css": "text/css"}
# Read once: a request's name is looked up here, so no request path ever reaches the file system.
ASSETS: dict[str, str] = {
    path.name: _TYPES[path.suffix]
    for path in sorted(STATIC.iterdir())
    if path.suffix in _TYPES and path.is_file()
}
_NO_STORE = {"Cache-Control": "no-store"}  # a new release's page never runs last release's modules


@router.get("/console", include_in_schema=False)
async def console_page() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html", headers=_NO_STORE)


@router.get("/console/static/{name}", include_in_schema=False)
async def console_asset(name: str) -> FileResponse:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no such file: {name}")
    return FileResponse(STATIC / name, media_type=media_type, headers=_NO_STORE)
