"""The process-wide switches behind `involution.config` (see its docstring).

Kept apart from `involution.config`, which also reports on the registry,
so that the registry and the bindings read the switches without importing
the module that imports them.
"""

import contextlib
import os

FAST_PATHS = ("apply", "window_correlation", "batch_norm", "pool")

_overrides = {}
# `set_exportable`'s setting, then the `exportable()` blocks open now.
_exportable = [False]


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


PALLAS_INTERPRET_ENV = "INVOLUTION_PALLAS_INTERPRET"
_pallas_interpret = [None]


def pallas_interpret_enabled():
    """Whether the Pallas kernels may run in interpret mode on JAX's CPU."""
    if _pallas_interpret[0] is not None:
        return _pallas_interpret[0]
    return os.environ.get(PALLAS_INTERPRET_ENV, "0") == "1"


def set_pallas_interpret(enabled):
    """Lets `implementation="pallas"` run in Pallas' interpret mode on the CPU.

    Interpret mode runs each kernel program as an iteration of a loop of XLA
    ops: for testing the kernels without a GPU, not for speed.

    Args:
        enabled: bool, or None to go back to the environment's setting
            (`INVOLUTION_PALLAS_INTERPRET=1`).
    """
    if enabled is not None and not isinstance(enabled, bool):
        raise ValueError(f"The `enabled` argument must be a bool or None. Received: enabled={enabled!r}")
    _pallas_interpret[0] = enabled


def exportable_enabled():
    """Whether `exportable()` (or `set_exportable(True)`) is in force."""
    return _exportable[-1]


def set_exportable(enabled):
    """Makes the kernels choose forms that an exporter can trace (True) or not.

    Args:
        enabled: bool. False goes back to the default, in which the
            frameworks' own signals (and, on TensorFlow, the exporter's
            frames on the stack) say when a model is being exported.
    """
    if not isinstance(enabled, bool):
        raise ValueError(f"The `enabled` argument must be a bool. Received: enabled={enabled!r}")
    _exportable[0] = enabled


@contextlib.contextmanager
def exportable(enabled=True):
    """`set_exportable(enabled)` inside a `with` block.

    Example:

    >>> with involution.config.exportable():
    ...     pass  # model.export(...) here gets portable ops only
    """
    if not isinstance(enabled, bool):
        raise ValueError(f"The `enabled` argument must be a bool. Received: enabled={enabled!r}")
    _exportable.append(enabled)
    try:
        yield
    finally:
        _exportable.pop()
