"""A local fake of Twilio's cloud, at the wire: its REST Calls API, and its signed webhooks.

The real `twilio` SDK talks to it over HTTP (TWILIO_API_BASE_URL); nothing in RelayX is patched.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from shared import twilio_auth

ACCOUNT_SID = "AC" + "0" * 32
AUTH_TOKEN = "fake-twilio-auth-token"
FROM_NUMBER = "+15005550006"


@dataclass
class FakeTwilio:
    """Records every request; answers like Twilio, or with the error set in `next_error`."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    next_error: dict[str, Any] | None = None
    calls: dict[str, dict[str, Any]] = field(default_factory=dict)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/2010-04-01/Accounts/{account}/Calls.json")
        async def create_call(account: str, request: Request) -> JSONResponse:
            form = await request.form()
            params = {k: form.getlist(k) if len(form.getlist(k)) > 1 else v for k, v in form.items()}
            self.requests.append(
                {"path": request.url.path, "form": params, "auth": request.headers.get("authorization")}
            )
            if self.next_error is not None:
                error, self.next_error = self.next_error, None
                return JSONResponse(error, status_code=int(error["status"]))
            sid = "CA" + secrets.token_hex(16)
            body = {
                "sid": sid,
                "account_sid": account,
                "to": params.get("To"),
                "from": params.get("From"),
                "status": "queued",
                "uri": f"/2010-04-01/Accounts/{account}/Calls/{sid}.json",
            }
            self.calls[sid] = body
            return JSONResponse(body, status_code=201)

        @app.post("/2010-04-01/Accounts/{account}/Calls/{sid}.json")
        async def update_call(account: str, sid: str, request: Request) -> JSONResponse:
            form = dict(await request.form())
            # A redirect (a transfer) sends `Twiml`; a hang-up sends `Status`: tests read either here.
            self.requests.append({"path": request.url.path, "form": form, "auth": request.headers.get("authorization"),
                                  "at": time.monotonic()})
            if sid not in self.calls:
                return JSONResponse(
                    {"code": 20404, "message": f"The requested resource {request.url.path} was not found",
                     "more_info": "https://www.twilio.com/docs/errors/20404", "status": 404},
                    status_code=404,
                )
            self.calls[sid].update(status=form.get("Status", self.calls[sid]["status"]))
            if "Twiml" in form:
                self.calls[sid]["twiml"] = form["Twiml"]
            return JSONResponse(self.calls[sid])

        return app

    def fail_next(self, code: int, message: str, status: int = 400) -> None:
        """Make the next Calls.create answer with a Twilio error body."""
        self.next_error = {
            "code": code,
            "message": message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
        }


def signed_post(
    client: httpx.Client | httpx.AsyncClient, public_url: str, local_url: str, params: dict[str, str],
    token: str = AUTH_TOKEN,
) -> Any:
    """POST form `params` to `local_url` signed as Twilio signs a request to `public_url`."""
    headers = {"X-Twilio-Signature": twilio_auth.sign(token, public_url, params)}
    return client.post(local_url, data=params, headers=headers)
