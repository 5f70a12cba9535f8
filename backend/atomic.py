"""Atomic file writes: a reader sees the previous complete file or the new one, never half of one.

Every write goes to a temporary sibling (same folder, so ``os.replace`` is one atomic rename),
is flushed to disk when ``fsync`` (the default: a crash right after must not leave an empty
file under the final name), then renamed over the target. On any error the temporary file is
removed and the target is untouched. Temporary names start with ``.<name>.`` so folder
listings that skip hidden files never see them.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["replacing", "write_bytes", "write_json", "write_text"]

MODE = 0o644


@contextlib.contextmanager
def replacing(path: str | os.PathLike[str], *, suffix: str = "", mode: int = MODE,
              fsync: bool = True) -> Iterator[Path]:
    """A temporary path beside ``path`` for a writer that wants a path (``torch.save``,
    ``onnx.save``, ``savefig``); renamed over ``path`` when the block ends without error.

    The temporary name is ``.<name>.<random><suffix>``. ``suffix``: for writers that read the
    format from the name (``savefig``); without one, ``torch.save`` names its archive after
    ``.<name>`` whatever the random part, so the same state gives the same bytes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, mode)
        if fsync:
            _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:  # the rename itself; not every filesystem can sync a folder
        with contextlib.suppress(OSError):
            _fsync(path.parent)


def write_bytes(path: str | os.PathLike[str], data: bytes, *, fsync: bool = True, suffix: str = "") -> None:
    with replacing(path, fsync=fsync, suffix=suffix) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike[str], text: str, *, fsync: bool = True) -> None:
    write_bytes(path, text.encode(), fsync=fsync)


def write_json(path: str | os.PathLike[str], value: Any, *, end: str = "", fsync: bool = True,
               **dumps: Any) -> None:
    """``value`` as JSON (``indent=2`` unless ``dumps`` says otherwise), followed by ``end``."""
    write_text(path, json.dumps(value, **{"indent": 2, **dumps}) + end, fsync=fsync)


def _finite(value: Any) -> Any:
    """JSON has no NaN: a metric that could not be computed is written as ``null``."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_strict_json(path: str | os.PathLike[str], data: Any, *, fsync: bool = True) -> None:
    """``data`` as strict JSON (NaN written as ``null``, other objects as ``str``), with a newline."""
    write_json(path, _finite(data), end="\n", default=str, allow_nan=False, fsync=fsync)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
