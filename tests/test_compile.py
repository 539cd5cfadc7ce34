"""The fast paths under the frameworks' compilers: XLA (TensorFlow), torch.compile."""

import keras
import numpy as np
import pytest

from involution import Involution
from involution.models import create_model

BACKEND = keras.backend.backend()


def one_layer_model():
    """16 channels in 2 groups: 8 per group, so the fused paths run."""
    inputs = keras.Input((8, 8, 16))
    x = Involution(group_number=2, kernel_size=3, reduction_ratio=4, name="involution")(inputs)
    outputs = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, outputs)


def data(batch=8):
    rng = np.random.default_rng(0)
    return rng.standard_normal((batch, 8, 8, 16)).astype("float32"), rng.integers(0, 3, (batch,))


def compiled(model, jit_compile):
    model.compile(optimizer=keras.optimizers.SGD(0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=jit_compile)
    return model


@pytest.mark.skipif(BACKEND == "jax", reason="JAX always compiles the step; test_ops covers it")
def test_jit_compiled_training_matches_uncompiled():
    x, y = data()
    plain = compiled(one_layer_model(), jit_compile=False)
    jitted = compiled(one_layer_model(), jit_compile=True)
    jitted.set_weights(plain.get_weights())
    plain_losses = [float(plain.train_on_batch(x, y)) for _ in range(3)]
    jitted_losses = [float(jitted.train_on_batch(x, y)) for _ in range(3)]
    np.testing.assert_allclose(jitted_losses, plain_losses, rtol=1e-4)
    for a, b in zip(jitted.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow graphs")
def test_no_nested_xla_cluster_in_compiled_graphs():
    import tensorflow as tf

    model = one_layer_model()
    x, y = data()
    variables = model.trainable_variables

    def loss_and_gradients(inputs):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(model(inputs, training=True))
        return tape.gradient(loss, variables)

    def calls(function, *args, kinds=("PartitionedCall", "StatefulPartitionedCall")):
        graph = function.get_concrete_function(*args).graph.as_graph_def()
        nodes = list(graph.node) + [n for f in graph.library.function for n in f.node_def]
        return [n.op for n in nodes if n.op in kinds]

    native = ("InvolutionApply",)

    # Compiled as a whole: the apply step is part of the caller's cluster,
    # so the caller traces once for every call of the same shape.
    step = tf.function(loss_and_gradients, jit_compile=True)
    for batch in range(3):
        step(tf.constant(x + batch))
    assert step.experimental_get_tracing_count() == 1
    assert not calls(step, tf.constant(x))
    assert not calls(step, tf.constant(x), kinds=native)
    # Prediction and training graphs that Keras does not compile run the
    # C++ op on the CPU (the step's own XLA cluster where it cannot run).
    assert calls(tf.function(lambda inputs: model(inputs)), tf.constant(x), kinds=native)
    assert calls(tf.function(loss_and_gradients), tf.constant(x), kinds=native)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow graphs")
def test_exported_graphs_hold_no_xla_function_or_custom_op(tmp_path):
    from tensorflow.core.protobuf import saved_model_pb2

    model = one_layer_model()
    model(data()[0])
    model.export(str(tmp_path / "model"), format="tf_saved_model", verbose=False)
    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((tmp_path / "model" / "saved_model.pb").read_bytes())
    functions = [f for graph in saved.meta_graphs for f in graph.graph_def.library.function]
    assert functions  # the serving function and its callees
    assert not [f.signature.name for f in functions if f.attr["_XlaMustCompile"].b]
    # Nor this package's C++ ops: the artifact runs without it.
    ops = {n.op for graph in saved.meta_graphs for n in graph.graph_def.node}
    ops |= {n.op for f in functions for n in f.node_def}
    assert not {op for op in ops if op.startswith("Involution")}


@pytest.mark.skipif(BACKEND != "torch", reason="torch.compile")
def test_torch_compile_has_no_graph_breaks():
    import torch

    model = one_layer_model()
    x = torch.from_numpy(data()[0])
    explanation = torch._dynamo.explain(lambda inputs: model(inputs, training=True))(x)
    assert explanation.graph_break_count == 0, [str(b.reason)[:300] for b in explanation.break_reasons]


@pytest.mark.skipif(BACKEND != "torch", reason="torch.library custom ops")
@pytest.mark.parametrize("stride", [1, 2])
def test_custom_ops_pass_opcheck(stride):
    import torch

    from involution.backends import torch_backend

    if torch_backend._extension() is None:
        pytest.skip("the C++ kernels could not be built here")
    rng = np.random.default_rng(0)
    out = -(-7 // stride)
    x = torch.tensor(rng.standard_normal((2, 7, 7, 16)), requires_grad=True)
    kernel = torch.tensor(rng.standard_normal((2, out, out, 18)), requires_grad=True)
    grad = torch.tensor(rng.standard_normal((2, out, out, 16)), requires_grad=True)
    geometry = (2, 3, stride, 1)
    torch.library.opcheck(torch_backend._apply_op, (x, kernel, *geometry))
    torch.library.opcheck(torch_backend._input_gradient_op, (grad, kernel, 7, 7, *geometry))
    torch.library.opcheck(torch_backend._correlate_op, (x, grad, *geometry))


@pytest.mark.slow
def test_mixed_bfloat16_invnet_fit_stays_finite():
    keras.config.set_dtype_policy("mixed_bfloat16")
    model = create_model("invnet")
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(16, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, (16,))
    history = model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert np.all(np.isfinite(keras.ops.convert_to_numpy(model.predict(x, verbose=0)).astype("float32")))
