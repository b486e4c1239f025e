"""The hyper-parameters a loss *object* holds, shared by the framework classes (torch's ``HCLLoss`` module and
the Keras ``HCLLoss``) as a framework-free mixin, as einops' layers share theirs.

Each class validates its settings here, through :mod:`hardneg.validation` (so both raise the same messages as
every ``hcl_loss``), keeps them as plain attributes that may be changed between steps (they are validated
again by ``hcl_loss`` on every call), and passes them back with :meth:`HCLLossSettings.call_kwargs`.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from .validation import _check_bool, check_call, check_learned_temperature, check_memory_budget

__all__ = ["HCLLossSettings"]


class HCLLossSettings:
    """Mixin: the ``hcl_loss`` keywords held by a loss object, plus ``learn_temperature`` / ``min_temperature``."""

    #: The ``hcl_loss`` keywords a loss object holds, in the signature's order (``call_kwargs``' keys).
    CALL_KEYS = ("temperature", "beta", "tau_plus", "estimator", "clamp", "normalize", "reduction", "layout",
                 "symmetric", "memory_budget", "gather")

    def _hold_settings(self, *, temperature: Any, beta: Any, tau_plus: Any, estimator: Any, clamp: Any,
                       normalize: Any, reduction: Any, layout: Any, symmetric: Any, memory_budget: Any,
                       gather: Any, learn_temperature: Any, min_temperature: Any) -> None:
        """Validate (shapes unknown: whether a call has a bank is checked on each call; ``layout="bank"``
        promises one) and store every setting as an attribute of the same name."""
        check_call(z1_shape=(None, None), z2_shape=(None, None), z1_dtype=None, z2_dtype=None,
                   temperature=temperature, beta=beta, tau_plus=tau_plus, estimator=estimator, clamp=clamp,
                   normalize=normalize, reduction=reduction, layout=layout, symmetric=symmetric,
                   negatives_shape=(None, None) if layout == "bank" else None)
        memory_budget = check_memory_budget(memory_budget)
        _check_bool("gather", gather)
        check_learned_temperature(learn_temperature, min_temperature)
        values = dict(temperature=temperature, beta=beta, tau_plus=tau_plus, estimator=estimator, clamp=clamp,
                      normalize=normalize, reduction=reduction, layout=layout, symmetric=symmetric,
                      memory_budget=memory_budget, gather=gather, learn_temperature=learn_temperature,
                      min_temperature=None if min_temperature is None else float(min_temperature))
        for key, value in values.items():
            setattr(self, key, value)

    def call_kwargs(self) -> Dict[str, Any]:
        """The held ``hcl_loss`` keywords (the fixed ``temperature``: a learned one is the class's business)."""
        return {key: getattr(self, key) for key in self.CALL_KEYS}

    def settings_repr(self) -> str:
        """``key=value`` for the hyper-parameters, then every other setting that differs from its default."""
        s = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.CALL_KEYS[:7])
        defaults: Dict[str, Optional[Any]] = dict(layout=None, symmetric=True, memory_budget=None, gather=False,
                                                  learn_temperature=False, min_temperature=None)
        for key, default in defaults.items():
            value = getattr(self, key)
            if value is not default and value != default:
                s += f", {key}={value!r}"
        return s
