"""Which lineage a Label Studio project's requests, events and cycles belong to.

Why a lineage per project: Label Studio keeps a ``model_version`` per project and names the
project in every call (``"<id>.<created-at>"`` with ``/setup`` and ``/predict``, a project object
or id with webhooks), so a version promoted from one project's corrections must reach that
project only. By default project 7 is lineage ``p7``. ``ISNET_PROJECT_LINEAGES`` lets teams that
split one domain over several projects share one lineage (``12=shop,13=shop``), and ``*=base``
gives every project the base lineage (one model for all, as before lineages). A request without a
project (an old client, the CLI without ``--project``) uses the base.
"""

from __future__ import annotations

import functools
from typing import Any

from backend.isnet.versions import BASE, check_lineage
from backend.settings import Settings


def project_id(project: Any) -> int | None:
    """The project id in what Label Studio sends: ``7``, ``"7"``, ``"7.1700000000"`` or ``{"id": 7}``."""
    if isinstance(project, dict):
        project = project.get("id")
    if isinstance(project, bool):
        return None
    if isinstance(project, int):
        return project if project >= 0 else None
    if isinstance(project, str):
        head = project.strip().split(".", 1)[0]
        return int(head) if head.isdigit() else None
    return None


@functools.lru_cache(maxsize=8)
def _parse(entries: tuple[str, ...]) -> dict[str, str]:
    """``ISNET_PROJECT_LINEAGES`` as ``{project id or "*": lineage}``; a bad entry is a clear error.
    Parsed once per value: every request asks."""
    out: dict[str, str] = {}
    for entry in entries:
        key, sep, lineage = entry.partition("=")
        key, lineage = key.strip(), lineage.strip()
        if not sep or not (key == "*" or key.isdigit()):
            raise ValueError(f"ISNET_PROJECT_LINEAGES: {entry!r} is not PROJECT=LINEAGE (or *=LINEAGE)")
        out[key] = lineage if lineage == BASE else check_lineage(lineage)
    return out


def lineage_for(project: Any, settings: Settings) -> str:
    """The lineage of ``project`` (anything :func:`project_id` reads; None is the base)."""
    pid = project_id(project)
    if pid is None:
        return BASE
    mapping = _parse(settings.project_lineages)
    return mapping.get(str(pid)) or mapping.get("*") or f"p{pid}"


def shared_with(lineage: str, settings: Settings) -> list[int]:
    """The projects ``ISNET_PROJECT_LINEAGES`` names for ``lineage`` (for the CLI to say so)."""
    return sorted(int(k) for k, v in _parse(settings.project_lineages).items() if k != "*" and v == lineage)
