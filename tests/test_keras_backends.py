"""hardneg_keras.HCLLoss under each Keras 3 backend: model.fit against the float64 reference, in its own process.

Keras picks its backend once, at import (``KERAS_BACKEND``), so each backend runs in a fresh interpreter: this
file is also the worker (``python tests/test_keras_backends.py BACKEND OUT.npz``). The worker trains small
models with ``model.fit`` and records what fit produced — the reported losses, the weights after one SGD step,
the learned logit scale, a reloaded model's state — and which frameworks were imported; the assertions live
here, against :func:`hardneg.hcl_loss` / :func:`hardneg.hcl_loss_and_grad` in float64 on the same inputs.

Tolerances: the model computes in float32 (unit roundoff u = 2^-24). The loss is a log-sum-exp of logits
u_i·u_j / t, whose relative condition number is about (2 + beta)/t + 10 (the logits' scale 1/t, the hardness
weights' (1 + beta)/t, the normalisation), so its value and gradient carry a relative error of a small multiple
of cond · u; 64 · cond · u covers the sums over d and B and the matmul of the encoder (as in
tests/test_tf_keras.py). One SGD step W - lr·g then errs by lr times that on g, plus one rounding of W.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import hardneg

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ["jax", "tensorflow", "torch"]
FRAMEWORKS = ("tensorflow", "torch", "jax")

B, DIN, D, K = 8, 6, 4, 5
_rng = np.random.default_rng(0)
X = _rng.normal(size=(B, 2, DIN)).astype("float32")  # two views of each sample, already augmented
LABELS = np.array([0, 1, 2, 0, 1, 2, 0, 3])
W0 = _rng.normal(size=(DIN, D)).astype("float32")
BANK = _rng.normal(size=(K, D)).astype("float32")  # a MoCo-style queue of K negatives
BANK_LABELS = np.array([0, 1, 4, 5, 3])
U = 2.0**-24  # float32 unit roundoff


def f32_rtol(temperature=0.5, beta=1.0):
    """Relative tolerance of a float32 loss value or gradient against float64 (see the module docstring)."""
    return 64 * ((2 + beta) / temperature + 10) * U


def views(W):
    z = np.einsum("bvi,id->bvd", X.astype(np.float64), np.asarray(W, np.float64))
    return z[:, 0], z[:, 1]


def kernel_step(W, lr, g1, g2):
    """W - lr · dL/dW for z_v = X_v W, from the reference's dL/dz1, dL/dz2."""
    gW = np.einsum("bi,bd->id", X[:, 0].astype(np.float64), g1) + np.einsum("bi,bd->id", X[:, 1].astype(np.float64), g2)
    return np.asarray(W, np.float64) - lr * gW, gW


# ----------------------------------------------------------------------------------------------------------------
# The worker: runs in a subprocess with KERAS_BACKEND set; imports no framework itself.


def _frameworks():
    return sorted(name for name in FRAMEWORKS if name in sys.modules)


def _worker(out_path):  # pragma: no cover - runs in the subprocess
    import tempfile

    import keras

    backend = keras.config.backend()
    rec = {"backend": backend}

    def np_(v):
        return np.asarray(keras.ops.convert_to_numpy(v))

    # What Keras itself imports for a plain fit (before hardneg_keras is imported): the baseline.
    plain = keras.Sequential([keras.Input((2, DIN)), keras.layers.Dense(D)])
    plain.compile(optimizer="sgd", loss="mse")
    plain.fit(X, np.zeros((B, 2, D), "float32"), batch_size=B, verbose=0)
    rec["frameworks_keras_fit"] = _frameworks()

    import hardneg_keras
    from hardneg_keras import HCLLoss

    rec["frameworks_import"] = _frameworks()

    def two_view_model(dtype=None):
        model = keras.Sequential([keras.Input((2, DIN)), keras.layers.Dense(D, use_bias=False, dtype=dtype)])
        model.layers[0].kernel.assign(W0)
        return model

    def fit(model, loss, lr, y=None, **compile_kw):
        model.compile(optimizer=keras.optimizers.SGD(lr), loss=loss, **compile_kw)
        hist = model.fit(X, np.zeros(B) if y is None else y, batch_size=B, epochs=1, shuffle=False, verbose=0)
        return float(hist.history["loss"][0])

    # the default fit (jit_compile="auto"), unlabelled and with labels; then evaluate at the new weights
    for name, kw, y in (("plain", {}, None), ("labels", {"use_labels": True}, LABELS)):
        model = two_view_model()
        rec[f"{name}_loss"] = fit(model, HCLLoss(**kw), 0.1, y)
        rec[f"{name}_kernel"] = np_(model.layers[0].kernel)
        rec[f"{name}_jit"] = bool(model.jit_compile)
        if name == "plain":
            rec["plain_evaluate"] = float(model.evaluate(X, np.zeros(B), batch_size=B, verbose=0))
    if backend in ("jax", "tensorflow"):  # XLA: the jitted train step, forced on
        model = two_view_model()
        rec["xla_loss"] = fit(model, HCLLoss(), 0.1, jit_compile=True)
        rec["xla_kernel"] = np_(model.layers[0].kernel)
        rec["xla_jit"] = bool(model.jit_compile)

    # a learned temperature: the pass-through layer in the model, one SGD step on logit_scale
    for layout in (None, "cross"):
        name = f"temperature_{layout}"
        loss = HCLLoss(temperature=0.2, learn_temperature=True, layout=layout, tau_plus=0.3)
        model = two_view_model()
        model.add(loss.temperature_layer)
        rec[f"{name}_n_trainable"] = len(model.trainable_variables)
        rec[f"{name}_loss"] = fit(model, loss, 0.5)
        rec[f"{name}_kernel"] = np_(model.layers[0].kernel)
        rec[f"{name}_logit_scale"] = float(np_(loss.temperature_layer.logit_scale))
    loss = HCLLoss(temperature=0.05, learn_temperature=True, min_temperature=0.1)
    model = two_view_model()
    model.add(loss.temperature_layer)
    rec["clamped_loss"] = fit(model, loss, 0.5)
    rec["clamped_logit_scale"] = float(np_(loss.temperature_layer.logit_scale))

    # a bank of negatives with labels, passed where the loss is called: a compute_loss override
    class BankModel(keras.Model):
        def __init__(self):
            super().__init__()
            self.encoder = keras.layers.Dense(D, use_bias=False)
            self.hcl = HCLLoss(use_labels=True, beta=0.5)

        def call(self, x):
            return self.encoder(x)

        def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
            return self.hcl(y, y_pred, negatives=BANK, negative_labels=BANK_LABELS)

    model = BankModel()
    model(X)
    model.encoder.kernel.assign(W0)
    rec["bank_loss"] = fit(model, None, 0.1, LABELS)
    rec["bank_kernel"] = np_(model.encoder.kernel)

    # mixed precision: float16 views, the loss in float32
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = two_view_model()
        y16 = model.predict(X, batch_size=B, verbose=0)
        rec["mixed_pred_dtype"] = str(y16.dtype)
        rec["mixed_pred"] = np.asarray(y16)
        rec["mixed_loss"] = fit(model, HCLLoss(), 0.1)
    finally:
        keras.mixed_precision.set_global_policy("float32")

    if backend == "jax":  # gather has no meaning under JAX (keras.distribution jits the global batch)
        try:
            HCLLoss(gather=True)(None, (X[:, 0, :D], X[:, 1, :D]))
            rec["gather_error"] = ""
        except ValueError as exc:
            rec["gather_error"] = str(exc)

    rec["frameworks_fit"] = _frameworks()

    # A saved model with the loss: Keras' own saving first (its import baseline), then ours.
    with tempfile.TemporaryDirectory() as tmp:
        plain.save(os.path.join(tmp, "plain.keras"))
        keras.saving.load_model(os.path.join(tmp, "plain.keras"))
        rec["frameworks_keras_save"] = _frameworks()

        loss = HCLLoss(temperature=0.2, learn_temperature=True, tau_plus=0.3, name="hcl")
        model = two_view_model()
        model.add(loss.temperature_layer)
        fit(model, loss, 0.5)
        path = os.path.join(tmp, "hcl.keras")
        model.save(path)
        again = keras.saving.load_model(path)
        rec["saved_loss_class"] = type(again.loss).__module__ + "." + type(again.loss).__name__
        rec["saved_config_equal"] = again.loss.get_config() == loss.get_config()
        rec["saved_layer_shared"] = again.loss.temperature_layer is again.layers[-1]
        rec["saved_logit_scale"] = [float(np_(loss.temperature_layer.logit_scale)),
                                    float(np_(again.loss.temperature_layer.logit_scale))]
        for m in (model, again):  # one more step from the same state: same result (plain SGD has no slots)
            m.fit(X, np.zeros(B), batch_size=B, epochs=1, shuffle=False, verbose=0)
        rec["saved_next_logit_scale"] = [float(np_(m.loss.temperature_layer.logit_scale)) for m in (model, again)]
        rec["saved_next_kernel"] = [np_(m.layers[0].kernel) for m in (model, again)]
    rec["frameworks_save"] = _frameworks()
    rec["package"] = hardneg_keras.backend_hcl_loss().__module__

    arrays = {k: v for k, v in rec.items() if isinstance(v, np.ndarray)}
    arrays["saved_next_kernel"] = np.stack(rec.pop("saved_next_kernel"))
    meta = {k: v for k, v in rec.items() if k not in arrays}
    np.savez(out_path, meta=json.dumps(meta), **arrays)


# ----------------------------------------------------------------------------------------------------------------
# The tests


_RESULTS = {}


@pytest.fixture(scope="module", params=BACKENDS)
def run(request, tmp_path_factory):
    """The worker's record for one Keras backend (run once per backend and module)."""
    backend = request.param
    need = {"jax": "jax", "tensorflow": "tensorflow", "torch": "torch"}[backend]
    if importlib.util.find_spec(need) is None or importlib.util.find_spec("keras") is None:
        pytest.skip(f"keras or {need} is not installed")
    if backend not in _RESULTS:
        out = tmp_path_factory.mktemp(f"keras_{backend}") / "record.npz"
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2",
                   PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        proc = subprocess.run([sys.executable, __file__, backend, str(out)], cwd=ROOT, env=env,
                              capture_output=True, text=True)
        assert proc.returncode == 0, f"worker under KERAS_BACKEND={backend} failed:\n{proc.stdout}\n{proc.stderr[-6000:]}"
        with np.load(out) as f:
            rec = json.loads(str(f["meta"]))
            rec.update({k: f[k] for k in f.files if k != "meta"})
        _RESULTS[backend] = rec
    return _RESULTS[backend]


def test_the_backend_package_computes(run):
    expected = {"jax": "hardneg_jax", "tensorflow": "hardneg_tf", "torch": "hardneg_torch"}[run["backend"]]
    assert run["package"].split(".")[0] == expected


def test_no_other_framework_is_imported(run):
    """Importing hardneg_keras and fitting imports no framework beyond what Keras itself imported.

    Keras 3.15 imports jax whenever it is installed (keras.callbacks.OrbaxCheckpoint imports it), under every
    backend, and its saving code imports tensorflow when installed; those are Keras', hence the baselines.
    """
    backend = run["backend"]
    assert run["frameworks_import"] == run["frameworks_keras_fit"]
    assert run["frameworks_fit"] == run["frameworks_keras_fit"]
    assert set(run["frameworks_save"]) == set(run["frameworks_keras_save"])
    others = {"jax": {"tensorflow", "torch"}, "tensorflow": {"torch"}, "torch": {"tensorflow"}}[backend]
    assert not others & set(run["frameworks_fit"]), run["frameworks_fit"]


@pytest.mark.parametrize("name,use_labels", [("plain", False), ("labels", True), ("xla", False)])
def test_fit_takes_the_reference_step(run, name, use_labels):
    if f"{name}_loss" not in run:
        pytest.skip(f"{name} is not run under {run['backend']}")
    labels = LABELS if use_labels else None
    (value, g) = hardneg.hcl_loss_and_grad(*views(W0), labels=labels)
    rtol = f32_rtol()
    np.testing.assert_allclose(run[f"{name}_loss"], value, rtol=rtol)
    W1, gW = kernel_step(W0, 0.1, g.z1, g.z2)
    atol = 0.1 * rtol * np.abs(gW).max() + 4 * U * np.abs(W0).max()
    np.testing.assert_allclose(run[f"{name}_kernel"], W1, rtol=0, atol=atol)
    assert np.abs(run[f"{name}_kernel"] - W0).max() > 100 * atol  # the step is far above the tolerance


def test_the_train_step_is_compiled(run):
    # JAX: Keras jits the train step by default, so hardneg_jax.hcl_loss was traced inside jax.jit
    if run["backend"] == "jax":
        assert run["plain_jit"] and run["xla_jit"]
    elif run["backend"] == "tensorflow":
        assert run["xla_jit"]
    else:
        pytest.skip("torch: jit_compile=True would mean torch.compile, not tested")


def test_evaluate_reports_the_reference(run):
    np.testing.assert_allclose(run["plain_evaluate"], hardneg.hcl_loss(*views(run["plain_kernel"])), rtol=f32_rtol())


@pytest.mark.parametrize("layout", [None, "cross"])
def test_fit_learns_the_temperature(run, layout):
    """One SGD step on logit_scale s = log(1/t): d loss / d s = Grads.temperature · dt/ds = -t · Grads.temperature."""
    name = f"temperature_{layout}"
    assert run[f"{name}_n_trainable"] == 2  # the kernel and logit_scale
    t0, lr = 0.2, 0.5
    s0 = float(np.float32(-np.log(t0)))
    t = float(np.float32(np.exp(np.float32(-s0))))  # the temperature the float32 model used
    value, g = hardneg.hcl_loss_and_grad(*views(W0), temperature=t, layout=layout, tau_plus=0.3)
    rtol = f32_rtol(t)
    np.testing.assert_allclose(run[f"{name}_loss"], value, rtol=rtol)
    gs = -t * g.temperature
    learned = run[f"{name}_logit_scale"]
    np.testing.assert_allclose(learned, s0 - lr * gs, rtol=0, atol=lr * rtol * abs(gs) + 4 * U * abs(s0))
    assert abs(learned - s0) > 1e-3  # the temperature did move
    W1, gW = kernel_step(W0, lr, g.z1, g.z2)
    np.testing.assert_allclose(run[f"{name}_kernel"], W1, rtol=0,
                               atol=lr * rtol * np.abs(gW).max() + 4 * U * np.abs(W0).max())


def test_min_temperature_stops_the_gradient(run):
    """Below min_temperature the temperature is clamped and logit_scale receives no gradient (CLIP's bound)."""
    assert run["clamped_logit_scale"] == float(np.float32(-np.log(0.05)))
    np.testing.assert_allclose(run["clamped_loss"], hardneg.hcl_loss(*views(W0), temperature=0.1),
                               rtol=f32_rtol(0.1))


def test_a_bank_of_negatives_in_compute_loss(run):
    value, g = hardneg.hcl_loss_and_grad(*views(W0), beta=0.5, negatives=BANK.astype(np.float64), labels=LABELS,
                                         negative_labels=BANK_LABELS)
    rtol = f32_rtol(beta=0.5)
    np.testing.assert_allclose(run["bank_loss"], value, rtol=rtol)
    W1, gW = kernel_step(W0, 0.1, g.z1, g.z2)
    np.testing.assert_allclose(run["bank_kernel"], W1, rtol=0, atol=0.1 * rtol * np.abs(gW).max() + 4 * U * np.abs(W0).max())


def test_mixed_float16(run):
    """float16 views from a mixed_float16 model: the loss is computed in float32 on them."""
    assert run["mixed_pred_dtype"] == "float16"
    z = run["mixed_pred"].astype(np.float64)  # the float16 views, exactly
    np.testing.assert_allclose(run["mixed_loss"], hardneg.hcl_loss(z[:, 0], z[:, 1]), rtol=f32_rtol())


def test_saved_model_keeps_the_learned_temperature(run):
    """model.save / keras.saving.load_model: the loss comes back as hardneg_keras.HCLLoss with the model's own
    temperature layer (one object), so it reads the trained logit_scale and keeps training it."""
    assert run["saved_loss_class"] == "hardneg_keras.loss.HCLLoss"
    assert run["saved_config_equal"] and run["saved_layer_shared"]
    before, after = run["saved_logit_scale"]
    assert before == after and abs(before + np.log(0.2)) > 1e-3
    a, b = run["saved_next_logit_scale"]
    assert a == b and a != before
    np.testing.assert_array_equal(run["saved_next_kernel"][0], run["saved_next_kernel"][1])


def test_gather_is_refused_under_jax(run):
    if run["backend"] != "jax":
        pytest.skip("gather is tested with tf.distribute (tests/test_tf_distribute.py) and torch.distributed")
    assert "keras.distribution" in run["gather_error"] and "gather=False" in run["gather_error"]


def test_a_backend_without_a_hardneg_package_is_refused():
    keras = pytest.importorskip("keras")
    from hardneg_keras import backend_hcl_loss

    with pytest.raises(NotImplementedError, match="KERAS_BACKEND"):
        backend_hcl_loss("numpy")
    assert backend_hcl_loss().__module__.split(".")[0] == f"hardneg_{dict(tensorflow='tf').get(keras.config.backend(), keras.config.backend())}"


if __name__ == "__main__":  # the worker: python tests/test_keras_backends.py BACKEND OUT.npz
    assert os.environ.get("KERAS_BACKEND") == sys.argv[1], "set KERAS_BACKEND to the backend to test"
    _worker(sys.argv[2])
