"""Runs on two host devices and prints what `test_sharding.py` asserts, as JSON.

A separate process: JAX fixes its device count when it starts.
"""

import json
import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
os.environ["KERAS_BACKEND"] = "jax"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec  # noqa: E402

from involution import Involution  # noqa: E402
from involution.backends import jax_backend  # noqa: E402


def hlo_of_sharded_gradient():
    mesh = Mesh(np.array(jax.devices()), ("batch",))
    sharding = NamedSharding(mesh, PartitionSpec("batch"))
    rng = np.random.default_rng(0)
    x = jax.device_put(jnp.asarray(rng.standard_normal((4, 8, 8, 16)), jnp.float32), sharding)
    kernel = jax.device_put(jnp.asarray(rng.standard_normal((4, 8, 8, 18)), jnp.float32), sharding)

    def loss(a, b):
        return jnp.sum(jax_backend.fused_involution(a, b, 2, 3, 1, 1) ** 2)

    forward = jax.jit(lambda a, b: jax_backend.fused_involution(a, b, 2, 3, 1, 1))
    gradient = jax.jit(jax.grad(loss, (0, 1)))
    return {
        "forward_hlo": forward.lower(x, kernel).compile().as_text(),
        "gradient_hlo": gradient.lower(x, kernel).compile().as_text(),
        "output_spec": str(forward(x, kernel).sharding.spec),
        "gradient_specs": [str(g.sharding.spec) for g in gradient(x, kernel)],
    }


def pallas_sharded_against_one_device():
    """The Pallas path (interpret mode) on batch-sharded inputs, forward and
    gradient, against the same on one device's unsharded arrays."""
    from involution import config

    config.set_pallas_interpret(True)
    mesh = Mesh(np.array(jax.devices()), ("batch",))
    sharding = NamedSharding(mesh, PartitionSpec("batch"))
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((4, 7, 6, 8)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((4, 7, 6, 18)), jnp.float32)

    def loss(a, b):
        return jnp.sum(jax_backend.fused_involution(a, b, 2, 3, 1, 1, path="pallas") ** 2)

    step = jax.jit(lambda a, b: (jax_backend.fused_involution(a, b, 2, 3, 1, 1, path="pallas"),
                                 *jax.grad(loss, (0, 1))(a, b)))
    one = step(x, kernel)
    two = step(jax.device_put(x, sharding), jax.device_put(kernel, sharding))
    config.set_pallas_interpret(None)
    return {"pallas_specs": [str(t.sharding.spec) for t in two],
            "pallas_max_difference": max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(one, two))}


def train(distribution):
    keras.distribution.set_distribution(distribution)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 16))
    x = Involution(group_number=2, kernel_size=3, reduction_ratio=4)(inputs)
    outputs = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.SGD(0.05),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(1)
    x = rng.standard_normal((16, 8, 8, 16)).astype("float32")
    y = rng.integers(0, 3, (16,))
    history = model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    return history.history["loss"], [w.tolist() for w in model.get_weights()]


def main():
    result = hlo_of_sharded_gradient()
    result["devices"] = len(jax.devices())
    result.update(pallas_sharded_against_one_device())
    one_losses, one_weights = train(None)
    two_losses, two_weights = train(keras.distribution.DataParallel(devices=jax.devices()))
    result["losses"] = [one_losses, two_losses]
    result["max_weight_difference"] = max(
        float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(one_weights, two_weights)
    )
    print("RESULTS " + json.dumps(result))


if __name__ == "__main__":
    main()
