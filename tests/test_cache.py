"""The cache folder (`involution.cache`) and the compiled kernels in it."""

import ctypes
import os
import re
import shutil
import stat

import pytest

from involution import cache
from involution.backends import native

pytestmark = pytest.mark.backend_independent

needs_compiler = pytest.mark.skipif(not (shutil.which("c++") or shutil.which("g++")), reason="no C++ compiler")

GENUINE = 'extern "C" int answer() { return 42; }\n'
# A library that announces itself when loaded: its constructor runs on
# `dlopen`, before any of its functions is called.
PLANTED = """
#include <cstdio>
__attribute__((constructor)) static void announce() {
  if (FILE* f = std::fopen("%s", "w")) { std::fputs("loaded", f); std::fclose(f); }
}
extern "C" int answer() { return 666; }
"""


@pytest.fixture
def cache_root(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv(cache.CACHE_ENV, str(root))
    return root


# Giving a file to another user takes root; elsewhere those cases skip.
as_root = hasattr(os, "geteuid") and os.geteuid() == 0


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_folders_are_created_private(cache_root):
    folder = cache.private_dir(str(cache_root / "kernels"))
    assert folder == str(cache_root / "kernels")
    assert mode(cache_root) == 0o700 and mode(folder) == 0o700


@pytest.mark.parametrize("problem", ["world_writable", "other_owner", "symlink"])
def test_an_unsafe_folder_is_replaced(cache_root, tmp_path, problem):
    folder = cache_root / "kernels"
    if problem == "symlink":
        (tmp_path / "elsewhere").mkdir()
        cache_root.mkdir()
        folder.symlink_to(tmp_path / "elsewhere")
    else:
        folder.mkdir(parents=True)
        if problem == "world_writable":
            folder.chmod(0o777)
        else:
            if not as_root:
                pytest.skip("chown to another user needs root")
            os.chown(folder, 4242, 4242)
    expected = {"world_writable": "writable by its group or by others", "other_owner": "another user (uid 4242)",
                "symlink": "symbolic link"}[problem]
    with pytest.warns(RuntimeWarning, match=re.escape(expected)):
        fresh = cache.private_dir(str(folder))
    assert fresh != str(folder) and mode(fresh) == 0o700 and cache.unsafe(fresh) is None


@needs_compiler
@pytest.mark.parametrize("problem", ["other_owner", "group_writable"])
def test_a_planted_library_is_never_loaded(cache_root, tmp_path, problem):
    shutil.copy(native.KERNELS_HEADER, tmp_path)
    source = tmp_path / "probe.cpp"
    source.write_text(GENUINE)
    # Plant a library under the name the genuine build would have.
    marker = tmp_path / "planted-ran"
    planted_source = tmp_path / "planted.cpp"
    planted_source.write_text(PLANTED % marker)
    kernels = cache_root / "kernels"
    cache.make_private_dirs(str(kernels))
    planted = kernels / f"probe_{native.build_key(source)}.so"
    planted_build = native.shared_library(planted_source, cache_dir=str(tmp_path / "planted-build"))
    shutil.copy(planted_build, planted)
    if problem == "other_owner":
        if not as_root:
            pytest.skip("chown to another user needs root")
        os.chown(planted, 4242, 4242)
    else:
        planted.chmod(0o775)
    with pytest.warns(RuntimeWarning, match=re.escape(f"not using {kernels}: its {planted.name}")):
        library = native.shared_library(source)
    assert library != planted and library.parent != kernels
    assert ctypes.CDLL(str(library)).answer() == 42
    assert not marker.exists()


@needs_compiler
def test_the_users_own_build_is_reused(cache_root, tmp_path, recwarn):
    shutil.copy(native.KERNELS_HEADER, tmp_path)
    source = tmp_path / "probe.cpp"
    source.write_text(GENUINE)
    first = native.shared_library(source)
    assert first.parent == cache_root / "kernels"
    built = os.stat(first).st_mtime_ns
    assert native.shared_library(source) == first and os.stat(first).st_mtime_ns == built
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
