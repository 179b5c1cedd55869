"""Request dependencies: the app's storage, telephony and settings, and API-key auth with its rate limit."""

from __future__ import annotations

import hashlib
import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from backend.capacity import Admission
from backend.telephony.base import Telephony
from shared.rate_limit import RateLimiter
from shared.settings import Settings
from shared.storage.base import Storage

_bearer = HTTPBearer(auto_error=False)


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_storage(request: Request) -> Storage:
    return request.app.state.storage


def get_telephony(request: Request) -> Telephony:
    return request.app.state.telephony


def get_admission(request: Request) -> Admission:
    return request.app.state.admission


def get_rate_limiter(request: Request) -> RateLimiter:
    return request.app.state.rate_limiter


def require_api_key(
    request: Request,
    settings: Annotated[Settings, Depends(get_settings)],
    limiter: Annotated[RateLimiter, Depends(get_rate_limiter)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Every API route but /health and Twilio's (signed) webhooks needs `Authorization: Bearer <key>`.

    The rate limit is checked first, per key when the key is right and per address otherwise: a
    wrong key never gets a bucket of its own, so guessing keys is throttled like any other flood.
    """
    presented = credentials.credentials if credentials is not None else None
    valid = presented is not None and secrets.compare_digest(presented.encode(), settings.api_key.encode())
    if valid:
        caller = "key:" + hashlib.sha256(settings.api_key.encode()).hexdigest()[:16]
    else:
        caller = "addr:" + (request.client.host if request.client is not None else "unknown")
    decision = limiter.check(caller)
    if not decision.allowed:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"rate limit exceeded: retry in {decision.retry_after_s} s",
            headers={"Retry-After": str(decision.retry_after_s)},
        )
    if presented is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing API key: send Authorization: Bearer <RELAYX_API_KEY>",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not valid:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid API key", headers={"WWW-Authenticate": "Bearer"})


SettingsDep = Annotated[Settings, Depends(get_settings)]
StorageDep = Annotated[Storage, Depends(get_storage)]
TelephonyDep = Annotated[Telephony, Depends(get_telephony)]
AdmissionDep = Annotated[Admission, Depends(get_admission)]
