"""Promotion that cannot race: a rollback made during a cycle stands, and one cycle per lineage
runs at a time across processes (a per-lineage file lock) while other lineages go on; a Label
Studio-fed job waits for the lock before it exports, and says so.

Tiny networks (``training/tiny.py``) on DUTS-TR pairs; the cycles' own progress events say when
each one ran.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from backend.isnet.training import TrainOptions
from backend.isnet.training.progress import STATUS_FILE
from backend.isnet.training.tiny import TINY
from backend.isnet.versions import CHECKPOINT_FILE
from backend.jobs.retrain_status import latest_report
from backend.learning import cycle_lock, run_cycle
from backend.learning.lineages import lineage_for
from backend.learning.registry import ModelRegistry
from backend.learning.snapshots import project_dir
from tests.retrain_helpers import PROJECT, add_duts_tasks, settings_for
from worker.retrain import retrain_project

REPO = Path(__file__).resolve().parents[1]
OPTIONS = TrainOptions(iters=6, size=64, crop=32, batch=2, lr=1e-3, device="cpu", amp=False, gt_max_iters=4,
                       gt_check_every=2, gt_target_f=1.1, checkpoint_every=3, anchors="none", promote_rule="always")


def test_a_rollback_made_during_a_cycle_is_not_undone_and_the_report_says_why(tiny_settings, tiny_pairs):
    images, masks = tiny_pairs(8)
    registry = ModelRegistry(tiny_settings)
    champion = registry.new_version_name()  # a version that `isnet model use` made current
    (registry.versions_dir / champion).mkdir(parents=True)
    shutil.copy(tiny_settings.weights, registry.versions_dir / champion / CHECKPOINT_FILE)
    registry.promote(champion, how="use")
    rolled_back: list[str] = []

    def roll_back_mid_training(event):
        if event.stage == "segmenter" and not rolled_back:  # what `isnet model rollback` does meanwhile
            version, _ = ModelRegistry(tiny_settings).rollback()
            rolled_back.append(version.name)

    second = run_cycle((images, masks), tiny_settings, OPTIONS, networks=TINY, progress=roll_back_mid_training)

    assert rolled_back == [registry.pretrained().name]
    assert second.champion == champion and not second.promoted
    assert registry.current_name() == rolled_back[0]  # the rollback stands
    assert registry.switches()["switches"][-1]["how"] == "rollback"
    reason = second.decision.reason
    assert f"{rolled_back[0]} is current" in reason and f"not {champion}" in reason and "not promoted" in reason
    recorded = json.loads((second.directory / "cycle.json").read_text())
    assert recorded["promoted"] is False and recorded["decision"]["reason"] == reason
    status = json.loads((registry.home / STATUS_FILE).read_text())
    assert status["status"] == "done" and status["promoted"] is False and status["reason"] == reason


TWO_PROCESSES = textwrap.dedent("""
    import json, logging, os, sys, time
    from pathlib import Path
    from backend.settings import Settings
    from backend.isnet.training import TrainOptions
    from backend.isnet.training.tiny import TINY
    from backend.learning import run_cycle

    images, masks, models, weights, events, ready, report = sys.argv[1:8]
    others = sys.argv[8:]
    logging.basicConfig(level=logging.WARNING)
    options = TrainOptions(**{{**TrainOptions().to_dict(), **{options}}})

    def progress(event):  # one line per event, appended: the log's order is the order of events
        with open(events, "a") as fh:
            fh.write(f"{{os.getpid()}} {{event.stage}}\\n")

    Path(ready).write_text("ready")  # both processes start their cycle together
    deadline = time.monotonic() + 120
    while not all(Path(p).exists() for p in others):
        assert time.monotonic() < deadline, "the other process never got ready"
        time.sleep(0.01)
    done = run_cycle((images, masks), Settings(model_dir_env=models, weights=weights, device="cpu", threads=1),
                     options, networks=TINY, progress=progress)
    Path(report).write_text(json.dumps({{"pid": os.getpid(), "version": done.version, "champion": done.champion,
                                        "promoted": done.promoted}}))
""")


def test_two_cycles_of_one_lineage_in_two_processes_run_one_after_the_other(tiny_settings, tiny_pairs, tmp_path):
    images, masks = tiny_pairs(8)
    events = tmp_path / "events.log"
    ready = [tmp_path / f"ready-{n}" for n in range(2)]
    reports = [tmp_path / f"report-{n}.json" for n in range(2)]
    script = TWO_PROCESSES.format(options=repr(OPTIONS.to_dict()))
    procs = [subprocess.Popen(
        [sys.executable, "-c", script, str(images), str(masks), tiny_settings.model_dir_env, tiny_settings.weights,
         str(events), str(ready[n]), str(reports[n]), str(ready[1 - n])],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stderr=subprocess.PIPE, text=True)
        for n in range(2)]
    try:
        errors = [proc.communicate(timeout=300)[1] for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert [proc.returncode for proc in procs] == [0, 0], errors

    pids = [line.split()[0] for line in events.read_text().splitlines()]
    first_pid = pids[0]
    switched = [n for n in range(1, len(pids)) if pids[n] != pids[n - 1]]
    assert len(switched) == 1, f"the cycles' events interleave: {pids}"  # all of one, then all of the other
    done = {r["pid"]: r for r in (json.loads(p.read_text()) for p in reports)}
    first, second = done[int(first_pid)], done[int(pids[-1])]
    assert first["promoted"] and second["promoted"]
    assert second["champion"] == first["version"]  # judged against what the first one promoted
    assert ModelRegistry(tiny_settings).current_name() == second["version"]
    waited = errors[[p.pid for p in procs].index(int(pids[-1]))]
    assert f"pid {first_pid}" in waited and "waiting for" in waited  # the second said whom it waited for
    assert cycle_lock.holder(ModelRegistry(tiny_settings).home) is None  # released, with nobody named


def test_a_cycle_of_another_lineage_does_not_wait_for_a_running_one(tiny_settings, tiny_pairs):
    images, masks = tiny_pairs(8)
    p7, p8 = ModelRegistry(tiny_settings, "p7"), ModelRegistry(tiny_settings, "p8")
    finished: list[str] = []

    def run_p8() -> None:
        finished.append(run_cycle((images, masks), tiny_settings, OPTIONS, networks=TINY, registry=p8).version)

    with cycle_lock.hold(p7.home, "a long cycle of p7"):
        worker = threading.Thread(target=run_p8)  # another thread: it would wait if the lock were shared
        worker.start()
        worker.join(timeout=300)
        assert not worker.is_alive() and finished and p8.current_name() == finished[0]
        assert cycle_lock.holder(p7.home).what == "a long cycle of p7"


def test_a_second_cycle_of_the_lineage_waits_for_the_holder_and_says_whom(tiny_settings, tiny_pairs, caplog):
    images, masks = tiny_pairs(8)
    p7 = ModelRegistry(tiny_settings, "p7")
    finished: list[str] = []
    holding = cycle_lock.hold(p7.home, "isnet train")
    holding.__enter__()
    try:
        worker = threading.Thread(target=lambda: finished.append(
            run_cycle((images, masks), tiny_settings, OPTIONS, networks=TINY, registry=p7).version))
        worker.start()
        deadline = time.monotonic() + 120
        while "waiting for isnet train (pid" not in caplog.text:
            assert time.monotonic() < deadline and worker.is_alive(), caplog.text
            time.sleep(0.02)
        # the waiting cycle wrote nothing: the running one's status is not overwritten
        assert not finished and p7.follows_base and not (p7.home / STATUS_FILE).exists()
    finally:
        holding.__exit__(None, None, None)
    worker.join(timeout=300)
    assert finished and p7.current_name() == finished[0]


def test_a_label_studio_fed_job_waits_before_exporting_and_says_so_in_its_status(
        fake_label_studio_export, tiny_settings, tmp_path):
    ls = fake_label_studio_export
    add_duts_tasks(ls, 4)
    settings = settings_for(ls, Path(tiny_settings.weights), tmp_path / "models")
    home = ModelRegistry(settings, lineage_for(PROJECT, settings)).home
    outcome: list[dict] = []
    holding = cycle_lock.hold(home, "isnet train")
    holding.__enter__()
    try:
        job = threading.Thread(target=lambda: outcome.append(retrain_project(PROJECT, settings=settings,
                                                                             networks=TINY)))
        job.start()
        deadline = time.monotonic() + 60
        while (latest_report(settings) or {}).get("status") != "waiting":
            assert time.monotonic() < deadline and job.is_alive(), latest_report(settings)
            time.sleep(0.02)
        assert "isnet train (pid" in latest_report(settings)["reason"]
        assert not project_dir(settings, PROJECT).exists()  # nothing exported while it waits
    finally:
        holding.__exit__(None, None, None)
    job.join(timeout=300)
    assert outcome and outcome[0]["status"] in {"promoted", "rejected"}, outcome
    assert latest_report(settings)["status"] == outcome[0]["status"]


def test_isnet_train_waits_for_the_lineage_s_running_cycle_and_says_for_whom(
        tiny_pairs, tmp_path, random_checkpoint):
    images, masks = tiny_pairs(4)
    models = tmp_path / "models"
    env = {**os.environ, "PYTHONPATH": str(REPO), "MODEL_DIR": str(models), "ISNET_HOME": str(tmp_path / "home"),
           "ISNET_WEIGHTS": str(random_checkpoint), "ISNET_DEVICE": "cpu", "ISNET_THREADS": "1"}
    err = tmp_path / "stderr.txt"
    home = models / "lineages" / "p7"
    with cycle_lock.hold(home, "retraining of project 7"), open(err, "w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "backend.cli", "train", "--project", "7", "--images", str(images), "--masks",
             str(masks), "--size", "32", "--crop", "32", "--batch", "2", "--iters", "2", "--gt-iters", "2",
             "--anchors", "none", "--promote-rule", "always"], cwd=REPO, env=env, stderr=stderr,
            stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 120
            while "waiting for retraining of project 7 (pid" not in err.read_text():
                assert proc.poll() is None, err.read_text()[-3000:]
                assert time.monotonic() < deadline, "isnet train never said it waits"
                time.sleep(0.05)
            assert not (home / STATUS_FILE).exists()  # it trains nothing while the other cycle runs
        except BaseException:
            proc.kill()
            raise
    assert proc.wait(timeout=300) == 0, err.read_text()[-3000:]
    assert (home / STATUS_FILE).exists() and cycle_lock.holder(home) is None
