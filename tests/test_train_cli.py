"""``isnet train`` end to end with the real ISNet networks at a tiny size."""

from __future__ import annotations

import json
import os

import torch

from backend.cli import main
from backend.learning.registry import ModelRegistry
from backend.settings import load


def test_isnet_train_runs_a_cycle_with_separate_held_out_folders_and_promotes_by_the_rule(
        tiny_pairs, tmp_path, monkeypatch, capsys, random_checkpoint, duts_tr):
    images, masks = tiny_pairs(3)
    val_images, val_masks = tmp_path / "val" / "images", tmp_path / "val" / "masks"
    val_images.mkdir(parents=True)
    val_masks.mkdir(parents=True)
    for image in sorted((duts_tr / "images").iterdir())[-2:]:
        (val_images / image.name).write_bytes(image.read_bytes())
        (val_masks / f"{image.stem}.png").write_bytes((duts_tr / "masks" / f"{image.stem}.png").read_bytes())
    monkeypatch.setenv("MODEL_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("ISNET_WEIGHTS", str(random_checkpoint))
    monkeypatch.setenv("ISNET_DEVICE", "cpu")
    monkeypatch.setenv("ISNET_THREADS", "1")
    torch.manual_seed(0)

    status = main(["train", "--images", str(images), "--masks", str(masks), "--val-images", str(val_images),
                   "--val-masks", str(val_masks), "--size", "32", "--crop", "32", "--batch", "2", "--iters", "2",
                   "--gt-iters", "2", "--promote-rule", "always"])

    out, err = capsys.readouterr()
    assert status == 0, err
    registry = ModelRegistry(load())
    [version] = registry.list_versions()
    assert registry.current_name() == version.name
    assert f"version {version.name}" in out and "promoted:" in out and "now current: " + version.name in out
    cycle = json.loads((version.directory / "cycle.json").read_text())
    assert cycle["promoted"] is True and cycle["decision"]["promote"] is True
    assert cycle["train"]["count"] == 3 and cycle["held_out"]["count"] == 2
    assert cycle["options"]["feature_loss"] == "mse" and cycle["options"]["size"] == 32
    assert cycle["training"]["steps"] == 2 and cycle["training"]["gt_encoder"]["steps"] == 2
    assert {"mae", "avgfmeasure", "sm"} <= cycle["champion"]["metrics"].keys() & cycle["challenger"]["metrics"].keys()
    assert cycle["lineage"] == "base" and cycle["interpolation"]["method"] == "anchors"


def test_isnet_train_refuses_an_existing_out_directory(tmp_path, tiny_pairs, capsys):
    images, masks = tiny_pairs(2)
    assert main(["train", "--images", str(images), "--masks", str(masks), "--out", str(tmp_path)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_label_studio_fed_cycles_use_the_same_defaults_as_isnet_train_without_flags(monkeypatch, tmp_path):
    from backend.cli import build_parser
    from backend.cli.train import options_from_args
    from backend.isnet.training.options import cpu_has_native_bf16
    from worker.retrain import cycle_options

    for name in [n for n in os.environ if n.startswith(("ISNET_TRAIN_", "ISNET_PROMOTE_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("ISNET_DEVICE", "cpu")
    args = build_parser().parse_args(["train", "--images", str(tmp_path), "--masks", str(tmp_path)])
    cli, label_studio = options_from_args(args, load()), cycle_options(load())
    assert cli == label_studio
    # The recipe that measurably taught the butterflies: whole images at the serving size, batch 1,
    # lr 1e-5 (cosine to 3e-6), feature loss 0.02 against the GT encoder, steps from a 30 min budget.
    assert (cli.size, cli.crop, cli.scales, cli.min_scale) == (1024, 1024, (), 1.0)
    assert cli.geometry(7) == (1024, 1024, 1.0)
    assert (cli.batch, cli.lr, cli.schedule, cli.feature_loss, cli.feature_weight) == (1, 1e-5, "cosine", "mse", 0.02)
    assert (cli.iters, cli.budget_min, cli.lr_floor) == (0, 30.0, 0.3)
    assert cli.amp == cpu_has_native_bf16()  # bf16 where the CPU has it in hardware (AMX or AVX-512 BF16), else fp32
    assert (cli.promote_rule, cli.min_heldout, cli.holdout_fraction) == ("bootstrap", 30, 0.2)

    monkeypatch.setenv("ISNET_TRAIN_BUDGET", "12")  # one variable reaches both
    assert options_from_args(args, load()) == cycle_options(load()) and cycle_options(load()).budget_min == 12


def test_the_cuda_defaults_are_the_dis_recipe():
    from backend.isnet.training import TrainOptions

    options = TrainOptions(device="cuda").resolved()
    assert (options.crop, options.batch, options.amp) == (1024, 8, True)


def test_cpu_training_uses_bf16_where_the_cpu_has_native_bf16(monkeypatch):
    from backend.isnet.training import TrainOptions, options

    monkeypatch.setattr(options, "cpu_has_native_bf16", lambda: True)
    amx = TrainOptions(device="cpu").resolved()
    assert amx.amp and amx.autocast_dtype == torch.bfloat16 and not amx.grad_scaling
    monkeypatch.setattr(options, "cpu_has_native_bf16", lambda: False)
    assert not TrainOptions(device="cpu").resolved().amp
    assert TrainOptions(device="cpu", amp=True).resolved().amp  # ISNET_TRAIN_AMP=on forces it


def test_the_amp_setting_reaches_the_cycle_options(monkeypatch):
    from backend.isnet.training import TrainOptions

    for value, expected in (("on", True), ("off", False)):
        monkeypatch.setenv("ISNET_TRAIN_AMP", value)
        assert TrainOptions.from_settings(load()).amp is expected
