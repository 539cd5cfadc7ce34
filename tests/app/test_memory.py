"""`involution_cli.memory`: malloc keeps freed memory, unless told otherwise."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.backend_independent

# Whether a 40 MB block comes from mmap (glibc's default above its mmap
# threshold) after `keep_freed_memory()`: mallinfo2's count of mmapped blocks.
PROBE = """
import ctypes, sys
from involution_cli import memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = (ctypes.c_void_p,)
applied = memory.keep_freed_memory()
before = libc.mallinfo2().hblks
block = libc.malloc(40 * 2**20)
mapped = libc.mallinfo2().hblks - before
libc.free(block)
print(applied, mapped)
"""


def probe(**environment):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    env.update(environment)
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    applied, mapped = done.stdout.split()
    return applied == "True", int(mapped)


@pytest.fixture(autouse=True)
def glibc():
    import ctypes

    if not hasattr(ctypes.CDLL(None), "mallinfo2"):
        pytest.skip("glibc 2.33 or later")


def test_large_blocks_come_from_the_heap():
    assert probe() == (True, 0)


def test_the_defaults_stay_when_asked_or_already_set():
    assert probe(INVOLUTION_KEEP_FREED_MEMORY="0") == (False, 1)
    # The user's own tunables stand.
    assert probe(MALLOC_MMAP_MAX_="65536") == (False, 1)
