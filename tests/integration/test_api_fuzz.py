"""The whole REST API under schemathesis: every status documented, no server error, no schema lie.

schemathesis reads the backend's own OpenAPI and runs its phases (examples, coverage, fuzzing,
stateful sequences) with every check on: no 5xx, responses that match their schemas, status codes,
content types and headers that are documented, schema-valid requests accepted and invalid ones
refused, auth enforced. The app runs in process (ASGI) on SQLite with the valid API key; Twilio's
webhooks are fuzzed too, each request signed as Twilio signs it, so their parsing is reached.

Calls go to a local fake of Twilio's REST API (cheap, nothing leaves the machine) and post-call jobs
are not run (a fuzzed agent's webhook URL must not be called). The budget is examples, not time:
derandomized with a fixed seed, the same cases run on every machine, whatever its speed.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
import schemathesis
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import events, from_schema
from schemathesis.python import asgi

from backend.main import create_app
from shared import twilio_auth
from tests.conftest import make_settings
from tests.support.fake_twilio import ACCOUNT_SID, AUTH_TOKEN, FROM_NUMBER, FakeTwilio
from tests.support.servers import serve

PUBLIC = "https://relayx.example.test"
SEED = 20260415
MAX_EXAMPLES = 30
REQUEST_TIMEOUT_S = 20  # a request that hangs fails the run instead of stalling it


def _form_as_received(body: Any) -> dict[str, str] | None:
    """The form fields the route will see for `body` (as requests encodes it), or None if not a flat form."""
    if not isinstance(body, dict):
        return None
    form: dict[str, str] = {}
    for key, value in body.items():
        if isinstance(value, list):  # repeated fields: Starlette's FormData keeps the last
            value = value[-1] if value else None
        if value is None:
            continue  # requests leaves None out
        if isinstance(value, dict | list):
            return None
        form[str(key)] = str(value)
    return form


class _TwilioSigner:
    """Signs each request to a Twilio webhook as Twilio would (X-Twilio-Signature over URL and form)."""

    def get(self, case: Any, ctx: Any) -> str:
        return AUTH_TOKEN

    def set(self, case: Any, token: str, ctx: Any) -> None:
        form = _form_as_received(case.body if case.body is not None else {})
        if form is None or case.query:
            return  # unsignable as sent: the route must refuse it (403), and does
        url = PUBLIC + unquote(case.formatted_path)
        case.headers = {**(case.headers or {}), "X-Twilio-Signature": twilio_auth.sign(token, url, form)}


def _findings(schema: Any) -> tuple[collections.Counter[tuple[str, str, str]], list[str], int]:
    """Run every phase; count failed checks by (check, operation, title); collect errors (exceptions
    the app raised in process, i.e. what a server would answer 500)."""
    failures: collections.Counter[tuple[str, str, str]] = collections.Counter()
    samples: dict[tuple[str, str, str], str] = {}
    errors: list[str] = []
    scenarios = 0
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            scenarios += 1
            for checks in event.recorder.checks.values():
                for check in checks:
                    if check.failure_info is None:
                        continue
                    failure = check.failure_info.failure
                    key = (check.name, str(failure.operation), failure.title)
                    failures[key] += 1
                    samples.setdefault(key, f"{failure.message}\n{check.failure_info.code_sample}")
        elif isinstance(event, events.NonFatalError):
            errors.append(f"{event.label}: {event.info.title}: {event.info.message}")
    report = [f"{n} x {key}\n{samples[key]}" for key, n in failures.items()]
    return failures, report + errors, scenarios


@pytest.fixture(scope="module")
def fake_twilio_url() -> Iterator[str]:
    with serve(FakeTwilio().app()) as url:
        yield url


def test_api_answers_every_request_as_documented(tmp_path: Path, fake_twilio_url: str) -> None:
    settings = make_settings(
        tmp_path,
        TELEPHONY_PROVIDER="twilio",
        TWILIO_ACCOUNT_SID=ACCOUNT_SID,
        TWILIO_AUTH_TOKEN=AUTH_TOKEN,
        TWILIO_FROM_NUMBER=FROM_NUMBER,
        TWILIO_API_BASE_URL=fake_twilio_url,
        PUBLIC_BASE_URL=PUBLIC,
        WEBHOOK_ALLOW_PRIVATE="true",  # the private-host guard is policy, not schema: off, so a 422 means bad input
        API_RATE_LIMIT_PER_MINUTE="0",  # the limiter has its own tests; here it would only cut the run short
        LOG_LEVEL="WARNING",
    )
    app = create_app(settings, run_jobs=False)
    config = SchemathesisConfig.from_dict(
        {
            "seed": SEED,
            "headers": {"Authorization": "Bearer test-key"},
            "request-timeout": REQUEST_TIMEOUT_S,
            # A 502 is the documented answer when the phone provider refuses: the fake Twilio refuses to hang
            # up SIDs it never issued, which a fuzzed (signed) status callback can attach to a call. 500 and
            # 503 (the database failing, here a bug) still fail the run.
            "checks": {"not_a_server_error": {"expected-statuses": ["2xx", "3xx", "4xx", "502"]}},
            "generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none"},
            # What a campaign's schema cannot say (an IANA time-zone name, a window's start before its end, a
            # CSV file's rows): schema-valid input there may still be refused, with a documented 422.
            # (One filter: two include filters would match either, every POST.)
            "operations": [{
                "include-path-regex": "^/(campaigns|campaigns/upload|do-not-call/upload)$",
                "checks": {"positive_data_acceptance": {
                    "expected-statuses": ["2xx", "3xx", "401", "403", "404", "409", "422", "429", "5xx"]}},
            }],
        }
    )
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=config)
    schema.auth().apply_to(path_regex="^/twilio/")(_TwilioSigner)
    try:
        failures, report, scenarios = _findings(schema)
    finally:
        asgi.shutdown_lifespans()  # the app's storage closes now, not at interpreter exit
    assert scenarios > 0
    assert not report, f"{sum(failures.values())} failed checks, {len(report) - len(failures)} errors:\n\n" + (
        "\n\n".join(report)
    )
