import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Without a GPU, the Triton kernels' tests run them under Triton's
# interpreter, which must be on before Triton is imported (PyTorch may
# import it with Keras). A GPU shows as a CUDA or ROCm device node.
if os.environ.get("KERAS_BACKEND") == "torch" and not any(
        os.path.exists(node) for node in ("/dev/nvidiactl", "/dev/kfd")):
    os.environ.setdefault("TRITON_INTERPRET", "1")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


# `tests/run_all_backends.py` runs the suite once per backend; tests marked
# `backend_independent` (pure Python, or choosing their own backends) need
# only one of those runs, and it sets this variable to 0 for the others.
ONCE_ENV = "INVOLUTION_TEST_BACKEND_INDEPENDENT"


if keras.backend.backend() == "torch":
    # Imported now, before any test imports TensorFlow: Triton's LLVM aborts
    # the process when it comes after TensorFlow's (see `torch_backend._triton`).
    from involution.backends import torch_backend

    torch_backend._triton()


def pytest_report_header(config):
    return f"keras {keras.__version__}, backend: {keras.backend.backend()}"


def pytest_configure(config):
    config.addinivalue_line("markers", "backend_independent: the same on every backend; run under one of them")


def pytest_collection_modifyitems(config, items):
    if os.environ.get(ONCE_ENV, "1") != "0":
        return
    skip = pytest.mark.skip(reason="backend-independent: run under another backend's pass")
    for item in items:
        if "backend_independent" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _clean_keras_state():
    """Each test starts from float32 and a fresh name scope."""
    keras.config.set_dtype_policy("float32")
    # Without the full garbage collection Keras adds by default: with three
    # frameworks loaded it is slow, and it would run before every test.
    # Python's own collector still runs.
    keras.utils.clear_session(free_memory=False)
    keras.utils.set_random_seed(0)
    yield
    keras.config.set_dtype_policy("float32")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def restore_switches():
    """Puts `involution.config`'s switches back to the environment's settings after the test."""
    yield
    from involution import config

    for name in config.FAST_PATHS:
        config.set_fast_path(name, None)
    config.set_exportable(False)


@pytest.fixture
def deadline():
    """Fails the test if it runs past 300 s: a read that blocks (a FIFO)
    fails instead of hanging the suite."""
    import signal

    def expired(*_):
        raise TimeoutError("no answer within 300 s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(300)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)
