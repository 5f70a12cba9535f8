"""ONNX export of the served output, and its fp16 twin.

Why export ``ISNetDIS.predict`` and not ``forward``: serving only needs the fused first side
output after sigmoid; ``forward`` also computes five more side outputs and returns the decoder
features, which would make the engine slower and its outputs ambiguous. The graph has one
input (``input``, float32 ``[N, 3, H, W]``) and one output (``prob``, float32 ``[N, 1, H, W]``)
with batch, height and width all dynamic, so one fp32 (or fp16) file serves every input size.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from backend.isnet.engines.config import OPSET
from backend.isnet.network import ISNetDIS

INPUT = "input"
OUTPUT = "prob"
_TRACE_SIZE = 64
"""Traced at a small size (fast); every spatial size is computed from the input's shape."""


class _Served(torch.nn.Module):
    def __init__(self, model: ISNetDIS) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.predict(x)


def export_fp32(model: ISNetDIS, path: Path) -> None:
    """Write the fp32 ONNX graph of ``model.predict`` (BatchNorm folded into the convs)."""
    dynamic = {0: "batch", 2: "height", 3: "width"}
    dummy = torch.zeros(1, 3, _TRACE_SIZE, _TRACE_SIZE)
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        # The TorchScript exporter is deprecated in favour of the dynamo one, which needs
        # onnxscript and does not fold BatchNorm; this one does both things we need.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Served(model.eval().cpu()),
            (dummy,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_axes={INPUT: dynamic, OUTPUT: dynamic},
            do_constant_folding=True,
        )


def convert_fp16(src: Path, dst: Path) -> None:
    """fp16 weights and activations, float32 input and output (callers never see fp16).

    Uses onnxruntime's bundled copy of onnxconverter-common's converter, so no extra
    dependency. Note for CPU: onnxruntime has few fp16 kernels there and wraps the others in
    Casts, so this engine is about accuracy parity on CPU and speed only on a GPU.
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))
