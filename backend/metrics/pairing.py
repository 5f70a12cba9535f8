"""Pairing ground-truth masks with predictions (or images) by file stem.

Why by stem: predictions are usually PNGs while photos are JPEGs and some datasets ship
JPEG predictions, so ``0001.png`` pairs with ``0001.jpg``. Folders are searched
recursively, as ``isnet predict`` does, which is why two files with one stem in the same
tree are ambiguous and reported instead of one being picked at random. Nothing is dropped
silently: every unpaired or skipped file becomes an :class:`~backend.metrics.issues.Issue`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from backend.images import IMAGE_SUFFIXES
from backend.metrics.issues import Issue


class PairingError(ValueError):
    """A folder that cannot be evaluated at all (absent, not a folder, no image in it)."""


@dataclass(frozen=True)
class Pair:
    """A ground-truth mask and what it is compared with: a saved prediction, or an image to predict."""

    name: str
    gt: Path
    source: Path


def index_folder(folder: Path, role: str) -> tuple[dict[str, Path], list[Issue]]:
    """``{stem: path}`` for the image files under ``folder`` plus the issues found on the way.

    Stems that occur more than once are left out of the index and reported as
    ``duplicate_name``; files with a non-image suffix are reported as ``not_an_image``.
    """
    if not folder.exists():
        raise PairingError(f"{role} folder {folder} does not exist")
    if not folder.is_dir():
        raise PairingError(f"{role} path {folder} is not a folder")
    by_stem: dict[str, list[Path]] = {}
    issues: list[Issue] = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            issues.append(Issue("not_an_image", path.name, str(path), f"in the {role} folder"))
            continue
        by_stem.setdefault(path.stem, []).append(path)
    index: dict[str, Path] = {}
    for stem, paths in by_stem.items():
        if len(paths) == 1:
            index[stem] = paths[0]
        else:
            shown = ", ".join(str(p) for p in paths)
            issues.extend(Issue("duplicate_name", stem, str(p), f"{role} files sharing the stem: {shown}")
                          for p in paths)
    if not index and not any(issue.kind == "duplicate_name" for issue in issues):
        raise PairingError(f"no {role} files ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    return index, issues


def pair_folders(gt_dir: Path, source_dir: Path, source_role: str = "prediction") -> tuple[list[Pair], list[Issue]]:
    """Pairs sorted by name (the order every report and every merge follows) and the issues.

    ``source_role`` is ``"prediction"`` for saved masks and ``"image"`` when the model is to be
    run; it only changes the wording of the issues.
    """
    gts, issues = index_folder(gt_dir, "ground-truth")
    sources, source_issues = index_folder(source_dir, source_role)
    issues += source_issues
    duplicated = {issue.name for issue in issues if issue.kind == "duplicate_name"}
    pairs = [Pair(name, gts[name], sources[name]) for name in sorted(gts.keys() & sources.keys())]
    for name in sorted(gts.keys() - sources.keys() - duplicated):
        issues.append(Issue("missing_prediction", name, str(gts[name]), f"no {source_role} named {name}.*"))
    for name in sorted(sources.keys() - gts.keys() - duplicated):
        issues.append(Issue("missing_ground_truth", name, str(sources[name]), f"no ground truth named {name}.*"))
    return pairs, issues
