"""A retraining cycle end to end with tiny networks: versions, reports, history, kill safety."""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from backend.isnet.training import TrainOptions
from backend.isnet.training.tiny import TINY
from backend.learning import CycleTarget, run_cycle
from backend.learning.registry import ModelRegistry
from tests.retrain_helpers import kill_when

REPO = Path(__file__).resolve().parents[1]
OPTIONS = TrainOptions(iters=6, size=64, crop=32, batch=2, lr=1e-3, device="cpu", amp=False, gt_max_iters=4,
                       gt_check_every=2, gt_target_f=1.1, checkpoint_every=3, anchors="none")


def _visible(registry: ModelRegistry) -> list[str]:
    if not registry.versions_dir.exists():
        return []
    return sorted(p.name for p in registry.versions_dir.iterdir() if not p.name.startswith("."))


def _hidden(registry: ModelRegistry) -> list[str]:
    if not registry.versions_dir.exists():
        return []
    return sorted(p.name for p in registry.versions_dir.iterdir() if p.name.startswith("."))


def test_a_cycle_writes_one_complete_version_with_both_reports_and_the_history(tiny_settings, tiny_pairs):
    images, masks = tiny_pairs(8)
    registry = ModelRegistry(tiny_settings)
    report = run_cycle((images, masks), tiny_settings, OPTIONS, networks=TINY)

    assert _visible(registry) == [report.version] and _hidden(registry) == []
    assert [v.name for v in registry.list_versions()] == [report.version]
    files = {p.relative_to(report.directory).as_posix() for p in report.directory.rglob("*") if p.is_file()}
    assert {"checkpoint.pth", "cycle.json", "history.json", "history.png"} <= files
    for side in ("champion", "challenger"):
        assert {f"reports/{side}/metrics.json", f"reports/{side}/metrics.md", f"reports/{side}/metrics.csv"} <= files
    assert not any(name.endswith((".pth.tmp", "state.pth", "fingerprint.json")) for name in files)
    cycle = json.loads((report.directory / "cycle.json").read_text())  # the one record of the cycle
    for side in ("champion", "challenger"):
        assert {"mae", "avgfmeasure", "sm"} <= cycle[side]["metrics"].keys()
    assert cycle["champion"]["name"] == registry.pretrained().name and cycle["lineage"] == "base"
    checkpoint = torch.load(report.directory / "checkpoint.pth", weights_only=True)
    assert {"model", "gt_encoder", "step"} <= checkpoint.keys() and checkpoint["step"] == 6
    assert cycle["train"]["count"] + cycle["held_out"]["count"] == 8
    history = json.loads((registry.root / "history.json").read_text())["cycles"]
    assert [row["version"] for row in history] == [report.version]
    assert (registry.root / "history.png").stat().st_size > 0


def test_the_rule_decides_promotion_and_the_next_cycle_starts_from_the_current_version(tiny_settings, tiny_pairs):
    images, masks = tiny_pairs(8)
    registry = ModelRegistry(tiny_settings)
    always = dataclasses.replace(OPTIONS, promote_rule="always")
    first = run_cycle((images, masks), tiny_settings, always, networks=TINY)
    assert first.promoted and registry.current_name() == first.version

    never = dataclasses.replace(OPTIONS, promote_rule="never")
    second = run_cycle((images, masks), tiny_settings, never, networks=TINY)
    assert not second.promoted and registry.current_name() == first.version
    assert "never" in second.decision.reason
    assert second.champion == first.version
    # The first cycle's GT encoder is cached for these masks; it never reached the (unreachable) target,
    # so it is refreshed: checked before any further training.
    assert second.training["gt_encoder"]["source"] == "refreshed"
    assert second.training["gt_encoder"]["checks"][0]["step"] == 0
    rows = json.loads((registry.root / "history.json").read_text())["cycles"]
    assert [(r["version"], r["promote"], r["current"]) for r in rows] == [
        (first.version, True, True), (second.version, False, False)]


def test_the_history_lists_cycles_in_the_order_they_ran_even_within_one_second(
        tiny_settings, tiny_pairs, monkeypatch):
    images, masks = tiny_pairs(6)
    registry = ModelRegistry(tiny_settings)
    # Both cycles finish within one second of the clock, and the later one's random name
    # suffix sorts first, as happens half the time when two cycles finish that close.
    one_second = time.gmtime()
    monkeypatch.setattr("backend.isnet.versions.time.gmtime", lambda *_: one_second)
    suffixes = iter(["ffffff", "000000"])
    monkeypatch.setattr("backend.isnet.versions.secrets.token_hex", lambda _n: next(suffixes))
    ticks = iter(range(1, 1_000_000))

    class SameSecond(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2026, 12, 1, 12, 0, 0, next(ticks), tzinfo=tz)

    monkeypatch.setattr("backend.learning.cycle.datetime", SameSecond)
    first = run_cycle((images, masks), tiny_settings, OPTIONS, networks=TINY)
    second = run_cycle((images, masks), tiny_settings, OPTIONS, networks=TINY)
    assert second.version < first.version
    rows = json.loads((registry.root / "history.json").read_text())["cycles"]
    assert [r["version"] for r in rows] == [first.version, second.version]


def test_unreadable_items_are_skipped_and_listed_in_the_cycle_report(tiny_settings, tiny_pairs):
    images, masks = tiny_pairs(6)
    (images / "broken.jpg").write_bytes(b"not an image at all")
    (masks / "broken.png").write_bytes(next(masks.iterdir()).read_bytes())
    (masks / "orphan.png").write_bytes(next(masks.iterdir()).read_bytes())
    report = run_cycle((images, masks), tiny_settings, OPTIONS, networks=TINY)
    skipped = {s["key"]: s["reason"] for s in json.loads((report.directory / "cycle.json").read_text())["skipped"]}
    assert set(skipped) == {"broken", "orphan"}
    assert "not an image" in skipped["broken"] and "no image" in skipped["orphan"]


def test_a_failure_mid_cycle_leaves_no_version_and_the_next_cycle_resumes(tiny_settings, tiny_pairs):
    images, masks = tiny_pairs(8)
    registry = ModelRegistry(tiny_settings)

    def fail(event):
        if event.stage == "segmenter" and event.step == 5:
            raise RuntimeError("injected failure")

    with pytest.raises(RuntimeError, match="injected failure"):
        run_cycle((images, masks), tiny_settings, OPTIONS, networks=TINY, progress=fail)
    assert _visible(registry) == [] and registry.list_versions() == []
    assert registry.current_name() is None

    report = run_cycle((images, masks), tiny_settings, OPTIONS, networks=TINY)
    assert report.resumed_from == {"stage": "segmenter", "step": 3, "gt_step": 0}
    assert _visible(registry) == [report.version] and _hidden(registry) == []


def test_a_failure_while_evaluating_resumes_without_training_again(tiny_settings, tiny_pairs):
    images, masks = tiny_pairs(8)

    def fail(event):
        if event.stage == "evaluate":
            raise RuntimeError("injected failure")

    with pytest.raises(RuntimeError):
        run_cycle((images, masks), tiny_settings, OPTIONS, networks=TINY, progress=fail)
    stages = []
    report = run_cycle((images, masks), tiny_settings, OPTIONS, networks=TINY,
                       progress=lambda e: stages.append(e.stage))
    assert report.resumed_from["stage"] == "trained"
    assert "segmenter" not in stages and "gt_encoder" not in stages
    assert report.training["steps"] == OPTIONS.iters


def test_a_cycle_written_outside_the_registry_is_never_promoted(tiny_settings, tiny_pairs, tmp_path):
    images, masks = tiny_pairs(6)
    registry = ModelRegistry(tiny_settings)
    out = tmp_path / "elsewhere" / "run1"
    report = run_cycle((images, masks), tiny_settings, dataclasses.replace(OPTIONS, promote_rule="always"),
                       target=CycleTarget(out=out), networks=TINY)
    assert report.directory == out and (out / "checkpoint.pth").is_file() and (out / "history.json").is_file()
    assert not report.promoted and "outside MODEL_DIR" in report.decision.reason
    assert registry.current_name() is None and registry.list_versions() == []
    assert sorted(p.name for p in out.parent.iterdir()) == ["run1"]


KILLED_WORKER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from backend.settings import Settings
    from backend.isnet.training import TrainOptions
    from backend.learning import run_cycle
    from backend.isnet.training.tiny import TINY

    images, masks, models, weights, marker = map(Path, sys.argv[1:6])
    options = TrainOptions(**{{**TrainOptions().to_dict(), **{options}}})

    def progress(event):
        if event.stage == "segmenter" and event.step == 5:
            marker.write_text("mid-cycle")
            time.sleep(120)

    run_cycle((images, masks), Settings(model_dir_env=str(models), weights=str(weights), device="cpu", threads=1),
              options, networks=TINY, progress=progress)
""")


def test_a_worker_killed_by_sigkill_mid_cycle_leaves_no_version_and_the_next_cycle_succeeds(
        tiny_settings, tiny_pairs, tmp_path):
    images, masks = tiny_pairs(8)
    registry = ModelRegistry(tiny_settings)
    marker = tmp_path / "marker"
    script = KILLED_WORKER.format(options=repr(OPTIONS.to_dict()))
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(images), str(masks), tiny_settings.model_dir_env,
         tiny_settings.weights, str(marker)], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    kill_when(proc, marker.exists, 120, "mid-cycle")
    assert proc.returncode == -signal.SIGKILL
    assert _visible(registry) == [] and registry.list_versions() == []
    assert any(name.startswith(".staging-") for name in _hidden(registry))

    report = run_cycle((images, masks), tiny_settings, OPTIONS, networks=TINY)
    assert report.resumed_from is not None and report.resumed_from["step"] == 3
    assert _visible(registry) == [report.version] and _hidden(registry) == []
