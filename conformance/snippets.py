"""Failure snippets: self-contained Python that reproduces a failure when pasted.

Each snippet imports the target by path, builds the (shrunk) inputs as literals, calls the target with explicit
framework code (tensors of the dtype under test, gradients by the framework's autodiff) and hands the outputs to
a :mod:`conformance.reproduce` function, which raises ``AssertionError`` with the discrepancy.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional

import numpy as np

from .cases import Case

__all__ = ["literal", "compare_snippet", "error_snippet", "relation_snippet", "determinism_snippet"]

_HEADER = {
    "numpy": "import numpy as np\n",
    "torch": "import numpy as np\nimport torch\n",
    "jax": "import numpy as np\nimport jax\nimport jax.numpy as jnp\n\njax.config.update(\"jax_enable_x64\", True)"
           "  # float64 inputs stay float64\n",
    "tensorflow": "import numpy as np\nimport tensorflow as tf\n",
}

_RUN = {
    "torch": '''
def run(z1, z2, negatives=None, labels=None, negative_labels=None, *, dtype, cotangent, temperature_grad=False,
        **kwargs):
    """The target on torch tensors of `dtype`; gradients by torch.autograd against `cotangent`."""
    xs = {k: torch.tensor(v, dtype=getattr(torch, dtype), requires_grad=True)
          for k, v in dict(z1=z1, z2=z2, negatives=negatives).items() if v is not None}
    if temperature_grad:  # the temperature as a 0-d tensor, differentiated too
        xs["temperature"] = torch.tensor(kwargs.pop("temperature"), dtype=getattr(torch, dtype), requires_grad=True)
    lab = {k: torch.tensor(v) for k, v in dict(labels=labels, negative_labels=negative_labels).items() if v is not None}
    bank = {k: xs[k] for k in ("negatives", "temperature") if k in xs}
    value = target(xs["z1"], xs["z2"], **bank, **lab, **kwargs)
    cot = torch.as_tensor(np.asarray(cotangent, dtype=np.float64)).to(value.dtype).reshape(value.shape)
    grads = torch.autograd.grad(value, list(xs.values()), cot, allow_unused=True)
    return value, dict(zip(xs, grads))
''',
    "jax": '''
def run(z1, z2, negatives=None, labels=None, negative_labels=None, *, dtype, cotangent, temperature_grad=False,
        **kwargs):
    """The target on jax arrays of `dtype`; gradients by jax.vjp against `cotangent`."""
    xs = {k: jnp.asarray(v).astype(getattr(jnp, dtype))
          for k, v in dict(z1=z1, z2=z2, negatives=negatives).items() if v is not None}
    if temperature_grad:  # the temperature as a 0-d array, differentiated too
        xs["temperature"] = jnp.asarray(kwargs.pop("temperature")).astype(getattr(jnp, dtype))
    lab = {k: jnp.asarray(v) for k, v in dict(labels=labels, negative_labels=negative_labels).items() if v is not None}
    names = list(xs)

    def f(*args):
        d = dict(zip(names, args))
        return target(d.pop("z1"), d.pop("z2"), **d, **lab, **kwargs)

    value, vjp = jax.vjp(f, *xs.values())
    grads = vjp(jnp.asarray(np.asarray(cotangent, dtype=np.float64)).astype(value.dtype).reshape(value.shape))
    return value, dict(zip(names, grads))
''',
    "tensorflow": '''
def run(z1, z2, negatives=None, labels=None, negative_labels=None, *, dtype, cotangent, temperature_grad=False,
        **kwargs):
    """The target on tf tensors of `dtype`; gradients by tf.GradientTape against `cotangent`."""
    xs = {k: tf.cast(tf.constant(v, tf.float64), getattr(tf, dtype))
          for k, v in dict(z1=z1, z2=z2, negatives=negatives).items() if v is not None}
    if temperature_grad:  # the temperature as a tf.Variable, differentiated too
        xs["temperature"] = tf.Variable(tf.cast(tf.constant(kwargs.pop("temperature"), tf.float64), getattr(tf, dtype)))
    lab = {k: tf.constant(v) for k, v in dict(labels=labels, negative_labels=negative_labels).items() if v is not None}
    bank = {k: xs[k] for k in ("negatives", "temperature") if k in xs}
    with tf.GradientTape() as tape:
        tape.watch(list(xs.values()))
        value = target(xs["z1"], xs["z2"], **bank, **lab, **kwargs)
    cot = tf.reshape(tf.cast(tf.constant(np.asarray(cotangent, dtype=np.float64)), value.dtype), tf.shape(value))
    grads = tape.gradient(value, list(xs.values()), output_gradients=cot)
    return value, dict(zip(xs, grads))
''',
    "numpy": '''
def run(z1, z2, negatives=None, labels=None, negative_labels=None, *, dtype, cotangent, temperature_grad=False,
        **kwargs):
    """The target on NumPy arrays of `dtype`; gradients from its *_and_grad twin against `cotangent`."""
    if dtype == "bfloat16":
        import ml_dtypes
        dtype = ml_dtypes.bfloat16
    xs = {k: np.asarray(v).astype(dtype) for k, v in dict(z1=z1, z2=z2, negatives=negatives).items() if v is not None}
    lab = {k: v for k, v in dict(labels=labels, negative_labels=negative_labels).items() if v is not None}
    bank = {"negatives": xs["negatives"]} if "negatives" in xs else {}
    if TWIN is None:
        return target(xs["z1"], xs["z2"], **bank, **lab, **kwargs), None
    value, grads = TWIN(xs["z1"], xs["z2"], **bank, **lab, cotangent=cotangent, **kwargs)
    grads = grads._asdict() if hasattr(grads, "_asdict") else dict(zip(("z1", "z2", "negatives", "temperature"), grads))
    return value, {k: grads.get(k) for k in list(xs) + (["temperature"] if temperature_grad else [])}
''',
}

_RAW = {
    "torch": "conv = lambda v: torch.as_tensor(v) if isinstance(v, np.ndarray) else v  # dtype and shape kept\n",
    "jax": "conv = lambda v: jnp.asarray(v) if isinstance(v, np.ndarray) else v  # dtype and shape kept\n",
    "tensorflow": "conv = lambda v: tf.constant(v) if isinstance(v, np.ndarray) else v  # dtype and shape kept\n",
    "numpy": "conv = lambda v: v\n",
}

from .command import SNIPPET_HEADER, SNIPPET_RUN  # noqa: E402 - a port over the JSON-lines protocol
_HEADER["command"], _RUN["command"], _RAW["command"] = SNIPPET_HEADER, SNIPPET_RUN, "conv = lambda v: v\n"


def _num(x: float) -> str:
    if math.isnan(x):
        return "np.nan"
    if math.isinf(x):
        return "np.inf" if x > 0 else "-np.inf"
    return repr(float(x))


def _nested(a) -> str:
    if isinstance(a, list):
        return "[" + ", ".join(_nested(v) for v in a) + "]"
    if isinstance(a, (bool, np.bool_)):
        return repr(bool(a))
    if isinstance(a, (int, np.integer)):
        return str(int(a))
    return _num(float(a))


def literal(x: Any) -> str:
    """Python source for a value: NumPy arrays (dtype kept when not float64), floats (nan/inf), dicts."""
    if x is None:
        return "None"
    if isinstance(x, np.ndarray):
        body = _nested(x.tolist())
        if x.dtype == np.float64:
            return f"np.array({body})" if x.ndim else f"np.float64({body})"
        if x.size == 0:
            return f"np.zeros({tuple(x.shape)}, dtype=np.{x.dtype.name})"
        return f"np.array({body}, dtype=np.{x.dtype.name})"
    if isinstance(x, (bool, np.bool_)):
        return repr(bool(x))
    if isinstance(x, (float, np.floating)):
        return _num(float(x))
    if isinstance(x, dict):
        return "dict(" + ", ".join(f"{k}={literal(v)}" for k, v in x.items()) + ")"
    return repr(x)


def _import(target_path: Optional[str], framework: str) -> str:
    if framework == "command":  # a port in any language, started through the shell (conformance.command)
        return f"target = cc.port({target_path!r})  # the command is started once, through the shell\n"
    if target_path is None:
        line = "target = ...  # the function under test (it was not importable by module path)\n"
    else:
        mod, name = target_path.split(":")
        line = f"from {mod} import {name.split('.')[0]} as target\n" if "." not in name else \
            f"import {mod}\ntarget = {mod}.{name}\n"
    if framework == "numpy":
        line += "import sys\nTWIN = getattr(sys.modules[target.__module__], target.__name__ + \"_and_grad\", None)\n"
        line += "TWIN = target if target.__name__.endswith(\"_and_grad\") else TWIN\n"
    return line


def _inputs(case: Case, name: str = "inputs") -> str:
    parts = [f"    z1={literal(case.z1)},", f"    z2={literal(case.z2)},"]
    for k in ("negatives", "labels", "negative_labels"):
        v = getattr(case, k)
        if v is not None:
            parts.append(f"    {k}={literal(v)},")
    return f"{name} = dict(\n" + "\n".join(parts) + "\n)\n"


def _head(title: str, framework: str, target_path: Optional[str]) -> str:
    return (f"# hardneg conformance failure: {title}\n# paste into Python; raises AssertionError while the failure "
            f"persists\n" + _HEADER[framework] + "import conformance.reproduce as cr\n"
            + _import(target_path, framework))


def _kw(case: Case) -> str:
    return f"kwargs = {literal(dict(case.params))}\nextras = {literal(dict(case.extras))}  # backend-only arguments\n"


def compare_snippet(title: str, framework: str, target_path: Optional[str], case: Case) -> str:
    exact = ", exact_ties=True" if case.origin.get("exact_ties") else ""
    dt = ", check_dtypes=False" if framework in ("numpy", "command") else ""
    tg = ", temperature_grad=True" if case.temperature_grad else ""
    return (_head(title, framework, target_path) + _RUN[framework] + "\n" + _inputs(case) + _kw(case)
            + f"dtype, cotangent = {case.dtype!r}, {literal(case.cotangent)}\n\n"
            + f"value, grads = run(**inputs, dtype=dtype, cotangent=cotangent{tg}, **kwargs, **extras)\n"
            + f"cr.check(value, grads, **inputs, dtype=dtype, cotangent=cotangent{dt}{exact}{tg}, **kwargs)\n")


def determinism_snippet(title: str, framework: str, target_path: Optional[str], case: Case) -> str:
    return (_head(title, framework, target_path) + _RUN[framework] + "\n" + _inputs(case) + _kw(case)
            + f"dtype, cotangent = {case.dtype!r}, {literal(case.cotangent)}\n\n"
            + "v1, g1 = run(**inputs, dtype=dtype, cotangent=cotangent, **kwargs, **extras)\n"
            + "v2, g2 = run(**inputs, dtype=dtype, cotangent=cotangent, **kwargs, **extras)\n"
            + "cr.check_same(v1, g1, v2, g2)\n")


def relation_snippet(title: str, framework: str, target_path: Optional[str], kind: str, case1: Case,
                     case2: Case, maps: Dict[str, Any]) -> str:
    """kind: "permutation" (maps: anchor_perm, row_perm, bank_perm), "rescaling" (maps: factors),
    "closed_form" (case2 unused)."""
    s = _head(title, framework, target_path) + _RUN[framework] + "\n" + _inputs(case1, "inputs1") + _kw(case1)
    s += f"dtype, cotangent = {case1.dtype!r}, {literal(case1.cotangent)}\n"
    if kind == "closed_form":
        return s + ("\nvalue, _ = run(**inputs1, dtype=dtype, cotangent=cotangent, **kwargs, **extras)\n"
                    "cr.check_closed_form(value, **inputs1, dtype=dtype, **kwargs)\n")
    s += _inputs(case2, "inputs2")
    s += "\nv1, g1 = run(**inputs1, dtype=dtype, cotangent=cotangent, **kwargs, **extras)\n"
    if kind == "permutation":
        s += f"cotangent2 = {literal(case2.cotangent)}\n"
        s += "v2, g2 = run(**inputs2, dtype=dtype, cotangent=cotangent2, **kwargs, **extras)\n"
        s += (f"cr.check_permutation(v1, g1, v2, g2, inputs1=inputs1, inputs2=inputs2, "
              f"anchor_perm={literal(np.asarray(maps['anchor_perm']))}, "
              f"row_perm={literal(np.asarray(maps['row_perm']))}, "
              f"bank_perm={literal(None if maps.get('bank_perm') is None else np.asarray(maps['bank_perm']))}, "
              f"dtype=dtype, cotangent=cotangent, cotangent2=cotangent2, **kwargs)\n")
    else:
        s += "v2, g2 = run(**inputs2, dtype=dtype, cotangent=cotangent, **kwargs, **extras)\n"
        s += (f"cr.check_rescaling(v1, g1, v2, g2, inputs1=inputs1, inputs2=inputs2, "
              f"factors={literal({k: np.asarray(v) for k, v in maps['factors'].items()})}, dtype=dtype, "
              f"cotangent=cotangent, **kwargs)\n")
    return s


def error_snippet(title: str, framework: str, target_path: Optional[str], arrays: Dict[str, np.ndarray],
                  kwargs: Dict[str, Any], expected: BaseException, type_only: bool = False) -> str:
    s = _head(title, framework, target_path) + _RAW[framework]
    s += "arrays = dict(\n" + "".join(f"    {k}={literal(v)},\n" for k, v in arrays.items()) + ")\n"
    s += f"kwargs = {literal(kwargs)}\n"
    s += f"expected = {type(expected).__name__}({str(expected)!r})\n\n"
    s += ("cr.check_raises(lambda: target(conv(arrays.pop(\"z1\")), conv(arrays.pop(\"z2\")), "
          "**{k: conv(v) for k, v in arrays.items()}, **kwargs), expected"
          + (", type_only=True" if type_only else "") + ")\n")
    return s
