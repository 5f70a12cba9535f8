"""The ``isnet`` command: one entry point, one module per subcommand.

Each subcommand module exposes ``register(subparsers)``, which adds its parser and sets
``func`` to a function taking the parsed arguments and returning the exit status.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from backend import __version__, redaction, store
from backend.settings import SettingsError, load

SUBCOMMANDS = ("weights", "predict", "evaluate", "serve", "train", "engine", "preannotate", "model")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="isnet",
        description="ISNet (DIS) for Label Studio: pretrained weights, predictions, evaluation and serving.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f"backend.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load()
    except SettingsError as exc:  # a bad variable: one line that names it, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    level = "DEBUG" if args.verbose else settings.log_level
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    redaction.remember(*settings.secrets)
    redaction.install()  # no log line shows a password, token or presigned query
    try:
        store.connect(settings)  # ISNET_MODEL_STORE: versions in the object store, pointers in Redis
    except store.StoreSetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
