"""The resumable training state: what it holds, and that a resumed run continues where it stopped."""

from __future__ import annotations

import copy
import dataclasses
import io

import pytest
import torch

from backend.isnet.training.data import Dataset, load_pairs
from backend.isnet.training.options import TrainOptions
from backend.isnet.training.tiny import TinyGTEncoder, TinySegmenter
from backend.isnet.training.trainer import run_training

OPTIONS = TrainOptions(iters=8, size=64, crop=32, batch=2, lr=1e-3, device="cpu", amp=False, gt_max_iters=4,
                       gt_target_f=1.1, gt_check_every=2, checkpoint_every=3)


@pytest.fixture(scope="module")
def pairs(duts_tr):
    torch.set_num_threads(1)
    items = Dataset.from_folders(duts_tr / "images", duts_tr / "masks").items[:6]
    return load_pairs(items, 64_000_000, 64)[0]


def _stop_at(step: int):
    def progress(event):
        if event.stage == "segmenter" and event.step == step:
            raise RuntimeError("worker killed")
    return progress


def test_training_state_holds_model_gt_encoder_optimizer_and_step(pairs):
    saved = []
    torch.manual_seed(0)
    run_training(TinySegmenter(), TinyGTEncoder(), pairs, OPTIONS, save_state=lambda s: saved.append(copy.deepcopy(s)))
    assert [(s["stage"], s.get("gt_step", s.get("step"))) for s in saved] == [
        ("gt_encoder", 3), ("segmenter", 0), ("segmenter", 3), ("segmenter", 6), ("trained", 8)]
    state = saved[-2]
    assert {"model", "gt_encoder", "optimizer", "step", "gt", "losses", "options"} <= state.keys()
    assert state["optimizer"]["state"], "Adam moments are saved"
    assert state["gt"]["steps"] == 4
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    assert torch.load(buffer, weights_only=True)["step"] == 6


def test_resumed_training_continues_from_the_saved_step_and_ends_as_an_uninterrupted_run(pairs):
    torch.manual_seed(0)
    uninterrupted = TinySegmenter()
    run_training(uninterrupted, TinyGTEncoder(), pairs, OPTIONS)

    torch.manual_seed(0)
    saved = []
    with pytest.raises(RuntimeError, match="worker killed"):
        run_training(TinySegmenter(), TinyGTEncoder(), pairs, OPTIONS,
                     save_state=lambda s: saved.append(copy.deepcopy(s)), progress=_stop_at(5))
    state = saved[-1]
    assert (state["stage"], state["step"]) == ("segmenter", 3)

    torch.manual_seed(123)  # other initial weights: everything must come from the state
    resumed, steps = TinySegmenter(), []
    result = run_training(resumed, TinyGTEncoder(), pairs, OPTIONS, state=state,
                          progress=lambda e: steps.append(e.step) if e.stage == "segmenter" else None)
    assert steps == [4, 5, 6, 7, 8]
    assert result.steps == 8 and [row["step"] for row in result.losses] == list(range(1, 9))
    for (key, a), b in zip(uninterrupted.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=key)


def test_an_interrupted_gt_encoder_stage_resumes_without_starting_over(pairs):
    saved = []
    torch.manual_seed(0)
    options = dataclasses.replace(OPTIONS, gt_max_iters=7)

    def stop(event):
        if event.stage == "gt_encoder" and event.step == 5:
            raise RuntimeError("worker killed")

    with pytest.raises(RuntimeError):
        run_training(TinySegmenter(), TinyGTEncoder(), pairs, options,
                     save_state=lambda s: saved.append(copy.deepcopy(s)), progress=stop)
    assert (saved[-1]["stage"], saved[-1]["gt_step"]) == ("gt_encoder", 3)
    gt_steps = []
    result = run_training(TinySegmenter(), TinyGTEncoder(), pairs, options, state=saved[-1],
                          progress=lambda e: gt_steps.append(e.step) if e.stage == "gt_encoder" and e.values.get("bce")
                          else None)
    assert gt_steps == [4, 5, 6, 7]
    assert result.gt.steps == 7
