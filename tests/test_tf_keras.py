"""HCLLoss in Keras 3 workflows under the TensorFlow backend: model.fit with both views in one output, a custom
train_step (tf.GradientTape), mixed_float16, tf.function / GradientTape details.

``hardneg_tf.HCLLoss`` is now an alias of ``hardneg_keras.HCLLoss`` (one loss for every Keras backend); these
tests keep covering the TensorFlow path through the old import, unchanged. The other backends, and the
TensorFlow backend against the float64 reference in a fresh process, are in tests/test_keras_backends.py.
"""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

if keras.config.backend() != "tensorflow":  # GradientTape-based tests; other backends: test_keras_backends.py
    pytest.skip(f"the TensorFlow backend of Keras is not active (KERAS_BACKEND={keras.config.backend()})",
                allow_module_level=True)

import hardneg  # noqa: E402
import hardneg_keras  # noqa: E402
import hardneg_tf  # noqa: E402
from hardneg_tf import HCLLoss  # noqa: E402

B, DIN, D = 8, 6, 4
RNG = np.random.default_rng(0)
X = RNG.normal(size=(B, 2, DIN)).astype("float32")  # two views of each sample, already augmented
LABELS = np.array([0, 1, 2, 0, 1, 2, 0, 3])
W0 = RNG.normal(size=(DIN, D)).astype("float32")


def two_view_model(dtype=None):
    """Shared encoder applied to both views: (B, 2, DIN) -> (B, 2, D), the layout HCLLoss expects."""
    model = keras.Sequential([keras.Input((2, DIN)), keras.layers.Dense(D, use_bias=False, dtype=dtype)])
    model.layers[0].kernel.assign(W0)
    return model


def manual_sgd_step(labels=None, lr=0.1):
    """One SGD step on hardneg_tf.hcl_loss directly: what fit must reproduce."""
    W = tf.Variable(W0)
    with tf.GradientTape() as tape:
        z = tf.einsum("bvi,id->bvd", tf.constant(X), W)
        loss = hardneg_tf.hcl_loss(z[:, 0], z[:, 1], labels=labels)
    W.assign_sub(lr * tape.gradient(loss, W))
    return float(loss), W.numpy()


@pytest.mark.parametrize("use_labels", [False, True])
def test_fit_takes_the_same_step_as_the_functional_loss(use_labels):
    model = two_view_model()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=HCLLoss(use_labels=use_labels))
    y = LABELS if use_labels else np.zeros(B)  # y_true is ignored unless use_labels
    hist = model.fit(X, y, batch_size=B, epochs=1, shuffle=False, verbose=0)
    loss, W = manual_sgd_step(labels=LABELS if use_labels else None)
    # float32 end to end; the two paths differ only in the order of a few float32 operations
    np.testing.assert_allclose(hist.history["loss"][0], loss, rtol=1e-6)
    np.testing.assert_allclose(model.layers[0].kernel.numpy(), W, rtol=0, atol=1e-6)
    # and the reported loss is the reference's at the initial weights
    z = np.einsum("bvi,id->bvd", X.astype(np.float64), W0.astype(np.float64))
    ref = hardneg.hcl_loss(z[:, 0], z[:, 1], labels=LABELS if use_labels else None)
    np.testing.assert_allclose(loss, ref, rtol=1e-5)


class CustomStep(keras.Model):
    """The custom train_step pattern: the model returns the two views; the loss object takes them stacked."""

    def __init__(self):
        super().__init__()
        self.encoder = keras.layers.Dense(D, use_bias=False)
        self.hcl = HCLLoss(beta=0.5, tau_plus=0.05)
        self.tracker = keras.metrics.Mean(name="loss")

    def call(self, x):
        return self.encoder(x[:, 0]), self.encoder(x[:, 1])

    def train_step(self, data):
        x = data[0] if isinstance(data, tuple) else data
        with tf.GradientTape() as tape:
            z1, z2 = self(x, training=True)
            loss = self.hcl(None, (z1, z2))
        grads = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
        self.tracker.update_state(loss)
        return {"loss": self.tracker.result()}


def test_custom_train_step():
    model = CustomStep()
    model(X)  # builds the encoder
    model.encoder.kernel.assign(W0)
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    hist = model.fit(X, batch_size=B, epochs=1, verbose=0)
    z = np.einsum("bvi,id->bvd", X.astype(np.float64), W0.astype(np.float64))
    ref = hardneg.hcl_loss(z[:, 0], z[:, 1], beta=0.5, tau_plus=0.05)
    np.testing.assert_allclose(hist.history["loss"][0], ref, rtol=1e-5)
    assert np.abs(model.encoder.kernel.numpy() - W0).max() > 1e-4


def test_mixed_float16():
    """float16 views from a mixed_float16 model: the loss and its gradient are computed in float32."""
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = two_view_model()
        with tf.GradientTape() as tape:
            y_pred = model(X)
            loss = HCLLoss()(None, y_pred)
        grad = tape.gradient(loss, model.layers[0].kernel)
        assert y_pred.dtype == tf.float16 and loss.dtype == tf.float32 and grad.dtype == tf.float32
        z = tf.cast(y_pred, tf.float64).numpy()  # the float16 views, exactly
        ref_value, ref_g = hardneg.hcl_loss_and_grad(z[:, 0], z[:, 1])
        # float32 compute on float16 inputs: conditioning ~ (2 + beta)/t + 10 = 16 roundings of 2^-24 per term
        np.testing.assert_allclose(loss.numpy(), ref_value, rtol=64 * 16 * 2.0**-24)
        # the kernel's gradient passes float16 activations' gradient (2^-11 relative) through a matmul in float16
        ref_grad = np.einsum("bvi,bvd->id", X.astype(np.float64), np.stack([ref_g.z1, ref_g.z2], 1))
        np.testing.assert_allclose(grad.numpy(), ref_grad, rtol=0, atol=4 * DIN * 2.0**-11 * np.abs(ref_grad).max())

        model.compile(optimizer=keras.optimizers.SGD(0.1), loss=HCLLoss())  # wrapped in a LossScaleOptimizer
        hist = model.fit(X, np.zeros(B), batch_size=B, epochs=2, verbose=0)
        assert np.isfinite(hist.history["loss"]).all()
        np.testing.assert_allclose(hist.history["loss"][0], ref_value, rtol=1e-3)
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("layout", [None, "cross"])
def test_fit_learns_the_temperature(layout):
    """learn_temperature=True: model.fit takes the same SGD step on logit_scale = log(1/t) as a hand-written
    step on hardneg_tf.hcl_loss with the temperature exp(-logit_scale), and d loss / d logit_scale is the
    reference's Grads.temperature times dt/dlogit_scale = -t."""
    t0, lr = 0.2, 0.5
    loss_obj = HCLLoss(temperature=t0, learn_temperature=True, layout=layout, tau_plus=0.3)
    model = two_view_model()
    model.add(loss_obj.temperature_layer)  # the pass-through layer holding logit_scale
    assert len(model.trainable_variables) == 2
    model.compile(optimizer=keras.optimizers.SGD(lr), loss=loss_obj)
    model.fit(X, np.zeros(B), batch_size=B, epochs=1, shuffle=False, verbose=0)

    W, s = tf.Variable(W0), tf.Variable(np.float32(-np.log(t0)))
    with tf.GradientTape() as tape:
        z = tf.einsum("bvi,id->bvd", tf.constant(X), W)
        loss = hardneg_tf.hcl_loss(z[:, 0], z[:, 1], temperature=tf.exp(-s), layout=layout, tau_plus=0.3)
    gW, gs = tape.gradient(loss, [W, s])
    learned = float(loss_obj.temperature_layer.logit_scale.numpy())
    # float32 end to end, same operations in a different order: a few float32 roundings of O(1) values
    np.testing.assert_allclose(learned, float(s) - lr * float(gs), rtol=0, atol=1e-6)
    np.testing.assert_allclose(model.layers[0].kernel.numpy(), W0 - lr * gW.numpy(), rtol=0, atol=1e-6)
    z = np.einsum("bvi,id->bvd", X.astype(np.float64), W0.astype(np.float64))
    _, ref = hardneg.hcl_loss_and_grad(z[:, 0], z[:, 1], temperature=float(np.float32(np.exp(np.float32(-s.numpy())))),
                                       layout=layout, tau_plus=0.3)
    assert abs(learned + np.log(t0)) > 1e-3  # the temperature did move
    np.testing.assert_allclose(float(gs), -ref.temperature * float(tf.exp(-s)), rtol=1e-4)


def test_min_temperature_stops_the_gradient():
    """Below min_temperature the temperature is clamped and logit_scale receives no gradient (CLIP's bound)."""
    loss_obj = HCLLoss(temperature=0.05, learn_temperature=True, min_temperature=0.1)
    model = two_view_model()
    model.add(loss_obj.temperature_layer)
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss=loss_obj)
    hist = model.fit(X, np.zeros(B), batch_size=B, epochs=1, verbose=0)
    np.testing.assert_allclose(float(loss_obj.temperature_layer.temperature()), 0.1, rtol=1e-7)
    np.testing.assert_allclose(float(loss_obj.temperature_layer.logit_scale.numpy()), -np.log(0.05), rtol=1e-7)
    z = np.einsum("bvi,id->bvd", X.astype(np.float64), W0.astype(np.float64))
    np.testing.assert_allclose(hist.history["loss"][0], hardneg.hcl_loss(z[:, 0], z[:, 1], temperature=0.1),
                               rtol=1e-5)


def test_config_round_trip_and_errors():
    loss = HCLLoss(temperature=0.2, beta=2.0, estimator="easy", reduction="sum", use_labels=True, name="hcl")
    again = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(again, HCLLoss) and again.get_config() == loss.get_config()
    loss = HCLLoss(temperature=0.07, layout="cross", symmetric=False, learn_temperature=True, min_temperature=0.01)
    again = keras.losses.deserialize(keras.losses.serialize(loss))
    assert again.get_config() == loss.get_config() and again.temperature_layer.min_temperature == 0.01
    np.testing.assert_allclose(float(again.temperature_layer.temperature()), 0.07, rtol=1e-6)
    layer = keras.layers.deserialize(keras.layers.serialize(loss.temperature_layer))
    assert layer.get_config() == loss.temperature_layer.get_config()
    with pytest.raises(ValueError, match="layout must be one of"):
        HCLLoss(layout="clip")
    with pytest.raises(ValueError, match="symmetric=False is only meaningful"):
        HCLLoss(symmetric=False)
    with pytest.raises(ValueError, match="min_temperature needs learn_temperature=True"):
        HCLLoss(min_temperature=0.01)
    with pytest.raises(ValueError, match="temperature must be finite and > 0"):  # the shared validation
        HCLLoss(temperature=-1.0)
    with pytest.raises(ValueError, match=r"y_pred of shape \(B, 2, d\)"):
        HCLLoss()(None, tf.zeros([B, 3, D]))
    with pytest.raises(ValueError, match="sample_weight"):
        HCLLoss()(None, tf.zeros([B, 2, D]), sample_weight=tf.ones([B]))


def test_hardneg_tf_exports_the_keras_loss():
    """Backward compatibility: hardneg_tf's Keras names are hardneg_keras' classes, and the registered names
    (hardneg>HCLLoss, hardneg>LearnableTemperature) that saved models refer to are unchanged."""
    from hardneg_tf.keras import LearnableTemperature, split_views

    assert hardneg_tf.HCLLoss is hardneg_keras.HCLLoss and HCLLoss is hardneg_keras.HCLLoss
    assert LearnableTemperature is hardneg_tf.LearnableTemperature is hardneg_keras.LearnableTemperature
    assert split_views is hardneg_keras.split_views
    assert {"HCLLoss", "LearnableTemperature"} <= set(hardneg_tf.__all__)
    assert keras.saving.get_registered_name(HCLLoss) == "hardneg>HCLLoss"
    assert keras.saving.get_registered_object("hardneg>LearnableTemperature") is LearnableTemperature


def test_a_bank_in_a_custom_train_step():
    """The loss called by hand with negatives= (a MoCo queue): the bank layout, as hardneg_tf.hcl_loss."""
    z1, z2 = tf.constant(X[:, 0, :D]), tf.constant(X[:, 1, :D])
    bank = tf.constant(RNG.normal(size=(5, D)).astype("float32"))
    got = HCLLoss(beta=0.5)(None, (z1, z2), negatives=bank)
    ref = hardneg.hcl_loss(X[:, 0, :D].astype(np.float64), X[:, 1, :D].astype(np.float64), beta=0.5,
                           negatives=bank.numpy().astype(np.float64))
    np.testing.assert_allclose(float(got), ref, rtol=64 * ((2 + 0.5) / 0.5 + 10) * 2.0**-24)
    with pytest.raises(ValueError, match="layout='bank' needs a negatives bank"):
        HCLLoss(layout="bank")(None, (z1, z2))
