"""Multiply-adds per image of registry models' forward pass, by kind of layer.

Counts from the layers' shapes, not from a run: a convolution or dense
layer costs one multiply-add per weight per output position; an involution
costs its kernel generator's two 1x1 convolutions plus the apply step (one
multiply-add per channel, tap and output pixel). Batch normalization,
activations, pooling and additions are left out (a few operations per
element, memory traffic rather than arithmetic). A training step costs about
three times the forward pass (the backward computes gradients for both
the inputs and the weights).

Usage:
    python benchmarks/flops.py --models conv,invnet,involution
"""

import argparse
import math


def _spatial(shape, data_format):
    """(pixels, channels) of a 4-D shape without its batch axis."""
    if data_format == "channels_first":
        channels, *space = shape[1:]
    else:
        *space, channels = shape[1:]
    return math.prod(space), channels


def layer_multiply_adds(layer):
    """{kind: multiply-adds per image} of one layer of a functional model."""
    import keras

    from involution.attention import LocalAttentionKernelGenerator
    from involution.layer import Involution

    if isinstance(layer, Involution):
        data_format = layer.data_format
        pixels, channels = _spatial(layer.output[0].shape if isinstance(layer.output, (list, tuple))
                                    else layer.output.shape, data_format)
        taps = layer.kernel_size * layer.kernel_size
        generator = layer.kernel_generator
        counts = {"apply step": pixels * channels * taps}
        if isinstance(generator, LocalAttentionKernelGenerator):
            return {**counts, "kernel generator (attention, not counted)": 0}
        hidden = generator.reduce.filters
        counts["kernel generator"] = pixels * (channels * hidden + hidden * generator.span.filters)
        return counts
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        pixels, channels = _spatial(layer.output.shape, layer.data_format)
        return {"depthwise convolution": pixels * channels * math.prod(layer.kernel_size)}
    if isinstance(layer, keras.layers.Conv2D):
        pixels, channels = _spatial(layer.output.shape, layer.data_format)
        inputs = layer.kernel.shape[-2]
        kind = "1x1 convolution" if math.prod(layer.kernel_size) == 1 else "convolution"
        return {kind: pixels * channels * inputs * math.prod(layer.kernel_size)}
    if isinstance(layer, keras.layers.Dense):
        positions = math.prod(layer.output.shape[1:-1])
        kind = "1x1 convolution" if positions > 1 else "dense"
        return {kind: positions * layer.kernel.shape[0] * layer.kernel.shape[1]}
    return {}


def model_multiply_adds(model):
    """{kind: multiply-adds per image} summed over a functional model's layers."""
    totals = {}
    for layer in model.layers:
        for kind, count in layer_multiply_adds(layer).items():
            totals[kind] = totals.get(kind, 0) + count
    return totals


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="conv,invnet,involution")
    args = parser.parse_args()

    from involution.models import create_model

    rows = []
    for name in args.models.split(","):
        model = create_model(name)
        rows.append((name, model.count_params(), model_multiply_adds(model)))
    kinds = sorted({kind for _, _, counts in rows for kind in counts})
    print("| model | params | " + " | ".join(kinds) + " | total |")
    print("|---|---:|" + "---:|" * (len(kinds) + 1))
    for name, params, counts in rows:
        cells = [f"{counts.get(kind, 0) / 1e6:.2f} M" for kind in kinds]
        total = sum(counts.values())
        print(f"| `{name}` | {params:,} | " + " | ".join(cells) + f" | **{total / 1e6:.2f} M** |")


if __name__ == "__main__":
    main()
