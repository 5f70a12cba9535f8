"""Inference engines behind one interface (see :mod:`backend.isnet.engines.base`).

``torch`` runs the model eagerly (fp32; fp16 autocast on CUDA). ``onnx-fp32``, ``onnx-fp16``
and ``onnx-int8`` run files built from the model version's weights with ONNX Runtime (any CPU
or GPU); :mod:`backend.isnet.engines.store` builds, caches and verifies them. ``auto`` picks
one by measured accuracy and speed (:mod:`backend.isnet.engines.selection`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from backend.isnet.engines.base import Engine, EngineError
from backend.isnet.versions import ModelVersion, VersionStore
from backend.settings import Settings, check_input_size

log = logging.getLogger(__name__)

ENGINE_NAMES = ("torch", "onnx-fp32", "onnx-fp16", "onnx-int8")
AUTO = "auto"


def check_engine_name(name: str) -> str:
    """``name`` if it is an engine (or ``auto``); else an error that lists the valid ones."""
    if name not in (*ENGINE_NAMES, AUTO):
        raise EngineError(f"unknown engine {name!r}; valid engines: {', '.join(ENGINE_NAMES)} (or {AUTO})")
    return name


def choose_engine(name: str, version: ModelVersion, size: int) -> tuple[str, str]:
    """The concrete engine ``name`` stands for, and why (``auto`` is decided by measurements)."""
    if check_engine_name(name) != AUTO:
        return name, f"ISNET_ENGINE={name}"
    from backend.isnet.engines.selection import Measurements

    return Measurements(version).choose(size)


def resolve_engine_name(name: str, version: ModelVersion, size: int) -> str:
    """The concrete engine ``name`` stands for (``auto`` is decided by measurements)."""
    chosen, why = choose_engine(name, version, size)
    if name == AUTO:
        log.info("engine auto -> %s: %s", chosen, why)
    return chosen


def _version_of(checkpoint: Path, settings: Settings) -> ModelVersion:
    """The registry version whose checkpoint this is (for callers that pass a bare path)."""
    store = VersionStore(settings)
    candidates = [store.pretrained(), *store.list_versions()]
    for version in candidates:
        if version.checkpoint.resolve() == Path(checkpoint).resolve():
            return version
    raise EngineError(f"{checkpoint} is not a registered model version; ONNX engines are cached per version")


def create_engine(name: str, version: ModelVersion | Path, settings: Settings, size: int | None = None) -> Engine:
    """The engine called ``name`` (or ``auto``) for ``version``, serving ``size`` inputs.

    ONNX engines come from the version's engine cache, verified, and are built first when
    missing or broken; every file serves every input size. ``size`` (default
    ``ISNET_INPUT_SIZE``) is what ``auto`` decides for: measurements are per size. A bare
    checkpoint path is still accepted for ``torch``, and for the others when it belongs to a
    registered version.
    """
    check_engine_name(name)
    size = check_input_size(size or settings.input_size)
    if name == "torch" and isinstance(version, Path):
        checkpoint = version
    else:
        version = version if isinstance(version, ModelVersion) else _version_of(version, settings)
        name = resolve_engine_name(name, version, size)
        checkpoint = version.checkpoint
    if name == "torch":
        from backend.isnet.engines.torch_engine import TorchEngine
        from backend.isnet.weights import load_model

        return TorchEngine(load_model(checkpoint), device=settings.device, threads=settings.threads)
    return _onnx_engine(name, version, settings)


def _onnx_engine(name: str, version: ModelVersion, settings: Settings) -> Engine:
    from backend.isnet.engines.onnx_engine import OnnxEngine
    from backend.isnet.engines.store import EngineStore

    dtype = name.removeprefix("onnx-")
    store = EngineStore(version, settings)
    path = store.engine_file(dtype)
    try:
        return OnnxEngine(path, name, dtype, settings.device, settings.threads)
    except EngineError as exc:
        # Verified bytes that onnxruntime still refuses (say, built by an incompatible
        # onnxruntime): never served; rebuilt once with the same recipe.
        config = store.discard(path, str(exc))
    path = store.build(config) if config else store.engine_file(dtype)
    return OnnxEngine(path, name, dtype, settings.device, settings.threads)


__all__ = [
    "AUTO",
    "ENGINE_NAMES",
    "Engine",
    "EngineError",
    "check_engine_name",
    "choose_engine",
    "create_engine",
    "resolve_engine_name",
]
