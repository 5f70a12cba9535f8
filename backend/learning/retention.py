"""Bounded disk: what each lineage keeps of its cycles, and what ``isnet model prune`` removes.

Every cycle leaves a version (a checkpoint of about 176 MB; engines when promoted), a Label
Studio-fed one also a snapshot of the project's labels, and GT encoders are cached per labelled
set. Without a policy a busy project fills a disk in weeks. Per lineage this keeps:

* the weights (checkpoint and engines) of its current version, of the newest ``ISNET_KEEP_ROLLBACK``
  entries of its rollback stack and of its newest ``ISNET_KEEP_VERSIONS`` versions, promoted or
  not; whatever their lineage, of every version another lineage's ``CURRENT`` or kept stack entries
  name, and of the champion of a cycle in progress;
* the reports (``cycle.json``, metrics, plots) of its newest ``ISNET_KEEP_REPORTS`` cycles: the
  lineage's history, ``isnet model list`` and the forgetting guard read them;
* per project of the lineage, the newest ``ISNET_KEEP_SNAPSHOTS`` label snapshots whole, and of
  older ones only the held-out images and masks the forgetting guard reads (named by kept reports);
* its newest cached GT encoder (its current label set's; the next set refreshes from it).

The rest of the lineage's files go. The pretrained weights (their cache in ``ISNET_HOME``, and
the engines built for them) are never touched. A lineage whose project was deleted (``RETIRED``)
keeps no weights of its own, but only when it is pruned by name (``isnet model prune --project N``
or ``--all``): a cycle prunes its own lineage only.

Why under every lineage's switch lock: a promotion, ``use`` or rollback meanwhile could make a
version current just as its weights go (the registry looks the version up again under its lock).
Rollback skips versions whose weights are gone, so a rollback deeper than ``ISNET_KEEP_ROLLBACK``
lands on the newest earlier version still kept.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from backend.isnet.training.gt_cache import CACHE_DIR
from backend.isnet.versions import (
    BASE,
    CHECKPOINT_FILE,
    LINEAGES_DIR,
    PRETRAINED_PREFIX,
    VersionStore,
    lineage_dir,
    lineage_of,
)
from backend.learning.history import collect, guard_entries, read_record
from backend.learning.lineages import lineage_for
from backend.learning.registry import FOLLOW_BASE, RETIRED_FILE, ModelRegistry
from backend.learning.snapshots import PROJECT_PREFIX, SNAPSHOTS_DIR, datasets_dir
from backend.learning.staging import FINGERPRINT_FILE, PREFIX
from backend.settings import Settings

log = logging.getLogger(__name__)

ENGINES_DIR = "engines"
"""A version's engines (:mod:`backend.isnet.engines.store`)."""
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Policy:
    """How much of each lineage is kept (see the module docstring)."""

    keep_versions: int = 2
    keep_rollback: int = 3
    keep_reports: int = 20
    keep_snapshots: int = 2

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        """The settings' policy (their ranges are checked where they are read: ``ISNET_KEEP_VERSIONS``
        is at least 1, since the newest version may be the one a cycle is promoting)."""
        return cls(settings.keep_versions, settings.keep_rollback, settings.keep_reports, settings.keep_snapshots)


@dataclass(frozen=True)
class Removal:
    """One thing retention removes: ``paths`` (files or folders), shown as ``shown``."""

    shown: Path
    what: str
    why: str
    bytes: int
    paths: tuple[Path, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.shown), "what": self.what, "why": self.why, "bytes": self.bytes}


@dataclass
class Plan:
    """What pruning one lineage removes (or removed), and why the weights it keeps stay."""

    lineage: str
    dry_run: bool
    removals: list[Removal] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)
    """Version name -> why its weights stay."""
    errors: list[str] = field(default_factory=list)

    @property
    def freed(self) -> int:
        return sum(r.bytes for r in self.removals)

    def summary(self) -> dict[str, Any]:
        """The few fields a cycle's report carries."""
        return {"lineage": self.lineage, "removed": len(self.removals), "freed_bytes": self.freed,
                "kept": sorted(self.kept), "errors": self.errors}

    def to_dict(self) -> dict[str, Any]:
        return {**self.summary(), "dry_run": self.dry_run, "kept": self.kept,
                "removals": [r.to_dict() for r in self.removals]}


@dataclass(frozen=True)
class _Version:
    name: str
    directory: Path
    created: str
    weights: bool


# -- deciding ---------------------------------------------------------------------------------------


def plan(settings: Settings, lineage: str, policy: Policy | None = None, dry_run: bool = True) -> Plan:
    """What pruning ``lineage`` would remove now (nothing is removed: :func:`prune` does)."""
    policy = policy or Policy.from_settings(settings)
    registry = ModelRegistry(settings, lineage)
    out = Plan(registry.lineage, dry_run)
    protected = _protected(settings, policy)
    versions = _versions_of(settings, registry.lineage)
    retired = _retired(registry)
    newest = [] if retired else [v.name for v in versions if v.weights][:policy.keep_versions]
    removed_dirs: set[Path] = set()
    for rank, version in enumerate(versions):
        why_kept = protected.get(version.name) or (f"one of the {policy.keep_versions} newest versions"
                                                   if version.name in newest else None)
        if why_kept:
            out.kept[version.name] = why_kept
            continue
        if rank >= policy.keep_reports:
            heavy = [version.directory / CHECKPOINT_FILE]  # first: the version stops existing at once
            out.removals.append(Removal(version.directory, "version", f"older than the newest "
                                        f"{policy.keep_reports} cycles of lineage {registry.lineage}",
                                        _size(version.directory), (*heavy, version.directory)))
            removed_dirs.add(version.directory)
            continue
        why = ("its project was deleted (lineage retired)" if retired else
               "not current, not among the newest rollback entries or versions; its reports stay")
        stored = VersionStore(settings).stored(version.name)
        for name, what in ((CHECKPOINT_FILE, "weights"), (ENGINES_DIR, "engines")):
            path = version.directory / name
            in_store = sum(int(str(entry.get("size", 0))) for file, entry in stored.items()
                           if file == name or file.startswith(name + "/"))
            if path.exists() or path.is_symlink() or in_store:
                out.removals.append(Removal(path, what, why, max(_size(path), in_store), (path,)))
    out.removals += _snapshot_removals(settings, registry.lineage, policy, removed_dirs)
    out.removals += _gt_cache_removals(settings, registry.lineage)
    return out


def _protected(settings: Settings, policy: Policy) -> dict[str, str]:
    """Versions whose weights no lineage's pruning may remove, and why: every lineage's current
    version and newest rollback entries, and the champion of every cycle in progress."""
    registry = ModelRegistry(settings)
    out: dict[str, str] = {}
    for name in registry.lineages():
        try:
            own = registry.for_lineage(name)
        except ValueError:  # a folder under lineages/ that is no lineage's
            continue
        current = own.own_current_name()
        if current:
            out.setdefault(current, f"current in lineage {name}")
        if _retired(own):
            continue
        stack: list[str] = []
        for entry in reversed(own.switches()["previous"]):
            if entry != FOLLOW_BASE and entry not in stack:
                stack.append(entry)
        for entry in stack[:policy.keep_rollback]:
            out.setdefault(entry, f"on lineage {name}'s rollback stack")
    for cycle in _cycles_in_progress(settings):
        champion = cycle.get("champion")
        if isinstance(champion, str):
            out.setdefault(champion, "the champion of a cycle in progress")
    return out


def _cycles_in_progress(settings: Settings) -> list[dict[str, Any]]:
    """What the staging areas of cycles in progress (or interrupted, to resume) record: champion, lineage."""
    versions_dir = VersionStore(settings).versions_dir
    found = versions_dir.glob(f"{PREFIX}*/{FINGERPRINT_FILE}") if versions_dir.is_dir() else []
    return [_read_json(path) for path in found]


def _retired(registry: ModelRegistry) -> bool:
    return (registry.lineage != BASE and registry.own_current_name() is None
            and (registry.home / RETIRED_FILE).is_file())


def _versions_of(settings: Settings, lineage: str) -> list[_Version]:
    """``lineage``'s version directories (weights or only reports), newest first; never the pretrained's."""
    found = []
    store = VersionStore(settings)
    for directory in store.directories():
        if directory.name.startswith(PRETRAINED_PREFIX):
            continue
        record = read_record(directory) or {}
        owner = str(record.get("lineage") or lineage_of(directory.name))
        if owner != lineage:
            continue
        checkpoint = directory / CHECKPOINT_FILE
        created = str(record.get("created") or _mtime_iso(directory))
        weights = checkpoint.exists() or CHECKPOINT_FILE in store.stored(directory.name)  # here, or in the store
        found.append(_Version(directory.name, directory, created, weights))
    return sorted(found, key=lambda v: (v.created, v.name), reverse=True)


def _guard_files(settings: Settings, removed_dirs: set[Path]) -> set[Path]:
    """Every image and mask a lineage's forgetting guard reads once ``removed_dirs`` are gone."""
    records = collect(d for d in VersionStore(settings).directories() if d not in removed_dirs)
    by_lineage: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_lineage.setdefault(str(record.get("lineage", BASE)), []).append(record)
    files: set[Path] = set()
    for lineage_records in by_lineage.values():
        for _, image, mask in guard_entries(lineage_records):
            files.update((_resolved(Path(image)), _resolved(Path(mask))))
    return files


def snapshot_projects(settings: Settings) -> dict[int, Path]:
    """Project id -> its snapshot folder (``MODEL_DIR/datasets/project-<id>``)."""
    root = datasets_dir(settings)
    if not root.is_dir():
        return {}
    found = {}
    for folder in root.iterdir():
        suffix = folder.name[len(PROJECT_PREFIX):]
        if folder.name.startswith(PROJECT_PREFIX) and suffix.isdigit() and folder.is_dir():
            found[int(suffix)] = folder
    return found


def _snapshot_removals(settings: Settings, lineage: str, policy: Policy, removed_dirs: set[Path]) -> list[Removal]:
    """Older snapshots of the lineage's projects, but for the files the forgetting guard reads."""
    guard: set[Path] | None = None
    out = []
    running = any(c.get("lineage", BASE) == lineage for c in _cycles_in_progress(settings))
    keep = max(policy.keep_snapshots, 1 if running else 0)  # a cycle in progress reads the newest
    for project, folder in sorted(snapshot_projects(settings).items()):
        try:
            if lineage_for(project, settings) != lineage:
                continue
        except ValueError:  # ISNET_PROJECT_LINEAGES is malformed: nothing is attributed
            continue
        snapshots = sorted(d for d in folder.iterdir() if d.is_dir())  # named by UTC time
        older = snapshots[:len(snapshots) - keep] if keep else snapshots
        for snapshot in older:
            guard = guard if guard is not None else _guard_files(settings, removed_dirs)
            files = [p for p in snapshot.rglob("*") if p.is_file() or p.is_symlink()]
            kept = [p for p in files if _resolved(p) in guard]
            if not kept:
                out.append(Removal(snapshot, "snapshot", f"older than project {project}'s newest "
                                   f"{policy.keep_snapshots} snapshots", _size(snapshot), (snapshot,)))
                continue
            gone = tuple(p for p in files if p.name != MANIFEST and _resolved(p) not in guard)
            if gone:
                out.append(Removal(snapshot, "snapshot files", f"older than project {project}'s newest "
                                   f"{policy.keep_snapshots} snapshots; the {len(kept)} held-out file(s) the "
                                   "forgetting guard reads stay", sum(_size(p) for p in gone), gone))
    return out


def _gt_cache_removals(settings: Settings, lineage: str) -> list[Removal]:
    """The lineage's cached GT encoders but the newest (entries of earlier label sets)."""
    root = settings.model_dir / CACHE_DIR
    entries = []
    for meta in root.glob("*.json") if root.is_dir() else []:
        if str(_read_json(meta).get("lineage") or BASE) != lineage:
            continue
        with contextlib.suppress(OSError):
            entries.append((meta.stat().st_mtime, meta))
    out = []
    for _, meta in sorted(entries, reverse=True)[1:]:
        weights = meta.with_suffix(".pth")
        out.append(Removal(weights, "gt encoder", f"cached for an earlier label set of lineage {lineage}",
                           _size(weights) + _size(meta), (weights, meta)))
    return out


# -- removing -------------------------------------------------------------------------------------------


def prune(settings: Settings, lineage: str, dry_run: bool = False, policy: Policy | None = None) -> Plan:
    """Apply the policy to ``lineage``: decide and remove under every lineage's switch lock.
    ``dry_run``: decide only. A file that cannot be removed is listed in ``errors``; the rest go on."""
    policy = policy or Policy.from_settings(settings)
    if dry_run:
        return plan(settings, lineage, policy, dry_run=True)
    with _every_switch_lock(settings):
        out = plan(settings, lineage, policy, dry_run=False)
        for removal in out.removals:
            for path in removal.paths:
                try:
                    if path.is_dir() and not path.is_symlink():
                        shutil.rmtree(path)
                    else:
                        path.unlink(missing_ok=True)
                except OSError as exc:
                    out.errors.append(f"{path}: {exc}")
            _unpublish(settings, removal, out)
    for error in out.errors:
        log.warning("retention: not removed: %s", error)
    log.info("retention: lineage %s: %d item(s) removed, %d bytes freed", out.lineage, len(out.removals), out.freed)
    return out


def _unpublish(settings: Settings, removal: Removal, out: Plan) -> None:
    """With ``ISNET_MODEL_STORE``: remove from the store what ``removal`` removed here (a version,
    its weights or its engines, a GT encoder), so no host fetches them again."""
    store = VersionStore(settings)
    if store.objects is None:
        return
    if removal.shown.parent == settings.model_dir / CACHE_DIR:  # a shared GT encoder: else the next cycle pulls it
        try:
            store.objects.remove(CACHE_DIR, [p.name for p in removal.paths])
        except OSError as exc:
            out.errors.append(f"{store.objects.url} {CACHE_DIR}: {exc}")
        return
    snapshots = datasets_dir(settings)
    if removal.shown == snapshots or snapshots in removal.shown.parents:  # held-out files other workers pull
        files = [p.relative_to(settings.model_dir).as_posix() for p in removal.paths if snapshots in p.parents]
        # a whole snapshot's folder or some of its files
        try:
            store.objects.remove("files", files)
        except OSError as exc:
            out.errors.append(f"{store.objects.url} snapshots: {exc}")
        return
    try:
        rel = removal.shown.relative_to(store.versions_dir)
    except ValueError:
        return
    name, *rest = rel.parts
    try:
        store.unpublish(name, "/".join(rest) or None)
    except OSError as exc:
        out.errors.append(f"{store.objects.url} {rel}: {exc}")


def prune_after_cycle(settings: Settings, lineage: str) -> dict[str, Any]:
    """:func:`prune` as a cycle runs it once its version is written and promoted: it never raises
    (a cycle is not failed by its clean-up); what went wrong is logged and returned."""
    try:
        return prune(settings, lineage).summary()
    except Exception as exc:
        log.exception("retention after the cycle of lineage %s failed", lineage)
        return {"lineage": lineage, "error": f"{type(exc).__name__}: {exc}"}


@contextlib.contextmanager
def _every_switch_lock(settings: Settings) -> Iterator[None]:
    """Every lineage's switch lock, in a fixed order (a switch takes one only, so no deadlock)."""
    registry = ModelRegistry(settings)
    with contextlib.ExitStack() as stack:
        for name in registry.lineages():
            with contextlib.suppress(ValueError):
                stack.enter_context(registry.for_lineage(name).locked())
        yield


# -- measuring --------------------------------------------------------------------------------------------


def disk_usage(settings: Settings) -> dict[str, Any]:
    """Bytes on disk per lineage, by kind, for ``/metrics``: ``{"total_bytes", "weights_cache_bytes",
    "lineages": {lineage: {"versions", "engines", "snapshots", "gt_encoders", "lineage_files"}}}``.

    ``versions``: checkpoints and reports; ``engines``: built engines (the pretrained weights' count
    as the base's); ``snapshots``: the lineage's projects' label snapshots; ``gt_encoders``: its cached
    GT encoders; ``lineage_files``: its pointer, history, calibration sample. Cheap enough to ask on
    every scrape: names and ``stat`` only (retention keeps the file count bounded)."""
    kinds = ("versions", "engines", "snapshots", "gt_encoders", "lineage_files")
    lineages: dict[str, dict[str, int]] = {}

    def add(lineage: str, kind: str, size: int) -> None:
        lineages.setdefault(lineage, dict.fromkeys(kinds, 0))[kind] += size

    root = settings.model_dir
    for directory in VersionStore(settings).directories():
        owner = lineage_of(directory.name)
        engines = _size(directory / ENGINES_DIR)
        add(owner, "engines", engines)
        add(owner, "versions", _size(directory) - engines)
    for project, folder in snapshot_projects(settings).items():
        try:
            add(lineage_for(project, settings), "snapshots", _size(folder))
        except ValueError:
            add(f"project-{project}", "snapshots", _size(folder))
    cache = root / CACHE_DIR
    for meta in cache.glob("*.json") if cache.is_dir() else []:
        owner = str(_read_json(meta).get("lineage") or BASE)
        add(owner, "gt_encoders", _size(meta) + _size(meta.with_suffix(".pth")))
    reserved = {"versions", LINEAGES_DIR, SNAPSHOTS_DIR, CACHE_DIR}
    if root.is_dir():
        add(BASE, "lineage_files", sum(_size(p) for p in root.iterdir() if p.name not in reserved))
    for name in ModelRegistry(settings).lineages()[1:]:
        with contextlib.suppress(ValueError):
            add(name, "lineage_files", _size(lineage_dir(settings, name)))
    total = sum(sum(v.values()) for v in lineages.values())
    return {"total_bytes": total, "weights_cache_bytes": _size(settings.weights_dir), "lineages": lineages}


def _size(path: Path) -> int:
    """Bytes of a file or a folder's files (links not followed); 0 for what is gone meanwhile."""
    try:
        st = path.lstat()
    except OSError:
        return 0
    if not path.is_dir() or path.is_symlink():
        return st.st_size
    total = 0
    stack = [str(path)]
    while stack:
        with contextlib.suppress(OSError), os.scandir(stack.pop()) as entries:
            for entry in entries:
                with contextlib.suppress(OSError):
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    else:
                        total += entry.stat(follow_symlinks=False).st_size
    return total


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except OSError:
        return path.absolute()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _mtime_iso(path: Path) -> str:
    try:
        return datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).isoformat(timespec="microseconds")
    except OSError:
        return ""
