"""`isnet evaluate`: reports, and every failure case listed instead of dropped."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from backend.cli import main
from backend.isnet.network import ISNetDIS
from tests.paths import DUTS_TE, FIXTURES

PYSOD = FIXTURES / "pysodmetrics"
REPORT_FILES = {"metrics.json", "metrics.md", "metrics.csv", "per_image.csv", "pr_curve.png", "fm_curve.png"}


@pytest.fixture
def data(tmp_path):
    """Six real DUTS-TE masks, and predictions: the masks themselves, slightly blurred."""
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir()
    pred.mkdir()
    for path in sorted((DUTS_TE / "masks").glob("*.png"))[:6]:
        shutil.copy(path, gt / path.name)
        mask = Image.open(path).convert("L")
        mask.resize((mask.width // 4, mask.height // 4)).resize(mask.size, Image.BILINEAR).save(pred / path.name)
    return gt, pred


def evaluate(gt, pred, out, *extra):
    return main(["evaluate", "--gt", str(gt), "--pred", str(pred), "--out", str(out), "--workers", "2", *extra])


def report(out):
    return json.loads((out / "metrics.json").read_text())


def kinds(rep):
    return sorted(i["kind"] for i in rep["issues"])


def test_complete_run_writes_every_report_file(data, tmp_path, capsys):
    gt, pred = data
    out = tmp_path / "out"
    assert evaluate(gt, pred, out, "--name", "blurred") == 0
    assert {p.name for p in out.iterdir()} == REPORT_FILES
    rep = report(out)
    assert rep["complete"] and rep["name"] == "blurred" and not rep["issues"]
    assert rep["settings"]["image_count"] == 6 and rep["settings"]["dataset"] == str(gt.resolve())
    assert len(rep["per_image"]) == 6 and set(rep["curves"]) == {"threshold", "precision", "recall", "fmeasure",
                                                                 "emeasure"}
    assert 0.9 < rep["metrics"]["sm"] <= 1 and rep["metrics"]["mae"] < 0.05
    printed = capsys.readouterr().out
    assert "| blurred | 6 |" in printed and "maxfmeasure" in printed
    assert (out / "metrics.csv").read_text().startswith("run,images,sm,wfm,mae,maxfmeasure")


def test_fixture_golden_values_through_the_command(tmp_path):
    out = tmp_path / "out"
    assert main(["evaluate", "--gt", str(PYSOD / "masks"), "--pred", str(PYSOD / "preds"), "--out", str(out)]) == 0
    gold = json.loads((PYSOD / "version_performance.json").read_text())
    metrics = report(out)["metrics"]
    assert abs(metrics["maxfmeasure"] - gold["v1_4_3"]["maxFm"]) <= 1e-6
    assert abs(metrics["hce"] - gold["v1_5_1"]["HCE"]) <= 1e-6


def test_missing_pair_fails_before_evaluating_unless_allowed(data, tmp_path, capsys):
    gt, pred = data
    gone = sorted(pred.iterdir())[2]
    gone.unlink()
    Image.new("L", (8, 8)).save(pred / "stray.png")
    out = tmp_path / "out"
    assert evaluate(gt, pred, out) == 1
    err = capsys.readouterr().err
    assert gone.stem in err and "stray" in err and "--allow-missing" in err
    assert not out.exists()
    assert evaluate(gt, pred, out, "--allow-missing") == 0
    rep = report(out)
    assert kinds(rep) == ["missing_ground_truth", "missing_prediction"] and not rep["complete"]
    assert rep["settings"]["image_count"] == 5
    assert "Incomplete" in (out / "metrics.md").read_text()


def test_unreadable_file_is_listed_and_fails_the_run(data, tmp_path, capsys):
    gt, pred = data
    broken = sorted(pred.iterdir())[1]
    broken.write_bytes(broken.read_bytes()[:60])
    out = tmp_path / "out"
    assert evaluate(gt, pred, out) == 1
    assert broken.stem in capsys.readouterr().err
    rep = report(out)  # the evaluated pairs are kept, marked incomplete
    assert kinds(rep) == ["unreadable"] and rep["issues"][0]["path"] == str(broken)
    assert not rep["complete"] and rep["settings"]["image_count"] == 5
    assert evaluate(gt, pred, tmp_path / "allowed", "--allow-missing") == 0


def test_size_mismatch_is_listed_but_a_change_of_resolution_is_resized(data, tmp_path):
    gt, pred = data
    files = sorted(pred.iterdir())
    rotated = Image.open(files[0])
    rotated.transpose(Image.Transpose.ROTATE_90).save(files[0])
    half = Image.open(files[1])
    half.resize((half.width // 2, half.height // 2)).save(files[1])
    out = tmp_path / "out"
    assert evaluate(gt, pred, out) == 1
    rep = report(out)
    assert kinds(rep) == ["resized", "size_mismatch"]
    assert [i["name"] for i in rep["per_image"] if i["resized"]] == [files[1].stem]
    assert evaluate(gt, pred, tmp_path / "always", "--resize", "always") == 0
    assert kinds(report(tmp_path / "always")) == ["resized", "resized"]
    assert evaluate(gt, pred, tmp_path / "never", "--resize", "never", "--allow-missing") == 0
    assert kinds(report(tmp_path / "never")) == ["size_mismatch", "size_mismatch"]


def test_empty_folders_are_errors(data, tmp_path, capsys):
    gt, _ = data
    empty = tmp_path / "empty"
    empty.mkdir()
    assert evaluate(gt, empty, tmp_path / "out") == 2
    assert "no prediction files" in capsys.readouterr().err
    assert evaluate(empty, gt, tmp_path / "out") == 2
    assert "no ground-truth files" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_all_black_ground_truth_is_evaluated_and_flagged(data, tmp_path):
    gt, pred = data
    black = sorted(gt.iterdir())[0]
    Image.new("L", Image.open(black).size, 0).save(black)
    out = tmp_path / "out"
    assert evaluate(gt, pred, out) == 0
    rep = report(out)
    assert kinds(rep) == ["empty_ground_truth"] and rep["complete"]
    row = next(i for i in rep["per_image"] if i["name"] == black.stem)
    assert row["maxfmeasure"] == 0 and row["wfm"] == 0 and all(v is not None for v in rep["metrics"].values())


def test_compare_puts_runs_side_by_side(data, tmp_path, capsys):
    gt, pred = data
    assert evaluate(gt, gt, tmp_path / "perfect", "--name", "perfect") == 0
    assert evaluate(gt, pred, tmp_path / "blurred", "--name", "blurred") == 0
    capsys.readouterr()
    assert main(["evaluate", "--compare", str(tmp_path / "perfect" / "metrics.json"),
                 str(tmp_path / "blurred" / "metrics.json"), "--out", str(tmp_path / "cmp")]) == 0
    captured = capsys.readouterr()
    lines = [line for line in captured.out.splitlines() if line.startswith("| ")]
    assert lines[0].startswith("| run | images | sm |") and lines[2].startswith("| perfect | 6 | 0.99")
    assert lines[3].startswith("| blurred | 6 |") and "warning" not in captured.err
    written = {p.name for p in (tmp_path / "cmp").iterdir()}
    assert {"compare.md", "compare.csv", "pr_curve.png", "fm_curve.png"} <= written
    (tmp_path / "bad.json").write_text("{}")
    assert main(["evaluate", "--compare", str(tmp_path / "bad.json")]) == 2


def test_option_combinations_are_checked(data, tmp_path, capsys):
    gt, pred = data
    assert main(["evaluate", "--gt", str(gt), "--pred", str(pred)]) == 2
    assert main(["evaluate", "--gt", str(gt), "--pred", str(pred), "--out", str(tmp_path), "--size", "320"]) == 2
    assert "only apply with --images" in capsys.readouterr().err
    assert main(["evaluate", "--compare", "a.json", "--gt", str(gt)]) == 2


@pytest.fixture
def tiny_model(monkeypatch, tmp_path):
    """Only the plumbing is under test: an untrained network at a tiny size."""
    path = tmp_path / "random.pth"
    torch.manual_seed(0)
    torch.save(ISNetDIS().state_dict(), path)
    monkeypatch.setenv("ISNET_WEIGHTS", str(path))
    monkeypatch.setenv("ISNET_ENGINE", "torch")
    monkeypatch.setenv("MODEL_DIR", str(tmp_path / "models"))


def test_images_mode_runs_the_model_and_saved_masks_evaluate_identically(data, tiny_model, tmp_path):
    gt, _ = data
    images = tmp_path / "images"
    images.mkdir()
    for mask in sorted(gt.iterdir()):
        shutil.copy(DUTS_TE / "images" / f"{mask.stem}.jpg", images)
    (images / "extra.jpg").write_bytes((images / f"{sorted(gt.iterdir())[0].stem}.jpg").read_bytes())
    saved, out = tmp_path / "saved", tmp_path / "out"
    args = ["evaluate", "--gt", str(gt), "--images", str(images), "--size", "64", "--save-pred", str(saved),
            "--out", str(out), "--workers", "2"]
    assert main(args) == 1  # extra.jpg has no ground truth
    assert not out.exists()
    assert main([*args, "--allow-missing"]) == 0
    rep = report(out)
    assert rep["settings"]["engine"] == "torch" and rep["settings"]["input_size"] == 64
    assert rep["settings"]["model_version"].startswith("isnet-pretrained-") and rep["name"] == "torch-64"
    assert kinds(rep) == ["missing_ground_truth"] and rep["settings"]["image_count"] == 6
    assert sorted(p.stem for p in saved.iterdir()) == sorted(p.stem for p in gt.iterdir())
    again = tmp_path / "again"
    assert main(["evaluate", "--gt", str(gt), "--pred", str(saved), "--out", str(again), "--workers", "1"]) == 0
    assert report(again)["metrics"] == rep["metrics"]
    assert [{k: v for k, v in i.items() if k not in ("prediction", "image")} for i in report(again)["per_image"]] == \
        [{k: v for k, v in i.items() if k not in ("prediction", "image")} for i in rep["per_image"]]


def test_images_mode_lists_unreadable_images(data, tiny_model, tmp_path):
    gt, _ = data
    images = tmp_path / "images"
    images.mkdir()
    for mask in sorted(gt.iterdir()):
        shutil.copy(DUTS_TE / "images" / f"{mask.stem}.jpg", images)
    broken = sorted(images.iterdir())[0]
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    out = tmp_path / "out"
    args = ["evaluate", "--gt", str(gt), "--images", str(images), "--size", "64", "--out", str(out), "--workers", "1"]
    assert main(args) == 1
    rep = report(out)
    assert kinds(rep) == ["unreadable"] and rep["issues"][0]["name"] == broken.stem
    assert rep["settings"]["image_count"] == 5 and np.isfinite(rep["metrics"]["sm"])


def test_images_mode_refuses_an_unknown_model_version(data, tiny_model, tmp_path, capsys):
    gt, _ = data
    assert main(["evaluate", "--gt", str(gt), "--images", str(DUTS_TE / "images"), "--allow-missing",
                 "--size", "64", "--model", "isnet-ft-nope", "--out", str(tmp_path / "out")]) == 2
    assert "no model version 'isnet-ft-nope'" in capsys.readouterr().err
