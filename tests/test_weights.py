"""The weight cache never serves bytes it has not verified, and heals itself."""

import shutil
from pathlib import Path

import pytest
import torch

from backend.cli import main
from backend.isnet.network import ISNetDIS
from backend.isnet.weights import (
    ONNX_SHA256,
    WeightCache,
    WeightsError,
    load_model,
    sha256_file,
)
from backend.settings import load

REAL = WeightCache(load())  # filled by `make test` (isnet weights fetch) before the tests run


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("ISNET_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ISNET_WEIGHTS", raising=False)
    monkeypatch.delenv("ISNET_NPM_TARBALL", raising=False)
    return tmp_path / "home"


@pytest.fixture
def no_npm(monkeypatch):
    """Any attempt to download fails loudly."""
    monkeypatch.setenv("PATH", "/nonexistent")


def _real_tarball() -> Path:
    tarballs = sorted((REAL.settings.home / "downloads").glob("*.tgz"))
    if not tarballs:
        pytest.skip("no downloaded npm tarball in the real cache")
    return tarballs[0]


def test_the_real_cache_holds_verified_official_weights():
    assert REAL.is_valid()
    assert REAL.manifest()["onnx_sha256"] == ONNX_SHA256
    assert sha256_file(REAL.reference_onnx) == ONNX_SHA256


def test_fetch_is_instant_and_offline_when_the_cache_is_valid(no_npm):
    assert WeightCache(load()).fetch() == REAL.checkpoint


def test_a_corrupted_checkpoint_is_detected_and_rebuilt(home, no_npm):
    weights = home / "weights"
    weights.mkdir(parents=True)
    for name in ("isnet.pth", "manifest.json", "isnet-fp16-reference.onnx"):
        shutil.copy(REAL.dir / name, weights / name)
    with open(weights / "isnet.pth", "r+b") as fh:
        fh.seek(4096)
        fh.write(b"\x00" * 64)
    cache = WeightCache(load())
    assert not cache.is_valid()
    with pytest.raises(WeightsError, match="no verified weights"):
        cache.path()
    cache.fetch()
    assert cache.is_valid()
    assert sha256_file(cache.checkpoint) == REAL.manifest()["checkpoint_sha256"]


def test_a_truncated_tarball_given_explicitly_is_refused_and_nothing_is_cached(home, tmp_path):
    partial = tmp_path / "partial.tgz"
    partial.write_bytes(_real_tarball().read_bytes()[: 1 << 20])
    cache = WeightCache(load())
    with pytest.raises(WeightsError, match="sha256"):
        cache.fetch(tarball=partial)
    assert not cache.is_valid()
    assert not cache.checkpoint.exists()


def test_a_partial_download_is_fetched_again(home):
    downloads = home / "downloads"
    downloads.mkdir(parents=True)
    (downloads / "imgly-background-removal-data-1.4.5.tgz").write_bytes(b"\x1f\x8b partial")
    cache = WeightCache(load())
    cache.fetch()
    assert cache.is_valid()
    assert sha256_file(cache.checkpoint) == REAL.manifest()["checkpoint_sha256"]


def test_an_official_checkpoint_can_be_registered(home, tmp_path, no_npm, capsys):
    official = tmp_path / "isnet.pth"
    torch.save(ISNetDIS().state_dict(), official)
    assert main(["weights", "fetch", "--from", str(official)]) == 0
    cache = WeightCache(load())
    assert cache.is_valid()
    assert cache.manifest()["source"] == f"file:{official}"
    assert "weights ready" in capsys.readouterr().out


def test_registering_a_checkpoint_with_a_missing_key_fails_naming_it(home, tmp_path, capsys):
    state = ISNetDIS().state_dict()
    del state["side6.bias"]
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    assert main(["weights", "fetch", "--from", str(bad)]) == 1
    assert "missing keys (1): side6.bias" in capsys.readouterr().err
    assert not WeightCache(load()).is_valid()


def test_isnet_weights_overrides_the_cache(home, tmp_path, monkeypatch):
    explicit = tmp_path / "mine.pth"
    torch.save(ISNetDIS().state_dict(), explicit)
    monkeypatch.setenv("ISNET_WEIGHTS", str(explicit))
    assert WeightCache(load()).path() == explicit


def test_a_file_that_is_not_a_checkpoint_is_a_clear_error(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read checkpoint"):
        load_model(junk)
