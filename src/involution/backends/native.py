"""Building the C++ loops of `involution_kernels.h` for this machine's CPU.

The PyTorch backend builds them into an extension with PyTorch's builder
(`torch_backend`), the JAX backend into a plain shared library of XLA FFI
handlers (`shared_library`, here). Both compile with `-march=native`, so a
build belongs to one kind of CPU: its cache key holds the CPU's instruction
sets and the sources' contents. Builds live in the private folder
`<cache>/kernels` (`involution.cache`): a library that another user could
have planted is never loaded, but rebuilt in a fresh private folder.
"""

import functools
import hashlib
import os
import platform
import shutil
import subprocess
from pathlib import Path

from involution import cache

# The framework-free C++ loops, apart from their bindings (this folder).
KERNELS_DIR = Path(__file__).parents[1] / "kernels" / "cpu"
KERNELS_HEADER = KERNELS_DIR / "involution_kernels.h"
# Every header a binding may include: part of every build's key.
SHARED_HEADERS = tuple(KERNELS_DIR / name for name in (
    "involution_kernels.h", "batch_norm_kernels.h", "pool_kernels.h", "block_cache.h"))
CXX_FLAGS = ["-O3", "-march=native", "-fopenmp", "-std=c++17"]


def compiler():
    """The C++ compiler: `$CXX`, else `c++` or `g++` on the path; None if none."""
    return os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")


@functools.lru_cache(maxsize=None)
def native_defines(cxx=None):
    """The macros that `cxx` (default `compiler()`) defines with
    `CXX_FLAGS` for this CPU, e.g. `{"__AVX512FP16__", ...}`; empty where it
    cannot say."""
    cxx = cxx or compiler()
    if not cxx:
        return frozenset()
    try:
        result = subprocess.run(
            [cxx, *CXX_FLAGS, "-dM", "-E", "-x", "c++", os.devnull], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.SubprocessError):
        return frozenset()
    return frozenset(line.split()[1] for line in result.stdout.splitlines() if line.startswith("#define "))


def build_key(*sources, flags=()):
    """A short hash of this CPU's instruction sets, of `sources` (and the
    shared headers) and of extra compiler `flags`: a new CPU, an edited
    source or another framework build gets a new build."""
    digest = hashlib.sha1(platform.machine().encode())
    digest.update(" ".join(flags).encode())
    try:
        with open("/proc/cpuinfo") as f:
            digest.update(next((line for line in f if line.startswith(("flags", "Features"))), "").encode())
    except OSError:
        pass
    for source in (*SHARED_HEADERS, *sources):
        digest.update(Path(source).read_bytes())
    return digest.hexdigest()[:12]


def kernel_dir(cache_dir=None, library=None):
    """The private folder for compiled kernels (`<cache>/kernels`).

    Args:
        cache_dir: the folder to use instead of `<cache>/kernels`.
        library: the file name of a build that the caller will load from
            the folder if it exists; it must be the user's own too.

    Returns:
        The folder, or a fresh private one (with a warning) where the
        folder or the library in it could be another user's.
    """

    def library_problem(folder):
        if library is None or not os.path.lexists(os.path.join(folder, library)):
            return None
        path = os.path.join(folder, library)
        problem = cache.unsafe(path)
        return f"its {library} {problem}" if problem else None

    return Path(cache.private_dir(cache_dir or os.path.join(cache.cache_dir(), "kernels"), library_problem))


def shared_library(source, include_dirs=(), cache_dir=None, flags=(), disable_if_defined=None):
    """Compiles `source` into a shared library once per machine and source.

    Args:
        source: the C++ file (it includes `involution_kernels.h`).
        include_dirs: extra include directories (treated as system headers,
            so their warnings stay quiet).
        cache_dir: where builds are kept; default
            `$INVOLUTION_CACHE/kernels` (`~/.cache/involution/kernels`).
        flags: extra compiler and linker flags (a framework's headers'
            defines, its libraries), also part of the build's key.
        disable_if_defined: `{macro: flag}`: when this compiler defines
            `macro` for this CPU (see `native_defines`), `flag` is added to
            the build, e.g. `{"__AVX512FP16__": "-mno-avx512fp16"}` for
            headers that do not compile with that instruction set. Asked
            only when building: the key already holds the CPU's
            instruction sets.

    Returns:
        The library's path.

    Raises:
        RuntimeError: no C++ compiler, or the build failed (its messages).
    """
    source = Path(source)
    name = f"{source.stem}_{build_key(source, flags=flags)}.so"
    target = kernel_dir(cache_dir, name) / name
    if target.exists():
        return target
    cxx = compiler()
    if not cxx:
        raise RuntimeError("no C++ compiler found (set CXX, or install g++)")
    # Built under a temporary name and renamed: a concurrent or interrupted
    # build never leaves a half-written library under the final name.
    partial = target.with_name(f"{target.stem}.{os.getpid()}.partial")
    command = [cxx, *CXX_FLAGS, "-shared", "-fPIC", f"-I{source.parent}", f"-I{KERNELS_DIR}"]
    command += [f"-isystem{directory}" for directory in include_dirs]
    command += [str(source), "-o", str(partial), *flags]
    defines = native_defines(cxx) if disable_if_defined else frozenset()
    command += [flag for macro, flag in (disable_if_defined or {}).items() if macro in defines]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    os.replace(partial, target)
    return target
