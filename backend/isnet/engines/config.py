"""Engine build recipes: the vendor's build file, read into one small value.

Why mirror the vendor's YAML (``deploy/engines/*.yaml``): the seed deployed ISNet with a
compiler driven by such files (``frontend.shape``, ``backend.dtype``,
``backend.quantize.calibrate_mode``, ``dataset.path``, ``dataset.sampler.get_data_num``,
``dataset.process_ops``). Keeping that recipe means the ONNX Runtime engines built here and a
hardware engine added later are described by the same file. Sections only a hardware
compiler uses (``backend.compile``, ``workspace``) are accepted and ignored.

What is checked rather than configured: the preprocessing. An engine only ever sees tensors
made by :func:`backend.isnet.processing.preprocess`, so calibrating it on anything else would
build an engine for inputs it never gets; ``process_ops`` must describe exactly that
preprocessing (resize to the input size, mean 0.5, std 1.0) or the file is refused.

``dataset.path`` empty or absent means the default calibration images (``ISNET_CALIB_DIR``, else
the images the backend served: :func:`backend.isnet.engines.calibration.calibration_folder`), so
the files in ``deploy/engines`` name no data a user would not have.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from backend.isnet.engines.base import EngineError
from backend.isnet.processing import MEAN, STD
from backend.settings import check_input_size

DTYPES = ("fp32", "fp16", "int8")
CALIBRATE_MODES = ("kl_divergence", "minmax", "percentile")
DEFAULT_CALIB_NUM = 50
"""Calibration images the vendor uses (``get_data_num: 50``)."""
OPSET = 17
CALIBRATION_SIZE = 320
"""The vendor's input size, and the one int8 is calibrated at by default, for every serving size.

Measured on the DIS demo images (every op quantised, mean difference of the probabilities from
fp32 at 1024): calibrated at 320, 0.003; calibrated at 1024, 0.004 to 0.017 depending on the
calibration mode. At 1024 a few decoder tensors have rare outliers a hundred times their usual
values; the ranges stretch to cover them and the usual values lose resolution. Calibrating at
1024 also takes ten times longer (50 images: 30 minutes on 2 cores) and 4.5 GB instead of
1.3 GB. ``isnet engine build ... --size 1024`` still does it.
"""
INT8_OP_TYPES = ("Conv", "Relu", "MaxPool", "Concat", "Add", "Resize")
"""The ops int8 quantises (and calibrates): convolutions and the ops between them, so
activations stay uint8 from one convolution to the next. Why, and what it was measured to
cost and gain: :mod:`backend.isnet.engines.quantize`. Part of the recipe hash."""
FORMAT = 2
"""Bumped whenever export or quantisation changes what a config builds: old files stop matching."""

_PROCESS_OPS = ("DecodeImage", "Resize", "Normalize", "ToTensor")


class ConfigError(EngineError):
    """A build file that cannot be used; the message names the key and the accepted values."""


@dataclass(frozen=True)
class EngineConfig:
    """What to build. ``batch`` is only the calibration batch: every engine has a dynamic batch."""

    name: str
    dtype: str
    size: int = 320
    batch: int = 1
    calibrate_mode: str = "kl_divergence"
    per_channel: bool = True
    calib_dir: Path | None = None
    calib_num: int = DEFAULT_CALIB_NUM
    calib_suffix: str | None = None
    skip_conv_layers: tuple[str, ...] = ("conv_in", "side1")
    """Convolutions (by module name) kept in float in int8: the vendor's ``skip_conv_layers``."""

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ConfigError(f"backend.dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")
        if self.calibrate_mode not in CALIBRATE_MODES:
            raise ConfigError(
                f"backend.quantize.calibrate_mode {self.calibrate_mode!r} is not one of {', '.join(CALIBRATE_MODES)}"
            )
        try:
            check_input_size(self.size)
        except ValueError as exc:
            raise ConfigError(f"frontend.shape: {exc}") from exc
        if self.batch < 1 or self.calib_num < 1:
            raise ConfigError("frontend.shape batch and dataset.sampler.get_data_num must be at least 1")

    @property
    def engine_name(self) -> str:
        return f"onnx-{self.dtype}"

    def identity(self, calibration: str = "") -> dict[str, Any]:
        """Everything that changes the built bytes; ``calibration`` fingerprints the images.

        Every engine has dynamic batch, height and width, so the input size only matters where
        it changes the bytes: the size int8 is calibrated at.
        """
        ident: dict[str, Any] = {"format": FORMAT, "opset": OPSET, "dtype": self.dtype}
        if self.dtype == "int8":
            ident |= {
                "size": self.size,
                "calibrate_mode": self.calibrate_mode,
                "per_channel": self.per_channel,
                "skip_conv_layers": sorted(self.skip_conv_layers),
                "op_types": list(INT8_OP_TYPES),
                "calibration": calibration,
            }
        return ident

    def digest(self, calibration: str = "") -> str:
        blob = json.dumps(self.identity(calibration), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["calib_dir"] = str(self.calib_dir) if self.calib_dir else None
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EngineConfig:
        data = dict(data)
        data["calib_dir"] = Path(data["calib_dir"]) if data.get("calib_dir") else None
        if "skip_conv_layers" in data:
            data["skip_conv_layers"] = tuple(data["skip_conv_layers"])
        return cls(**data)

    def override(self, size: int | None = None, calib_dir: Path | None = None, num: int | None = None) -> EngineConfig:
        """Command-line values win over the file's."""
        return replace(
            self,
            size=size or self.size,
            calib_dir=calib_dir or self.calib_dir,
            calib_num=num or self.calib_num,
        )


def default_config(dtype: str, calib_dir: Path | None = None) -> EngineConfig:
    """The recipe serving builds when no engine was built explicitly (same as ``deploy/engines``).

    int8 is calibrated at :data:`CALIBRATION_SIZE` whatever size it serves: see there.
    """
    return EngineConfig(name=f"isnet_{dtype}", dtype=dtype, size=CALIBRATION_SIZE, calib_dir=calib_dir)


def _section(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key) or {}
    if not isinstance(value, dict):
        raise ConfigError(f"{key} must be a mapping")
    return value


def _unknown(section: str, given: dict[str, Any], known: set[str]) -> None:
    extra = sorted(set(given) - known)
    if extra:
        raise ConfigError(f"unknown key(s) in {section}: {', '.join(extra)} (known: {', '.join(sorted(known))})")


def _shape(frontend: dict[str, Any]) -> tuple[int, int]:
    shape = frontend.get("shape")
    if isinstance(shape, dict) and len(shape) == 1:
        shape = next(iter(shape.values()))
    if not (isinstance(shape, list) and len(shape) == 4 and all(isinstance(v, int) for v in shape)):
        raise ConfigError(f"frontend.shape must be one input of 4 integers [N, 3, S, S], got {shape!r}")
    batch, channels, height, width = shape
    if channels != 3 or height != width:
        raise ConfigError(f"frontend.shape must be [N, 3, S, S] (RGB, square), got {shape}")
    return batch, height


def _check_process_ops(ops: list[Any], size: int) -> None:
    """Refuse a recipe whose preprocessing differs from the one every engine is served with."""
    types = [op.get("type") if isinstance(op, dict) else op for op in ops]
    if types != list(_PROCESS_OPS):
        raise ConfigError(f"dataset.process_ops must be {list(_PROCESS_OPS)} (the served preprocessing), got {types}")
    resize, normalize = ops[1], ops[2]
    if list(resize.get("size", [size, size])) != [size, size]:
        raise ConfigError(f"dataset.process_ops Resize size {resize.get('size')} != frontend.shape [{size}, {size}]")
    mean, std = normalize.get("mean", [MEAN] * 3), normalize.get("std", [STD] * 3)
    if [float(v) for v in mean] != [MEAN] * 3 or [float(v) for v in std] != [STD] * 3:
        raise ConfigError(f"dataset.process_ops Normalize must be mean {[MEAN] * 3}, std {[STD] * 3} (ISNet's)")


def parse_config(data: dict[str, Any], name: str = "engine") -> EngineConfig:
    """An :class:`EngineConfig` from a parsed build file (see ``deploy/engines/isnet_int8.yaml``)."""
    if not isinstance(data, dict):
        raise ConfigError("a build file is a YAML mapping")
    _unknown("the build file", data, {"name", "frontend", "graph", "backend", "dataset", "workspace"})
    frontend, backend, dataset = _section(data, "frontend"), _section(data, "backend"), _section(data, "dataset")
    _unknown("frontend", frontend, {"shape", "type", "checkpoint", "dtype"})
    _unknown("backend", backend, {"type", "dtype", "compile", "quantize"})
    quantize, sampler = _section(backend, "quantize"), _section(dataset, "sampler")
    _unknown("backend.quantize", quantize,
             {"calibrate_mode", "per_channel", "quantize_per_channel", "skip_conv_layers"})
    _unknown("dataset", dataset, {"type", "path", "sampler", "process_ops"})
    _unknown("dataset.sampler", sampler, {"suffix", "get_data_num"})
    batch, size = _shape(frontend)
    if frontend.get("dtype", "fp32") != "fp32":
        raise ConfigError("frontend.dtype must be fp32: engines are exported from the fp32 model")
    _check_process_ops(dataset.get("process_ops") or list(_PROCESS_OPS), size)
    per_channel = quantize.get("per_channel", quantize.get("quantize_per_channel", True))
    path = dataset.get("path")
    skip = quantize.get("skip_conv_layers", list(EngineConfig.skip_conv_layers))
    if not isinstance(skip, list) or not all(isinstance(s, str) for s in skip):
        raise ConfigError("backend.quantize.skip_conv_layers must be a list of module names, e.g. [conv_in, side1]")
    return EngineConfig(
        name=str(data.get("name") or name),
        dtype=str(backend.get("dtype", "fp32")),
        size=size,
        batch=batch,
        calibrate_mode=str(quantize.get("calibrate_mode", "kl_divergence")),
        per_channel=bool(per_channel),
        calib_dir=Path(path).expanduser() if path else None,
        calib_num=int(sampler.get("get_data_num", DEFAULT_CALIB_NUM)),
        calib_suffix=str(sampler["suffix"]).lstrip(".") if sampler.get("suffix") else None,
        skip_conv_layers=tuple(skip),
    )


def load_config(path: Path) -> EngineConfig:
    """Read a build file; a relative ``dataset.path`` is relative to the current directory, none is the default."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"no build file at {path}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    return parse_config(data, name=Path(path).stem)
