"""The process's memory allocator, set up for training loops.

A training step allocates and frees the same large tensors every step.
glibc's malloc serves blocks above its mmap threshold (32 MiB at most) with
fresh `mmap` calls and hands freed memory back to the system, so every step
pays the kernel's page faults again for every large activation and
gradient: PyTorch's CPU training steps spend a large part of their time
there (`docs/benchmarks.md`, "The allocator"). Asking malloc to serve large
blocks from its heap and to keep what is freed removes those faults; the
process's resident memory then stays at its peak. The frameworks' CPU
tuning guides reach the same end with jemalloc or tcmalloc.

`involution compare` calls `keep_freed_memory()` before the frameworks
load; a Keras program gets the same from the environment variables in
`ENVIRONMENT`, set before Python starts.
"""

import ctypes
import os

# glibc's names for the settings (`mallopt`), and their environment forms.
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_KEEP = 2**31 - 1  # the largest value mallopt takes: never trim
ENVIRONMENT = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(_KEEP)}
# Set to 0 to keep the allocator's defaults in `involution compare`.
OPT_OUT = "INVOLUTION_KEEP_FREED_MEMORY"


def keep_freed_memory():
    """Makes glibc's malloc keep freed memory for reuse (see the module).

    Leaves the allocator alone where the process is not on glibc, where
    `INVOLUTION_KEEP_FREED_MEMORY=0`, or where the environment already sets
    malloc's tunables (the user's choice stands).

    Returns:
        Whether the settings were applied.
    """
    if os.environ.get(OPT_OUT, "1") == "0":
        return False
    if "GLIBC_TUNABLES" in os.environ or any(name in os.environ for name in ENVIRONMENT):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _KEEP))
