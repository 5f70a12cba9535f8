"""``--project N`` for the commands that act on a model: which lineage's registry they use.

Why one helper: ``isnet train``, ``model``, ``evaluate``, ``engine`` and ``predict`` all take the
project the same way (``ISNET_PROJECT_LINEAGES`` decides its lineage), and without ``--project``
all of them act on the base lineage, which every project without a lineage of its own follows.
"""

from __future__ import annotations

import argparse
import sys

from backend.isnet.versions import BASE, ModelVersion
from backend.learning.lineages import lineage_for, shared_with
from backend.learning.registry import ModelRegistry
from backend.settings import Settings


def add_project_argument(parser: argparse.ArgumentParser, what: str = "act on") -> None:
    parser.add_argument("--project", type=int, default=None, metavar="N",
                        help=f"Label Studio project id: {what} project N's model lineage (default: the base "
                        "lineage, which every project without a lineage of its own follows)")


def registry_for(args: argparse.Namespace, settings: Settings) -> ModelRegistry:
    """The registry of ``--project``'s lineage (the base without it); says so when the lineage is shared."""
    lineage = lineage_for(getattr(args, "project", None), settings)
    if lineage != BASE:
        others = [p for p in shared_with(lineage, settings) if p != args.project]
        if others:
            print(f"project {args.project} shares lineage {lineage} with project(s) "
                  f"{', '.join(map(str, others))} (ISNET_PROJECT_LINEAGES)", file=sys.stderr)
    elif getattr(args, "project", None) is not None:
        print(f"project {args.project} is served by the base lineage (ISNET_PROJECT_LINEAGES)", file=sys.stderr)
    return ModelRegistry(settings, lineage)


def version_for(args: argparse.Namespace, settings: Settings, name: str | None = None) -> ModelVersion:
    """Version ``name``, else the current one of ``--project``'s lineage."""
    registry = registry_for(args, settings)
    return registry.get(name) if name else registry.current()
