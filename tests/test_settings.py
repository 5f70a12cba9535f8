"""Settings are validated when read: a bad value stops the program with one line naming its variable.

The SDK's names ``LABEL_STUDIO_HOST`` and ``LABEL_STUDIO_ACCESS_TOKEN`` are read as aliases; the
project's own names win when both are set.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from backend.cli import main
from backend.settings import Settings, SettingsError, load


@pytest.mark.parametrize(("variable", "value", "problem"), [
    ("ISNET_INPUT_SIZE", "abc", "valid integer"),
    ("ISNET_INPUT_SIZE", "100", "multiple of 32"),
    ("WORKERS", "-1", "greater than or equal to 1"),
    ("THREADS", "0", "greater than or equal to 1"),
    ("ISNET_THRESHOLD", "1.5", "less than or equal to 1"),
    ("ISNET_PREDICT_BUDGET", "soon", "valid number"),
    ("ISNET_TRAIN_SCALES", "1024,big", "valid integer"),
])
def test_a_bad_value_is_an_error_naming_its_variable_and_value(monkeypatch, variable, value, problem):
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as caught:
        load()
    message = str(caught.value)
    assert variable in message and repr(value.split(",")[-1]) in message and problem in message
    assert "\n" not in message


def test_a_bad_secret_is_named_but_its_value_is_not_shown(monkeypatch):
    with pytest.raises(SettingsError) as caught:
        Settings(redis_url=["redis://:hunter2@host"])
    assert "REDIS_URL" in str(caught.value) and "hunter2" not in str(caught.value)


def test_isnet_serve_reports_a_bad_setting_in_one_line_without_a_traceback(monkeypatch, capsys):
    monkeypatch.setenv("ISNET_INPUT_SIZE", "abc")
    assert main(["serve", "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: invalid setting ISNET_INPUT_SIZE='abc'")
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_the_worker_reports_a_bad_setting_in_one_line(monkeypatch, capsys):
    from worker.__main__ import main as worker_main

    monkeypatch.setenv("ISNET_LS_RETRIES", "many")
    assert worker_main([]) == 2
    assert "ISNET_LS_RETRIES='many'" in capsys.readouterr().err


def test_empty_and_blank_values_mean_the_default_and_values_are_stripped(monkeypatch):
    monkeypatch.setenv("WORKERS", "   ")
    monkeypatch.setenv("ISNET_INPUT_SIZE", "")
    monkeypatch.setenv("ISNET_PREDICT_BATCH", " 8 ")
    settings = load()
    assert (settings.workers, settings.input_size, settings.predict_batch) == (1, 1024, 8)


def test_lists_are_comma_separated_and_words_normalised(monkeypatch):
    monkeypatch.setenv("ISNET_ALLOWED_HOSTS", " Images.Example.com , cdn:8443 ,")
    monkeypatch.setenv("ISNET_TRAIN_SCALES", "1024, 320")
    monkeypatch.setenv("LOG_LEVEL", "debug")
    monkeypatch.setenv("ISNET_PROMOTE_RULE", "Always")
    monkeypatch.setenv("LABEL_STUDIO_URL", "http://ls:8080/")
    settings = load()
    assert settings.allowed_hosts == ("images.example.com", "cdn:8443")
    assert settings.train_scales == (1024, 320)
    assert (settings.log_level, settings.promote_rule) == ("DEBUG", "always")
    assert settings.label_studio_url == "http://ls:8080"


def test_the_sdk_names_are_read_when_ours_are_unset(monkeypatch):
    monkeypatch.delenv("LABEL_STUDIO_URL", raising=False)
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    monkeypatch.setenv("LABEL_STUDIO_HOST", "http://studio:8080/")
    monkeypatch.setenv("LABEL_STUDIO_ACCESS_TOKEN", "sdk-token")
    settings = load()
    assert (settings.label_studio_url, settings.label_studio_api_key) == ("http://studio:8080", "sdk-token")


def test_our_names_win_over_the_sdk_names_when_both_are_set(monkeypatch):
    monkeypatch.setenv("LABEL_STUDIO_URL", "http://ours:8080")
    monkeypatch.setenv("LABEL_STUDIO_HOST", "http://sdk:8080")
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "our-key")
    monkeypatch.setenv("LABEL_STUDIO_ACCESS_TOKEN", "sdk-token")
    settings = load()
    assert (settings.label_studio_url, settings.label_studio_api_key) == ("http://ours:8080", "our-key")


def test_fields_given_by_name_win_over_the_environment_and_replace_validates(monkeypatch, tmp_path):
    monkeypatch.setenv("ISNET_ENGINE", "onnx-fp16")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/0")
    settings = Settings(home=tmp_path, engine="torch", redis_url="")
    assert (settings.engine, settings.redis_url, settings.model_dir) == ("torch", "", tmp_path / "models")
    changed = settings.replace(workers=3)
    assert (changed.workers, changed.engine, changed.redis_url, settings.workers) == (3, "torch", "", 1)
    with pytest.raises(SettingsError, match="WORKERS=0"):
        settings.replace(workers=0)


def test_the_defaults_are_the_documented_ones(monkeypatch):
    for name in ("ISNET_HOME", "ISNET_INPUT_SIZE", "THREADS", "LABEL_STUDIO_URL", "LABEL_STUDIO_HOST", "MODEL_DIR"):
        monkeypatch.delenv(name, raising=False)
    settings = load()
    assert settings.home == Path("~/.cache/isnet-ls").expanduser()
    assert (settings.input_size, settings.server_threads, settings.label_studio_url) == (
        1024, 32, "http://localhost:8080")
    assert settings.model_dir == settings.home / "models"
