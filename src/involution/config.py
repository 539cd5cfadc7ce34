"""Global switches for the fast paths.

Every fast path has a portable `keras.ops` reference, and every layer that
has one takes `implementation=` (`"auto"`, `"reference"` or `"fast"`).
These switches decide what `"auto"` does, for the whole process:

| name | what runs fast | environment variable |
|---|---|---|
| `"apply"` | the involution apply step | `INVOLUTION_FAST_APPLY` |
| `"window_correlation"` | local attention's query-key logits | `INVOLUTION_FAST_WINDOW_CORRELATION` |
| `"batch_norm"` | `involution.normalization.BatchNormalization`'s training step | `INVOLUTION_FAST_BATCH_NORM` |
| `"pool"` | pooling without layout copies (`involution.ops.pool`) | `INVOLUTION_FAST_POOL` |
| `"dense"` | `involution.dense.Dense` with ReLU on few input features (`involution.ops.dense_relu`) | `INVOLUTION_FAST_DENSE` |

An environment variable set to `0` turns its path off when the process
starts; `set_fast_path` overrides it. `implementation="fast"` on a layer or
call ignores the switches (and raises where the fast path cannot run).

The C++ ops of the PyTorch and TensorFlow fast paths take their large
outputs (8 MiB and more) from a cache of blocks that earlier outputs
freed, so that a training loop's full-resolution maps do not fault fresh
pages in on every step. `INVOLUTION_BLOCK_CACHE_MB` (read once, when the
ops are loaded) caps the memory kept there: 1024 by default, 0 for none.

Example:

>>> import involution
>>> involution.config.set_fast_path("apply", False)
>>> involution.config.fast_path_enabled("apply")
False
>>> with involution.config.fast_paths(False):
...     pass  # everything "auto" runs the keras.ops references here
"""

import contextlib
import os

FAST_PATHS = ("apply", "window_correlation", "batch_norm", "pool", "dense")
IMPLEMENTATIONS = ("auto", "reference", "fast")

_overrides = {}


def _check_name(name):
    if name not in FAST_PATHS:
        raise ValueError(f"The `name` argument must be one of {FAST_PATHS}. Received: name={name!r}")


def environment_variable(name):
    """The environment variable that sets fast path `name`'s default."""
    _check_name(name)
    return f"INVOLUTION_FAST_{name.upper()}"


def fast_path_enabled(name):
    """Whether `implementation="auto"` may run fast path `name`."""
    _check_name(name)
    if name in _overrides:
        return _overrides[name]
    return os.environ.get(environment_variable(name), "1") != "0"


def set_fast_path(name, enabled):
    """Turns fast path `name` on or off for `implementation="auto"`.

    Args:
        name: one of `FAST_PATHS`.
        enabled: bool, or None to go back to the environment's setting.
    """
    _check_name(name)
    if enabled is None:
        _overrides.pop(name, None)
    elif isinstance(enabled, bool):
        _overrides[name] = enabled
    else:
        raise ValueError(f"The `enabled` argument must be a bool or None. Received: enabled={enabled!r}")


@contextlib.contextmanager
def fast_paths(enabled, names=FAST_PATHS):
    """Sets the fast paths `names` on or off inside a `with` block."""
    names = (names,) if isinstance(names, str) else tuple(names)
    for name in names:
        _check_name(name)
    saved = {name: _overrides.get(name) for name in names}
    try:
        for name in names:
            set_fast_path(name, enabled)
        yield
    finally:
        for name, value in saved.items():
            set_fast_path(name, value)


def check_implementation(implementation):
    """Validates an `implementation` argument, with a Keras-style message."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"The `implementation` argument must be one of {IMPLEMENTATIONS}. "
            f"Received: implementation={implementation!r}"
        )
    return implementation
