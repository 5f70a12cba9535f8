"""`isnet serve` refuses to start, with one clear line, when it could not serve."""

from __future__ import annotations

import pytest

from backend.cli import main


def test_serve_without_weights_exits_2_and_says_how_to_get_them(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("ISNET_HOME", str(tmp_path))
    monkeypatch.setenv("ISNET_WEIGHTS", "")
    assert main(["serve", "--port", "1"]) == 2
    assert "isnet weights fetch" in capsys.readouterr().err


def test_serve_with_an_unknown_engine_exits_2_naming_the_valid_ones(monkeypatch, random_checkpoint, capsys):
    monkeypatch.setenv("ISNET_WEIGHTS", str(random_checkpoint))
    monkeypatch.setenv("ISNET_ENGINE", "tensorrt-magic")
    assert main(["serve", "--port", "1"]) == 2
    assert "torch" in capsys.readouterr().err


def test_serve_with_half_of_the_basic_auth_pair_exits_2(monkeypatch, random_checkpoint, capsys):
    monkeypatch.setenv("ISNET_WEIGHTS", str(random_checkpoint))
    monkeypatch.setenv("ISNET_ENGINE", "torch")
    monkeypatch.setenv("BASIC_AUTH_USER", "ls")
    monkeypatch.setenv("BASIC_AUTH_PASS", "")
    assert main(["serve", "--port", "1"]) == 2
    assert "BASIC_AUTH_PASS" in capsys.readouterr().err


@pytest.fixture
def no_gunicorn(monkeypatch, random_checkpoint):
    """``isnet serve`` that goes through every check and then returns instead of serving."""
    from backend.server import gunicorn_app

    monkeypatch.setattr(gunicorn_app.GunicornServer, "run", lambda self: None)
    monkeypatch.setenv("ISNET_WEIGHTS", str(random_checkpoint))
    monkeypatch.setenv("ISNET_ENGINE", "torch")
    monkeypatch.setenv("BASIC_AUTH_USER", "")
    monkeypatch.setenv("BASIC_AUTH_PASS", "")


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "backend.example"])
def test_serve_on_an_exposed_address_without_credentials_warns(no_gunicorn, capsys, host):
    assert main(["serve", "--host", host, "--port", "1"]) == 0
    err = capsys.readouterr().err
    assert f"warning: serving on {host} without BASIC_AUTH_USER / BASIC_AUTH_PASS" in err


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_serve_on_loopback_without_credentials_does_not_warn(no_gunicorn, capsys, host):
    assert main(["serve", "--host", host, "--port", "1"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_serve_on_an_exposed_address_with_credentials_does_not_warn(no_gunicorn, monkeypatch, capsys):
    monkeypatch.setenv("BASIC_AUTH_USER", "ls")
    monkeypatch.setenv("BASIC_AUTH_PASS", "s3cret")
    assert main(["serve", "--host", "0.0.0.0", "--port", "1"]) == 0
    assert "warning" not in capsys.readouterr().err
