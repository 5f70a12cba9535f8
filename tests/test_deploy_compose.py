"""deploy/docker-compose.yml is safe to leave running: every service restarts unless stopped, starts once
what it needs is healthy, the backend's port is published and configurable, its ``THREADS`` is the code's
default, and auth is on with credentials that deploy/.env must set (deploy/.env.example lists them).

Read as YAML (``docker compose config`` where Docker Compose is installed checks the same file)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from backend.settings import Settings

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def test_every_service_restarts_unless_stopped(compose):
    assert {name: s.get("restart") for name, s in compose["services"].items()} == dict.fromkeys(
        compose["services"], "unless-stopped")


def test_services_wait_for_what_they_need_to_be_healthy(compose):
    services = compose["services"]
    for name, service in services.items():
        for needed, condition in (service.get("depends_on") or {}).items():
            assert condition == {"condition": "service_healthy"}, (name, needed)
            assert "healthcheck" in services[needed], needed
    assert set(services["backend"]["depends_on"]) == {"redis"}
    assert "/health" in " ".join(services["backend"]["healthcheck"]["test"])


def test_the_backend_port_is_published_and_configurable(compose):
    assert compose["services"]["backend"]["ports"] == ["${ISNET_PORT:-9090}:9090"]


def test_threads_default_is_the_codes(compose, monkeypatch):
    monkeypatch.delenv("THREADS", raising=False)
    threads = compose["x-backend-env"]["THREADS"]
    assert threads == f"${{THREADS:-{Settings().server_threads}}}"


def test_auth_is_on_and_its_credentials_are_required_from_env_file(compose):
    env = compose["x-backend-env"]
    for name in ("BASIC_AUTH_USER", "BASIC_AUTH_PASS"):
        assert env[name].startswith(f"${{{name}:?"), env[name]  # compose refuses to start without it


def test_env_example_names_every_required_variable():
    text = (DEPLOY / "docker-compose.yml").read_text()
    required = set(re.findall(r"\$\{(\w+):\?", text))
    example = {line.split("=", 1)[0] for line in (DEPLOY / ".env.example").read_text().splitlines()
               if "=" in line and not line.startswith("#")}
    assert required <= example, required - example
