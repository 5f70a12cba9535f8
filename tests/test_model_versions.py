"""Model versions: the registry's list, ``GET /versions``, and ``isnet model list / use / rollback``
switching what a running backend serves (``/setup`` and new predictions) without a restart.

An untrained ISNetDIS at 64x64 stands in for every version (each version's checkpoint is a link to
it): these tests are about which version is named where, not about masks.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from PIL import Image

from backend.cli import main
from backend.learning.history import METRICS_FILE
from backend.learning.registry import CHECKPOINT_FILE, ModelRegistry
from backend.model import ISNetModel
from backend.server.app import create_app
from backend.settings import Settings
from tests.paths import DIS_DEMO_IMAGES

CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<BrushLabels name="tag" toName="image"><Label value="Foreground"/></BrushLabels></View>'
)
OLD, NEW = "isnet-ft-20250101-000000-aaaaaa", "isnet-ft-20250102-000000-bbbbbb"
SWITCH_TIMEOUT_S = 30
_IMAGES = itertools.count(1)


def make_version(registry: ModelRegistry, checkpoint: Path, name: str, created: str | None = None,
                 parent: str | None = None, metrics: dict[str, float] | None = None) -> str:
    """A complete version directory (its checkpoint a link to ``checkpoint``), with a cycle record if
    ``created`` is given, as a retraining cycle writes it."""
    directory = registry.versions_dir / name
    directory.mkdir(parents=True)
    os.symlink(checkpoint, directory / CHECKPOINT_FILE)
    if created is not None:
        record = {"version": name, "created": created, "size": 320,
                  "champion": {"name": parent, "metrics": {}}, "challenger": {"name": name, "metrics": metrics or {}},
                  "decision": {"promote": True}}
        (directory / METRICS_FILE).write_text(json.dumps(record))
    return name


@pytest.fixture
def settings(random_checkpoint, image_host, tmp_path, monkeypatch) -> Settings:
    """The backend's settings; the environment says the same, so ``isnet model`` run in-process agrees."""
    monkeypatch.setenv("ISNET_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MODEL_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("ISNET_WEIGHTS", str(random_checkpoint))
    return Settings(home=tmp_path / "home", weights=str(random_checkpoint), input_size=64, engine="torch",
                    label_studio_url=image_host.url, label_studio_api_key="", model_dir_env=str(tmp_path / "models"))


@pytest.fixture
def registry(settings, random_checkpoint) -> ModelRegistry:
    """Two retrained versions, OLD then NEW (trained from OLD), besides the pretrained weights."""
    registry = ModelRegistry(settings)
    make_version(registry, random_checkpoint, OLD, "2025-01-01T00:00:00.000000+00:00", registry.pretrained().name,
                 {"mae": 0.08, "sm": 0.80, "avgfmeasure": 0.70})
    make_version(registry, random_checkpoint, NEW, "2025-01-02T00:00:00.000000+00:00", OLD,
                 {"mae": 0.05, "sm": 0.90, "avgfmeasure": 0.80})
    return registry


@pytest.fixture
def model(settings, registry) -> Iterator[ISNetModel]:
    model = ISNetModel(settings)
    model.setup()
    yield model
    model.service.stop()


@pytest.fixture
def client(settings, model):
    return create_app(settings, model).test_client()


@pytest.fixture
def new_image(image_host) -> Callable[[], str]:
    """A path on the image host whose bytes no earlier request had (so it is never a cache hit)."""

    def make() -> str:
        n = next(_IMAGES)
        buf = io.BytesIO()
        Image.new("RGB", (48, 32), (n % 256, n // 256 % 256, 160)).save(buf, "PNG")
        return image_host.add(f"versions-{os.getpid()}-{n}.png", buf.getvalue())

    return make


def predict_version(client, path: str) -> str:
    body = client.post("/predict", json={"tasks": [{"id": 1, "data": {"image": path}, "project": 1}],
                                         "project": "1.1", "label_config": CONFIG}).get_json()
    (entry,) = body["results"]
    assert entry["result"], entry
    return entry["model_version"]


def setup_version(client) -> str:
    return client.post("/setup", json={"project": "1.1", "schema": CONFIG}).get_json()["model_version"]


# -- the registry's list ------------------------------------------------------------------------------


def test_the_list_puts_the_current_version_first_then_the_newest_and_the_pretrained_weights_last(registry):
    pretrained = registry.pretrained().name
    assert registry.version_names() == [NEW, OLD, pretrained]  # what /versions lists: newest first
    registry.promote(OLD)
    infos = registry.catalogue()
    assert [i.name for i in infos] == [OLD, NEW, pretrained]
    assert [i.current for i in infos] == [True, False, False]
    assert infos[1].created == "2025-01-02T00:00:00.000000+00:00" and infos[1].parent == OLD
    assert infos[1].metrics == {"mae": 0.05, "sm": 0.90, "avgfmeasure": 0.80}
    assert infos[2].pretrained and infos[2].created


def test_a_version_without_a_cycle_record_is_listed_with_its_checkpoint_time(registry, random_checkpoint):
    make_version(registry, random_checkpoint, "isnet-ft-hand-made")
    (info,) = [i for i in registry.catalogue() if i.name == "isnet-ft-hand-made"]
    assert info.created and info.metrics is None and info.parent is None


# -- GET /versions ------------------------------------------------------------------------------------


def test_versions_answers_every_name_newest_first_and_the_pretrained_weights_last(client, registry):
    body = client.get("/versions").get_json()
    assert set(body) == {"versions", "current"}
    assert all(isinstance(v, str) for v in body["versions"])  # Label Studio shows each as a menu entry
    assert body["versions"] == [NEW, OLD, registry.pretrained().name]  # it asks without a project: every lineage's
    assert body["current"] == setup_version(client) == registry.pretrained().name


# -- isnet model use / rollback on a running backend ----------------------------------------------


def test_use_switches_setup_and_new_predictions_without_a_restart(client, registry, new_image, capsys):
    pretrained = registry.pretrained().name
    assert setup_version(client) == predict_version(client, new_image()) == pretrained
    assert main(["model", "use", NEW]) == 0
    assert f"now serving {NEW} (was {pretrained})" in capsys.readouterr().out
    assert setup_version(client) == NEW
    assert predict_version(client, new_image()) == NEW
    assert client.get("/versions").get_json()["versions"][0] == NEW


def test_rollback_returns_to_the_previously_current_version_and_walks_back_on_repeat(client, registry, new_image,
                                                                                     capsys):
    pretrained = registry.pretrained().name
    assert main(["model", "use", OLD]) == 0
    assert main(["model", "use", NEW]) == 0
    assert predict_version(client, new_image()) == NEW
    assert main(["model", "rollback"]) == 0
    assert f"rolled back to {OLD} (was {NEW})" in capsys.readouterr().out
    assert setup_version(client) == predict_version(client, new_image()) == OLD
    assert main(["model", "rollback"]) == 0
    assert setup_version(client) == predict_version(client, new_image()) == pretrained
    assert [s["how"] for s in registry.switches()["switches"]] == ["use", "use", "rollback", "rollback"]


def test_rollback_undoes_a_retraining_cycles_promotion(registry):
    registry.promote(NEW)  # what a cycle does when its challenger wins
    version, before = registry.rollback()
    assert (version.name, before) == (registry.pretrained().name, NEW)
    assert registry.current().name == registry.pretrained().name


def test_without_a_switch_record_rollback_goes_to_the_version_the_current_one_was_trained_from(registry):
    registry.current_file.write_text(NEW + "\n")  # a MODEL_DIR from before switches were recorded
    version, before = registry.rollback()
    assert (version.name, before) == (OLD, NEW)


def test_rollback_with_nothing_to_go_back_to_fails_and_says_why(registry, capsys):
    assert main(["model", "rollback"]) == 1
    assert "nothing to roll back to" in capsys.readouterr().err
    assert registry.current_name() is None


def test_use_of_an_unknown_version_exits_2_naming_it_and_changes_nothing(registry, capsys):
    registry.promote(OLD)
    before = registry.switches()
    for name in ("isnet-ft-no-such-version", "../versions", ".staging-x"):
        assert main(["model", "use", name]) == 2
        err = capsys.readouterr().err
        assert name in err and "isnet model list" in err
    assert registry.current_name() == OLD
    assert registry.switches() == before


def test_use_pretrained_names_the_pretrained_weights(registry, capsys):
    registry.promote(NEW)
    assert main(["model", "use", "pretrained"]) == 0
    assert registry.current_name() == registry.pretrained().name


def test_model_list_marks_the_current_version_and_shows_recorded_metrics(registry, capsys):
    registry.promote(NEW)
    assert main(["model", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"lineage base: current {NEW}"
    assert lines[1].split()[:2] == ["VERSION", "CREATED"]
    assert lines[2].startswith("*") and NEW in lines[2] and "0.0500" in lines[2] and OLD in lines[2]
    assert not lines[3].startswith("*") and OLD in lines[3]
    assert main(["model", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["current"] == NEW and listed["lineage"] == "base"
    assert [(v["name"], v["current"]) for v in listed["versions"]][:2] == [(NEW, True), (OLD, False)]


def test_after_a_switch_a_repeated_image_is_answered_under_the_new_version(client, registry, new_image):
    path = new_image()
    assert predict_version(client, path) == registry.pretrained().name
    registry.promote(NEW, how="use")
    assert predict_version(client, path) == NEW


# -- end to end against a real Label Studio 1.23 ----------------------------------------------------


def retrieve(label_studio, project: int, task_ids: list[int]) -> None:
    """"Retrieve predictions" on the given tasks only."""
    label_studio.api("POST", "/api/dm/actions", params={"id": "retrieve_tasks_predictions", "project": project},
                     json={"selectedItems": {"all": False, "included": task_ids}})


def wait_for_setup(url: str, expected: str) -> None:
    deadline = time.monotonic() + SWITCH_TIMEOUT_S
    seen = None
    while time.monotonic() < deadline:
        seen = requests.post(url + "/setup", json={"schema": CONFIG}, timeout=5).json()["model_version"]
        if seen == expected:
            return
        time.sleep(0.2)
    raise AssertionError(f"/setup still reports {seen}, not {expected}, {SWITCH_TIMEOUT_S} s after the switch")


def wait_for_predictions(label_studio, project: int, task: int) -> list[str]:
    """The model versions of ``task``'s predictions, once it has any."""
    deadline = time.monotonic() + SWITCH_TIMEOUT_S * 4
    while time.monotonic() < deadline:
        versions = [p["model_version"] for p in label_studio.predictions(project) if p["task"] == task]
        if versions:
            return versions
        time.sleep(0.5)
    raise AssertionError(f"task {task} got no prediction within {SWITCH_TIMEOUT_S * 4} s of its import")


@pytest.mark.slow
def test_label_studio_lists_the_versions_and_a_rollback_reaches_setup_and_new_predictions(
        label_studio, serve_backend, random_checkpoint, tmp_path):
    env = {"LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.legacy_token,
           "ISNET_INPUT_SIZE": "64", "ISNET_ENGINE": "torch", "ISNET_WEIGHTS": str(random_checkpoint),
           "ISNET_HOME": str(tmp_path / "home"), "MODEL_DIR": str(tmp_path / "models")}
    registry = ModelRegistry(Settings(home=tmp_path / "home", weights=str(random_checkpoint),
                                      model_dir_env=str(tmp_path / "models")))
    make_version(registry, random_checkpoint, OLD, "2025-01-01T00:00:00.000000+00:00", registry.pretrained().name)
    make_version(registry, random_checkpoint, NEW, "2025-01-02T00:00:00.000000+00:00", OLD)
    registry.promote(OLD, how="use")
    registry.promote(NEW, how="use")
    backend = serve_backend(env)

    project = label_studio.create_project("model versions", CONFIG)
    (first,) = label_studio.upload_images(project, [DIS_DEMO_IMAGES / "0003.jpeg"])
    ml = label_studio.connect_backend(project, backend.url)
    listed = label_studio.api("GET", f"/api/ml/{ml['id']}/versions")
    assert listed == {"versions": [NEW, OLD, registry.pretrained().name]}
    retrieve(label_studio, project, [first])
    assert [p["model_version"] for p in label_studio.predictions(project)] == [NEW]

    proc = subprocess.run([sys.executable, "-m", "backend.cli", "model", "rollback"], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert f"rolled back to {OLD}" in proc.stdout
    wait_for_setup(backend.url, OLD)
    assert label_studio.api("GET", f"/api/ml/{ml['id']}")["model_version"] == OLD

    second = max(label_studio.upload_images(project, [DIS_DEMO_IMAGES / "bike.jpeg"]))
    assert set(wait_for_predictions(label_studio, project, second)) == {OLD}  # auto-annotation of the import
    retrieve(label_studio, project, [first])  # Label Studio predicts again what it holds under another version
    assert sorted(p["model_version"] for p in label_studio.predictions(project) if p["task"] == first) == [OLD, NEW]
    assert backend.process.poll() is None  # the same server process all along


# -- a MODEL_DIR written before lineages ----------------------------------------------------------


def test_an_existing_model_dir_keeps_serving_its_current_version_to_every_project(client, registry):
    # The registry fixture wrote the old layout: versions/*/metrics.json, then CURRENT and switches.json.
    registry.promote(OLD, how="use")
    registry.promote(NEW)
    assert setup_version(client) == NEW  # project 1 has no lineage of its own: it follows the base
    assert client.post("/setup", json={"project": "42.17", "schema": CONFIG}).get_json()["model_version"] == NEW
    assert ModelRegistry(registry.settings, "p42").follows_base


def test_an_existing_model_dir_keeps_its_switch_history_and_its_records(registry, capsys):
    registry.promote(OLD, how="use")
    registry.promote(NEW)
    assert main(["model", "rollback"]) == 0 and registry.current_name() == OLD  # switches.json still counts
    (info,) = [i for i in registry.catalogue() if i.name == NEW]
    assert info.metrics == {"mae": 0.05, "sm": 0.90, "avgfmeasure": 0.80} and info.lineage == "base"


# -- lineages through the command line --------------------------------------------------------------


def test_use_for_a_project_changes_that_project_only(client, registry, capsys):
    assert main(["model", "use", "--project", "1", NEW]) == 0
    assert setup_version(client) == NEW
    assert client.post("/setup", json={"project": "2.17", "schema": CONFIG}).get_json()["model_version"] \
        == registry.pretrained().name
    capsys.readouterr()
    assert main(["model", "list", "--project", "1", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["current"] == NEW and listed["lineage"] == "p1" and not listed["follows_base"]


def test_rollback_for_a_project_returns_it_to_the_base(client, registry, capsys):
    assert main(["model", "use", "--project", "1", NEW]) == 0
    assert main(["model", "rollback", "--project", "1"]) == 0
    assert "following the base lineage again" in capsys.readouterr().out
    assert setup_version(client) == registry.pretrained().name


def test_a_project_mapped_to_a_shared_lineage_says_so(registry, capsys, monkeypatch):
    monkeypatch.setenv("ISNET_PROJECT_LINEAGES", "1=shop,2=shop")
    assert main(["model", "use", "--project", "1", OLD]) == 0
    assert "shares lineage shop with project(s) 2" in capsys.readouterr().err
    assert ModelRegistry(registry.settings, "shop").current_name() == OLD


def test_a_deleted_project_stops_being_served_and_its_versions_stay(client, registry):
    assert main(["model", "use", "--project", "1", NEW]) == 0
    assert setup_version(client) == NEW
    answer = client.post("/webhook", json={"action": "PROJECT_DELETED", "project": {"id": 1}}).get_json()
    assert (answer["status"], answer["version"], answer["lineage"]) == ("retired", NEW, "p1")
    assert ModelRegistry(registry.settings, "p1").follows_base and (registry.versions_dir / NEW).is_dir()


def test_metrics_show_what_each_lineage_serves(client, registry):
    assert main(["model", "use", "--project", "1", NEW]) == 0
    lineages = client.get("/metrics.json").get_json()["lineages"]
    assert lineages["p1"]["current"] == NEW and not lineages["p1"]["follows_base"]
    assert lineages["base"]["current"] == registry.pretrained().name
