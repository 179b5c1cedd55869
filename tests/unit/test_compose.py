"""docker-compose.yml: the expected services, healthchecks and start-up ordering, and a valid file."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
LONG_RUNNING = ("postgres", "ollama", "backend", "gateway")


@pytest.fixture(scope="module")
def services() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())["services"]


def _depends_on(service: dict) -> dict:
    deps = service.get("depends_on", {})
    assert isinstance(deps, dict), "depends_on must use the long form, with conditions"
    return deps


def test_services_exist(services: dict) -> None:
    for name in (*LONG_RUNNING, "migrate"):
        assert name in services, f"missing service {name!r}"


@pytest.mark.parametrize("name", LONG_RUNNING)
def test_service_has_healthcheck(services: dict, name: str) -> None:
    healthcheck = services[name].get("healthcheck")
    assert healthcheck and healthcheck.get("test"), f"{name} has no healthcheck"
    assert not healthcheck.get("disable"), f"{name} disables its healthcheck"


@pytest.mark.parametrize("name", ["backend", "gateway"])
def test_app_waits_for_healthy_postgres(services: dict, name: str) -> None:
    assert _depends_on(services[name]).get("postgres", {}).get("condition") == "service_healthy"


def test_backend_waits_for_migrations(services: dict) -> None:
    migrate = services["migrate"]
    command = migrate["command"]
    assert (" ".join(command) if isinstance(command, list) else command) == "relayx migrate"
    assert _depends_on(migrate).get("postgres", {}).get("condition") == "service_healthy"
    condition = _depends_on(services["backend"]).get("migrate", {}).get("condition")
    assert condition == "service_completed_successfully"


def test_gateway_waits_for_ollama(services: dict) -> None:
    assert _depends_on(services["gateway"]).get("ollama", {}).get("condition") == "service_healthy"


@pytest.mark.parametrize("name", ["backend", "gateway"])
def test_app_environment_targets_compose_services(services: dict, name: str) -> None:
    env = services[name]["environment"]
    assert "@postgres:5432/" in env["DATABASE_URL"]
    assert env["LLM_ENGINE"] == "ollama"
    assert env["OLLAMA_BASE_URL"] == "http://ollama:11434"
    assert env["BACKEND_INTERNAL_URL"] == "http://backend:8000"


@pytest.mark.parametrize(
    ("name", "dockerfile"), [("backend", "Dockerfile.backend"), ("gateway", "Dockerfile.gateway")]
)
def test_app_builds_from_dockerfile(services: dict, name: str, dockerfile: str) -> None:
    assert services[name]["build"]["dockerfile"] == dockerfile
    assert (ROOT / dockerfile).is_file()


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose (v1) is not on PATH")
def test_docker_compose_config_is_valid(tmp_path: Path) -> None:
    # Compose v1 refuses a missing env_file, and a developer's own `.env` should not decide the result:
    # resolve relative paths against an empty project directory holding an empty `.env`.
    (tmp_path / ".env").write_text("")
    result = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE_FILE), "--project-directory", str(tmp_path), "config", "-q"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr or result.stdout
