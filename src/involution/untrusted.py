"""Reading files that nobody vouches for: presets, images, labels, data.

Every file the package reads on a user's word goes through here:

- `regular_file(path)`: after resolving links, a regular file, not a
  device, FIFO, socket, folder or `/proc` / `/sys` entry (whose reported
  sizes say nothing of what a read returns);
- `read_bytes(path, limit)`: at most `limit` bytes, counted while reading;
- `read_json(path)`: a JSON object, size- and depth-limited, parsed without
  recursion errors;
- `decode_image(raw, name)`: the pixel count checked from the header before
  any pixel is decoded, and every Pillow mode converted to 8-bit RGB with
  its own scale (`decode_image` says how).

A refusal is an `UntrustedFileError`: one line, `FILE: what is wrong`, with
the framework's own message, if any, kept apart in `detail` (printed by
`--verbose`).
"""

import io
import json
import os
import stat

import numpy as np

MiB = 2**20
JSON_LIMIT = 8 * MiB  # a preset's config or metadata
IMAGE_FILE_LIMIT = 256 * MiB
TEXT_LIMIT = 64 * MiB  # a labels file
# An image's width x height before it is decoded: 64 megapixels (8192 x
# 8192) is larger than any photograph a classifier is fed, and decodes to
# 192 MiB of RGB.
MAX_IMAGE_PIXELS = 8192 * 8192
JSON_DEPTH_LIMIT = 64
# Pseudo file systems whose entries report sizes that reads do not honour.
_PSEUDO_ROOTS = ("/proc", "/sys", "/dev")


class UntrustedFileError(ValueError):
    """A file that is not what it should be: `FILE: problem`, one line.

    Attributes:
        path: the file, as the user named it.
        problem: what is wrong, one line.
        detail: the underlying library's own message (may span lines), or
            None.
    """

    def __init__(self, path, problem, detail=None):
        self.path = os.fspath(path)
        self.problem = " ".join(str(problem).split())
        self.detail = detail
        super().__init__(f"{self.path}: {self.problem}")


def summary(error, limit=160):
    """The first sentence of a library's error message, on one line, at most
    `limit` characters: enough to say what failed without the configuration,
    bytecode or weight values that some messages go on to quote."""
    text = " ".join(str(error).split())
    for end in (". ", ": {", " {", "\n"):
        if end in text:
            text = text[: text.index(end) + (1 if end == ". " else 0)]
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _kind(mode):
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "not a regular file"


def regular_file(path, what="file"):
    """`path`'s target once it is known to be a regular file.

    Returns:
        The resolved path (links followed).

    Raises:
        UntrustedFileError: the file does not exist, or it (or what a link
            points to) is not a regular file, or lies under /proc, /sys or
            /dev.
    """
    real = os.path.realpath(os.fspath(path))
    if any(real == root or real.startswith(root + os.sep) for root in _PSEUDO_ROOTS):
        raise UntrustedFileError(path, f"the {what} resolves to {real}, a system entry, not a regular file")
    try:
        mode = os.stat(real).st_mode
    except FileNotFoundError:
        raise UntrustedFileError(path, f"the {what} does not exist") from None
    except OSError as error:
        raise UntrustedFileError(path, f"cannot read the {what} ({error.strerror or error})") from None
    if not stat.S_ISREG(mode):
        raise UntrustedFileError(path, f"the {what} is {_kind(mode)}, not a regular file")
    return real


def read_bytes(path, limit, what="file"):
    """The bytes of a regular file of at most `limit` bytes.

    The file is opened without blocking (a FIFO swapped in after the check
    cannot hang the read) and checked again through its descriptor; the
    limit is counted on the bytes read, whatever the file system reports.
    """
    real = regular_file(path, what)
    try:
        fd = os.open(real, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as error:
        raise UntrustedFileError(path, f"cannot open the {what} ({error.strerror or error})") from None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UntrustedFileError(path, f"the {what} is {_kind(os.fstat(fd).st_mode)}, not a regular file")
        try:
            data = handle.read(limit + 1)
        except OSError as error:
            raise UntrustedFileError(path, f"cannot read the {what} ({error.strerror or error})") from None
    if len(data) > limit:
        raise UntrustedFileError(path, f"the {what} is larger than {limit:,} bytes, the most this reads")
    return data


def _depth(text):
    """The deepest nesting of brackets in JSON `text`, outside strings."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def read_json(path, limit=JSON_LIMIT, max_depth=JSON_DEPTH_LIMIT, what="JSON file"):
    """A JSON object from a file of at most `limit` bytes, nested at most
    `max_depth` deep.

    Raises:
        UntrustedFileError: not a regular file, too large, not UTF-8, not
            JSON, too deep, or not an object.
    """
    raw = read_bytes(path, limit, what)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UntrustedFileError(path, f"the {what} is not UTF-8 text (byte {error.start})") from None
    if _depth(text) > max_depth:
        raise UntrustedFileError(path, f"the {what} nests deeper than {max_depth} levels")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as error:
        raise UntrustedFileError(path, f"the {what} is not valid JSON ({summary(error)})") from None
    if not isinstance(value, dict):
        raise UntrustedFileError(path, f"the {what} must hold a JSON object, not a {type(value).__name__}")
    return value


# Pillow's modes whose samples are wider than 8 bits, and the value that
# maps to 255: 16-bit samples span 0-65535 (PNG, TIFF); "I" holds 32-bit
# integers, which 16-bit PNGs decode to in some Pillow versions, and is
# read as 16-bit; "F" floats are taken as 0-1.
_WIDE_MODES = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535, "I": 65535, "F": 1.0}


def decode_image(raw, name, max_pixels=MAX_IMAGE_PIXELS):
    """An image file's bytes as a (height, width, 3) uint8 RGB array.

    Every Pillow mode reaches RGB 0-255 with its own scale: 8-bit modes,
    palettes and CMYK / YCbCr / LAB as Pillow converts them; 16-bit
    grayscale divided by 65535 and 32-bit integer grayscale likewise, float
    grayscale taken as 0-1 (each then scaled to 0-255, rounded, clipped);
    alpha is dropped (the colour channels as stored, not composited); an
    animated or multi-page file gives its first frame.

    Raises:
        UntrustedFileError: not an image Pillow decodes, or more than
            `max_pixels` pixels (checked from the header, before decoding).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(raw)) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise UntrustedFileError(name, f"the image is {width}x{height}, more than {max_pixels:,} pixels")
            image.seek(0)
            if image.mode in _WIDE_MODES:
                samples = np.asarray(image).astype(np.float64) / _WIDE_MODES[image.mode]
                gray = np.clip(np.rint(samples * 255.0), 0, 255).astype(np.uint8)
                return np.repeat(gray[..., None], 3, axis=-1)
            if image.mode in ("LA", "La", "PA"):
                image = image.convert("RGBA")
            return np.asarray(image.convert("RGB"), np.uint8)
    except UntrustedFileError:
        raise
    except Image.DecompressionBombError:
        raise UntrustedFileError(name, f"the image has more than {max_pixels:,} pixels") from None
    except UnidentifiedImageError:
        raise UntrustedFileError(name, "not an image that Pillow recognises") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise UntrustedFileError(name, f"cannot decode the image ({summary(error)})") from None


def read_image(path, max_pixels=MAX_IMAGE_PIXELS):
    """`decode_image` of a regular file of at most 256 MiB."""
    return decode_image(read_bytes(path, IMAGE_FILE_LIMIT, "image"), path, max_pixels)
