"""Boxes and clicks in image pixels: the shapes prompts are made of, shared by every layer.

Why a bottom-level module: the Label Studio adapter turns an annotator's regions into these, and
the model package segments with them; neither should import the other.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Box:
    """A rectangle in pixels: ``x0 <= x < x1``, ``y0 <= y < y1``."""

    x0: float
    y0: float
    x1: float
    y1: float

    def clip(self, width: int, height: int) -> Box:
        return Box(max(0.0, self.x0), max(0.0, self.y0), min(float(width), self.x1), min(float(height), self.y1))

    def contains(self, x: float, y: float) -> bool:
        return self.x0 <= x < self.x1 and self.y0 <= y < self.y1

    @property
    def area(self) -> float:
        return max(0.0, self.x1 - self.x0) * max(0.0, self.y1 - self.y0)

    def pixels(self) -> tuple[int, int, int, int]:
        """Integer bounds (``x0, y0, x1, y1``) covering every pixel the box touches."""
        return int(np.floor(self.x0)), int(np.floor(self.y0)), int(np.ceil(self.x1)), int(np.ceil(self.y1))


@dataclass(frozen=True)
class Click:
    """A point in pixels; ``positive`` keeps the object under it, negative removes it."""

    x: float
    y: float
    positive: bool = True

    def pixel(self, width: int, height: int) -> tuple[int, int]:
        return min(width - 1, max(0, int(self.x))), min(height - 1, max(0, int(self.y)))
