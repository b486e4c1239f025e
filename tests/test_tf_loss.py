"""hardneg_tf.hcl_loss against the NumPy reference: values, closed-form gradients, modes, edges, errors, memory.

The generic randomized sweep lives in the conformance suite (``hardneg verify --backend tf``); these tests pin
the TF-specific paths: the fused (tape recording) and two-pass (outer tape / "none") gradients, row blocks with
padding, tf.function with unknown batch dimensions, XLA, half precision in and out, and the graph's memory.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

import hardneg  # noqa: E402
import hardneg_tf  # noqa: E402

EPS64 = 2.0**-53
EPS32 = 2.0**-24
OUT_EPS = {"float64": EPS64, "float32": EPS32, "float16": 2.0**-11, "bfloat16": 2.0**-8}


def _data(B=5, d=4, K=7, seed=0):
    rng = np.random.default_rng(seed)
    return dict(
        z1=rng.normal(size=(B, d)),
        z2=rng.normal(size=(B, d)),
        shared=rng.normal(size=(K, d)),
        per=rng.normal(size=(B, K, d)),
        labels=rng.integers(0, 3, size=B),
        nl_shared=rng.integers(0, 3, size=K),
        nl_per=rng.integers(0, 3, size=(B, K)),
    )


D = _data()
# The same z1, z2 in every feature; (name, extra arrays, hyper-parameters).
FEATURES = [
    ("defaults", {}, {}),
    ("debiased", {}, dict(beta=0.0)),
    ("easy", {}, dict(estimator="easy")),
    ("beta_inf", {}, dict(beta=math.inf, reduction="sum")),
    ("hard_t0.1", {}, dict(beta=6.0, temperature=0.1)),
    ("floor_binds", {}, dict(tau_plus=0.9)),
    ("no_clamp", {}, dict(clamp=False, tau_plus=0.02)),
    ("unnormalized", {}, dict(normalize=False, temperature=2.0)),
    ("labels", dict(labels=D["labels"]), {}),
    ("none", {}, dict(reduction="none")),
    ("shared_bank", dict(negatives=D["shared"]), {}),
    ("shared_bank_labels", dict(negatives=D["shared"], labels=D["labels"], negative_labels=D["nl_shared"]), {}),
    ("per_anchor_labels_none", dict(negatives=D["per"], labels=D["labels"], negative_labels=D["nl_per"]),
     dict(reduction="none")),
    # spec 1.1: the cross layout (one-way and symmetric, banks, labels) and a tensor temperature (d loss / d t)
    ("cross", {}, dict(layout="cross")),
    ("cross_one_way_floor", {}, dict(layout="cross", symmetric=False, tau_plus=0.9)),
    ("cross_labels_none", dict(labels=D["labels"]), dict(layout="cross", reduction="none")),
    ("cross_shared_bank_labels", dict(negatives=D["shared"], labels=D["labels"], negative_labels=D["nl_shared"]),
     dict(layout="cross", beta=2.0)),
    ("cross_per_anchor_none", dict(negatives=D["per"]), dict(layout="cross", reduction="none", tau_plus=0.5)),
    ("cross_one_way_per_anchor_sum", dict(negatives=D["per"]), dict(layout="cross", symmetric=False,
                                                                    reduction="sum", beta=0.0)),
]
#: Features whose temperature is also passed as a tf.Variable, its gradient checked against Grads.temperature.
T_TENSOR = {"defaults", "floor_binds", "beta_inf", "no_clamp", "shared_bank_labels", "per_anchor_labels_none",
            "cross", "cross_one_way_floor", "cross_labels_none", "cross_shared_bank_labels", "cross_per_anchor_none",
            "cross_one_way_per_anchor_sum"}
# Small enough that every layout walks several row blocks, the last one padded (e.g. 10 in-batch anchors
# in 4 blocks of 3).
BUDGET = 1500


def _cond(kw):
    """Size of the log-domain quantities (cf. tests/test_reference.py): rounding errors scale with it."""
    b = kw.get("beta", 1.0)
    b = 0.0 if math.isinf(b) else b
    return (2.0 + b) / kw.get("temperature", 0.5) + 10.0


def n_anchors(arrays, kw):
    """Length of the reduction="none" output."""
    B = len(arrays["z1"])
    if kw.get("layout") == "cross":
        return 2 * B if kw.get("symmetric", True) else B
    return B if "negatives" in arrays else 2 * B


def _cot(kw, n):
    return np.linspace(0.5, 1.5, n) if kw.get("reduction") == "none" else 0.7


def run_tf(arrays, kw, *, mode="eager", dtype="float64", cot=None, t_tensor=None, **extra):
    """Value and gradients of hardneg_tf.hcl_loss as float64 NumPy, taken the way ``mode`` says.

    eager: tape recording while the loss is called (the fused sweep for "mean"/"sum");
    outer: a tf.function called under a tape outside it (the loss is traced without a tape: two passes);
    graph / xla: tape inside tf.function (jit_compile for xla);
    unknown: graph with every dimension of the signature None.
    ``t_tensor``: a dtype name; the temperature is then passed as a 0-d tensor of that dtype (an input of the
    compiled function) and its gradient is returned as ``grads["temperature"]``.
    """
    cast = lambda x: tf.cast(tf.constant(np.asarray(x, np.float64)), dtype)  # noqa: E731
    keys = [k for k in ("z1", "z2", "negatives") if k in arrays]
    xs = [cast(arrays[k]) for k in keys]
    labs = {k: tf.constant(arrays[k]) for k in ("labels", "negative_labels") if k in arrays}
    if t_tensor is not None:
        keys.append("temperature")
        xs.append(tf.constant(kw.get("temperature", 0.5), t_tensor))
        kw = {k: v for k, v in kw.items() if k != "temperature"}
    n_z = 3 if "negatives" in arrays else 2

    def loss(*xs):
        t = {"temperature": xs[-1]} if t_tensor is not None else {}
        return hardneg_tf.hcl_loss(*xs[:2], **dict(zip(keys[2:n_z], xs[2:n_z])), **t, **labs, **kw, **extra)

    def with_tape(*xs):
        with tf.GradientTape() as tape:
            tape.watch(xs)
            v = loss(*xs)
        c = tf.cast(tf.constant(np.asarray(cot if cot is not None else 1.0)), v.dtype)
        return v, tape.gradient(v, list(xs), output_gradients=tf.broadcast_to(c, tf.shape(v)))

    if mode == "eager":
        v, g = with_tape(*xs)
    elif mode == "outer":
        f = tf.function(loss)
        with tf.GradientTape() as tape:
            tape.watch(xs)
            v = f(*xs)
        c = tf.cast(tf.constant(np.asarray(cot if cot is not None else 1.0)), v.dtype)
        g = tape.gradient(v, xs, output_gradients=tf.broadcast_to(c, tf.shape(v)))
    else:
        sig = None
        if mode == "unknown":
            sig = [tf.TensorSpec([None] * x.shape.rank, x.dtype) for x in xs]
        v, g = tf.function(with_tape, input_signature=sig, jit_compile=(mode == "xla"))(*xs)
    assert v.dtype.name == dtype and all(gi.dtype.name == dtype for gi in g[:n_z])
    assert t_tensor is None or g[-1].dtype.name == t_tensor
    f64 = lambda t: tf.cast(t, tf.float64).numpy()  # noqa: E731
    return f64(v), dict(zip(keys, [f64(gi) for gi in g]))


def reference(arrays, kw, dtype="float64", cot=None):
    """The reference on the inputs as rounded to ``dtype`` (converted exactly to float64)."""
    r = lambda x: tf.cast(tf.cast(tf.constant(np.asarray(x, np.float64)), dtype), tf.float64).numpy()  # noqa
    a = {k: (r(v) if k in ("z1", "z2", "negatives") else v) for k, v in arrays.items()}
    v, g = hardneg.hcl_loss_and_grad(a.pop("z1"), a.pop("z2"), **a, **kw, cotangent=cot)
    return v, dict(z1=g.z1, z2=g.z2, negatives=g.negatives, temperature=g.temperature)


def assert_close(got, want, tol, what):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, what
    np.testing.assert_allclose(got, want, rtol=0, atol=tol, err_msg=what)


@pytest.mark.parametrize("mode", ["eager", "outer"])
@pytest.mark.parametrize("name,extra,kw", FEATURES, ids=[f[0] for f in FEATURES])
def test_float64_matches_reference(name, extra, kw, mode):
    arrays = dict(z1=D["z1"], z2=D["z2"], **extra)
    cot = _cot(kw, n_anchors(arrays, kw))
    t_tensor = "float64" if name in T_TENSOR else None
    v, g = run_tf(arrays, kw, mode=mode, cot=cot, memory_budget=BUDGET, t_tensor=t_tensor)
    rv, rg = reference(arrays, kw, cot=cot)
    # Both sides compute in float64 with errors ~ eps * (magnitude of the log-domain terms), times a
    # small count of operations; 64 covers sums over <= 20 candidates with room to spare.
    tol = 64 * EPS64 * _cond(kw)
    assert_close(v, rv, tol * max(1.0, np.max(np.abs(rv))), f"{name} value")
    for k in g:
        assert_close(g[k], rg[k], tol * max(1.0, np.max(np.abs(rg[k]))), f"{name} d/d{k}")


@pytest.mark.parametrize("mode", ["graph", "xla", "unknown"])
@pytest.mark.parametrize(
    "extra,kw,t_tensor",
    [({}, {}, None), (dict(labels=D["labels"]), dict(reduction="none"), None),
     (dict(negatives=D["per"]), dict(beta=math.inf), None),
     ({}, dict(tau_plus=0.9), "float64"),
     (dict(negatives=D["shared"], labels=D["labels"], negative_labels=D["nl_shared"]),
      dict(layout="cross", tau_plus=0.6), "float64"),
     (dict(negatives=D["per"]), dict(layout="cross", reduction="none"), "float32")],
    ids=["defaults", "labels_none", "per_anchor_inf", "t_tensor", "cross_shared_labels_t", "cross_per_anchor_none_t"],
)
def test_compiled_modes_match_reference(extra, kw, t_tensor, mode):
    arrays = dict(z1=D["z1"], z2=D["z2"], **extra)
    cot = _cot(kw, n_anchors(arrays, kw))
    v, g = run_tf(arrays, kw, mode=mode, cot=cot, memory_budget=BUDGET, t_tensor=t_tensor)
    if t_tensor == "float32":  # t = 0.5 exactly in float32; d/dt comes back rounded to float32 once
        rg_t = reference(arrays, kw, cot=cot)[1]["temperature"]
        np.testing.assert_allclose(g.pop("temperature"), rg_t, rtol=2 * EPS32)
    rv, rg = reference(arrays, kw, cot=cot)
    tol = 64 * EPS64 * _cond(kw)  # as in the float64 test: XLA may reassociate, still a few roundings
    assert_close(v, rv, tol * max(1.0, np.max(np.abs(rv))), "value")
    for k in g:
        assert_close(g[k], rg[k], tol * max(1.0, np.max(np.abs(rg[k]))), f"d/d{k}")


def test_unknown_batch_xla():
    """jit_compile with None dimensions: XLA compiles per concrete shape, the block plan included."""
    arrays = dict(z1=D["z1"], z2=D["z2"])
    v, _ = run_tf(arrays, {}, mode="unknown", memory_budget=BUDGET)
    xs = [tf.constant(D["z1"]), tf.constant(D["z2"])]
    sig = [tf.TensorSpec([None, None], tf.float64)] * 2
    f = tf.function(lambda a, b: hardneg_tf.hcl_loss(a, b, memory_budget=BUDGET), input_signature=sig,
                    jit_compile=True)
    np.testing.assert_allclose(f(*xs).numpy(), v, rtol=1e-13)
    # a different batch size through the same function: retraced by XLA only
    z1, z2 = D["z1"][:3], D["z2"][:3]
    np.testing.assert_allclose(f(z1, z2).numpy(), hardneg.hcl_loss(z1, z2), rtol=1e-13)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize(
    "extra,kw",
    [({}, {}), (dict(negatives=D["shared"], labels=D["labels"], negative_labels=D["nl_shared"]), dict(beta=2.0)),
     (dict(negatives=D["shared"]), dict(layout="cross", tau_plus=0.5))],
    ids=["in_batch", "shared_bank_labels", "cross_bank_t"],
)
def test_lower_precision(dtype, extra, kw):
    """Half inputs compute in float32 and round once to the input dtype (value and gradients; the cross case
    also takes the temperature as a tensor of the input dtype, 0.5 exactly, and checks d loss / d t)."""
    arrays = dict(z1=D["z1"], z2=D["z2"], **extra)
    v, g = run_tf(arrays, kw, dtype=dtype, t_tensor=dtype if kw.get("layout") == "cross" else None)
    rv, rg = reference(arrays, kw, dtype=dtype)  # same rounded inputs
    # float32 arithmetic errors (eps32 * conditioning, 64 operations' worth), then one rounding to the output
    # dtype: half an ulp of the result, allowed twice (the float32 result may sit on either side).
    for got, want, what in [(v, rv, "value")] + [(g[k], rg[k], f"d/d{k}") for k in g]:
        scale = np.max(np.abs(want))
        tol = 64 * EPS32 * _cond(kw) * scale + 2 * OUT_EPS[dtype] * np.abs(want) + 1e-30
        assert np.all(np.abs(got - want) <= tol), (what, np.max(np.abs(got - want) - tol))


# ------------------------------------------------------------------------------------------- edges


@pytest.mark.parametrize("where", ["z1", "negatives"])
def test_nonfinite_input_makes_everything_nan(where):
    arrays = dict(z1=D["z1"].copy(), z2=D["z2"], negatives=D["shared"].copy())
    arrays[where][1, 2] = np.inf if where == "negatives" else np.nan
    for mode in ["eager", "outer"]:
        v, g = run_tf(arrays, {}, mode=mode)
        assert np.isnan(v) and all(np.isnan(x).all() for x in g.values()), mode


def test_undefined_anchor_makes_every_gradient_nan():
    # two near-identical pairs and a large tau+: tau+ M e^a exceeds R for their anchors, so with clamp=False
    # their denominators are <= 0 (NaN); the other pairs stay defined
    rng = np.random.default_rng(2)
    z1, z2 = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    z2[:2] = z1[:2] + 1e-3 * rng.normal(size=(2, 3))
    arrays = dict(z1=z1, z2=z2)
    kw = dict(clamp=False, tau_plus=0.8, reduction="none")
    rv, _ = reference(arrays, kw, cot=np.ones(8))
    assert np.isnan(rv).any() and not np.isnan(rv).all()  # the example has both kinds of anchors
    v, g = run_tf(arrays, kw, cot=np.ones(8))
    np.testing.assert_array_equal(np.isnan(v), np.isnan(rv))
    np.testing.assert_allclose(v[~np.isnan(rv)], rv[~np.isnan(rv)], rtol=1e-12)
    assert all(np.isnan(x).all() for x in g.values())


def test_anchors_without_negatives_and_zero_rows():
    z1, z2 = D["z1"].copy(), D["z2"].copy()
    z1[0] = 0.0  # u = 0: the eps branch of the normalisation's gradient
    arrays = dict(z1=z1, z2=z2, labels=np.array([0, 0, 0, 0, 1]))  # label-0 anchors only have row 4 ...
    v, g = run_tf(arrays, dict(reduction="none"), cot=np.ones(10))
    rv, rg = reference(arrays, dict(reduction="none"), cot=np.ones(10))
    np.testing.assert_allclose(v, rv, rtol=1e-12, atol=1e-15)
    for k in g:
        np.testing.assert_allclose(g[k], rg[k], rtol=1e-12, atol=1e-12 * np.max(np.abs(rg[k])))
    arrays["labels"] = np.zeros(5, int)  # ... and with one label no anchor has any: loss 0, gradient 0
    v, g = run_tf(arrays, {})
    assert v == 0.0 and all((x == 0).all() for x in g.values())


# ------------------------------------------------------------------------------------------- errors


def _message(fn, *args, **kw):
    with pytest.raises((TypeError, ValueError)) as info:
        fn(*args, **kw)
    return type(info.value), str(info.value)


@pytest.mark.parametrize(
    "args,kw",
    [
        ((D["z1"], D["z2"]), dict(temperature=0.0)),
        ((D["z1"], D["z2"]), dict(beta=-1.0)),
        ((D["z1"], D["z2"]), dict(reduction="max")),
        ((D["z1"], D["z2"]), dict(clamp=1)),
        ((D["z1"][0], D["z2"][0]), {}),
        ((D["z1"], D["z2"][:4]), {}),
        ((D["z1"].astype(np.int32), D["z2"].astype(np.int32)), {}),
        ((D["z1"], D["z2"].astype(np.float32)), {}),
        ((D["z1"][:1], D["z2"][:1]), {}),
        ((D["z1"], D["z2"]), dict(labels=np.zeros(5))),
        ((D["z1"], D["z2"]), dict(negatives=D["shared"], labels=D["labels"])),
        ((D["z1"], D["z2"]), dict(negatives=D["per"][:, :, :2])),
        ((D["z1"], D["z2"]), dict(layout="clip")),
        ((D["z1"], D["z2"]), dict(layout="in_batch", negatives=D["shared"])),
        ((D["z1"], D["z2"]), dict(layout="bank")),
        ((D["z1"], D["z2"]), dict(layout="cross", symmetric=1)),
        ((D["z1"], D["z2"]), dict(symmetric=False)),
        ((D["z1"][:1], D["z2"][:1]), dict(layout="cross")),
        ((D["z1"], D["z2"]), dict(layout="cross", negatives=D["shared"], labels=D["labels"])),
    ],
)
def test_errors_are_the_references(args, kw):
    tf_args = [tf.constant(a) for a in args]
    tf_kw = {k: (tf.constant(v) if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
    assert _message(hardneg_tf.hcl_loss, *tf_args, **tf_kw) == _message(hardneg.hcl_loss, *args, **kw)


@pytest.mark.parametrize("t,err", [(tf.constant(1, tf.int32), TypeError), (tf.constant([0.5, 0.5]), ValueError),
                                   (tf.Variable([[0.5]], dtype=tf.float64), ValueError)])
def test_temperature_tensor_errors_are_the_shared_ones(t, err):
    """A tensor temperature's dtype and shape go through hardneg.validation.check_temperature_tensor."""
    from hardneg.validation import check_temperature_tensor

    with pytest.raises(err) as want:
        check_temperature_tensor(tuple(t.shape), t.dtype.name)
    got = _message(hardneg_tf.hcl_loss, tf.constant(D["z1"]), tf.constant(D["z2"]), temperature=t, layout="cross")
    assert got == (err, str(want.value))


@pytest.mark.parametrize("t", [0.0, -0.5, math.inf, math.nan])
@pytest.mark.parametrize("layout", [None, "cross"])
def test_bad_tensor_temperature_gives_nan(t, layout):
    """A tensor temperature's value is not checked (it may be traced): <= 0 or not finite gives NaN, under XLA too."""
    arrays = dict(z1=D["z1"], z2=D["z2"], negatives=D["shared"])
    kw = dict(temperature=t, layout=layout or "bank")
    for mode in ["eager", "xla"]:
        v, g = run_tf(arrays, kw, mode=mode, t_tensor="float64")
        assert np.isnan(v) and all(np.isnan(x).all() for x in g.values()), (mode, g)


def test_backend_only_errors():
    z1, z2 = tf.constant(D["z1"]), tf.constant(D["z2"])
    with pytest.raises(TypeError, match="gather must be a bool"):
        hardneg_tf.hcl_loss(z1, z2, gather=1)

    @tf.function
    def traced(b):
        return hardneg_tf.hcl_loss(z1, z2, beta=b)

    with pytest.raises(TypeError, match="needs beta as a Python value"):
        traced(tf.constant(0.5))
    # an eager scalar tensor is read as its value
    np.testing.assert_allclose(hardneg_tf.hcl_loss(z1, z2, beta=tf.constant(2.0)).numpy(),
                               hardneg.hcl_loss(D["z1"], D["z2"], beta=2.0), rtol=1e-13)


# ------------------------------------------------------------------------------------------- memory


def _all_graphs(graph, seen=None):
    """A graph and every function graph it calls (while bodies and conditions, the gradient function...)."""
    seen = set() if seen is None else seen
    yield graph
    for op in graph.get_operations():
        for attr in op.node_def.attr.values():
            names = [attr.func.name] if attr.HasField("func") else []
            names += [f.name for f in attr.list.func] if attr.HasField("list") else []
            for name in names:
                if name not in seen:
                    seen.add(name)
                    yield from _all_graphs(graph._get_function(name).graph, seen)


@pytest.mark.parametrize("extra,reduction", [({}, "mean"), ({}, "none"), (dict(shared=True), "mean"),
                                             (dict(cross=True), "mean"), (dict(cross=True, shared=True), "none")],
                         ids=["in_batch_fused", "in_batch_two_pass", "shared_bank", "cross_t", "cross_bank_t"])
def test_no_tensor_of_the_full_similarity_size(extra, reduction):
    """Trace forward + backward and inspect every tensor of every (nested) graph: none has A x C elements.

    The cross cases take a tensor temperature and its gradient, and both directions: still no (B x B) array."""
    B, d, K = 64, 8, 96
    n = 2 * B
    cross = extra.pop("cross", False)
    if cross:
        C, A = B + (K if extra else 0), B  # per direction: B anchors against B (+ K) candidates
    else:
        C = K if extra else n
        A = B if extra else n
    budget = 8 * C * 4 * 6  # blocks of 8 anchor rows (six (rows x C) float32 buffers)
    specs = [tf.TensorSpec([B, d])] * 2 + ([tf.TensorSpec([K, d])] if extra else []) + [tf.TensorSpec([])]

    @tf.function
    def step(*xs):
        with tf.GradientTape() as tape:
            tape.watch(xs)
            neg = {"negatives": xs[2]} if extra else {}
            kw = dict(layout="cross", temperature=xs[-1]) if cross else {}
            v = hardneg_tf.hcl_loss(xs[0], xs[1], **neg, **kw, reduction=reduction, memory_budget=budget)
        return v, tape.gradient(v, list(xs))

    graph = step.get_concrete_function(*specs).graph
    sizes = [
        (o.shape.num_elements(), op.type)
        for g in _all_graphs(graph)
        for op in g.get_operations()
        for o in op.outputs
        if o.shape.rank is not None and o.shape.is_fully_defined()
    ]
    assert len(sizes) > 200  # the walk reached the loop bodies
    assert max(s for s, _ in sizes) < A * C // 4, max(sizes)
    assert (8 * (B if cross else C), "MatMul") in sizes  # the blocks are there, of the planned size


@pytest.mark.parametrize("estimator", ["hard", "easy"])
def test_naive_cross_baseline_matches_reference(estimator):
    """The bench's naive CLIP-style code (hardneg.bench.naive_tf) computes the symmetric cross layout."""
    from hardneg.bench import impls, naive_tf

    # |s| <= 1/t = 2: the naive raw exponentials stay far from overflow
    v, (g1, g2) = naive_tf.make_value_and_grad_cross(estimator=estimator, jit_compile=True)(
        tf.constant(D["z1"]), tf.constant(D["z2"]))
    rv, rg = hardneg.hcl_loss_and_grad(D["z1"], D["z2"], layout="cross", estimator=estimator)
    # raw exp / log / division instead of log-sum-exp: a few hundred float64 roundings at most
    np.testing.assert_allclose(float(v), rv, rtol=1e-12)
    np.testing.assert_allclose(g1.numpy(), rg.z1, rtol=0, atol=1e-12 * np.abs(rg.z1).max())
    np.testing.assert_allclose(g2.numpy(), rg.z2, rtol=0, atol=1e-12 * np.abs(rg.z2).max())
    for name in ("naive_tf_cross_xla", "hardneg_tf_cross_xla"):  # the registry entries build and run
        impls.build(name, 8, 4, "bfloat16", "cpu", estimator, {})()
