"""Reading other frameworks' checkpoints as untrusted files: arrays only.

A checkpoint is a pickle, and unpickling runs whatever functions the file
names. The readers here never let it: each uses an unpickler that resolves
only the handful of names a plain tensor archive needs, to functions of
this module that build NumPy arrays, and refuses any other name (before
anything is called) with an error naming it.

- PaddleClas `.pdparams`: a pickled dict of NumPy arrays.
- PyTorch `.pth` / `.pt` (the zip format: `<archive>/data.pkl` naming its
  tensors' storages in `<archive>/data/<key>`): read by this module's zip
  reader, which needs no PyTorch, on any backend.

`read_checkpoint(path)` returns `{name: numpy array}` (a `state_dict`, or
the `state_dict` under the usual `"state_dict"` / `"model"` keys).
"""

import io
import pickle
import zipfile

import numpy as np

# A checkpoint larger than this is not a RedNet's (RedNet-152: ~140 MB).
MAX_BYTES = 2 * 2**30

_TORCH_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": None, "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class CheckpointError(ValueError):
    """A checkpoint that is not a plain archive of arrays, or is damaged."""


def _refuse(module, name):
    raise CheckpointError(f"The checkpoint names {module}.{name}, which a plain archive of arrays does not: it is not "
                          "read (unpickling it could run code).")


def _ordered_dict(*args):
    return dict(*args)


def _numpy_reconstruct(cls, shape, dtype):
    if cls is not np.ndarray:
        _refuse("numpy", "reconstruct of a non-array")
    return np.ndarray.__new__(np.ndarray, shape, dtype)


def _numpy_dtype(name, align=False, copy=False):
    dtype = np.dtype(name)
    if dtype.kind not in "biufc" or dtype.hasobject:
        raise CheckpointError(f"The checkpoint holds an array of dtype {dtype}, not numbers.")
    return dtype


def _latin1_bytes(text, encoding="latin1"):
    # Pickle protocol 2 writes bytes as `_codecs.encode(text, "latin1")`.
    if encoding != "latin1" or not isinstance(text, str):
        _refuse("_codecs", f"encode with {encoding!r}")
    return text.encode("latin1")


class _PaddleUnpickler(pickle.Unpickler):
    """NumPy arrays in dicts: `ndarray.__reduce__`'s names and nothing else."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): _numpy_dtype,
        ("collections", "OrderedDict"): _ordered_dict,
        ("_codecs", "encode"): _latin1_bytes,
    }

    def find_class(self, module, name):
        found = self.ALLOWED.get((module, name))
        if found is None:
            _refuse(module, name)
        return found


def _rebuild_tensor(storage, offset, size, stride, *unused):
    array, dtype_name = storage
    itemsize = array.dtype.itemsize
    size, stride = tuple(int(n) for n in size), tuple(int(n) for n in stride)
    end = offset + (sum((n - 1) * s for n, s in zip(size, stride)) + 1 if all(size) else 0)
    if offset < 0 or end > array.size or any(s < 0 for s in stride):
        raise CheckpointError(f"A tensor of the checkpoint ({dtype_name}, size {size}) lies outside its storage.")
    view = np.lib.stride_tricks.as_strided(array[offset:], size, tuple(s * itemsize for s in stride),
                                           writeable=False)
    return np.array(view)


class _TorchUnpickler(pickle.Unpickler):
    """`torch.save`'s `data.pkl`: tensors rebuilt from storages, in dicts."""

    def __init__(self, file, archive, prefix):
        super().__init__(file)
        self.archive, self.prefix = archive, prefix

    def find_class(self, module, name):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("collections", "OrderedDict"):
            return _ordered_dict
        if module == "torch" and name in _TORCH_DTYPES:
            return name
        _refuse(module, name)

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise CheckpointError(f"The checkpoint refers to a storage it does not describe: {pid!r:.80}")
        _, storage_type, key, _location, numel = pid
        dtype = _TORCH_DTYPES.get(storage_type if isinstance(storage_type, str) else None)
        if dtype is None:
            raise CheckpointError(f"The checkpoint's storage type {storage_type!r} is not read here.")
        try:
            data = self.archive.read(f"{self.prefix}data/{key}")
        except KeyError:
            raise CheckpointError(f"The checkpoint's storage {key!r} is missing from the archive.") from None
        array = np.frombuffer(data, dtype=np.dtype(dtype).newbyteorder("<"))
        if array.size != numel:
            raise CheckpointError(f"The checkpoint's storage {key!r} holds {array.size} values, not {numel}.")
        return array, storage_type


def _state_dict(value, path):
    if isinstance(value, dict):
        # Paddle's optional table of structured names (strings, not arrays).
        value = {k: v for k, v in value.items() if k != "StructuredToParameterName@@"}
        for key in ("state_dict", "model"):
            if isinstance(value.get(key), dict):
                value = value[key]
                break
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, np.ndarray)
                                              for k, v in value.items()):
        raise CheckpointError(f"{path} is not a dict of named arrays (a state_dict).")
    return value


def read_torch_zip(path):
    """`{name: array}` of a PyTorch zip checkpoint, without PyTorch."""
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [name for name in archive.namelist() if name.endswith("/data.pkl")]
            if len(pickles) != 1:
                raise CheckpointError(f"{path} is a zip file but not a PyTorch checkpoint (no single data.pkl).")
            prefix = pickles[0][: -len("data.pkl")]
            unpickler = _TorchUnpickler(io.BytesIO(archive.read(pickles[0])), archive, prefix)
            return _state_dict(unpickler.load(), path)
    except (zipfile.BadZipFile, EOFError, pickle.UnpicklingError, OSError) as error:
        raise CheckpointError(f"{path} is damaged or not a PyTorch checkpoint ({type(error).__name__}: "
                              f"{error}).") from None


def read_pdparams(path):
    """`{name: array}` of a PaddlePaddle `.pdparams` file."""
    try:
        with open(path, "rb") as handle:
            value = _PaddleUnpickler(handle).load()
    except (EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError) as error:
        if isinstance(error, CheckpointError):
            raise
        raise CheckpointError(f"{path} is damaged or not a .pdparams file ({type(error).__name__}: {error}).") \
            from None
    return _state_dict(value, path)


def read_checkpoint(path):
    """`{name: numpy array}` of a `.pth`/`.pt` (zip) or `.pdparams` checkpoint.

    Raises:
        CheckpointError: (a `ValueError`) for a file that is too large,
            damaged, of another format, or that names anything but arrays.
    """
    import os

    from involution import untrusted

    # A regular file (not a FIFO, device or /proc entry), whose size is then what reads return.
    size = os.path.getsize(untrusted.regular_file(path, "checkpoint"))
    if size > MAX_BYTES:
        raise CheckpointError(f"{path} has {size} bytes, more than a RedNet checkpoint's {MAX_BYTES}.")
    if str(path).endswith(".pdparams"):
        return read_pdparams(path)
    with open(path, "rb") as handle:
        zipped = handle.read(4) == b"PK\x03\x04"
    if zipped:
        return read_torch_zip(path)
    raise CheckpointError(f"{path} is neither a PyTorch zip checkpoint (.pth) nor a .pdparams file (PyTorch's "
                          "legacy non-zip format is not read).")
