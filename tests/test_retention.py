"""Bounded disk: the retention policy keeps each lineage's disk use flat however many cycles run,
never takes what is served or rolled back to, keeps what the forgetting guard reads, and
``isnet model prune --dry-run`` only lists.

Cycles are real tiny cycles (``training/tiny.py``) fed by a stand-in Label Studio
(``fake_label_studio_export``) through ``worker.retrain``, so snapshots, GT encoder caches and
versions are written exactly as in production; the registry tests use hand-made version
directories linked to one untrained checkpoint, as tests/test_model_versions.py does.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch

from backend.cli import main
from backend.isnet.training import TrainOptions
from backend.isnet.training.tiny import TINY, TinySegmenter
from backend.learning import retention, run_cycle
from backend.learning.history import CYCLE_FILE, earlier_held_out
from backend.learning.registry import CHECKPOINT_FILE, ModelRegistry
from backend.learning.retention import Policy, disk_usage, plan, prune, snapshot_projects
from backend.learning.snapshots import project_dir
from backend.learning.staging import FINGERPRINT_FILE, PREFIX
from backend.model import ISNetModel
from backend.settings import Settings
from tests.retrain_helpers import PROJECT, add_duts_tasks, settings_for
from worker.retrain import retrain_project

LINEAGE = f"p{PROJECT}"
PLOT_BYTES = 40_000
KEEP = {"keep_versions": 2, "keep_rollback": 2, "keep_reports": 4, "keep_snapshots": 1}


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root``: size and modification time (what a dry run must leave alone)."""
    return {str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file() or p.is_symlink()}


def checkpoints(settings: Settings) -> set[str]:
    return {p.parent.name for p in (settings.model_dir / "versions").glob(f"*/{CHECKPOINT_FILE}")}


def lineage_bytes(settings: Settings, lineage: str = LINEAGE) -> int:
    return sum(disk_usage(settings)["lineages"][lineage].values())


def stack_top(registry: ModelRegistry, n: int) -> list[str]:
    top: list[str] = []
    for name in reversed(registry.switches()["previous"]):
        if name and name not in top:
            top.append(name)
    return top[:n]


@pytest.fixture
def ls(fake_label_studio_export):
    return fake_label_studio_export


@pytest.fixture
def tiny_checkpoint(tmp_path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "tiny-pretrained.pth"
    torch.save(TinySegmenter().state_dict(), path)
    return path


# -- the bar: 30 cycles, flat disk, rollback still works ----------------------------------------------


@pytest.fixture
def quick_plots(monkeypatch) -> None:
    """Plots as files of a real plot's size, without drawing them: matplotlib takes most of a tiny
    cycle's time (eight figures), and these tests are about which files stay, not what they show."""

    def placeholder(path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\0" * PLOT_BYTES)
        return path

    monkeypatch.setattr("backend.learning.history.plot_history", lambda rows, path: placeholder(path))
    monkeypatch.setattr("backend.metrics.plots.plot_curves",
                        lambda runs, out: [placeholder(out / "pr_curve.png"), placeholder(out / "fm_curve.png")])


def test_thirty_cycles_keep_the_lineage_disk_flat_and_rollback_still_works(ls, tiny_checkpoint, tmp_path,
                                                                            quick_plots):
    """Label Studio-fed cycles of project 7, two promoted out of three (the third is rejected: too
    few held-out images for the bootstrap rule). Labels grow for the first eight cycles, then are
    re-trained as they are (Start training), so growth after that could only come from cycles."""
    base = settings_for(ls, tiny_checkpoint, tmp_path / "models", train_share="full", **KEEP)
    registry = ModelRegistry(base, LINEAGE)
    add_duts_tasks(ls, 4)
    used: list[int] = []
    outcomes = []
    for n in range(1, 31):
        if n <= 8:
            add_duts_tasks(ls, 1, start=3 + n)
        rule = "bootstrap" if n % 3 == 0 else "always"
        outcome = retrain_project(PROJECT, force=True, settings=base.replace(promote_rule=rule),
                                  networks=TINY)
        assert outcome["status"] == ("rejected" if rule == "bootstrap" else "promoted"), outcome
        assert outcome["retention"]["errors"] == [] and outcome["budget"]["earlier_missing"] == 0, outcome
        outcomes.append(outcome)
        # Never removed: the current version and the newest rollback entries.
        current = registry.current_name()
        assert current == [o for o in outcomes if o["status"] == "promoted"][-1]["version"]
        assert {current, *stack_top(registry, KEEP["keep_rollback"])} <= checkpoints(base)
        used.append(lineage_bytes(base))

    # The structure is the policy's: weights of current + rollback entries + newest versions, reports of
    # the newest cycles, one snapshot, one cached GT encoder.
    assert len(checkpoints(base)) <= 1 + KEEP["keep_rollback"] + KEEP["keep_versions"]
    assert len([d for d in (base.model_dir / "versions").iterdir() if not d.name.startswith(".")]) <= \
        KEEP["keep_reports"] + KEEP["keep_rollback"] + 1
    assert len([d for d in project_dir(base, PROJECT).iterdir() if d.is_dir()]) == KEEP["keep_snapshots"]
    assert len(list((base.model_dir / "gt-encoders").glob("*.pth"))) == 1
    # The history still reads: the newest cycles' reports, the last one marked current.
    rows = json.loads((registry.home / "history.json").read_text())["cycles"]
    assert [r["version"] for r in rows] == [o["version"] for o in outcomes[-len(rows):]]
    assert len(rows) >= KEEP["keep_reports"] and rows[-1]["current"] == (outcomes[-1]["status"] == "promoted")
    # Cycles 21-30 use no more disk than cycles 1-10 did (compared over whole windows: what is kept
    # depends on where the last promotions fell), but for small bounded records (switches.json).
    assert max(used[20:]) <= max(used[:10]) * 1.05 + 16_000, used

    # Rollback after pruning walks back through the kept stack and serves loadable weights.
    expected = stack_top(registry, KEEP["keep_rollback"])
    for name in expected:
        version, _ = registry.rollback()
        assert version.name == name and registry.current_name() == name
        TINY.load(version.checkpoint)


# -- what is never removed ------------------------------------------------------------------------------


def make_version(settings: Settings, checkpoint: Path, name: str, created: str, lineage: str = "base") -> Path:
    """A version directory as a cycle writes it (its checkpoint a link), with engines and reports."""
    directory = settings.model_dir / "versions" / name
    (directory / "engines").mkdir(parents=True)
    (directory / "reports").mkdir()
    os.symlink(checkpoint, directory / CHECKPOINT_FILE)
    (directory / "engines" / "fp32-0123456789abcdef.onnx").write_bytes(b"\0" * 4096)
    (directory / "reports" / "metrics.json").write_text("{}")
    record = {"version": name, "lineage": lineage, "created": created, "size": 64,
              "champion": {"name": None, "metrics": {}}, "challenger": {"name": name, "metrics": {}},
              "decision": {"promote": True}, "held_out": {"count": 0, "items": []}}
    (directory / CYCLE_FILE).write_text(json.dumps(record))
    return directory


@pytest.fixture
def settings(tmp_path, tiny_checkpoint, monkeypatch) -> Settings:
    """Settings the environment repeats, so ``isnet model prune`` run in-process agrees."""
    env = {"ISNET_HOME": str(tmp_path / "home"), "MODEL_DIR": str(tmp_path / "models"),
           "ISNET_WEIGHTS": str(tiny_checkpoint), "ISNET_KEEP_VERSIONS": "1", "ISNET_KEEP_ROLLBACK": "2",
           "ISNET_KEEP_REPORTS": "5", "ISNET_KEEP_SNAPSHOTS": "1", "ISNET_PROJECT_LINEAGES": ""}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings()


def eight_promotions(settings: Settings, checkpoint: Path) -> list[str]:
    """Base versions v0 (oldest) .. v7, each promoted in turn: v7 is current, v6, v5, ... on the stack."""
    registry = ModelRegistry(settings)
    names = [f"isnet-ft-2026010{d}-000000-00000{d}" for d in range(8)]
    for d, name in enumerate(names):
        make_version(settings, checkpoint, name, f"2026-01-0{d + 1}T00:00:00.000000+00:00")
        registry.promote(name)
    return names


def test_pruning_never_removes_the_current_version_the_rollback_stack_another_lineages_or_a_running_cycles(
        settings, tiny_checkpoint):
    v = eight_promotions(settings, tiny_checkpoint)
    ModelRegistry(settings, "p8").promote(v[1], how="use")  # project 8 serves an old base version
    staging = settings.model_dir / "versions" / f"{PREFIX}isnet-ft-20260109-000000-000009"
    staging.mkdir()
    (staging / FINGERPRINT_FILE).write_text(json.dumps({"fingerprint": "x", "champion": v[0]}))

    result = prune(settings, "base")

    # current v7, newest 1 version (v7 too), rollback entries v6 and v5, p8's v1, the running cycle's v0
    assert result.kept == {v[7]: "current in lineage base", v[6]: "on lineage base's rollback stack",
                           v[5]: "on lineage base's rollback stack", v[1]: "current in lineage p8",
                           v[0]: "the champion of a cycle in progress"}
    assert checkpoints(settings) == {v[7], v[6], v[5], v[1], v[0]}
    assert (settings.model_dir / "versions" / v[0] / "engines").is_dir() and staging.is_dir()
    # v3, v4 are among the 5 newest cycles: their reports stay, their weights and engines go; v2 goes whole
    for name in v[3:5]:
        assert sorted(p.name for p in (settings.model_dir / "versions" / name).iterdir()) == [CYCLE_FILE, "reports"]
    assert not (settings.model_dir / "versions" / v[2]).exists()
    assert {r.what for r in result.removals} == {"weights", "engines", "version"} and result.freed > 3 * 4096
    assert ModelRegistry(settings).rollback()[0].name == v[6]
    assert ModelRegistry(settings).rollback()[0].name == v[5]


def test_versions_older_than_the_kept_reports_go_whole_and_the_pretrained_weights_stay(settings, tiny_checkpoint):
    v = eight_promotions(settings, tiny_checkpoint)
    registry = ModelRegistry(settings)
    pretrained = registry.pretrained()
    (pretrained.directory / "engines").mkdir(parents=True)
    (pretrained.directory / "engines" / "fp32-0123456789abcdef.onnx").write_bytes(b"\0" * 64)
    registry.promote(registry.pretrained().name, how="use")  # the pretrained weights now current, v7 on the stack

    result = prune(settings, "base")

    # newest 5 cycles: v3..v7; v7 (newest, stack), v6 (stack) keep weights; v0..v2 go whole
    gone = {r.shown.name for r in result.removals if r.what == "version"}
    assert gone == {v[0], v[1], v[2]} and not any((settings.model_dir / "versions" / n).exists() for n in gone)
    assert checkpoints(settings) == {v[7], v[6]}
    assert (pretrained.directory / "engines" / "fp32-0123456789abcdef.onnx").is_file()
    assert Path(settings.weights).is_file() and registry.current().name == pretrained.name
    assert [i.name for i in registry.catalogue()] == [pretrained.name, v[7], v[6]]


def test_a_deleted_projects_lineage_keeps_no_weights_once_pruned_by_name(settings, tiny_checkpoint, capsys):
    names = [f"isnet-p9-ft-2026010{d}-000000-00000{d}" for d in range(3)]
    for d, name in enumerate(names):
        make_version(settings, tiny_checkpoint, name, f"2026-01-0{d + 1}T00:00:00.000000+00:00", lineage="p9")
        ModelRegistry(settings, "p9").promote(name)
    ModelRegistry(settings, "p9").retire()  # Label Studio's PROJECT_DELETED
    assert prune(settings, "base").removals == [] and checkpoints(settings) == set(names)  # not another's cycle

    assert main(["model", "prune", "--project", "9"]) == 0
    assert checkpoints(settings) == set() and "lineage p9: removed 6 item(s)" in capsys.readouterr().out
    assert all((settings.model_dir / "versions" / name / CYCLE_FILE).is_file() for name in names)


def test_the_snapshot_a_cycle_in_progress_reads_stays_even_when_none_are_kept(settings, monkeypatch):
    monkeypatch.setenv("ISNET_KEEP_SNAPSHOTS", "0")
    settings = Settings()
    snapshot = project_dir(settings, 7) / "20260101T000000000000Z"
    (snapshot / "images").mkdir(parents=True)
    (snapshot / "images" / "task-1.png").write_bytes(b"png")
    assert [r.shown for r in plan(settings, "p7").removals] == [snapshot]
    staging = settings.model_dir / "versions" / f"{PREFIX}isnet-p7-ft-20260101-000000-000001"
    staging.mkdir(parents=True)
    (staging / FINGERPRINT_FILE).write_text(json.dumps({"fingerprint": "x", "champion": "c", "lineage": "p7"}))
    assert plan(settings, "p7").removals == []


def test_prune_dry_run_lists_what_prune_removes_and_removes_nothing(settings, tiny_checkpoint, capsys):
    eight_promotions(settings, tiny_checkpoint)
    before = tree(settings.model_dir)

    assert main(["model", "prune", "--dry-run", "--json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert tree(settings.model_dir) == before
    assert listed["dry_run"] and listed["removals"] and listed["freed_bytes"] > 0

    assert main(["model", "prune", "--json"]) == 0
    (done,) = json.loads(capsys.readouterr().out)
    assert done["removals"] == listed["removals"] and not done["dry_run"]
    assert all(not Path(r["path"]).exists() for r in done["removals"])
    assert tree(settings.model_dir) != before


def test_prune_prints_each_removal_its_size_and_the_bytes_freed(settings, tiny_checkpoint, capsys):
    v = eight_promotions(settings, tiny_checkpoint)
    assert main(["model", "prune", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("lineage base: would remove ")
    assert f"versions/{v[0]}  (older than the newest 5 cycles of lineage base)" in out
    assert "engines" in out and f"kept            {v[7]}  (current in lineage base)" in out


def test_a_negative_keep_setting_is_refused_with_its_name(settings, monkeypatch, capsys):
    monkeypatch.setenv("ISNET_KEEP_REPORTS", "-1")
    assert main(["model", "prune"]) == 2
    err = capsys.readouterr().err
    assert "ISNET_KEEP_REPORTS" in err and "greater than or equal to 0" in err


def test_a_cycle_whose_pruning_fails_is_still_written_promoted_and_says_why(tiny_settings, tiny_pairs, monkeypatch):
    images, masks = tiny_pairs(6)
    settings = tiny_settings

    def broken(*_args, **_kwargs):
        raise OSError("the model disk went read-only")

    monkeypatch.setattr(retention, "prune", broken)
    options = TrainOptions(iters=2, size=64, batch=2, device="cpu", amp=False, feature_loss="off", anchors="none",
                           promote_rule="always")
    report = run_cycle((images, masks), settings, options, networks=TINY)
    assert report.promoted and ModelRegistry(settings).current_name() == report.version
    assert "the model disk went read-only" in report.summary()["retention"]["error"]


# -- the forgetting guard's images ---------------------------------------------------------------------


def test_old_snapshots_go_but_the_held_out_images_the_guard_reads_stay(ls, tiny_checkpoint, tmp_path):
    """A held-out task's annotation is deleted after cycle 1: later snapshots no longer hold it,
    so the guard reads it from cycle 1's snapshot, which retention keeps for that image only."""
    settings = settings_for(ls, tiny_checkpoint, tmp_path / "models", train_share="full", promote_rule="always",
                            holdout_fraction=0.3, **KEEP)
    add_duts_tasks(ls, 10)
    first = retrain_project(PROJECT, force=True, settings=settings, networks=TINY)
    held = json.loads(Path(first["report_path"]).read_text())["held_out"]["items"]
    key, image, mask = held[0]
    ls.tasks[int(key.removeprefix("task-"))]["annotations"] = []
    for _ in range(2):
        last = retrain_project(PROJECT, force=True, settings=settings, networks=TINY)

    (first_snapshot, newest) = sorted(d for d in project_dir(settings, PROJECT).iterdir() if d.is_dir())
    assert Path(first["dataset"]) == first_snapshot and Path(last["dataset"]) == newest
    kept = {str(p.relative_to(first_snapshot)) for p in first_snapshot.rglob("*") if p.is_file()}
    guarded = {str(Path(path).relative_to(first_snapshot)) for _, image_, mask_ in held for path in (image_, mask_)}
    assert {f"images/{key}.png", f"masks/{key}.png"} <= kept <= guarded | {"manifest.json"}
    cycle = json.loads(Path(last["report_path"]).read_text())
    assert key in cycle["earlier"]["keys"] and cycle["budget"]["earlier_missing"] == 0
    assert Path(image).is_file() and Path(mask).is_file()


def test_the_guard_reports_a_missing_held_out_file_and_still_judges_on_the_others(tiny_settings, tmp_path,
                                                                                  duts_tr, caplog):
    names = sorted(p.stem for p in (duts_tr / "images").iterdir())[:16]

    def pairs(folder: str, chosen: list[str]) -> tuple[Path, Path]:
        images, masks = tmp_path / folder / "images", tmp_path / folder / "masks"
        images.mkdir(parents=True)
        masks.mkdir(parents=True)
        for name in chosen:
            shutil.copy(duts_tr / "images" / f"{name}.jpg", images)
            shutil.copy(duts_tr / "masks" / f"{name}.png", masks)
        return images, masks

    options = TrainOptions(iters=2, size=64, batch=2, device="cpu", amp=False, feature_loss="off", anchors="none",
                           promote_rule="always")
    first = run_cycle(pairs("a", names[:4]), tiny_settings, options, held_out=pairs("a-held", names[4:8]),
                      networks=TINY)
    gone = tmp_path / "a-held" / "images" / f"{names[5]}.jpg"
    gone.unlink()
    with caplog.at_level(logging.WARNING, logger="backend.learning.history"):
        second = run_cycle(pairs("b", names[8:12]), tiny_settings, options, held_out=pairs("b-held", names[12:16]),
                           networks=TINY)

    assert first.promoted and second.budget["earlier_missing"] == 1
    assert sorted(second.earlier["keys"]) == sorted(set(names[4:8]) - {names[5]})
    (missing,) = [s for s in second.skipped if s.key == names[5]]
    assert missing.path == str(gone) and "forgetting guard cannot score it" in missing.reason
    assert "cannot score 1 earlier held-out item" in caplog.text and str(gone) in caplog.text
    assert json.loads((second.directory / CYCLE_FILE).read_text())["budget"]["earlier_missing"] == 1


def test_a_missing_newest_copy_is_reported_not_replaced_by_an_older_label(tmp_path):
    old, new = tmp_path / "old.png", tmp_path / "new.png"
    old.write_bytes(b"x")
    records = [{"held_out": {"items": [["k", str(old), str(old)]]}},
               {"held_out": {"items": [["k", str(new), str(new)]]}}]
    earlier = earlier_held_out(records, set(), 10)
    assert earlier.items == [] and earlier.missing == [("k", str(new), str(new))]


# -- disk use in /metrics ----------------------------------------------------------------------------------


def test_disk_use_is_counted_per_lineage_and_kind_and_shown_in_metrics(settings, tiny_checkpoint):
    base = make_version(settings, tiny_checkpoint, "isnet-ft-20260101-000000-000001", "2026-01-01T00:00:00+00:00")
    p7 = make_version(settings, tiny_checkpoint, "isnet-p7-ft-20260101-000000-000002", "2026-01-01T00:00:00+00:00",
                      lineage="p7")
    snapshot = project_dir(settings, 7) / "20260101T000000000000Z" / "images"
    snapshot.mkdir(parents=True)
    (snapshot / "task-1.png").write_bytes(b"\0" * 1000)
    cache = settings.model_dir / "gt-encoders"
    cache.mkdir()
    (cache / "r-k.pth").write_bytes(b"\0" * 500)
    (cache / "r-k.json").write_text(json.dumps({"lineage": "p7"}))
    ModelRegistry(settings, "p7").promote(p7.name)

    usage = disk_usage(settings)["lineages"]
    assert usage["p7"]["engines"] == usage["base"]["engines"] == 4096
    assert usage["p7"]["versions"] == sum(p.lstat().st_size for p in p7.rglob("*") if p.is_file()
                                          or p.is_symlink()) - 4096
    assert usage["p7"]["snapshots"] == 1000 and usage["p7"]["gt_encoders"] == 500 + (cache / "r-k.json").stat().st_size
    assert usage["p7"]["lineage_files"] > 0 and usage["base"]["snapshots"] == 0 and base.is_dir()
    assert snapshot_projects(settings) == {7: project_dir(settings, 7)}  # where worker.retrain writes them
    assert ISNetModel(settings).metrics()["disk"]["lineages"]["p7"] == usage["p7"]


def test_the_policy_comes_from_the_settings(settings):
    assert Policy.from_settings(settings) == Policy(keep_versions=1, keep_rollback=2, keep_reports=5, keep_snapshots=1)
    assert Policy.from_settings(Settings(model_dir_env="/x", keep_rollback=0)).keep_rollback == 0
    assert plan(settings, "base").removals == []  # an empty MODEL_DIR
