"""End-to-end tests run several gateways, one after another, in one process: each gets its own compute
gate and gated-work threads, as a gateway process has, so work a finished app left waiting cannot hold
up the next one's models."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from shared import urgency


@pytest.fixture(autouse=True)
def _own_compute_gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(urgency, "_gate", urgency.ComputeGate(1))
    monkeypatch.setattr(urgency, "_pool", None)
    yield
