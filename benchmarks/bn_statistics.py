"""Test accuracy of a saved model before and after recomputing its batch-norm statistics.

Usage: python benchmarks/bn_statistics.py MODEL.keras --data PATH [--batches N] [--only generator|trunk]

The moving statistics are replaced by the plain mean of the batch statistics
of N shuffled training batches (256 images) at the model's final weights;
nothing else changes. The gain measures what the moving average's lag behind
the weights costs (docs/results/README.md, "Session 7").
"""

import argparse

import numpy as np


def test_accuracy(model, dataset, keras):
    x = dataset.x_test.astype("float32") / 255.0
    logits = [keras.ops.convert_to_numpy(model(x[i:i + 1000], training=False)) for i in range(0, len(x), 1000)]
    return float(np.mean(np.argmax(np.concatenate(logits), -1) == dataset.y_test.ravel()))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--data", required=True)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--only", choices=("generator", "trunk"))
    args = parser.parse_args()

    import keras

    import involution.models  # noqa: F401  (registers the project's layers)
    from involution.data import load_dataset

    dataset = load_dataset(args.data)
    model = keras.saving.load_model(args.model)
    print(f"moving statistics: {test_accuracy(model, dataset, keras):.4f}")
    norms = [layer for layer in model._flatten_layers(include_self=False, recursive=True)
             if isinstance(layer, keras.layers.BatchNormalization)]
    if args.only:
        # The kernel generators' batch normalization is the layer called "norm".
        norms = [layer for layer in norms if (layer.name == "norm") == (args.only == "generator")]
    order = np.random.default_rng(0).permutation(len(dataset.x_train))
    for step in range(args.batches):
        # A momentum of k / (k + 1) at step k makes the moving statistics the
        # plain mean of the k + 1 batches seen.
        for layer in norms:
            layer.momentum = step / (step + 1)
        batch = order[step * 256:(step + 1) * 256]
        model(dataset.x_train[batch].astype("float32") / 255.0, training=True)
    print(f"recomputed from {args.batches} batches ({len(norms)} batch norms): "
          f"{test_accuracy(model, dataset, keras):.4f}")


if __name__ == "__main__":
    main()
