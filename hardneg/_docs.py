r"""Docstring text shared by the reference and every backend, written once (STYLE.md: Keras' shared docstrings).

A docstring holds a token such as ``{{hcl_loss.math}}`` alone on a line; :func:`fill_doc` replaces it at import
with :data:`TEXTS`' entry, indented like the token, and ``mkdocs_griffe.py`` expands the same tokens for the
API pages (which are built by static analysis and never see the runtime ``__doc__``). A token's braces cannot
be ``str.format`` fields: the LaTeX in the text has braces of its own.
"""

from __future__ import annotations

import re
from typing import Callable, Dict, Optional, TypeVar

__all__ = ["TEXTS", "expand", "fill_doc"]

#: The shared texts, keyed by token name (unindented; :func:`expand` indents them).
TEXTS: Dict[str, str] = {
    "hcl_loss.math": r"""For anchors :math:`i` with positive logit :math:`a_i = s_{i,p(i)}` and negatives
:math:`j \in N_i` (:math:`M_i = |N_i|`), with :math:`s_{ij} = u_i \cdot u_j / t` and
:math:`u = z / \max(\lVert z\rVert_2, 10^{-12})` (``normalize=True``):

.. math::

    R_i = M_i \frac{\sum_j e^{(1+\beta) s_{ij}}}{\sum_j e^{\beta s_{ij}}},\qquad
    Ng_i = \max\Big(\frac{R_i - \tau^+ M_i e^{a_i}}{1-\tau^+},\; M_i e^{-1/t}\Big),\qquad
    \ell_i = -\log \frac{e^{a_i}}{e^{a_i} + Ng_i}.""",
    "hcl_loss.beta": "Hardness, >= 0; ``math.inf`` allowed.",
    "hcl_loss.tau_plus": "Class prior for debiasing, 0 <= tau_plus < 1.",
    "hcl_loss.clamp": "Floor Ng at M e^{-1/t} (the released code's \"constrain\"; hard estimator only).",
    "hcl_loss.normalize": "Use u = z / max(||z||_2, 1e-12); False uses z as given.",
    "hcl_loss.labels": "Samples sharing the anchor's label are removed from its negatives.",
    "hcl_loss.negative_labels": "Labels of the bank rows; required with ``labels`` when a bank is given.",
    "hcl_loss.references": """Robinson, Chuang, Sra, Jegelka. Contrastive Learning with Hard Negative Samples. ICLR 2021.
Chuang, Robinson, Lin, Torralba, Jegelka. Debiased Contrastive Learning. NeurIPS 2020.""",
}

_TOKEN = re.compile(r"^(?P<indent>[ \t]*)\{\{(?P<key>[\w.]+)\}\}[ \t]*$", re.MULTILINE)


def expand(doc: Optional[str]) -> Optional[str]:
    """``doc`` with every token line replaced by its text, indented like the token (None stays None)."""
    if doc is None:
        return None

    def text(m: "re.Match[str]") -> str:
        try:
            body = TEXTS[m.group("key")]
        except KeyError:
            raise KeyError(f"unknown docstring token {{{{{m.group('key')}}}}}; known: {sorted(TEXTS)}") from None
        return "\n".join(m.group("indent") + line if line else "" for line in body.split("\n"))

    return _TOKEN.sub(text, doc)


F = TypeVar("F", bound=Callable)


def fill_doc(obj: F) -> F:
    """Decorator: expand the tokens of ``obj.__doc__`` (a no-op under ``python -OO``, where it is None)."""
    obj.__doc__ = expand(obj.__doc__)
    return obj
