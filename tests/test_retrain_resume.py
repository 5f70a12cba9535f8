"""A Label Studio-fed cycle killed mid-training resumes from its checkpoint when the same labels
are exported again: each export is a new snapshot folder, and the cycle's fingerprint is the
labels' content, not their paths or times.

The stand-in Label Studio (a real HTTP server) serves DUTS-TR pairs as brush annotations; the
first cycle runs in a real process (``worker.retrain.retrain_project``, tiny networks) that is
killed with SIGKILL once its mid-training checkpoint is on disk.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from backend.isnet.training.tiny import TINY
from backend.learning.snapshots import project_dir
from backend.learning.staging import STATE_FILE
from tests.retrain_helpers import PROJECT, add_duts_tasks, kill_when, retrain_env, settings_for
from worker.retrain import retrain_project

REPO = Path(__file__).resolve().parents[1]
ITERS, CHECKPOINT_EVERY = 120, 100
"""Label Studio-fed cycles save a resumable state every 100 steps (the options' default)."""

KILLED_JOB = textwrap.dedent(f"""
    import time
    from backend.isnet.training.tiny import TINY
    from backend.settings import load
    from worker.retrain import retrain_project

    def stay_after_the_checkpoint(event):  # the test kills this process here
        if event.stage == "segmenter" and event.step > {CHECKPOINT_EVERY}:
            time.sleep(3600)

    retrain_project({PROJECT}, settings=load(), networks=TINY, progress=stay_after_the_checkpoint)
""")


def saved_step(models: Path) -> int | None:
    """The segmentation step of the interrupted cycle's saved state, once one past step 0 is on disk."""
    for state in models.glob(f"versions/.staging-*/{STATE_FILE}"):
        try:
            saved = torch.load(state, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError):
            continue  # being replaced right now
        if saved.get("stage") == "segmenter" and int(saved.get("step", 0)) > 0:
            return int(saved["step"])
    return None


def test_a_killed_label_studio_fed_cycle_resumes_from_its_checkpoint_on_the_next_export(
        fake_label_studio_export, tiny_settings, tmp_path):
    ls = fake_label_studio_export
    add_duts_tasks(ls, 4)  # ISNET_MIN_NEW_LABELS is 3 here
    models = tmp_path / "models"
    env = {**os.environ, **retrain_env(ls, Path(tiny_settings.weights), models), "ISNET_TRAIN_ITERS": str(ITERS),
           "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", KILLED_JOB], cwd=REPO, env=env, stderr=subprocess.PIPE)
    try:
        step = kill_when(proc, lambda: saved_step(models), 240, "its mid-training checkpoint")
    finally:
        if proc.stderr:
            proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL and step == CHECKPOINT_EVERY
    (interrupted,) = [p.name for p in (models / "versions").iterdir() if p.is_dir()]

    settings = settings_for(ls, Path(tiny_settings.weights), models).replace(train_iters=ITERS)
    outcome = retrain_project(PROJECT, settings=settings, networks=TINY)  # the same labels, exported again

    assert outcome["status"] in {"promoted", "rejected"}, outcome
    assert outcome["resumed_from"] == {"stage": "segmenter", "step": CHECKPOINT_EVERY, "gt_step": 0}
    assert outcome["steps"] == ITERS and f".staging-{outcome['version']}" == interrupted
    snapshots = [p for p in project_dir(settings, PROJECT).iterdir() if p.is_dir()]
    assert len(snapshots) == 2  # each export wrote its own snapshot folder, and the second matched the first
    assert not any(p.name.startswith(".staging-") for p in (models / "versions").iterdir())
