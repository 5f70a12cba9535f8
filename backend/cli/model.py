"""``isnet model``: list a lineage's model versions, pin one as current, or roll back.

Why a command and not a restart: the served version of a lineage is whatever its ``CURRENT``
names, and every running server re-reads it on its next request (``VersionWatcher``). Switching
is one atomic rename, so ``/setup`` and every new prediction of that project follow at once,
with no retraining. ``--project N`` acts on project N's lineage; without it, on the base lineage,
which every project without a lineage of its own follows.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from backend.cli.projects import add_project_argument, registry_for
from backend.isnet.weights import WeightsError
from backend.learning.registry import ModelRegistry, NoPreviousVersion, VersionInfo
from backend.learning.retention import Plan, Policy, prune
from backend.settings import load

SHOWN_METRICS = ("mae", "avgfmeasure", "sm")
EXIT_UNKNOWN_VERSION = 2
EXIT_NO_PREVIOUS = 1

EPILOG = """\
examples:
  isnet model list --project 7
  isnet model use --project 7 isnet-p7-ft-20250101-120000-a1b2c3
  isnet model use --project 8 isnet-p7-ft-20250101-120000-a1b2c3   # project 8 starts from 7's specialist
  isnet model use --base pretrained
  isnet model rollback --project 7
  isnet model prune --project 7 --dry-run                          # what retention would remove

"Previous" for rollback: every switch of a lineage's current version (a retraining cycle's
promotion, or `isnet model use`) remembers the version it replaced, and `rollback` goes back to
the most recent one, so repeated rollbacks walk back through the versions served before; a
project's first switch is remembered as "follow the base", so rolling all the way back makes it
follow the base lineage again. Running servers follow within their next request; nothing is
retrained or restarted.

`prune` applies the retention policy (ISNET_KEEP_VERSIONS, ISNET_KEEP_ROLLBACK, ISNET_KEEP_REPORTS,
ISNET_KEEP_SNAPSHOTS) that every retraining cycle applies to its lineage when it ends: the current
version, the newest rollback entries and the newest versions keep their weights, the newest cycles
their reports; the pretrained weights are never touched.
"""


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "model", help="list model versions, pin one as current, or roll back",
        description="The model versions in MODEL_DIR and which one each project's lineage serves.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="model_action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="a lineage's versions: name, created, held-out metrics, which is current")
    listing.add_argument("--json", action="store_true",
                         help='print {"lineage", "current": NAME, "versions": [...]} as JSON')
    listing.add_argument("--all", action="store_true", help="every lineage's versions, not only this one's")
    _lineage_arguments(listing)
    listing.set_defaults(func=_list)
    use = actions.add_parser("use", help="serve VERSION from now on ('pretrained' names the pretrained weights)")
    use.add_argument("version", metavar="VERSION", help="a name from `isnet model list`, or 'pretrained'")
    _lineage_arguments(use)
    use.set_defaults(func=_use)
    rollback = actions.add_parser("rollback", help="serve the previously current version again")
    _lineage_arguments(rollback)
    rollback.set_defaults(func=_rollback)
    pruning = actions.add_parser("prune", help="remove what the retention policy does not keep (weights of old "
                                 "versions, engines, old snapshots, GT encoder caches); lists it and the bytes freed")
    pruning.add_argument("--dry-run", action="store_true", help="list what would be removed; remove nothing")
    pruning.add_argument("--json", action="store_true", help="print each lineage's plan as JSON")
    group = pruning.add_mutually_exclusive_group()
    group.add_argument("--base", action="store_true", help="the base lineage (the default)")
    add_project_argument(group)
    group.add_argument("--all", action="store_true",
                       help="every lineage, those of deleted projects included (they keep no weights)")
    pruning.set_defaults(func=_prune)


def _lineage_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--base", action="store_true",
                       help="the base lineage (the default): what every project without its own follows")
    add_project_argument(group)


def _registry(args: argparse.Namespace) -> ModelRegistry:
    return registry_for(args, load())


def _list(args: argparse.Namespace) -> int:
    registry = _registry(args)
    infos = registry.catalogue(only_lineage=not args.all)
    current = registry.current_or_pretrained_name()
    if args.json:
        print(json.dumps({"lineage": registry.lineage, "follows_base": registry.follows_base, "current": current,
                          "versions": [i.to_dict() for i in infos]}, indent=2))
        return 0
    if not infos:
        print("no model versions: run `isnet weights fetch`", file=sys.stderr)
        return 1
    follows = " (follows the base lineage)" if registry.follows_base else ""
    print(f"lineage {registry.lineage}{follows}: current {current}")
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
    registry = _registry(args)
    try:
        name = registry.pretrained().name if args.version == "pretrained" else args.version
        before = registry.current_or_pretrained_name()
        following = registry.follows_base
        registry.promote(name, how="use")
    except (KeyError, WeightsError) as exc:
        return _unknown(args.version, exc)
    if before == name and not following:
        print(f"{name} is already the current version of lineage {registry.lineage}")
    else:
        print(f"now serving {name} (was {before}) in lineage {registry.lineage}; running servers switch on "
              "their next request")
    return 0


def _unknown(version: str, exc: Exception) -> int:
    message = exc.args[0] if exc.args else str(exc)
    print(f"error: cannot use {version!r}: {message}; `isnet model list` shows the versions", file=sys.stderr)
    return EXIT_UNKNOWN_VERSION


def _rollback(args: argparse.Namespace) -> int:
    registry = _registry(args)
    try:
        version, before = registry.rollback()
    except NoPreviousVersion as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_NO_PREVIOUS
    follows = ", following the base lineage again" if registry.follows_base else ""
    print(f"lineage {registry.lineage} rolled back to {version.name}{follows} (was {before}); running servers "
          "switch on their next request")
    return 0


def _prune(args: argparse.Namespace) -> int:
    settings = load()
    try:
        policy = Policy.from_settings(settings)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNKNOWN_VERSION
    lineages = ModelRegistry(settings).lineages() if args.all else [registry_for(args, settings).lineage]
    plans = [prune(settings, lineage, dry_run=args.dry_run, policy=policy) for lineage in lineages]
    if args.json:
        print(json.dumps([p.to_dict() for p in plans], indent=2))
    else:
        for plan in plans:
            _show_plan(plan, settings.model_dir)
    for error in (e for p in plans for e in p.errors):
        print(f"error: not removed: {error}", file=sys.stderr)
    return 1 if any(p.errors for p in plans) else 0


def _show_plan(plan: Plan, root: Path) -> None:
    """What was (or, with --dry-run, would be) removed, one line each, paths under MODEL_DIR."""
    verb = "would remove" if plan.dry_run else "removed"
    print(f"lineage {plan.lineage}: {verb} {len(plan.removals)} item(s), {_bytes(plan.freed)}")
    for removal in plan.removals:
        shown = removal.shown.relative_to(root) if removal.shown.is_relative_to(root) else removal.shown
        print(f"  {removal.what:<15} {_bytes(removal.bytes):>10}  {shown}  ({removal.why})")
    for name, why in sorted(plan.kept.items()):
        print(f"  kept            {name}  ({why})")


def _bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"
