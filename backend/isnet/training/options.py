"""Every knob of a training cycle, with defaults taken from :mod:`backend.settings`.

Why a frozen dataclass: the same options must reach the CLI, an in-process call and an RQ
worker unchanged, be written into the cycle report, and be fingerprinted to decide whether
an interrupted cycle may be resumed. ``resolved()`` turns "automatic" values (crop, batch,
mixed precision) into concrete ones once, so what is recorded is what ran.

The defaults are the recipe that measurably taught the pretrained model a new domain on a
CPU (README.md, "Does a cycle make the model better?"): whole images at the serving size,
batch 1, Adam at 1e-5, feature loss weighted 0.02 against the GT encoder, and as many steps
as the wall-time budget allows. On CUDA the DIS recipe: batch 8 with mixed precision.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from backend.settings import Settings, check_input_size

FEATURE_LOSSES = ("mse", "l1", "smooth_l1", "kl", "off")
"""Intermediate-supervision distances; ``off`` is the ablation (side-output BCE only)."""

BN_MODES = ("frozen", "train")
"""``frozen``: BatchNorm layers of the segmenter stay in eval mode with fixed affine parameters."""

SCHEDULES = ("cosine", "constant")
"""Learning-rate schedules of the segmentation stage (see :mod:`.budget`)."""


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware: AMX tiles (e.g. Sapphire Rapids) or AVX-512
    BF16 (e.g. AMD Zen 4). There a bf16 training step at 1024 is about 2x faster than fp32; on
    CPUs without either, bf16 is emulated and slower, so fp32 stays the default."""
    probes = (getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))
    return any(bool(probe and probe()) for probe in probes)


CPU_BATCH = 1
"""Default batch on CPU: one whole image at the serving size per step (a step takes seconds)."""

CUDA_BATCH = 8
"""Default batch on CUDA: the official DIS training's ``batch_size_train``."""


@dataclass(frozen=True)
class TrainOptions:
    """Options of one cycle (GT encoder stage + segmentation stage + evaluation)."""

    iters: int = 0
    """Cap on segmentation-stage steps; 0 = as many as ``budget_min`` allows."""
    budget_min: float = 30.0
    """Wall time of the whole cycle in minutes (training, evaluation, writing, engines); the
    step count follows from the step times measured during the cycle. 0 = unbounded (then
    ``iters`` must be set)."""
    size: int = 1024
    """Serving input side: images and masks are resized to ``size x size`` as in serving."""
    crop: int = 0
    """Side of random training crops taken from the ``size x size`` images; 0 = the whole image.
    Crops were measured to make the model about 5x worse at 1024 (saliency is a whole-image
    decision), so they are only used when asked for."""
    batch: int = 0
    """0 = automatic: 1 on CPU, 8 on CUDA."""
    lr: float = 1e-5
    """Adam learning rate of the segmentation stage. The paper's 1e-3 is for training from scratch;
    for fine-tuning, 1e-4 moves every weight by ~1.4% of the median pretrained |w| per early
    Adam step and was measured to make held-out MAE worse after 12 steps (0.111 -> 0.166-0.177
    at 320, 8 DUTS-TE images), while 1e-5 improved it (0.111 -> 0.084 with the feature loss)."""
    schedule: str = "cosine"
    """``cosine``: linear warm-up over ``warmup`` steps, then cosine decay to ``lr * lr_floor`` at
    the step count the budget is estimated to allow (re-estimated as step times come in), so
    the last steps are small whatever the machine; ``constant``: ``lr`` throughout."""
    warmup: int = 5
    lr_floor: float = 0.3
    """The cosine ends at ``lr * lr_floor``: 3e-6 for the default 1e-5, the two rates that measurably
    taught the pretrained model (3e-6 on DUTS, which it already fits; 1e-5 on the butterflies)."""
    feature_loss: str = "mse"
    feature_weight: float = 0.02
    """Weight of the summed feature losses against the summed side-output BCE. The paper uses 1
    when training from scratch; both measured fine-tuning gains (DUTS and the butterflies) used
    0.02, which keeps the feature term from dominating the pretrained model's BCE."""
    flip: bool = True
    """Random horizontal flip (the only augmentation of the official training)."""
    min_scale: float = 1.0
    """< 1 enables scale jitter: each sample is resized to a random side in
    [min_scale * size, size] (multiple of 32, at least ``crop``) before cropping. 1 keeps the serving scale."""
    scales: tuple[int, ...] = ()
    """Whole-image multi-scale training: when given, step ``k`` trains on whole images resized to
    ``scales[k % len(scales)]`` (no crop, no jitter) instead of crops at ``size``. Why: saliency is
    a whole-image judgement (a crop showing a tenth of a DUTS image asks the model to find the
    salient object inside the crop), and one set of weights serves both the seed's 320 and the
    1024 default, so both are trained; e.g. ``(1024, 320)``."""
    bn: str = "frozen"
    gt_lr: float = 1e-3
    gt_target_f: float = 0.99
    """The GT encoder stage stops once the max F-measure of its reconstruction of the training
    masks reaches this (the official criterion) ..."""
    gt_max_iters: int = 2000
    """... or after this many iterations."""
    gt_check_every: int = 50
    gt_eval_items: int = 16
    """Training masks used for the max-F check (a fixed, evenly spread subset, to bound its cost:
    each check is a forward of every one at the training size)."""
    amp: bool | None = None
    """Mixed precision: fp16 autocast + grad scaling on CUDA, bf16 autocast on CPU. None = on for
    CUDA and for CPUs with bf16 in hardware (AMX or AVX-512 BF16: a 1024 step there is about 2x
    faster, so a budgeted cycle takes twice the steps), off otherwise."""
    device: str = "cpu"
    seed: int = 0
    checkpoint_every: int = 100
    """Iterations between resumable training-state checkpoints (both stages)."""
    anchors: str = "builtin"
    """General photos whose masks the challenger must keep (``builtin``: scikit-image's; a folder;
    ``none``: keep the trained weights whole). See :mod:`.interpolation`."""
    anchor_drift: float = 0.025
    """Most the anchor masks may move (mean absolute difference, MAE's scale) in one cycle: the
    trained weights are mixed with the champion's until they stay within it. Measured along one
    butterflies challenger's line, a drift of 0.0245 on the built-in photos went with MAE +0.0019 on
    50 DUTS-TR images (0.0099 with +0.0005): 0.025 keeps general photos within about the 0.002 MAE
    this project accepts to lose for a cheaper engine (README.md, "Retraining")."""
    holdout_fraction: float = 0.2
    promote_rule: str = "bootstrap"
    min_heldout: int = 30
    """Fewer held-out images than this are too few to judge a challenger by (see :mod:`.promotion`)."""

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> TrainOptions:
        """Defaults from the environment, then explicit ``overrides`` (None values are ignored)."""
        base = {
            "iters": settings.train_iters,
            "budget_min": settings.train_budget,
            "size": settings.input_size,
            "crop": settings.train_crop,
            "scales": settings.train_scales,
            "batch": settings.train_batch,
            "lr": settings.train_lr,
            "schedule": settings.train_schedule,
            "feature_loss": settings.train_feature_loss,
            "feature_weight": settings.train_feature_weight,
            "gt_max_iters": settings.train_gt_iters,
            "device": settings.device,
            "amp": {"on": True, "off": False}.get(settings.train_amp),
            "anchors": settings.train_anchors,
            "anchor_drift": settings.train_anchor_drift,
            "holdout_fraction": settings.holdout_fraction,
            "promote_rule": settings.promote_rule,
            "min_heldout": settings.promote_min_heldout,
        }
        base.update({k: v for k, v in overrides.items() if v is not None})
        if base.get("scales"):
            base["scales"] = tuple(int(v) for v in base["scales"])
        return cls(**base).resolved()

    def resolved(self) -> TrainOptions:
        """Concrete crop, batch and AMP for this device, and every value checked."""
        cuda = self.device.startswith("cuda")
        crop = self.crop or self.size
        batch = self.batch or (CUDA_BATCH if cuda else CPU_BATCH)
        amp = (cuda or cpu_has_native_bf16()) if self.amp is None else self.amp
        opts = dataclasses.replace(self, crop=crop, batch=batch, amp=amp)
        opts.validate()
        return opts

    def validate(self) -> None:
        check_input_size(self.size)
        check_input_size(self.crop)
        if self.crop > self.size:
            raise ValueError(f"crop {self.crop} is larger than the input size {self.size}")
        if self.feature_loss not in FEATURE_LOSSES:
            raise ValueError(f"feature loss must be one of {', '.join(FEATURE_LOSSES)}, got {self.feature_loss!r}")
        for side in self.scales:
            check_input_size(side)
        if self.bn not in BN_MODES:
            raise ValueError(f"bn must be one of {', '.join(BN_MODES)}, got {self.bn!r}")
        if self.iters < 0 or self.gt_max_iters < 0:
            raise ValueError("iteration counts cannot be negative")
        if self.budget_min < 0:
            raise ValueError(f"the budget cannot be negative, got {self.budget_min} min")
        if self.iters == 0 and self.budget_min == 0:
            raise ValueError("with no time budget (ISNET_TRAIN_BUDGET=0) set a step count (--iters, ISNET_TRAIN_ITERS)")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.warmup < 0 or not 0 <= self.lr_floor <= 1:
            raise ValueError("warmup must be >= 0 and lr_floor in [0, 1]")
        if self.min_heldout < 1:
            raise ValueError(f"min_heldout must be at least 1, got {self.min_heldout}")
        if self.batch < 0:
            raise ValueError("the batch size must be at least 1 (0 = automatic)")
        if self.uses_features and self.batch == 1 and min((self.crop, *self.scales)) < 128:
            # The GT encoder trains with batch statistics; its deepest maps are crop/64 wide.
            raise ValueError("with the feature loss on, a batch of 1 needs a crop of at least 128 "
                             "(the GT encoder's BatchNorm needs more than one value per channel)")
        if not 0 < self.min_scale <= 1:
            raise ValueError(f"min_scale must be in (0, 1], got {self.min_scale}")
        if not 0 <= self.anchor_drift <= 1:
            raise ValueError(f"anchor drift must be in [0, 1], got {self.anchor_drift}")
        if not 0 <= self.holdout_fraction < 1:
            raise ValueError(f"holdout fraction must be in [0, 1), got {self.holdout_fraction}")
        if self.checkpoint_every < 1 or self.gt_check_every < 1:
            raise ValueError("checkpoint_every and gt_check_every must be at least 1")

    def geometry(self, step: int) -> tuple[int, int, float]:
        """``(side, crop, min_scale)`` of training step ``step``: whole images at the step's scale
        when ``scales`` is set, else crops of ``crop`` at ``size`` (with the configured jitter)."""
        if self.scales:
            side = self.scales[step % len(self.scales)]
            return side, side, 1.0
        return self.size, self.crop, self.min_scale

    @property
    def check_view(self) -> tuple[int, int]:
        """``(size, crop)`` of the fixed mask views the GT encoder stage is checked on."""
        if self.scales:
            return max(self.scales), max(self.scales)
        return self.size, self.crop

    @property
    def autocast_dtype(self) -> torch.dtype:
        """The reduced precision ``amp`` trains in on this device."""
        return torch.float16 if self.device.startswith("cuda") else torch.bfloat16

    @property
    def grad_scaling(self) -> bool:
        """fp16 needs loss scaling against underflow; bf16 has fp32's range and does not."""
        return bool(self.amp) and self.device.startswith("cuda")

    @property
    def uses_features(self) -> bool:
        return self.feature_loss != "off"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def training_key(self) -> dict[str, Any]:
        """The options that change what is trained (a resumed cycle must agree on all of them)."""
        skip = {"checkpoint_every", "promote_rule", "min_heldout", "device", "amp", "budget_min", "anchors",
                "anchor_drift"}
        return {k: v for k, v in self.to_dict().items() if k not in skip}
