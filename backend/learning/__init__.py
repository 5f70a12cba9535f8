"""The retraining application: a cycle per lineage (a project's, or the base), its evidence and
promotion, the staging of new versions, the history, and the registry of which version each
lineage serves. ISNet itself (network, trainer, engines) is :mod:`backend.isnet`; this package
uses it and is never used by it.
"""

from backend.learning.cycle import Cycle, CycleReport, CycleTarget, run_cycle
from backend.learning.promotion import Decision, decide, parse_rule
from backend.learning.registry import ModelRegistry

__all__ = ["Cycle", "CycleReport", "CycleTarget", "Decision", "ModelRegistry", "decide", "parse_rule", "run_cycle"]
