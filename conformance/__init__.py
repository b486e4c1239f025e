"""conformance: verify any implementation of the hard-negative contrastive loss against the hardneg reference.

``verify(target, framework=...)`` draws examples over the whole input space of docs/spec.md with Hypothesis,
calls the target through its framework (gradients by its own autodiff), compares values and gradients with the
float64 reference within tolerances derived from each example's conditioning, checks the error contract,
special cases, invariances, non-finite inputs and determinism, and returns a :class:`Report` whose failures carry
runnable snippets. ``hardneg verify`` is the command line; ``conformance/vectors/*.json`` are golden vectors for
ports in other languages (docs/conformance.md). Importing the package is cheap: Hypothesis and the frameworks are
imported when a verification runs.
"""

from typing import TYPE_CHECKING

from .backends import BACKENDS, DEFAULT_MAX_EXAMPLES, backend_target, installed_backends

if TYPE_CHECKING:  # for type checkers and the API docs; at run time these load on first use (below)
    from .report import Failure, FeatureResult, Report
    from .suite import FEATURES, verify

__all__ = [
    "verify", "verify_command", "Report", "FeatureResult", "Failure", "BACKENDS", "FEATURES", "DEFAULT_MAX_EXAMPLES",
    "backend_target", "installed_backends",
]

_LAZY = {"verify": "suite", "FEATURES": "suite", "planned_examples": "suite",
         "Report": "report", "FeatureResult": "report", "Failure": "report", "verify_command": "command"}


def __getattr__(name):  # PEP 562: the heavy modules load on first use
    if name in _LAZY:
        import importlib

        mod = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(mod, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
