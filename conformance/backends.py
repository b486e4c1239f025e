"""The registry of our backends and the default example counts (light: imports no framework, no Hypothesis)."""

from __future__ import annotations

import importlib
from typing import Callable, List, Optional, Tuple

from hardneg.backends import FUNCTION_BACKENDS

__all__ = ["BACKENDS", "DEFAULT_MAX_EXAMPLES", "backend_target", "installed_backends"]

#: backend name -> (module providing ``hcl_loss``, framework it is verified in), from hardneg's backend table
BACKENDS = {b.name: (b.package, b.framework) for b in FUNCTION_BACKENDS}

#: Examples per numeric feature when ``max_examples`` is not given (the relation features draw fewer, see
#: ``_counts``): 12 for every backend. JAX compiles one program per combination of shapes, dtype and
#: static options (about a second of CPU each), so below ``conformance.suite.FEW_PROGRAMS_BELOW`` examples its
#: run is a *quick* run: each feature draws its static options and shapes from two fixed combinations
#: (``conformance.strategies.quick_combinations``) and its examples reuse their programs; TensorFlow and PyTorch
#: run eagerly. A thorough run passes ``max_examples=50`` or more.
DEFAULT_MAX_EXAMPLES = {"numpy": 12, "torch": 12, "tensorflow": 12, "jax": 12, "command": 12}


def backend_target(name: str) -> Tuple[Optional[Callable], str, str]:
    """``(hcl_loss or None, framework, reason)`` for a backend of :data:`BACKENDS`.

    A backend counts as installed when both its framework and its module import.
    """
    module, framework = BACKENDS[name]
    try:
        importlib.import_module(framework)
    except ImportError as e:
        return None, framework, f"not installed ({framework} does not import: {e})"
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        return None, framework, f"not installed ({module} does not import: {e})"
    except Exception as e:  # noqa: BLE001 - installed but broken: reported as an error, not as "not installed"
        return None, framework, f"import error ({module}: {type(e).__name__}: {e})"
    fn = getattr(mod, "hcl_loss", None)
    if fn is None:
        return None, framework, f"not installed ({module} has no hcl_loss)"
    return fn, framework, ""


def installed_backends() -> List[str]:
    """Names of the backends in :data:`BACKENDS` whose framework and module both import."""
    return [n for n in BACKENDS if backend_target(n)[0] is not None]
