"""Image in, mask out: an engine between the seed's pre- and post-processing.

This is the only place where serving changes sizes (:mod:`backend.isnet.processing` says how).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from backend.isnet.engines.base import Engine
from backend.isnet.processing import postprocess, preprocess
from backend.isnet.versions import ModelVersion
from backend.settings import Settings, check_input_size


class Segmenter:
    """Runs an :class:`Engine` on images of any size; several images go through as one batch."""

    def __init__(self, engine: Engine, size: int = 1024) -> None:
        self.engine = engine
        self.size = check_input_size(size)
        self.fallback: str | None = None
        """Why ``engine`` is not the engine asked for (it could not be built yet), or None."""
        self.reason: str | None = None
        """Why this engine serves (``auto``'s measured choice, or the setting), when known."""

    @classmethod
    def from_settings(cls, settings: Settings, version: ModelVersion, engine: str | None = None,
                      size: int | None = None) -> Segmenter:
        """A segmenter of ``version`` with ``ISNET_ENGINE`` and ``ISNET_INPUT_SIZE`` unless given."""
        from backend.isnet.engines import check_engine_name, create_engine

        name = check_engine_name(engine or settings.engine)  # a typo is reported before any loading
        size = check_input_size(size or settings.input_size)
        return cls(create_engine(name, version, settings, size), size)

    def predict(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """One uint8 mask per image, each at its image's own height and width."""
        if not images:
            return []
        batch = np.stack([preprocess(img, self.size) for img in images])
        probs = self.engine.predict(batch)
        return [postprocess(p[0], img.shape[0], img.shape[1]) for p, img in zip(probs, images, strict=True)]

    def predict_one(self, image: np.ndarray) -> np.ndarray:
        return self.predict([image])[0]

    def describe(self) -> dict[str, object]:
        return {**self.engine.describe(), "input_size": self.size,
                **({"engine_reason": self.reason} if self.reason else {}),
                **({"engine_fallback": self.fallback} if self.fallback else {})}
