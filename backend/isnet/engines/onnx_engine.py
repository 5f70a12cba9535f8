"""An ONNX Runtime session behind the :class:`~backend.isnet.engines.base.Engine` interface.

One class for fp32, fp16 and int8: the precision lives in the file, not in the code that runs
it (as in rembg's sessions). Building and verifying the files is
:mod:`backend.isnet.engines.store`'s job; this only runs one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from backend.isnet.engines.base import EngineError
from backend.isnet.engines.export import INPUT, OUTPUT


def providers_for(device: str) -> list[str]:
    """CUDA first when the device is a GPU and this onnxruntime build has it; CPU always."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    wanted = ["CUDAExecutionProvider"] if device.startswith("cuda") else []
    return [p for p in wanted if p in available] + ["CPUExecutionProvider"]


class OnnxEngine:
    """Runs one built engine file (dynamic batch, height and width)."""

    def __init__(
        self,
        path: Path,
        name: str,
        precision: str,
        device: str = "cpu",
        threads: int = 0,
    ) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads > 0:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3  # fp16 on CPU logs one warning per inserted Cast
        # The pool stops spinning when a run ends. A spinning pool keeps every core busy for a
        # while after each run, just when the next image is decoded and this one's mask is
        # resized and encoded on the same cores (measured on 2 cores: 15 to 25 ms more per
        # 3000x2000 image). Spinning inside a run stays on: switched off there, fp32 was 4 %
        # slower.
        options.add_session_config_entry("session.force_spinning_stop", "1")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers_for(device))
        except Exception as exc:  # onnxruntime raises its own exception types for a bad file
            raise EngineError(f"cannot load engine {path.name}: {exc}") from exc
        if [i.name for i in self.session.get_inputs()] != [INPUT] or OUTPUT not in {
            o.name for o in self.session.get_outputs()
        }:
            raise EngineError(f"engine {path.name} is not an ISNet engine ({INPUT!r} -> {OUTPUT!r})")
        self.path = path
        self.name = name
        self.precision = precision

    def predict(self, batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(batch, dtype=np.float32)
        return self.session.run([OUTPUT], {INPUT: x})[0]

    def describe(self) -> dict[str, Any]:
        return {
            "engine": self.name,
            "precision": self.precision,
            "providers": self.session.get_providers(),
            "file": self.path.name,
        }
