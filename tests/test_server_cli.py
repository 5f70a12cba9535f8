"""`isnet serve` refuses to start, with one clear line, when it could not serve."""

from __future__ import annotations

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
