"""Building the C++ loops (`involution.backends.native`)."""

import shutil

import pytest

from involution.backends import native

needs_compiler = pytest.mark.skipif(not (shutil.which("c++") or shutil.which("g++")), reason="no C++ compiler")

SOURCE = """
#include <cstdint>
namespace involution {
template <typename Fn> void parallel_for(int64_t begin, int64_t end, int64_t, const Fn& fn) { fn(begin, end); }
}
#include "involution_kernels.h"
extern "C" int64_t taps(int64_t kernel_size) {
  involution::Geometry g{1, 1, 1, 8, 1, 1, 1, kernel_size, 1, 1, 0};
  return g.taps();
}
"""


def test_build_key_follows_the_source(tmp_path):
    source = tmp_path / "a.cpp"
    source.write_text("int a;")
    first = native.build_key(source)
    assert native.build_key(source) == first
    source.write_text("int b;")
    assert native.build_key(source) != first


@needs_compiler
def test_shared_library_builds_once_and_runs(tmp_path):
    import ctypes

    source = tmp_path / "probe.cpp"
    # The shared header is found next to the source, as in the package.
    shutil.copy(native.KERNELS_HEADER, tmp_path)
    source.write_text(SOURCE)
    path = native.shared_library(source, cache_dir=tmp_path / "cache")
    assert path.parent == tmp_path / "cache" and not list(path.parent.glob("*.partial"))
    library = ctypes.cdll.LoadLibrary(str(path))
    library.taps.restype = ctypes.c_int64
    assert library.taps(ctypes.c_int64(7)) == 49
    built = path.stat().st_mtime_ns
    assert native.shared_library(source, cache_dir=tmp_path / "cache") == path
    assert path.stat().st_mtime_ns == built


@needs_compiler
def test_build_errors_carry_the_compiler_message(tmp_path):
    source = tmp_path / "broken.cpp"
    source.write_text("int main() { return undefined_name; }")
    with pytest.raises(RuntimeError, match="undefined_name"):
        native.shared_library(source, cache_dir=tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("*"))


def test_missing_compiler_is_named(tmp_path, monkeypatch):
    source = tmp_path / "a.cpp"
    source.write_text("int a;")
    monkeypatch.setenv("CXX", "")
    monkeypatch.setattr(native.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
        native.shared_library(source, cache_dir=tmp_path / "cache")


@needs_compiler
def test_native_defines_are_the_compilers_own_for_this_cpu():
    defines = native.native_defines()
    assert "__cplusplus" in defines and "__OPTIMIZE__" in defines  # -O3 is among the flags asked about
    assert native.native_defines("/nonexistent/c++") == frozenset()
