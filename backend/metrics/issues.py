"""What can be wrong with an evaluation set, named so that nothing is dropped silently.

Why a module of its own: pairing (parent process), decoding (worker processes) and the
reports all speak about the same problems, and the rule "a missing, unreadable or
mismatched pair fails the run unless ``--allow-missing``" must be decided in one place.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

# kind -> (blocking, what it means). Blocking issues exclude the pair and fail the run
# unless the user allows it; the others are recorded so a reader of the report sees them.
KINDS: dict[str, tuple[bool, str]] = {
    "missing_prediction": (True, "ground truth without a prediction (or image) of the same name"),
    "missing_ground_truth": (True, "prediction (or image) without a ground-truth mask of the same name"),
    "duplicate_name": (True, "two files with the same name stem in one folder; which one to pair is ambiguous"),
    "unreadable": (True, "file could not be decoded"),
    "size_mismatch": (True, "prediction and ground truth differ in shape beyond a change of resolution"),
    "resized": (False, "prediction resized to its ground truth's size (same aspect ratio), as PySODEvalToolkit does"),
    "empty_ground_truth": (
        False,
        "ground truth has no foreground pixel (>128): F-measure, weighted F and recall are 0 whatever the "
        "prediction; evaluated as PySODMetrics does",
    ),
    "not_an_image": (False, "file skipped: its suffix is not an image suffix"),
}


@dataclass(frozen=True)
class Issue:
    """One problem with one file or pair; ``kind`` is a key of :data:`KINDS`."""

    kind: str
    name: str
    path: str = ""
    detail: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown issue kind {self.kind!r}")

    @property
    def blocking(self) -> bool:
        return KINDS[self.kind][0]

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    def __str__(self) -> str:
        where = f" ({self.path})" if self.path else ""
        detail = f": {self.detail}" if self.detail else ""
        return f"{self.kind}: {self.name}{where}{detail}"


def blocking(issues: list[Issue]) -> list[Issue]:
    """The issues that fail a run unless the user passes ``--allow-missing``."""
    return [issue for issue in issues if issue.blocking]


def summarize(issues: list[Issue], limit: int = 20) -> list[str]:
    """Lines for a terminal: per kind, its meaning, up to ``limit`` entries and how many more.

    The report files always carry the complete list; the terminal is capped so that an empty
    prediction folder does not print 5,000 lines, but the count is always shown.
    """
    lines: list[str] = []
    for kind, (_, meaning) in KINDS.items():
        found = [issue for issue in issues if issue.kind == kind]
        if not found:
            continue
        lines.append(f"{len(found)} x {kind} ({meaning}):")
        lines.extend(f"  {issue.name}{f' ({issue.path})' if issue.path else ''}"
                     f"{f': {issue.detail}' if issue.detail else ''}" for issue in found[:limit])
        if len(found) > limit:
            lines.append(f"  ... and {len(found) - limit} more")
    return lines
