"""What the evaluation fork server imports first: PySODMetrics without scikit-learn.

Why: an evaluation with worker processes starts a fork server that imports the metrics once
and forks every worker from it, and no worker exists until that import is done. PySODMetrics'
package imports its camouflage context measure, and with it scikit-learn, pandas and
scipy.stats: about 0.8 s of the server's 1.1 s, for a measure the evaluator never uses. On a
2-core machine that start is 5 % of scoring 500 masks (see ``bench/evaluate.py``).

So, imported before PySODMetrics (the fork server does; nothing else should), this module
registers a stand-in for that one submodule. Its classes import the real module when first
called, as does any other name looked up on it, so nothing behaves differently; only the
import is deferred. Where PySODMetrics is already imported, it does nothing.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable
from typing import Any

DEFERRED_MODULE = "py_sod_metrics.context_measure"
DEFERRED_NAMES = ("ContextMeasure", "CamouflageContextMeasure")


def _real_module() -> types.ModuleType:
    """Replace the stand-in with the real submodule (importing scikit-learn now)."""
    module = sys.modules.get(DEFERRED_MODULE)
    if isinstance(module, _StandIn):
        del sys.modules[DEFERRED_MODULE]
    return importlib.import_module(DEFERRED_MODULE)


def _deferred_class(name: str) -> Callable[..., Any]:
    def construct(*args: Any, **kwargs: Any) -> Any:
        return getattr(_real_module(), name)(*args, **kwargs)

    construct.__name__ = construct.__qualname__ = name
    construct.__doc__ = f"Imports {DEFERRED_MODULE} on first use and returns a real {name}."
    return construct


class _StandIn(types.ModuleType):
    """``py_sod_metrics.context_measure`` until something really uses it."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(_real_module(), name)


def install() -> None:
    """Register the stand-in unless PySODMetrics is already imported."""
    if "py_sod_metrics" in sys.modules or DEFERRED_MODULE in sys.modules:
        return
    stand_in = _StandIn(DEFERRED_MODULE, __doc__)
    for name in DEFERRED_NAMES:
        setattr(stand_in, name, _deferred_class(name))
    sys.modules[DEFERRED_MODULE] = stand_in


install()
