"""Every environment variable the project reads, in one place, with its default.

Why one module: the backend, the CLI and the RQ workers run in different processes
and must agree on where weights live, which size they serve at and which limits
apply. Reading the environment anywhere else is a bug.

``ISNET_ENGINE=auto`` serves the fastest engine whose accuracy was measured within its budget
against fp32 (fp16: MAE +0.001, avg F -0.002, S -0.002; int8: +0.002, -0.005, -0.003) on the
served model version at the input size, by ``isnet engine measure``; else ``onnx-fp32``. ONNX
engines are built when first needed; int8 then calibrates on 50 images of ``ISNET_CALIB_DIR``
(a retrained version on its own training images).

| variable | default | meaning |
| --- | --- | --- |
| ``ISNET_HOME`` | ``~/.cache/isnet-ls`` | cache for fetched weights and the npm tarball |
| ``ISNET_INPUT_SIZE`` | ``1024`` | square network input (multiple of 32); 1024 is what ISNet was trained at |
| ``ISNET_MAX_PIXELS`` | ``64000000`` | images with more pixels are refused (decompression bombs) |
| ``ISNET_DEVICE`` | ``cpu`` or ``cuda`` when present | torch device |
| ``ISNET_THREADS`` | ``0`` (= library default) | intra-op threads for torch / onnxruntime |
| ``ISNET_WEIGHTS`` | ``""`` | explicit checkpoint path; overrides the cache |
| ``ISNET_ENGINE`` | ``auto`` | ``torch``, ``onnx-fp32``, ``onnx-fp16``, ``onnx-int8``, or ``auto`` (rule above) |
| ``ISNET_CALIB_DIR`` | ``""`` | images int8 is calibrated on when serving has to build it (above) |
| ``ISNET_CALIB_SAMPLE`` | ``64`` | served images kept (downsized) in ``MODEL_DIR/calibration`` for int8; 0 = none |
| ``ISNET_NPM_PACKAGE`` | ``@imgly/background-removal-data@1.4.5`` | the npm package that carries the weights |
| ``ISNET_NPM_TARBALL`` | ``""`` | use this already-downloaded tarball instead of ``npm pack`` |
| ``MODEL_DIR`` | ``$ISNET_HOME/models`` | model versions (training output, engines) |
| ``REDIS_URL`` | ``""`` | RQ broker; empty means jobs run in-process |
| ``LOG_LEVEL`` | ``INFO`` | logging level |
| ``LABEL_STUDIO_URL`` | ``http://localhost:8080`` | Label Studio, as reached from here; base of relative image URLs |
| ``LABEL_STUDIO_API_KEY`` | ``""`` | legacy token, or personal access token (exchanged for 5-minute access tokens) |
| ``ISNET_ALLOWED_HOSTS`` | ``""`` | image hosts besides Label Studio: ``host`` or ``host:port``, comma-separated |
| ``ISNET_THRESHOLD`` | ``0.5`` | confidence (0-1) above which a pixel belongs to the predicted region |
| ``ISNET_FROM_NAME`` | ``""`` | the ``BrushLabels`` tag to predict for (default: the first one with an ``Image``) |
| ``ISNET_LABEL`` | ``""`` | the label given to predicted regions (default: the tag's first ``Label``) |
| ``ISNET_MAX_IMAGE_BYTES`` | ``104857600`` | image downloads larger than this (100 MiB) are refused |
| ``ISNET_FETCH_TIMEOUT`` | ``30`` | seconds one image download may take in all (connect, redirects, body) |
| ``BASIC_AUTH_USER`` | ``""`` | with ``BASIC_AUTH_PASS``: HTTP basic auth required on every ``isnet serve`` route |
| ``BASIC_AUTH_PASS`` | ``""`` | the password for ``BASIC_AUTH_USER`` |
| ``WORKERS`` | ``1`` | ``isnet serve`` worker processes (each holds its own model in memory) |
| ``THREADS`` | ``32`` | request threads per worker; two are kept free of ``/predict`` for ``/health``, ``/setup`` |
| ``ISNET_PREDICT_BUDGET`` | ``60`` | seconds per ``/predict`` (LS waits 100); the rest is queued for pre-annotation |
| ``ISNET_PREDICT_BATCH`` | ``4`` | images per engine call; bounds memory (about 0.6 GB per image at 1024 on CPU) |
| ``ISNET_INTERACTIVE_SIZE`` | ``1024`` | network input for box and click prompts (a crop of the full image) |
| ``ISNET_INTERACTIVE_MARGIN`` | ``0.2`` | context around a box prompt, per side, in fractions of its size |
| ``ISNET_INTERACTIVE_IMAGES`` | ``4`` | decoded task images kept for further prompts on the same image |
| ``ISNET_CACHE_MB`` | ``256`` | memory for cached results (per image, version, engine, size, threshold); 0 = off |
| ``ISNET_TRAIN_BUDGET`` | ``30`` | minutes a retraining cycle may take in all; the step count fits what is left |
| ``ISNET_TRAIN_ITERS`` | ``0`` (budget decides) | cap on segmentation steps (the step count when the budget is 0) |
| ``ISNET_TRAIN_BATCH`` | ``0`` (1 CPU, 8 CUDA) | 1 whole image a CPU step, as in the measured gain; 8 + fp16 is DIS |
| ``ISNET_TRAIN_CROP`` | ``0`` (whole image) | random crops instead of whole images (crops made 1024 5x worse) |
| ``ISNET_TRAIN_SCALES`` | ``""`` (input size) | whole images at these sides in turn, e.g. ``1024,320`` |
| ``ISNET_TRAIN_LR`` | ``0.00001`` | peak Adam lr: 1e-5 cut butterflies MAE 0.046 -> 0.037; 1e-4 hurt |
| ``ISNET_TRAIN_SCHEDULE`` | ``cosine`` | warm-up, then decay to 0.3 lr at the step count the budget allows |
| ``ISNET_TRAIN_FEATURE_LOSS`` | ``mse`` | GT-encoder supervision: ``mse``, ``l1``, ``smooth_l1``, ``kl``, ``off`` |
| ``ISNET_TRAIN_FEATURE_WEIGHT`` | ``0.02`` | feature loss vs side BCE (both measured gains used 0.02) |
| ``ISNET_TRAIN_AMP`` | ``auto`` | ``auto``: fp16 on CUDA, bf16 where the CPU has AMX or AVX-512 BF16; ``on``, ``off`` |
| ``ISNET_TRAIN_GT_ITERS`` | ``2000`` | GT encoder cap (it stops at max F 0.99; cached per labelled set) |
| ``ISNET_TRAIN_SHARE`` | ``auto`` | change kept: ``evidence``, ``anchors``, ``full``; auto: base anchors |
| ``ISNET_TRAIN_ANCHORS`` | ``builtin`` | photos whose masks a cycle keeps: builtin (scikit-image's), a folder, none |
| ``ISNET_TRAIN_ANCHOR_DRIFT`` | ``0.025`` | most those masks may move per cycle (weights are mixed to stay within) |
| ``ISNET_PROJECT_LINEAGES`` | ``""`` (own) | shared lineages: ``12=shop,13=shop``; ``*=base``: one model |
| ``ISNET_MAX_LOADED_MODELS`` | ``3`` | model versions a process keeps loaded (least recently used go first) |
| ``ISNET_HOLDOUT_FRACTION`` | ``0.2`` | share of labelled items held out (stable hash of the name) to judge a cycle |
| ``ISNET_PROMOTE_RULE`` | ``bootstrap`` | per-image MAE change's 95 % CI below 0; or ``mae_not_worse``, ``always``... |
| ``ISNET_PROMOTE_MIN_HELDOUT`` | ``30`` | fewer held-out images are too few to judge (the champion stays) |
| ``ISNET_MIN_NEW_LABELS`` | ``10`` | new or edited labels before an automatic cycle (Start training ignores it) |
| ``ISNET_PREANNOTATE_BATCH`` | ``16`` | tasks per pre-annotation job (an import becomes many small jobs) |
| ``ISNET_QUEUE`` | ``isnet-preannotate`` | RQ queue of pre-annotation and retraining jobs (``python -m worker``) |
| ``ISNET_LS_RETRIES`` | ``6`` | tries of a Label Studio API call that timed out or got a 5xx |
| ``ISNET_LS_BACKOFF`` | ``1.0`` | seconds before the first retry; doubled each retry (capped at 60 s) |
| ``ISNET_LS_TIMEOUT`` | ``30`` | seconds one Label Studio API call may take |
| ``ISNET_REDIS_TIMEOUT`` | ``0.5`` | Redis socket timeout (s) when enqueueing: ``/webhook`` answers at once |
| ``ISNET_LOCAL_QUEUE`` | ``10000`` | without Redis: most tasks waiting for the in-process thread; more are dropped |
| ``ISNET_INFLIGHT_TTL`` | ``600`` | seconds ``/predict`` leaves a handed-over task to background pre-annotation |
| ``ISNET_KEEP_VERSIONS`` | ``2`` | newest versions of a lineage whose weights stay, besides current and rollback (1+) |
| ``ISNET_KEEP_ROLLBACK`` | ``3`` | rollback-stack entries of a lineage whose weights stay (rollback skips the rest) |
| ``ISNET_KEEP_REPORTS`` | ``20`` | newest cycles of a lineage whose reports (``cycle.json``, metrics, plots) stay |
| ``ISNET_KEEP_SNAPSHOTS`` | ``2`` | newest label snapshots of a project kept whole; older keep the guard's images |
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


def _env(name: str, default: str) -> str:
    value = os.environ.get(name)
    return default if value is None or value.strip() == "" else value.strip()


def _env_list(name: str) -> tuple[str, ...]:
    """A comma-separated variable as a tuple of its non-empty, stripped, lower-cased items."""
    return tuple(item.strip().lower() for item in _env(name, "").split(",") if item.strip())


def _default_device() -> str:
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:  # pragma: no cover - torch is a hard dependency
        return "cpu"


@dataclass(frozen=True)
class Settings:
    """A snapshot of the environment; build a new one with :func:`load` to re-read it."""

    home: Path = field(default_factory=lambda: Path(_env("ISNET_HOME", "~/.cache/isnet-ls")).expanduser())
    input_size: int = field(default_factory=lambda: int(_env("ISNET_INPUT_SIZE", "1024")))
    max_pixels: int = field(default_factory=lambda: int(_env("ISNET_MAX_PIXELS", "64000000")))
    device: str = field(default_factory=lambda: _env("ISNET_DEVICE", "") or _default_device())
    threads: int = field(default_factory=lambda: int(_env("ISNET_THREADS", "0")))
    weights: str = field(default_factory=lambda: _env("ISNET_WEIGHTS", ""))
    engine: str = field(default_factory=lambda: _env("ISNET_ENGINE", "auto"))
    calib_dir: str = field(default_factory=lambda: _env("ISNET_CALIB_DIR", ""))
    calib_sample: int = field(default_factory=lambda: int(_env("ISNET_CALIB_SAMPLE", "64")))
    npm_package: str = field(
        default_factory=lambda: _env("ISNET_NPM_PACKAGE", "@imgly/background-removal-data@1.4.5")
    )
    npm_tarball: str = field(default_factory=lambda: _env("ISNET_NPM_TARBALL", ""))
    model_dir_env: str = field(default_factory=lambda: _env("MODEL_DIR", ""))
    redis_url: str = field(default_factory=lambda: _env("REDIS_URL", ""))
    log_level: str = field(default_factory=lambda: _env("LOG_LEVEL", "INFO").upper())
    label_studio_url: str = field(default_factory=lambda: _env("LABEL_STUDIO_URL", "http://localhost:8080").rstrip("/"))
    label_studio_api_key: str = field(default_factory=lambda: _env("LABEL_STUDIO_API_KEY", ""))
    allowed_hosts: tuple[str, ...] = field(default_factory=lambda: _env_list("ISNET_ALLOWED_HOSTS"))
    threshold: float = field(default_factory=lambda: float(_env("ISNET_THRESHOLD", "0.5")))
    from_name: str = field(default_factory=lambda: _env("ISNET_FROM_NAME", ""))
    label: str = field(default_factory=lambda: _env("ISNET_LABEL", ""))
    max_image_bytes: int = field(default_factory=lambda: int(_env("ISNET_MAX_IMAGE_BYTES", "104857600")))
    fetch_timeout: float = field(default_factory=lambda: float(_env("ISNET_FETCH_TIMEOUT", "30")))
    basic_auth_user: str = field(default_factory=lambda: _env("BASIC_AUTH_USER", ""))
    basic_auth_pass: str = field(default_factory=lambda: _env("BASIC_AUTH_PASS", ""))
    workers: int = field(default_factory=lambda: int(_env("WORKERS", "1")))
    server_threads: int = field(default_factory=lambda: int(_env("THREADS", "32")))
    predict_budget: float = field(default_factory=lambda: float(_env("ISNET_PREDICT_BUDGET", "60")))
    predict_batch: int = field(default_factory=lambda: int(_env("ISNET_PREDICT_BATCH", "4")))
    interactive_size: int = field(default_factory=lambda: int(_env("ISNET_INTERACTIVE_SIZE", "1024")))
    interactive_margin: float = field(default_factory=lambda: float(_env("ISNET_INTERACTIVE_MARGIN", "0.2")))
    interactive_images: int = field(default_factory=lambda: int(_env("ISNET_INTERACTIVE_IMAGES", "4")))
    cache_mb: float = field(default_factory=lambda: float(_env("ISNET_CACHE_MB", "256")))
    train_budget: float = field(default_factory=lambda: float(_env("ISNET_TRAIN_BUDGET", "30")))
    train_iters: int = field(default_factory=lambda: int(_env("ISNET_TRAIN_ITERS", "0")))
    train_batch: int = field(default_factory=lambda: int(_env("ISNET_TRAIN_BATCH", "0")))
    train_crop: int = field(default_factory=lambda: int(_env("ISNET_TRAIN_CROP", "0")))
    train_scales: tuple[int, ...] = field(
        default_factory=lambda: tuple(int(v) for v in _env_list("ISNET_TRAIN_SCALES")))
    train_lr: float = field(default_factory=lambda: float(_env("ISNET_TRAIN_LR", "0.00001")))
    train_schedule: str = field(default_factory=lambda: _env("ISNET_TRAIN_SCHEDULE", "cosine").lower())
    train_feature_loss: str = field(default_factory=lambda: _env("ISNET_TRAIN_FEATURE_LOSS", "mse").lower())
    train_feature_weight: float = field(default_factory=lambda: float(_env("ISNET_TRAIN_FEATURE_WEIGHT", "0.02")))
    train_amp: str = field(default_factory=lambda: _env("ISNET_TRAIN_AMP", "auto").lower())
    train_gt_iters: int = field(default_factory=lambda: int(_env("ISNET_TRAIN_GT_ITERS", "2000")))
    train_anchors: str = field(default_factory=lambda: _env("ISNET_TRAIN_ANCHORS", "builtin"))
    train_anchor_drift: float = field(default_factory=lambda: float(_env("ISNET_TRAIN_ANCHOR_DRIFT", "0.025")))
    train_share: str = field(default_factory=lambda: _env("ISNET_TRAIN_SHARE", "auto").lower())
    project_lineages: tuple[str, ...] = field(default_factory=lambda: _env_list("ISNET_PROJECT_LINEAGES"))
    max_loaded_models: int = field(default_factory=lambda: int(_env("ISNET_MAX_LOADED_MODELS", "3")))
    holdout_fraction: float = field(default_factory=lambda: float(_env("ISNET_HOLDOUT_FRACTION", "0.2")))
    promote_rule: str = field(default_factory=lambda: _env("ISNET_PROMOTE_RULE", "bootstrap").lower())
    promote_min_heldout: int = field(default_factory=lambda: int(_env("ISNET_PROMOTE_MIN_HELDOUT", "30")))
    min_new_labels: int = field(default_factory=lambda: int(_env("ISNET_MIN_NEW_LABELS", "10")))
    preannotate_batch: int = field(default_factory=lambda: int(_env("ISNET_PREANNOTATE_BATCH", "16")))
    queue_name: str = field(default_factory=lambda: _env("ISNET_QUEUE", "isnet-preannotate"))
    ls_retries: int = field(default_factory=lambda: int(_env("ISNET_LS_RETRIES", "6")))
    ls_backoff: float = field(default_factory=lambda: float(_env("ISNET_LS_BACKOFF", "1.0")))
    ls_timeout: float = field(default_factory=lambda: float(_env("ISNET_LS_TIMEOUT", "30")))
    redis_timeout: float = field(default_factory=lambda: float(_env("ISNET_REDIS_TIMEOUT", "0.5")))
    local_queue: int = field(default_factory=lambda: int(_env("ISNET_LOCAL_QUEUE", "10000")))
    inflight_ttl: float = field(default_factory=lambda: float(_env("ISNET_INFLIGHT_TTL", "600")))
    keep_versions: int = field(default_factory=lambda: int(_env("ISNET_KEEP_VERSIONS", "2")))
    keep_rollback: int = field(default_factory=lambda: int(_env("ISNET_KEEP_ROLLBACK", "3")))
    keep_reports: int = field(default_factory=lambda: int(_env("ISNET_KEEP_REPORTS", "20")))
    keep_snapshots: int = field(default_factory=lambda: int(_env("ISNET_KEEP_SNAPSHOTS", "2")))

    @property
    def weights_dir(self) -> Path:
        return self.home / "weights"

    @property
    def model_dir(self) -> Path:
        return Path(self.model_dir_env).expanduser() if self.model_dir_env else self.home / "models"


def load() -> Settings:
    """Read the environment now (cheap; call it where the value is needed)."""
    return Settings()


def check_input_size(size: int) -> int:
    """ISNet downsamples five times, so the side of its input must be a multiple of 32."""
    if size < 32 or size % 32:
        raise ValueError(f"input size must be a positive multiple of 32, got {size}")
    return size
