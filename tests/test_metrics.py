"""`backend.metrics`: PySODMetrics' golden values, merge = single process, pairing and decoding rules."""

import json
import os
import subprocess
import sys
import textwrap
import warnings
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import py_sod_metrics as psm
import pytest
from PIL import Image

from backend.metrics import COLUMNS, Evaluator, MetricSuite, evaluate_predictions, pair_folders
from backend.metrics.evaluator import _context
from backend.metrics.issues import Issue, blocking, summarize
from backend.metrics.masks import MaskError, SizeMismatch, align, read_mask, same_aspect
from backend.metrics.pairing import PairingError
from tests.paths import DUTS_TE, FIXTURES

PYSOD = FIXTURES / "pysodmetrics"
# metrics.json column -> (version key, key) in PySODMetrics' own version_performance.json
GOLDEN = {
    "mae": ("v1_4_3", "MAE"), "sm": ("v1_4_3", "Smeasure"), "wfm": ("v1_4_3", "wFmeasure"),
    "maxfmeasure": ("v1_4_3", "maxFm"), "avgfmeasure": ("v1_4_3", "meanFm"), "adpfmeasure": ("v1_4_3", "adpFm"),
    "maxem": ("v1_4_3", "maxEm"), "avgem": ("v1_4_3", "meanEm"), "adpem": ("v1_4_3", "adpEm"),
    "hce": ("v1_5_1", "HCE"),
}


def _gray(path):
    return np.asarray(Image.open(path).convert("L"))


@pytest.fixture(scope="module")
def duts_subset(tmp_path_factory):
    """40 real DUTS-TE masks with predictions made from them: blurred, shifted, some resized or constant."""
    root = tmp_path_factory.mktemp("duts")
    gt_dir, pred_dir = root / "gt", root / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    rng = np.random.default_rng(0)
    for i, path in enumerate(sorted((DUTS_TE / "masks").glob("*.png"))[::12][:40]):
        gt = _gray(path)
        (gt_dir / path.name).write_bytes(path.read_bytes())
        pred = np.roll(gt.astype(np.float64), int(rng.integers(-9, 10)), axis=1)
        pred = np.clip(pred * 0.8 + rng.normal(0, 25, gt.shape), 0, 255).astype(np.uint8)
        if i % 13 == 5:
            pred[:] = 77  # a constant map: min-max normalisation leaves it as is
        img = Image.fromarray(pred)
        if i % 10 == 3:  # half resolution, same aspect ratio: resized as PySODEvalToolkit does
            img = img.resize((max(1, gt.shape[1] // 2), max(1, gt.shape[0] // 2)), Image.BILINEAR)
        img.save(pred_dir / f"{path.stem}.{'jpg' if i % 7 == 2 else 'png'}", quality=95)
    return gt_dir, pred_dir


def test_fixture_reproduces_pysodmetrics_golden_values():
    gold = json.loads((PYSOD / "version_performance.json").read_text())
    pairs, issues = pair_folders(PYSOD / "masks", PYSOD / "preds")
    assert len(pairs) == 3 and not blocking(issues)
    result = evaluate_predictions(pairs, issues, workers=2, progress=False)
    for column, (version, key) in GOLDEN.items():
        assert abs(result.metrics[column] - gold[version][key]) <= 1e-6, column


def test_merged_chunks_are_bit_identical_to_one_suite(duts_subset):
    gt_dir, pred_dir = duts_subset
    samples = []
    for gt_path in sorted(gt_dir.iterdir()):
        gt = _gray(gt_path)
        pred = np.asarray(Image.open(next(pred_dir.glob(gt_path.stem + ".*"))).convert("L"))
        if pred.shape == gt.shape:
            samples.append((pred, gt))
    whole = MetricSuite()
    per_image = [whole.step(p, g) for p, g in samples]
    merged = MetricSuite()
    for start in range(0, len(samples), 7):
        part = MetricSuite()
        assert [part.step(p, g) for p, g in samples[start:start + 7]] == per_image[start:start + 7]
        merged.merge(part)
    assert merged.get_results() == whole.get_results()
    for name, curve in whole.curves().items():
        assert np.array_equal(curve, merged.curves()[name]), name


def test_parallel_equals_single_process_and_plain_pysodmetrics(duts_subset):
    gt_dir, pred_dir = duts_subset
    pairs, issues = pair_folders(gt_dir, pred_dir)
    single = evaluate_predictions(pairs, issues, workers=1, progress=False)
    parallel = evaluate_predictions(pairs, issues, workers=2, chunk_size=3, progress=False)
    pool_only = evaluate_predictions(pairs, issues, workers=3, chunk_size=4, progress=False,
                                     inline_while_starting=False)
    guided = evaluate_predictions(pairs, issues, workers=2, progress=False)
    for other in (parallel, pool_only, guided):
        assert single.count == other.count == 40
        assert single.metrics == other.metrics
        assert single.curves == other.curves
        assert [i.to_dict() for i in single.images] == [i.to_dict() for i in other.images]
        assert [i.to_dict() for i in single.issues] == [i.to_dict() for i in other.issues]
    assert sum(i.kind == "resized" for i in single.issues) == 4

    # The same numbers as the plain PySODEvalToolkit recipe: cv2-style resize, default step().
    import cv2

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fm, em, sm, wfm, mae, hce = (psm.Fmeasure(), psm.Emeasure(), psm.Smeasure(), psm.WeightedFmeasure(),
                                     psm.MAE(), psm.HumanCorrectionEffortMeasure())
    for pair in pairs:
        gt = _gray(pair.gt)
        pred = _gray(pair.source)
        if pred.shape != gt.shape:
            pred = cv2.resize(pred, dsize=gt.shape[::-1], interpolation=cv2.INTER_LINEAR)
        for metric in (fm, em, sm, wfm, mae, hce):
            metric.step(pred, gt)
    f, e = fm.get_results()["fm"], em.get_results()["em"]
    expected = {"sm": sm.get_results()["sm"], "wfm": wfm.get_results()["wfm"], "mae": mae.get_results()["mae"],
                "maxfmeasure": f["curve"].max(), "avgfmeasure": f["curve"].mean(), "adpfmeasure": f["adp"],
                "maxem": e["curve"].max(), "avgem": e["curve"].mean(), "adpem": e["adp"],
                "hce": hce.get_results()["hce"]}
    assert list(single.metrics) == list(COLUMNS)
    for column, value in expected.items():
        assert single.metrics[column] == pytest.approx(float(value), abs=1e-12), column
    assert np.allclose(single.curves["fmeasure"], np.flip(f["curve"]), atol=1e-12)
    assert np.allclose(single.curves["precision"], np.flip(fm.get_results()["pr"]["p"]), atol=1e-12)


def test_all_black_ground_truth_is_scored_as_pysodmetrics_does():
    gt = np.zeros((40, 50), np.uint8)
    pred = np.zeros((40, 50), np.uint8)
    pred[5:10, 5:10] = 255
    values = MetricSuite().step(pred, gt)
    assert values["maxfmeasure"] == 0 and values["wfm"] == 0
    assert values["sm"] == pytest.approx(1 - 25 / 2000)
    assert all(np.isfinite(v) for v in values.values())


def test_pairing_by_stem_across_extensions_and_every_leftover_is_listed(tmp_path):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    (gt / "sub").mkdir(parents=True)
    pred.mkdir()
    for name in ("a.png", "b.png", "sub/c.png", "d.png"):
        Image.new("L", (4, 4)).save(gt / name)
    for name in ("a.jpg", "b.png", "c.png", "e.png", "d.png", "d.jpg"):
        Image.new("L", (4, 4)).save(pred / name)
    (pred / "notes.txt").write_text("x")
    pairs, issues = pair_folders(gt, pred)
    assert [(p.name, p.source.name) for p in pairs] == [("a", "a.jpg"), ("b", "b.png"), ("c", "c.png")]
    kinds = sorted((i.kind, i.name) for i in issues)
    assert kinds == [("duplicate_name", "d"), ("duplicate_name", "d"), ("missing_ground_truth", "e"),
                     ("not_an_image", "notes.txt")]
    assert len(blocking(issues)) == 3
    lines = summarize(issues, limit=1)
    assert lines[0].startswith("1 x missing_ground_truth") and "  ... and 1 more" in lines


def test_empty_or_absent_folders_are_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "full").mkdir()
    Image.new("L", (4, 4)).save(tmp_path / "full" / "a.png")
    with pytest.raises(PairingError, match="no ground-truth files"):
        pair_folders(tmp_path / "empty", tmp_path / "full")
    with pytest.raises(PairingError, match="no prediction files"):
        pair_folders(tmp_path / "full", tmp_path / "empty")
    with pytest.raises(PairingError, match="does not exist"):
        pair_folders(tmp_path / "absent", tmp_path / "full")


def test_size_rule_resizes_only_a_change_of_resolution():
    assert same_aspect((150, 200), (300, 400)) and same_aspect((101, 133), (300, 400))
    assert not same_aspect((103, 133), (300, 400))
    assert not same_aspect((400, 300), (300, 400))  # rotated
    assert not same_aspect((320, 320), (300, 400))  # network resolution, not resized back
    pred = np.full((150, 200), 200, np.uint8)
    out, resized = align(pred, (300, 400))
    assert resized and out.shape == (300, 400) and out.dtype == np.uint8
    assert align(np.zeros((300, 400), np.uint8), (300, 400))[1] is False
    with pytest.raises(SizeMismatch, match="aspect ratio"):
        align(np.zeros((400, 300), np.uint8), (300, 400))
    assert align(np.zeros((400, 300), np.uint8), (300, 400), "always")[0].shape == (300, 400)
    with pytest.raises(SizeMismatch):
        align(pred, (300, 400), "never")


def test_masks_decode_like_grayscale_imread_and_refuse_broken_files(tmp_path):
    rgb = np.zeros((6, 8, 3), np.uint8)
    rgb[2:4, 2:6] = 255
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    assert read_mask(tmp_path / "rgb.png", 10**6).tolist() == rgb[..., 0].tolist()
    Image.fromarray((np.arange(48).reshape(6, 8) * 1000).astype(np.uint16)).save(tmp_path / "deep.png")
    deep = read_mask(tmp_path / "deep.png", 10**6)
    assert deep.dtype == np.uint8 and deep.max() == round(47000 / 257)
    good = tmp_path / "good.png"
    Image.fromarray(np.full((64, 64), 9, np.uint8)).save(good)
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:-30])
    for name, message in (("cut.png", "corrupt or truncated"), ("absent.png", "no such file")):
        with pytest.raises(MaskError, match=message):
            read_mask(tmp_path / name, 10**6)
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(MaskError, match="not an image"):
        read_mask(tmp_path / "text.png", 10**6)
    with pytest.raises(MaskError, match="ISNET_MAX_PIXELS"):
        read_mask(good, 100)


def test_issue_kinds_are_checked():
    with pytest.raises(ValueError):
        Issue("no_such_kind", "x")
    assert Issue("resized", "x").blocking is False and Issue("unreadable", "x").blocking is True


def test_chunks_shrink_to_single_samples_so_workers_finish_together():
    evaluator = Evaluator(workers=2, progress=False)
    sizes, taken = [], 0
    while taken < 500:
        sizes.append(evaluator._chunk_size(500, taken))
        taken += sizes[-1]
    assert max(sizes) == 16 and sizes == sorted(sizes, reverse=True)
    assert sizes[-4:] == [1] * 4


def test_evaluation_workers_start_without_scikit_learn():
    # PySODMetrics' package imports scikit-learn for a camouflage measure the evaluator never
    # uses; the fork server defers it, so no worker waits for it.
    with ProcessPoolExecutor(1, mp_context=_context()) as pool:
        question = "sorted(m for m in ('py_sod_metrics', 'sklearn') if m in __import__('sys').modules)"
        imported = pool.submit(eval, question)
        assert imported.result(timeout=120) == ["py_sod_metrics"]


def test_the_deferred_context_measure_imports_the_real_one_when_used():
    script = textwrap.dedent("""
        import sys
        import backend.metrics.preload
        import py_sod_metrics as psm
        assert "sklearn" not in sys.modules
        measure = psm.ContextMeasure()
        assert type(measure).__module__ == "py_sod_metrics.context_measure"
        assert "sklearn" in sys.modules and hasattr(psm.context_measure, "CamouflageContextMeasure")
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "ok", done.stderr


def test_importing_one_metrics_module_does_not_import_pysodmetrics():
    script = "import sys, backend.metrics.masks; print('py_sod_metrics' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "False", done.stderr


def test_workers_that_die_at_start_fail_the_evaluation_with_a_clear_error(duts_subset, monkeypatch):
    gt_dir, pred_dir = duts_subset
    pairs, issues = pair_folders(gt_dir, pred_dir)
    dying = lambda self: ProcessPoolExecutor(self.workers, mp_context=_context(), initializer=os._exit,  # noqa: E731
                                             initargs=(3,))
    monkeypatch.setattr(Evaluator, "_start_pool", dying)
    with pytest.raises(RuntimeError, match="worker processes could not be started"):
        evaluate_predictions(pairs, issues, workers=2, progress=False)
