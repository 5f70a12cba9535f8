"""Eager PyTorch engine: the reference every other engine is measured against."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from backend.isnet.network import ISNetDIS


class TorchEngine:
    """fp32 on CPU; fp16 autocast on CUDA (the precision a GPU user wants by default)."""

    name = "torch"

    def __init__(self, model: ISNetDIS, device: str = "cpu", threads: int = 0) -> None:
        if threads > 0:
            torch.set_num_threads(threads)
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.precision = "fp16-autocast" if self.device.type == "cuda" else "fp32"

    @torch.inference_mode()
    def predict(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.device.type == "cuda"):
            out = self.model.predict(x)
        return out.float().cpu().numpy()

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name, "precision": self.precision, "device": str(self.device)}
