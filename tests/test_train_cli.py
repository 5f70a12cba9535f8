"""``isnet train`` end to end with the real ISNet networks at a tiny size."""

from __future__ import annotations

import json

import torch

from backend.cli import main
from backend.isnet.registry import ModelRegistry
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
    assert cycle["train"]["count"] == 3 and cycle["held_out"]["count"] == 2
    assert cycle["options"]["feature_loss"] == "mse" and cycle["options"]["size"] == 32
    assert cycle["training"]["steps"] == 2 and cycle["training"]["gt_encoder"]["steps"] == 2
    assert set(cycle["metrics"]) == {"champion", "challenger"}


def test_isnet_train_refuses_an_existing_out_directory(tmp_path, tiny_pairs, capsys):
    images, masks = tiny_pairs(2)
    assert main(["train", "--images", str(images), "--masks", str(masks), "--out", str(tmp_path)]) == 2
    assert "already exists" in capsys.readouterr().err
