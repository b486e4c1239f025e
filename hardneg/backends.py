"""The one table of hardneg's framework backends (STYLE.md: backends plug in through one table).

Framework-free: it names packages and frameworks and imports neither. The conformance suite, ``hardneg bench``,
``hardneg reproduce`` and the signature tests read it, so a new backend is one more row here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Tuple

__all__ = ["Backend", "BACKENDS", "FUNCTION_BACKENDS", "by_name"]


@dataclass(frozen=True)
class Backend:
    """One backend.

    Attributes
    ----------
    name : str
        Short name used on command lines (``hardneg verify --backend``, ``hardneg reproduce --backend``).
    package : str
        The importable package.
    framework : str
        The framework's top-level module (what must import for the backend to be installed).
    extra : str
        The pip extra that installs the framework: ``pip install 'hardneg[<extra>]'``.
    keywords : dict
        The backend's keyword-only extras after the reference's arguments, with their defaults (which change
        nothing about the result).
    functions : bool
        Whether the package provides the loss functions (``hcl_loss``, ``jsd_loss``); False for a package of
        loss classes only (Keras).
    """

    name: str
    package: str
    framework: str
    extra: str
    keywords: Dict[str, Any] = field(default_factory=dict)
    functions: bool = True

    @property
    def install_hint(self) -> str:
        return f"pip install 'hardneg[{self.extra}]'"


BACKENDS: Tuple[Backend, ...] = (
    Backend("torch", "hardneg_torch", "torch", "torch", {"memory_budget": None, "gather": False, "group": None}),
    Backend("jax", "hardneg_jax", "jax", "jax", {"memory_budget": None, "axis_name": None}),
    Backend("tf", "hardneg_tf", "tensorflow", "tf", {"memory_budget": None, "gather": False}),
    # the Keras 3 loss class: the extras it passes to the backend it dispatches to (gather: TF and torch)
    Backend("keras", "hardneg_keras", "keras", "keras", {"memory_budget": None, "gather": False}, functions=False),
)

#: The backends that provide the loss functions (what conformance verifies and reproduce trains with).
FUNCTION_BACKENDS: Tuple[Backend, ...] = tuple(b for b in BACKENDS if b.functions)


def by_name(name: str) -> Backend:
    """The backend called ``name`` (ValueError naming the choices otherwise)."""
    for b in BACKENDS:
        if b.name == name:
            return b
    raise ValueError(f"backend must be one of {', '.join(b.name for b in BACKENDS)}; got {name!r}")
