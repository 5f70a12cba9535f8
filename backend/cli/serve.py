"""``isnet serve``: the Label Studio ML backend on a production server."""

from __future__ import annotations

import argparse
import ipaddress
import sys

from backend.isnet.engines import EngineError, check_engine_name
from backend.isnet.weights import WeightsError
from backend.settings import check_input_size, load


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "serve",
        help="serve ISNet pre-annotations to Label Studio (ML backend protocol)",
        description="Start the Label Studio ML backend: GET /health, POST /setup, POST /predict, POST /webhook, "
        "GET /metrics (Prometheus), GET /metrics.json, on gunicorn (WORKERS processes x THREADS threads). "
        "Connect it in Label Studio under "
        "Settings > Model with this URL. Every setting is an environment variable (backend/settings.py).",
    )
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)")
    parser.add_argument("--port", type=int, default=9090, help="port to listen on (default 9090)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = load()
    try:
        # Fail here, with one clear line, rather than in every worker after the fork.
        check_input_size(settings.input_size)
        from backend.labelstudio.hosts import HostPolicy
        from backend.service.inference import VersionWatcher

        check_engine_name(settings.engine)
        HostPolicy(settings.label_studio_url, settings.allowed_hosts)  # LABEL_STUDIO_URL, ISNET_ALLOWED_HOSTS
        from backend.learning.lineages import lineage_for
        from backend.learning.share import method_for

        lineage_for(0, settings)  # ISNET_PROJECT_LINEAGES
        method_for(settings.train_share, "base")  # ISNET_TRAIN_SHARE
        version = VersionWatcher(settings).current()
    except (ValueError, KeyError, WeightsError, EngineError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if bool(settings.basic_auth_user) != bool(settings.basic_auth_pass):
        print("error: set both BASIC_AUTH_USER and BASIC_AUTH_PASS, or neither", file=sys.stderr)
        return 2
    if not settings.basic_auth_user and not is_loopback(args.host):
        print(f"warning: serving on {args.host} without BASIC_AUTH_USER / BASIC_AUTH_PASS: anyone who can reach "
              f"port {args.port} can start training and have images read with the backend's Label Studio token; "
              "set both and connect Label Studio with Authentication method Basic (README.md)", file=sys.stderr)
    print(f"serving {version.name} on http://{args.host}:{args.port} "
          f"({settings.workers} worker(s) x {settings.server_threads} threads)", file=sys.stderr)
    from backend.server.gunicorn_app import GunicornServer

    GunicornServer(settings, args.host, args.port).run()
    return 0


def is_loopback(host: str) -> bool:
    """Whether ``--host`` is reachable from this machine only (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a name other than localhost, or "" (every interface)
        return False
