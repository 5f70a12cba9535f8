"""The stand-in Label Studio of tests/conftest.py as a process of its own, for tests whose hosts are
network namespaces (tests/test_multihost.py): ``python -m tests.fake_label_studio_serve ADDRESS PORT
COUNT`` serves project 7 with COUNT annotated DUTS-TR tasks (its token: ``FAKE_LS_TOKEN``)."""

from __future__ import annotations

import http.server
import sys

from tests.conftest import FakeLabelStudio, _FakeLSExportHandler
from tests.retrain_helpers import add_duts_tasks


def main(address: str, port: int, count: int) -> None:
    server = http.server.ThreadingHTTPServer((address, port), _FakeLSExportHandler)
    ls = FakeLabelStudio(f"http://{address}:{port}")
    add_duts_tasks(ls, count)
    server.ls = ls  # type: ignore[attr-defined]
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
