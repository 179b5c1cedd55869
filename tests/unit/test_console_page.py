"""The operator console's HTTP side: a public page whose modules load without the key, and nothing
else of the file system reachable through its static route."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from backend.api import console
from backend.main import create_app
from tests.conftest import make_settings


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[FastAPI]:
    app = create_app(make_settings(tmp_path), run_jobs=False)
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://backend") as client:
        yield client


async def test_page_stylesheet_and_every_imported_module_load_without_the_key(
    client: httpx.AsyncClient,
) -> None:
    page = await client.get("/console")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["cache-control"] == "no-store"
    assert '<script type="module" src="/console/static/console.js">' in page.text
    css = await client.get("/console/static/console.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    # Follow the imports from the entry module: a module named in an import but not served breaks the page.
    seen: set[str] = set()
    todo = ["console.js"]
    while todo:
        name = todo.pop()
        seen.add(name)
        script = await client.get(f"/console/static/{name}")
        assert script.status_code == 200, name
        assert script.headers["content-type"].startswith("text/javascript"), name
        todo += [n for n in re.findall(r'from "\./([\w-]+\.js)"', script.text) if n not in seen]
    assert seen == {"console.js", "api.js", "ui.js", "calls.js", "campaigns.js", "agents.js"}
    assert set(console.ASSETS) == seen | {"console.css"}


@pytest.mark.parametrize(
    "name",
    [
        "index.html",
        "..%2Fphone.html",
        "..%2F..%2Fapi%2Fconsole.py",
        "%2e%2e%2fphone.js",
        "missing.js",
        "console.JS",
    ],
)
async def test_only_the_consoles_own_files_are_served(client: httpx.AsyncClient, name: str) -> None:
    response = await client.get(f"/console/static/{name}")
    assert response.status_code == 404, name
    assert "import" not in response.text and "<html" not in response.text


async def test_the_api_behind_the_console_still_needs_the_key(client: httpx.AsyncClient) -> None:
    assert (await client.get("/calls")).status_code == 401
    assert (await client.get("/agents", headers={"Authorization": "Bearer nope"})).status_code == 401
