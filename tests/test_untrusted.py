"""Untrusted files: links, FIFOs, system entries, sizes, depth, image modes.

Every test runs under a deadline: a read that blocks (a FIFO) fails it
instead of hanging the suite.
"""

import io
import os
import pickle
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from involution import untrusted
from involution.untrusted import UntrustedFileError

# File handling and decoding are the same under every backend.
pytestmark = [pytest.mark.backend_independent, pytest.mark.usefixtures("deadline")]


def fifo(path):
    os.mkfifo(path)
    return str(path)


def link(path, target):
    os.symlink(target, path)
    return str(path)


def png_header(width, height):
    """A PNG whose header declares `width` x `height` gray pixels, in a few bytes."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("make,problem", [
    (lambda d: fifo(d / "x.png"), "is a FIFO, not a regular file"),
    (lambda d: link(d / "x.png", "/dev/zero"), "resolves to /dev/zero, a system entry"),
    (lambda d: link(d / "config.json", "/proc/self/status"), "a system entry, not a regular file"),
    (lambda d: str(d), "is a folder, not a regular file"),
    (lambda d: str(d / "none.png"), "does not exist"),
])
def test_only_regular_files_are_read(tmp_path, make, problem):
    path = make(tmp_path)
    with pytest.raises(UntrustedFileError, match=problem):
        untrusted.read_bytes(path, 100)


def test_sizes_are_counted_while_reading(tmp_path):
    (tmp_path / "big").write_bytes(b"x" * 101)
    with pytest.raises(UntrustedFileError, match="larger than 100 bytes"):
        untrusted.read_bytes(tmp_path / "big", 100)
    assert untrusted.read_bytes(tmp_path / "big", 101) == b"x" * 101


def test_json_is_depth_and_kind_limited(tmp_path):
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(UntrustedFileError, match="nests deeper than 64 levels"):
        untrusted.read_json(tmp_path / "deep.json")
    # Brackets inside strings are text, not nesting.
    (tmp_path / "text.json").write_text('{"a": "' + "[" * 1000 + '"}')
    assert untrusted.read_json(tmp_path / "text.json") == {"a": "[" * 1000}
    (tmp_path / "list.json").write_text("[1]")
    with pytest.raises(UntrustedFileError, match="must hold a JSON object, not a list"):
        untrusted.read_json(tmp_path / "list.json")
    (tmp_path / "latin.json").write_bytes(b'{"a": "\xe9"}')
    with pytest.raises(UntrustedFileError, match="not UTF-8"):
        untrusted.read_json(tmp_path / "latin.json")


@pytest.mark.parametrize("size", [(30000, 30000), (9000, 9000)])
def test_pixel_counts_are_checked_before_decoding(size):
    raw = png_header(*size)
    assert len(raw) < 200
    with pytest.raises(UntrustedFileError, match=r"(more than|is 9000x9000, more than) 67,108,864 pixels"):
        untrusted.decode_image(raw, "bomb.png")


def _encoded(image, format="PNG", **kwargs):
    buffer = io.BytesIO()
    image.save(buffer, format=format, **kwargs)
    return buffer.getvalue()


def _picture():
    """An 8-bit RGB picture with every gray level and some colour."""
    rng = np.random.default_rng(0)
    gray = np.arange(256, dtype=np.uint8).reshape(16, 16)
    colour = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    return gray, colour


def test_wide_grayscale_modes_scale_to_the_8_bit_picture():
    gray, _ = _picture()
    expected = np.repeat(gray[..., None], 3, axis=-1)
    sixteen = Image.fromarray(gray.astype(np.uint16) * 257)
    assert sixteen.mode == "I;16"
    for raw in (_encoded(sixteen), _encoded(sixteen, "TIFF")):
        np.testing.assert_array_equal(untrusted.decode_image(raw, "x"), expected)
    thirty_two = Image.fromarray(gray.astype(np.int32) * 257)
    np.testing.assert_array_equal(untrusted.decode_image(_encoded(thirty_two, "TIFF"), "x"), expected)
    floats = Image.fromarray(gray.astype(np.float32) / 255.0)
    np.testing.assert_array_equal(untrusted.decode_image(_encoded(floats, "TIFF"), "x"), expected)
    # Pillow's own conversion clips 16-bit samples: mid-gray would become white.
    assert np.asarray(Image.open(io.BytesIO(_encoded(sixteen))).convert("RGB"))[8, 0, 0] == 255
    assert untrusted.decode_image(_encoded(sixteen), "x")[8, 0, 0] == 128


def test_palette_cmyk_alpha_and_frames_reach_the_8_bit_picture():
    gray, colour = _picture()
    rgb = Image.fromarray(colour, "RGB")
    np.testing.assert_array_equal(untrusted.decode_image(_encoded(rgb.convert("CMYK"), "TIFF"), "x"), colour)
    palette = rgb.quantize(64)
    np.testing.assert_array_equal(untrusted.decode_image(_encoded(palette), "x"),
                                  np.asarray(palette.convert("RGB")))
    alpha = np.full((16, 16), 7, np.uint8)
    # Alpha is dropped: the colour channels as stored.
    rgba = Image.fromarray(np.concatenate([colour, alpha[..., None]], axis=-1), "RGBA")
    np.testing.assert_array_equal(untrusted.decode_image(_encoded(rgba), "x"), colour)
    la = Image.fromarray(np.stack([gray, alpha], axis=-1), "LA")
    np.testing.assert_array_equal(untrusted.decode_image(_encoded(la), "x"), np.repeat(gray[..., None], 3, -1))
    one_bit = Image.fromarray(gray > 127).convert("1")
    np.testing.assert_array_equal(untrusted.decode_image(_encoded(one_bit), "x")[..., 0], (gray > 127) * 255)
    # Several frames: the first.
    frames = [Image.fromarray(np.full((8, 8, 3), value, np.uint8)) for value in (40, 200)]
    raw = _encoded(frames[0], "GIF", save_all=True, append_images=frames[1:])
    np.testing.assert_array_equal(untrusted.decode_image(raw, "x"), np.full((8, 8, 3), 40, np.uint8))


def test_one_line_summaries():
    error = ValueError("Could not deserialize: {'class_name': 'Lambda', 'config': {'function': 'AAAA'}}\nmore")
    assert untrusted.summary(error) == "ValueError: Could not deserialize"
    assert len(untrusted.summary(ValueError("x" * 1000))) <= 160 + len("ValueError: ")
    message = str(UntrustedFileError("a.json", "two\nlines"))
    assert message == "a.json: two lines"


def test_pickled_batch_of_references_is_refused_before_it_is_built(tmp_path):
    from involution.app import data

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    row = np.zeros(3072, np.uint8)
    batch = {b"data": [row] * 250_000, b"labels": [0] * 250_000}
    raw = pickle.dumps(batch, protocol=4)
    assert len(raw) < 2_000_000  # references to one row: a small file
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(raw)
    with pytest.raises(data.DataError, match="holds its images as a list; expected a uint8 array"):
        data.load_dataset(str(tmp_path), cache_dir=str(tmp_path / "cache"), progress=False)
