"""conformance: verify any implementation of the hard-negative contrastive loss against the hardneg reference.

``verify(target, framework=...)`` draws examples over the whole input space of docs/spec.md with Hypothesis,
calls the target through its framework (gradients by its own autodiff), compares values and gradients with the
float64 reference within tolerances derived from each example's conditioning, checks the error contract,
special cases, invariances, non-finite inputs and determinism, and returns a :class:`Report` whose failures carry
runnable snippets. ``hardneg verify`` is the command line; ``conformance/vectors/*.json`` are golden vectors for
ports in other languages. No framework is imported until a target of that framework is verified.
"""

from .report import Failure, FeatureResult, Report
from .verify import BACKENDS, DEFAULT_MAX_EXAMPLES, FEATURES, backend_target, installed_backends, verify

__all__ = [
    "verify", "Report", "FeatureResult", "Failure", "BACKENDS", "FEATURES", "DEFAULT_MAX_EXAMPLES",
    "backend_target", "installed_backends",
]
