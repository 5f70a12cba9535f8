"""Several hosts, one model store: network namespaces made here stand for the hosts of a deployment.

The hub runs Redis, ``rclone serve s3`` (the object store), the stand-in Label Studio (project 7,
annotated) and serves the task images; two serving backends (``srv1``, ``srv2``) and two worker
hosts (``wrk1`` with an RQ worker on the retraining queue, ``wrk2``) each have an empty
``MODEL_DIR`` of their own and reach the hub only over the namespaces' network. A Label Studio
``START_TRAINING`` webhook to ``srv1`` has the worker on ``wrk1`` run the cycle; ``isnet train
--project 7`` on the worker hosts stands for further cycles (killed, racing). The real ISNet
weights, one training step at 64 px, the anchor step and the feature loss off, the torch engine:
enough to show the plumbing, in about a minute or two of CPU.

The tests run in order on one deployment, each from where the previous left project 7.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from backend.isnet.weights import WeightCache
from backend.settings import load
from tests import netns, s3_server
from tests.conftest import FAKE_LS_TOKEN
from tests.paths import REPO, SHARED

pytestmark = pytest.mark.slow

CONFIG = ('<View><Image name="image" value="$image"/>'
          '<BrushLabels name="tag" toName="image"><Label value="Foreground"/></BrushLabels></View>')
BUTTERFLIES = SHARED / "data" / "butterflies" / "train"
STORE = "s3://models/deployment"
FOLLOW_S = 10.0
"""How soon every server must serve a switch made on another host ("a few seconds")."""
START_S = 120.0
LABELLED = 10
"""Annotated tasks of project 7 in the stand-in Label Studio (2 held out)."""
CYCLE_S = 300.0


def _why_not() -> str | None:
    reason = netns.available()
    if reason:
        return reason
    if shutil.which("redis-server") is None:
        return "redis-server is not installed"
    try:
        s3_server.rclone()
    except RuntimeError as exc:
        return str(exc)
    if not WeightCache(load()).path().is_file():
        return "the real ISNet weights are not fetched (isnet weights fetch)"
    return None


@dataclass
class Deployment:
    net: netns.Network
    hub: str
    env: dict[str, dict[str, str]]
    logs: Path
    data: Path

    def server_url(self, host: str) -> str:
        return f"http://{self.net.hosts[host].address}:9090"

    def isnet(self, host: str, *args: str, timeout: float = CYCLE_S) -> subprocess.CompletedProcess:
        return self.net.run(host, [sys.executable, "-m", "backend.cli", *args], self.env[host], timeout)

    def train(self, host: str, *extra: str) -> subprocess.Popen:
        """``isnet train --project 7`` on ``host`` in the background; its output in ``logs/<host>-train.log``."""
        cmd = [sys.executable, "-m", "backend.cli", "train", "--project", "7", "--size", "64",
               "--images", str(self.data / "train" / "images"), "--masks", str(self.data / "train" / "masks"),
               "--val-images", str(self.data / "val" / "images"), "--val-masks", str(self.data / "val" / "masks"),
               *extra]
        return self.net.start(host, cmd, self.env[host], self.logs / f"{host}-train.log")

    def redis(self, *args: str) -> str:
        done = self.net.run(self.hub, ["redis-cli", "-h", self.net.hosts[self.hub].address, *args],
                            {"PATH": "/usr/bin:/bin"}, 30)
        return done.stdout.strip()

    def current(self) -> str:
        """Project 7's current version as Redis holds it (empty: follows the base)."""
        return self.redis("GET", f"isnet:store:{STORE}:lineage:p7:current")

    def setup_version(self, server: str) -> str:
        code, body = self.net.http(self.hub, "POST", self.server_url(server) + "/setup",
                                   {"project": "7.1700000000", "schema": CONFIG})
        assert code == 200, body
        return body["model_version"]

    def predict_version(self, server: str) -> str:
        image = f"http://{self.net.hosts[self.hub].address}:8000/image.jpg"
        code, body = self.net.http(self.hub, "POST", self.server_url(server) + "/predict",
                                   {"tasks": [{"id": 1, "data": {"image": image}, "project": 7}],
                                    "project": "7.1700000000", "label_config": CONFIG}, timeout=120)
        assert code == 200, body
        (entry,) = body["results"]
        assert entry["result"], entry
        return entry["model_version"]

    def wait_served(self, name: str, servers: tuple[str, ...] = ("srv1", "srv2")) -> None:
        deadline = time.monotonic() + FOLLOW_S
        seen: dict[str, str] = {}
        while time.monotonic() < deadline:
            seen = {s: self.setup_version(s) for s in servers}
            if set(seen.values()) == {name}:
                return
            time.sleep(0.5)
        raise AssertionError(f"after {FOLLOW_S:.0f} s the servers report {seen}, not {name}")

    def switches(self) -> list[dict]:
        record = self.redis("GET", f"isnet:store:{STORE}:lineage:p7:switches")
        return json.loads(record or "{}").get("switches", [])


def _dataset(root: Path) -> Path:
    """Three training pairs and two held-out pairs of the butterflies, linked."""
    images = sorted((BUTTERFLIES / "images").iterdir())[:5]
    for index, image in enumerate(images):
        part = "train" if index < 3 else "val"
        mask = next((BUTTERFLIES / "masks").glob(image.stem + ".*"))
        for kind, source in (("images", image), ("masks", mask)):
            (root / part / kind).mkdir(parents=True, exist_ok=True)
            (root / part / kind / source.name).symlink_to(source)
    return root


@pytest.fixture(scope="module")
def deployment(tmp_path_factory) -> Iterator[Deployment]:
    reason = _why_not()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("multihost")
    logs = root / "logs"
    logs.mkdir()
    data = _dataset(root / "data")
    pictures = root / "pictures"
    pictures.mkdir()
    shutil.copyfile(sorted((BUTTERFLIES / "images").iterdir())[-1], pictures / "image.jpg")
    with netns.network("hub", "srv1", "srv2", "wrk1", "wrk2") as net:
        hub = net.hosts["hub"].address
        net.start("hub", ["redis-server", "--bind", hub, "--port", "6379", "--save", "", "--appendonly", "no",
                          "--protected-mode", "no"], {"PATH": "/usr/bin:/bin"}, logs / "redis.log")
        (root / "s3" / "models").mkdir(parents=True)
        net.start("hub", s3_server.command(root / "s3", f"{hub}:9000"), {"PATH": "/usr/bin:/bin"},
                  logs / "rclone.log")
        net.start("hub", [sys.executable, "-m", "http.server", "8000", "--bind", hub, "--directory", str(pictures)],
                  {"PATH": "/usr/bin:/bin"}, logs / "images.log")
        net.start("hub", [sys.executable, "-m", "tests.fake_label_studio_serve", hub, "8080", str(LABELLED)],
                  {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}, logs / "label-studio.log")
        weights = str(WeightCache(load()).path())
        env = {}
        for name in ("srv1", "srv2", "wrk1", "wrk2"):
            env[name] = {
                "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "PYTHONPATH": str(REPO),
                "HOME": str(root / name), "ISNET_HOME": str(root / name / "home"),
                "MODEL_DIR": str(root / name / "models"), "ISNET_WEIGHTS": weights,
                "ISNET_MODEL_STORE": STORE, "REDIS_URL": f"redis://{hub}:6379/0",
                "AWS_ACCESS_KEY_ID": s3_server.ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": s3_server.SECRET_KEY,
                "AWS_ENDPOINT_URL": f"http://{hub}:9000", "AWS_REGION": "us-east-1",
                "ISNET_ENGINE": "torch", "ISNET_INPUT_SIZE": "64", "ISNET_DEVICE": "cpu", "ISNET_THREADS": "1",
                "ISNET_ALLOWED_HOSTS": f"{hub}:8000", "LABEL_STUDIO_URL": f"http://{hub}:8080",
                "LABEL_STUDIO_API_KEY": FAKE_LS_TOKEN, "ISNET_RETRAIN_QUEUE": "isnet-retrain",
                "ISNET_CALIB_SAMPLE": "0", "ISNET_AUTO_INT8_AFTER": "0", "WORKERS": "1", "THREADS": "4",
                "ISNET_TRAIN_ANCHORS": "none", "ISNET_TRAIN_FEATURE_LOSS": "off", "ISNET_PROMOTE_RULE": "always",
                "ISNET_TRAIN_ITERS": "1", "ISNET_STORE_LOCK_TTL": "4", "LOG_LEVEL": "INFO",
            }
        net.wait_http("hub", f"http://{hub}:8000/image.jpg", START_S)
        net.wait_http("hub", f"http://{hub}:8080/img/missing", START_S, accept=(404,))
        deployment = Deployment(net, "hub", env, logs, data)
        for server in ("srv1", "srv2"):
            log = logs / f"{server}.log"
            process = net.start(server, [sys.executable, "-m", "backend.cli", "serve", "--host", "0.0.0.0",
                                         "--port", "9090"], env[server], log)
            net.wait_http("hub", deployment.server_url(server) + "/health", START_S, process, log)
        net.start("wrk1", [sys.executable, "-m", "worker", "--queue", "isnet-retrain"], env["wrk1"],
                  logs / "wrk1-rq.log")  # the RQ worker that takes project 7's retraining jobs
        yield deployment


def _trained(process: subprocess.Popen, log: Path) -> str:
    """The version a finished ``isnet train`` wrote (it must have promoted it)."""
    assert process.wait(timeout=CYCLE_S) == 0, log.read_text()[-4000:]
    text = log.read_text()
    assert "now current:" in text, text[-4000:]
    return text.split("now current:", 1)[1].split()[0]


def test_a_version_a_worker_trains_is_served_by_both_servers_without_a_restart(deployment):
    pretrained = deployment.setup_version("srv1")
    assert deployment.setup_version("srv2") == pretrained

    code, answer = deployment.net.http("hub", "POST", deployment.server_url("srv1") + "/webhook",
                                       {"action": "START_TRAINING", "project": {"id": 7}})
    assert code in (200, 201), answer
    deadline = time.monotonic() + CYCLE_S  # the RQ worker on wrk1 exports, trains one step, promotes
    while not deployment.current():
        assert time.monotonic() < deadline, (deployment.logs / "wrk1-rq.log").read_text()[-4000:]
        time.sleep(1)
    name = deployment.current()

    assert name.startswith("isnet-p7-ft-")
    deployment.wait_served(name)
    assert deployment.predict_version("srv1") == name
    assert deployment.predict_version("srv2") == name
    for server in ("srv1", "srv2"):  # fetched from the store into each server's own cache
        assert (Path(deployment.env[server]["MODEL_DIR"]) / "versions" / name / "checkpoint.pth").is_file()


def test_a_rollback_on_a_third_host_is_followed_by_both_servers(deployment):
    before = deployment.current()
    assert before, "the previous test promoted a version"

    done = deployment.isnet("wrk2", "model", "rollback", "--project", "7")

    assert done.returncode == 0, done.stdout
    after = deployment.current()
    assert after != before
    expected = after or deployment.setup_version("srv1")  # empty: project 7 follows the base again
    deployment.wait_served(expected)
    assert deployment.predict_version("srv2") == expected
    assert deployment.switches()[-1]["how"].startswith("rollback")


def test_a_worker_killed_mid_cycle_leaves_the_lineage_unchanged_and_a_second_run_completes(deployment):
    before = deployment.current()
    served = deployment.setup_version("srv1")
    switches = len(deployment.switches())
    log = deployment.logs / "wrk1-train.log"
    log.write_text("")
    doomed = deployment.train("wrk1", "--iters", "100000", "--budget", "30")
    deadline = time.monotonic() + CYCLE_S
    while "segmenter" not in log.read_text():
        assert doomed.poll() is None, log.read_text()[-4000:]
        assert time.monotonic() < deadline, "the cycle never started training"
        time.sleep(0.2)

    netns.kill_now(doomed)  # the worker host dies: SIGKILL, no clean-up of its own

    assert deployment.current() == before
    assert len(deployment.switches()) == switches
    assert deployment.setup_version("srv1") == served
    name = _trained(deployment.train("wrk2"), deployment.logs / "wrk2-train.log")  # waits out the dead lock
    deployment.wait_served(name)


def test_two_cycles_racing_for_one_project_are_each_judged_against_the_true_champion(deployment):
    champion = deployment.setup_version("srv1")
    first = deployment.train("wrk1")
    second = deployment.train("wrk2")
    for process in (first, second):
        assert process.wait(timeout=CYCLE_S) == 0

    promotions = [s for s in deployment.switches() if s["how"] == "promote"][-2:]
    assert [p["from"] for p in promotions] == [champion, promotions[0]["to"]]  # never both against one champion
    deployment.wait_served(promotions[-1]["to"])
    listing = deployment.isnet("srv2", "model", "list", "--project", "7", "--json", timeout=120)
    assert listing.returncode == 0, listing.stdout
    listed = {v["name"]: v for v in json.loads(listing.stdout[listing.stdout.index("{"):])["versions"]}
    for promotion in promotions:  # each cycle's own record names the champion it was judged against
        assert listed[promotion["to"]]["parent"] == promotion["from"]
