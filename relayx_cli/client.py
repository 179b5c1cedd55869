"""The CLI's view of a running backend: its REST API with the configured key."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx

from shared import call_status
from shared.settings import Settings


class APIError(Exception):
    """The backend answered with an error; the message is its reason, `detail` its body's detail."""

    def __init__(self, message: str, detail: Any = None) -> None:
        super().__init__(message)
        self.detail = detail


class BackendClient:
    """Thin wrapper over the REST API (the CLI never touches the database for calls)."""

    def __init__(self, settings: Settings) -> None:
        self.base = settings.backend_url
        self._http = httpx.Client(
            base_url=self.base, headers={"Authorization": f"Bearer {settings.api_key}"}, timeout=30
        )

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.ConnectError:
            raise APIError(f"no backend at {self.base}: start it with `relayx serve`") from None

    def _check(self, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise APIError(f"{response.status_code}: {detail}", detail)
        return response.json() if response.content else None

    def healthy(self) -> bool:
        try:
            return self._request("GET", "/health", timeout=2).status_code == 200
        except (httpx.HTTPError, APIError):
            return False

    def agents(self) -> list[dict[str, Any]]:
        return list(self._check(self._request("GET", "/agents")))

    def create_agent(self, body: dict[str, Any]) -> dict[str, Any]:
        return dict(self._check(self._request("POST", "/agents", json=body)))

    def resolve_agent(self, name_or_id: str) -> dict[str, Any]:
        """An agent by id, or by name (the most recent with that name)."""
        for agent in self.agents():
            if name_or_id in (agent["id"], agent["name"]):
                return agent
        raise APIError(f"no agent named or numbered {name_or_id!r}")

    def call(self, agent_id: str, to_number: str, metadata: dict[str, Any]) -> dict[str, Any]:
        body = {"agent_id": agent_id, "to_number": to_number, "metadata": metadata}
        return dict(self._check(self._request("POST", "/calls/outbound", json=body)))

    def get_call(self, call_id: str) -> dict[str, Any]:
        return dict(self._check(self._request("GET", f"/calls/{call_id}")))

    def transcript(self, call_id: str) -> list[dict[str, Any]]:
        return list(self._check(self._request("GET", f"/calls/{call_id}/transcripts")))

    def analysis(self, call_id: str) -> dict[str, Any] | None:
        response = self._request("GET", f"/calls/{call_id}/analysis")
        if response.status_code == 404:
            return None
        return dict(self._check(response))

    def wait_for_analysis(self, call_id: str, *, timeout_s: float = 120, poll_s: float = 0.5) -> dict[str, Any] | None:
        """The call's analysis once the post-call job has written it (None after the deadline)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            analysis = self.analysis(call_id)
            if analysis is not None and analysis.get("status") != "pending":
                return analysis
            time.sleep(poll_s)
        return None

    def follow(self, call_id: str, *, timeout_s: float = 600, poll_s: float = 0.3) -> Any:
        """Yield transcript lines as they are stored, until the call has ended and the line is quiet."""
        seen: set[str] = set()
        deadline = time.monotonic() + timeout_s
        ended_at: float | None = None
        while time.monotonic() < deadline:
            for line in self.transcript(call_id):
                if line["id"] not in seen:
                    seen.add(line["id"])
                    yield line
            if self.get_call(call_id)["status"] in call_status.TERMINAL:
                ended_at = ended_at or time.monotonic()
                if time.monotonic() - ended_at > 1.5:  # the gateway's last writes land just after
                    return
            time.sleep(poll_s)

    # --- campaigns ---------------------------------------------------------------------------------
    def upload_campaign(self, csv_path: str, config: dict[str, Any]) -> dict[str, Any]:
        with open(csv_path, "rb") as handle:
            files = {"file": (csv_path.rsplit("/", 1)[-1], handle, "text/csv")}
            response = self._request("POST", "/campaigns/upload", files=files, data={"config": json.dumps(config)})
        return dict(self._check(response))

    def campaigns(self) -> list[dict[str, Any]]:
        return list(self._check(self._request("GET", "/campaigns")))

    def campaign(self, campaign_id: str) -> dict[str, Any]:
        return dict(self._check(self._request("GET", f"/campaigns/{campaign_id}")))

    def move_campaign(self, campaign_id: str, action: str) -> dict[str, Any]:
        return dict(self._check(self._request("POST", f"/campaigns/{campaign_id}/{action}")))

    def campaign_contacts(self, campaign_id: str, *, status: str | None = None) -> list[dict[str, Any]]:
        contacts: list[dict[str, Any]] = []
        while True:
            params: dict[str, Any] = {"limit": 500, "offset": len(contacts), **({"status": status} if status else {})}
            page = self._check(self._request("GET", f"/campaigns/{campaign_id}/contacts", params=params))
            contacts += page["data"]
            if not page["has_more"]:
                return contacts

    def add_do_not_call(self, numbers: list[str], reason: str | None) -> dict[str, Any]:
        body = {"numbers": numbers, "reason": reason}
        return dict(self._check(self._request("POST", "/do-not-call", json=body)))

    def import_do_not_call(self, csv_path: str) -> dict[str, Any]:
        with open(csv_path, "rb") as handle:
            files = {"file": (csv_path.rsplit("/", 1)[-1], handle, "text/csv")}
            return dict(self._check(self._request("POST", "/do-not-call/upload", files=files)))
