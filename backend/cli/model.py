"""``isnet model``: list the model versions, pin one as current, or roll back.

Why a command and not a restart: the served version is whatever ``MODEL_DIR/CURRENT`` names,
and every running server re-reads it on its next request (``VersionWatcher``). Switching is one
atomic rename, so ``/setup`` and every new prediction follow at once, with no retraining.
"""

from __future__ import annotations

import argparse
import json
import sys

from backend.isnet.registry import ModelRegistry, NoPreviousVersion, VersionInfo
from backend.isnet.weights import WeightsError
from backend.settings import load

SHOWN_METRICS = ("mae", "avgfmeasure", "sm")
EXIT_UNKNOWN_VERSION = 2
EXIT_NO_PREVIOUS = 1

EPILOG = """\
examples:
  isnet model list
  isnet model use isnet-ft-20250101-120000-a1b2c3
  isnet model use pretrained
  isnet model rollback

"Previous" for rollback: every switch of the current version (a retraining cycle's promotion, or
`isnet model use`) remembers the version it replaced, and `rollback` goes back to the most recent
one, so repeated rollbacks walk back through the versions served before. Without that record,
rollback goes to the version the current one was trained from. Running servers follow within
their next request; nothing is retrained or restarted.
"""


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "model", help="list model versions, pin one as current, or roll back",
        description="The model versions in MODEL_DIR and which one is served.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="model_action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="every version: name, created, held-out metrics, which is current")
    listing.add_argument("--json", action="store_true", help="print the list as JSON")
    listing.set_defaults(func=_list)
    use = actions.add_parser("use", help="serve VERSION from now on ('pretrained' names the pretrained weights)")
    use.add_argument("version", metavar="VERSION", help="a name from `isnet model list`, or 'pretrained'")
    use.set_defaults(func=_use)
    rollback = actions.add_parser("rollback", help="serve the previously current version again")
    rollback.set_defaults(func=_rollback)


def _list(args: argparse.Namespace) -> int:
    infos = ModelRegistry(load()).catalogue()
    if args.json:
        print(json.dumps([i.to_dict() for i in infos], indent=2))
        return 0
    if not infos:
        print("no model versions: run `isnet weights fetch`", file=sys.stderr)
        return 1
    rows = [_row(i) for i in infos]
    header = ["", "VERSION", "CREATED (UTC)", *(m.upper() for m in SHOWN_METRICS), "FROM"]
    widths = [max(len(str(r[c])) for r in [header, *rows]) for c in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _row(info: VersionInfo) -> list[str]:
    """One table row: ``*`` marks the current version; metrics are held-out, at the cycle's size."""
    metrics = info.metrics or {}
    cells = [_number(metrics.get(m)) for m in SHOWN_METRICS]
    origin = "pretrained" if info.pretrained else (info.parent or "-")
    return ["*" if info.current else "", info.name, (info.created or "-")[:19].replace("T", " "), *cells, origin]


def _number(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "-"


def _use(args: argparse.Namespace) -> int:
    registry = ModelRegistry(load())
    try:
        name = registry.pretrained().name if args.version == "pretrained" else args.version
        before = registry.current_or_pretrained_name()
        registry.promote(name, how="use")
    except (KeyError, WeightsError) as exc:
        return _unknown(args.version, exc)
    if before == name:
        print(f"{name} is already the current version")
    else:
        print(f"now serving {name} (was {before}); running servers switch on their next request")
    return 0


def _unknown(version: str, exc: Exception) -> int:
    message = exc.args[0] if exc.args else str(exc)
    print(f"error: cannot use {version!r}: {message}; `isnet model list` shows the versions", file=sys.stderr)
    return EXIT_UNKNOWN_VERSION


def _rollback(args: argparse.Namespace) -> int:
    try:
        version, before = ModelRegistry(load()).rollback()
    except NoPreviousVersion as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_NO_PREVIOUS
    print(f"rolled back to {version.name} (was {before}); running servers switch on their next request")
    return 0
