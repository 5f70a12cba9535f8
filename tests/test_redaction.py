"""Secrets are masked in what the backend shows: passwords in URLs, tokens, cloud credentials and
presigned queries; ordinary text is left as it was. Log records are masked by a filter on the handlers."""

from __future__ import annotations

import io
import json
import logging

import pytest

from backend import redaction
from backend.redaction import MASK, RedactingFilter, redact, redact_data
from backend.service.logs import JsonFormatter
from backend.service.stats import Stats

PRESIGNED = ("https://bucket.s3.amazonaws.com/photos/cat.jpg?X-Amz-Algorithm=AWS4-HMAC-SHA256"
             "&X-Amz-Credential=AKIAEXAMPLE%2F20260101%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20260101T000000Z"
             "&X-Amz-Expires=3600&X-Amz-Security-Token=FwoGZXIvYXdzEXAMPLE&X-Amz-SignedHeaders=host"
             "&X-Amz-Signature=5ec2e7a1b0c9d8")


def test_the_password_of_a_redis_url_is_masked_and_the_rest_kept():
    assert redact("Redis at redis://:s3cret-pass@127.0.0.1:6390/0 is unreachable") == \
        f"Redis at redis://:{MASK}@127.0.0.1:6390/0 is unreachable"
    assert redact("rediss://default:pw@cache:6380") == f"rediss://default:{MASK}@cache:6380"


def test_a_token_given_as_the_user_of_a_url_is_masked():
    assert redact("https://ghp_abc123@example.com/repo") == f"https://{MASK}@example.com/repo"


def test_a_presigned_s3_url_keeps_its_path_and_loses_its_credentials():
    shown = redact(f"HTTP 403 fetching {PRESIGNED}")
    for secret in ("AKIAEXAMPLE", "FwoGZXIvYXdzEXAMPLE", "5ec2e7a1b0c9d8"):
        assert secret not in shown
    assert "cat.jpg?X-Amz-Algorithm=AWS4-HMAC-SHA256" in shown and f"X-Amz-Signature={MASK}" in shown


@pytest.mark.parametrize(("text", "secret"), [
    ("https://acct.blob.core.windows.net/c/i.png?sv=2024-05-04&sig=abc%2Bdef%3D&se=2026", "abc%2Bdef%3D"),
    ("https://storage.googleapis.com/b/o.png?X-Goog-Credential=svc%40proj&X-Goog-Signature=0a1b2c", "0a1b2c"),
    ("https://cdn.example.com/i.png?Expires=1&Signature=Zm9vYmFy~&Key-Pair-Id=K2JCJMDEHXQW5F", "Zm9vYmFy~"),
    ("http://ls:8080/data/upload/1/x.png?token=lstok-42", "lstok-42"),
    ("https://maps.example.com/tile.png?key=AIzaSyEXAMPLE", "AIzaSyEXAMPLE"),
])
def test_signature_and_token_query_parameters_are_masked(text, secret):
    assert secret not in redact(text)


def test_tokens_in_authorization_headers_are_masked():
    shown = redact("sent Authorization: Token 0123456789abcdef0123, then Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig")
    assert "0123456789abcdef0123" not in shown and "eyJhbGciOiJIUzI1NiJ9" not in shown
    assert f"Token {MASK}" in shown and f"Bearer {MASK}" in shown


def test_cloud_credentials_given_as_assignments_or_json_are_masked():
    shown = redact('AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG {"api_key": "k-123", "password": "p w"}')
    assert "wJalrXUtnFEMI" not in shown and "k-123" not in shown and '"p w"' not in shown


def test_a_remembered_value_is_masked_wherever_it_appears():
    redaction.remember("configured-token-4f9a")
    assert redact("the header was configured-token-4f9a.") == f"the header was {MASK}."


@pytest.mark.parametrize("text", [
    "no LABEL_STUDIO_API_KEY: the in-process worker cannot write predictions",
    "HTTP Basic authentication required; Token expired",
    "http://images.example.com/a@2x.png and monkey=banana",
    "serving isnet-base on http://127.0.0.1:9090 (1 worker(s) x 32 threads)",
])
def test_ordinary_text_is_left_as_it_was(text):
    assert redact(text) == text


def test_json_data_is_masked_in_strings_and_under_secret_names():
    data = {"errors": [{"message": "redis://:pw@h:1/0 down"}], "api_key": "plain", "count": 3, "ok": None}
    assert redact_data(data) == {"errors": [{"message": f"redis://:{MASK}@h:1/0 down"}], "api_key": MASK,
                                 "count": 3, "ok": None}


def test_errors_are_recorded_masked():
    stats = Stats()
    stats.error("FetchError", f"{PRESIGNED}: HTTP 403", url=PRESIGNED)
    assert "5ec2e7a1b0c9d8" not in json.dumps(stats.snapshot())


def logged(configure) -> str:
    """What a JSON log handler carrying the filter writes for a few records holding secrets."""
    stream = io.StringIO()
    logger = logging.Logger("test.redaction")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    configure(logger, handler)
    logger.warning("worker listening at %s", "redis://:s3cret-pass@127.0.0.1:6379/0")
    logger.info("fetched", extra={"url": PRESIGNED, "headers": {"Authorization": "Token 0123456789abcdef"}})
    try:
        raise ConnectionError("cannot reach redis://:s3cret-pass@10.0.0.1:6379/0")
    except ConnectionError:
        logger.exception("enqueue failed")
    return stream.getvalue()


def test_the_filter_masks_messages_extra_fields_and_tracebacks():
    text = logged(lambda logger, handler: handler.addFilter(RedactingFilter()))
    assert len(text.splitlines()) == 3 and "cannot reach redis://:***@10.0.0.1" in text
    for secret in ("s3cret-pass", "5ec2e7a1b0c9d8", "0123456789abcdef"):
        assert secret not in text


def test_install_puts_the_filter_on_every_handler_of_the_logger():
    text = logged(lambda logger, handler: redaction.install(logger))
    assert "s3cret-pass" not in text and "worker listening at redis://:***@127.0.0.1:6379/0" in text
