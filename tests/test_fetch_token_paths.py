"""The backend's Label Studio token goes only to Label Studio's data routes, judged as the path really reads.

A real HTTP server on 127.0.0.1 plays Label Studio: it answers every path with a PNG (so a fetch that
was made would succeed) and records each request's path and ``Authorization`` header. A task image that
names Label Studio's API, relative or absolute, however it is spelled, is refused before any request;
uploads, local files and the presign/resolve routes still get the token; other paths on Label Studio's
host are fetched without it.
"""

from __future__ import annotations

import dataclasses
import io
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from PIL import Image

from backend.labelstudio.datapaths import judge
from backend.labelstudio.fetch import FetchError, ImageFetcher
from backend.settings import Settings, load

TOKEN = "0123456789abcdef0123456789abcdef01234567"
EXPORT = "/api/projects/1/export?exportType=JSON&download_all_tasks=true"


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), (200, 10, 30)).save(buf, "PNG")
    return buf.getvalue()


PNG = _png()


class _Recorder(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.server.seen.append((self.path, self.headers.get("Authorization")))
        if self.path.startswith("/tasks/9/presign/"):  # a presign answer that sends the client to the API
            self.send_response(302)
            self.send_header("Location", EXPORT)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(PNG)))
        self.end_headers()
        self.wfile.write(PNG)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    seen: list[tuple[str, str | None]]


@dataclasses.dataclass
class RecordingLabelStudio:
    url: str
    seen: list[tuple[str, str | None]]


@pytest.fixture
def ls() -> Iterator[RecordingLabelStudio]:
    server = _Server(("127.0.0.1", 0), _Recorder)
    server.seen = []
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield RecordingLabelStudio(f"http://127.0.0.1:{server.server_address[1]}", server.seen)
    server.shutdown()
    server.server_close()


@pytest.fixture
def fetcher(ls) -> ImageFetcher:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("ISNET_DEVICE", "cpu")
        base: Settings = load()
    return ImageFetcher(base.replace(label_studio_url=ls.url, label_studio_api_key=TOKEN,
                                            allowed_hosts=(), fetch_timeout=5.0))


@pytest.mark.parametrize("path", [
    EXPORT,
    "/api/projects/1/export",
    "//api/projects/1/export",
    "/./api/projects/1/export",
    "/data/upload/../../api/projects/1/export?exportType=JSON",
    "/data/upload/%2e%2e/%2e%2e/api/projects/1/export",
    "/data/upload/..%2f..%2fapi/projects/1/export",
    "/data/upload/%252e%252e/%252e%252e/api/projects/1/export",
    "/data/upload/..\\..\\api/projects/1/export",
    "/%61pi/projects/1/export",
    "/api",
])
@pytest.mark.parametrize("absolute", [False, True], ids=["relative", "absolute"])
def test_an_image_naming_label_studios_api_is_refused_before_any_request(ls, fetcher, path, absolute):
    with pytest.raises(FetchError, match="is Label Studio's API, not an image: never fetched"):
        fetcher.fetch(ls.url + path if absolute else path, task_id=1)
    assert ls.seen == []


@pytest.mark.parametrize("path", [
    "/data/upload/1/abc123-img.png",
    "/data/local-files/?d=images/cat%201.png",
    "/tasks/7/presign/?fileuri=czM6Ly9iL2EucG5n",
    "/tasks/7/resolve/?fileuri=czM6Ly9iL2EucG5n",
    "/projects/3/presign/?fileuri=czM6Ly9iL2EucG5n",
    "/projects/3/resolve/?fileuri=czM6Ly9iL2EucG5n",
])
def test_label_studios_data_routes_still_get_the_token(ls, fetcher, path):
    assert fetcher.fetch(path, task_id=7) == PNG
    assert ls.seen == [(path, f"Token {TOKEN}")]


def test_an_absolute_upload_url_on_label_studios_host_gets_the_token(ls, fetcher):
    assert fetcher.fetch(ls.url + "/data/upload/1/abc123-img.png") == PNG
    assert ls.seen == [("/data/upload/1/abc123-img.png", f"Token {TOKEN}")]


def test_an_upload_path_with_dot_segments_is_sent_as_the_path_that_was_judged(ls, fetcher):
    assert fetcher.fetch("/data/upload/2/..//1/./abc123-img.png") == PNG
    assert ls.seen == [("/data/upload/1/abc123-img.png", f"Token {TOKEN}")]


def test_a_path_still_encoded_after_one_decoding_is_not_a_data_route(ls, fetcher):
    fetcher.fetch("/data/upload/1/%2561bc.png")  # a server that decodes twice would read another file
    assert ls.seen == [("/data/upload/1/%2561bc.png", None)]


def test_another_path_on_label_studios_host_is_fetched_without_the_token(ls, fetcher):
    assert fetcher.fetch("/static/images/logo.png") == PNG
    assert ls.seen == [("/static/images/logo.png", None)]


def test_a_redirect_from_a_data_route_to_the_api_is_refused(ls, fetcher):
    with pytest.raises(FetchError, match=r"redirected to .*is Label Studio's API"):
        fetcher.fetch("s3://bucket/a.png", task_id=9)  # presigned at /tasks/9/presign/, which sends us to the API
    ((path, _),) = ls.seen  # the presign request alone: the API was never asked
    assert path.startswith("/tasks/9/presign/")


# --- the judgement itself -------------------------------------------------------------------------------


def test_label_studio_behind_a_path_prefix_has_its_routes_under_it():
    assert judge("/ls/data/upload/1/a.png", "/ls").data_route
    assert not judge("/data/upload/1/a.png", "/ls").data_route  # outside Label Studio
    assert judge("/ls/api/projects/1/export", "/ls/").api
    assert judge("/ls/data/upload/../../api/projects", "/ls").api


def test_the_query_is_sent_as_given_and_the_path_quoted_again():
    route = judge("/data/local-files/?d=images/cat%201.png")
    assert route.data_route and route.target == "/data/local-files/?d=images/cat%201.png"
    assert judge("/data/upload/1/a%20b.png").target == "/data/upload/1/a%20b.png"
