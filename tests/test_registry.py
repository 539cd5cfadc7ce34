"""The kernel registry: its table, the chooser, kernels by name, `involution doctor`."""

import ast
import io
import os
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import keras
import numpy as np
import pytest

import involution
from involution import config, registry
from involution.ops import involution_apply, involution_apply_reference
from tests import numpy_reference as ref
from tests.backend_utils import apply_case

BACKEND = keras.backend.backend()


pytestmark = pytest.mark.usefixtures("restore_switches")


def apply_arguments(rng, channels=16, groups=2, dtype="float32", data_format="channels_last"):
    x, kernel = apply_case(rng, 3, 1, groups, channels, data_format)
    return dict(inputs=keras.ops.convert_to_tensor(x.astype(dtype)),
                kernel=keras.ops.convert_to_tensor(kernel.astype(dtype)), kernel_size=3, stride=1, dilation=1,
                groups=groups, data_format=data_format)


def test_the_table_is_well_formed():
    seen, backend_of_name = set(), {}
    for kernel in registry.KERNELS:
        assert kernel.op in registry.OPS and kernel.backend in registry.BACKENDS
        # A name says its backend: "<backend>-..." or a GPU kernel language
        # that only one backend's kernels are written in.
        assert kernel.name.startswith(kernel.backend + "-") or kernel.name in ("triton", "pallas"), kernel
        assert backend_of_name.setdefault(kernel.name, kernel.backend) == kernel.backend, kernel
        assert (kernel.op, kernel.name) not in seen, kernel
        seen.add((kernel.op, kernel.name))
        assert set(kernel.devices) <= {"cpu", "gpu"} and kernel.dtypes
        for part in kernel.source.split(", "):
            assert (Path(involution.__file__).parent / part).is_file(), part
    # Every binding of this backend defines the functions its entries name.
    for kernel in registry.entries(backend=BACKEND):
        binding = kernel.binding()
        for function in (kernel.can_run, kernel.run, kernel.prefer):
            assert function is None or callable(getattr(binding, function)), (kernel, function)


def test_implementation_names_are_checked_when_layers_are_made():
    names = registry.kernel_names("apply")
    assert "torch-cpp" in names and "jax-xla" in names and "tensorflow-grouped" in names
    involution.Involution(group_number=2, implementation="jax-xla")  # another backend's name is a name
    with pytest.raises(ValueError, match=r"must be one of \('auto', 'reference', 'fast', 'torch-cpp'.*"
                                         r"Received: implementation='torch-aten'"):
        involution.Involution(group_number=2, implementation="torch-aten")  # a batch norm kernel
    with pytest.raises(ValueError, match="Received: implementation='cuda'"):
        involution.Involution(implementation="cuda")


def test_every_apply_kernel_by_name_matches_numpy(rng):
    arguments = apply_arguments(rng, dtype="float64")
    x, kernel = (keras.ops.convert_to_numpy(arguments[name]) for name in ("inputs", "kernel"))
    expected = ref.involution_apply(x, kernel, 3, 1, 1, 2, "channels_last")
    ran = []
    for entry in registry.entries("apply", BACKEND):
        if registry.availability(entry) is not None or entry.reason(**arguments) is not None:
            continue
        assert registry.choose("apply", entry.name, **arguments) is entry
        output = keras.ops.convert_to_numpy(involution_apply(**arguments, implementation=entry.name))
        # float64 where the backend computes in it (JAX without x64 gives float32).
        tolerance = 1e-10 if output.dtype == np.float64 else 1e-5
        np.testing.assert_allclose(output, expected, rtol=tolerance, atol=tolerance)
        ran.append(entry.name)
    # Every backend has a kernel made of its own ops, which runs anywhere.
    assert ran or BACKEND not in registry.BACKENDS


def test_another_backends_kernel_says_so(rng):
    other = next(k for k in registry.entries("apply") if k.backend != BACKEND)
    with pytest.raises(ValueError, match=f"cannot run the 'apply' op here: it runs on the '{other.backend}' backend"):
        involution_apply(**apply_arguments(rng), implementation=other.name)


def test_auto_takes_the_first_kernel_that_runs_and_prefers_the_arguments(rng):
    arguments = apply_arguments(rng)
    runnable = [k for k in registry.entries("apply", BACKEND) if k.reason(**arguments) is None]
    chosen = registry.choose("apply", "auto", **arguments)
    assert chosen is (runnable[0] if runnable else None)
    config.set_fast_path("apply", False)
    assert registry.choose("apply", "auto", **arguments) is None
    assert registry.choose("apply", "fast", **arguments) is chosen  # "fast" ignores the switch
    assert registry.choose("apply", "reference", **arguments) is None


def test_few_channels_per_group_skip_the_cpp_loops_under_auto(rng):
    arguments = apply_arguments(rng, channels=6, groups=2)  # 3 channels per group
    chosen = registry.choose("apply", "auto", **arguments)
    assert chosen is None or not chosen.name.endswith(("-cpp", "-ffi"))
    if BACKEND == "jax":
        assert chosen is None  # XLA's autodiff of the reference is faster there


def test_half_precision_reasons_name_the_dtype(rng):
    arguments = apply_arguments(rng, dtype="float16")
    for entry in registry.entries("apply", BACKEND):
        if "float16" not in entry.dtypes:
            assert "float32/float64" in entry.reason(**arguments), entry


def test_fast_where_nothing_runs_lists_every_reason(rng):
    # bfloat16: the one dtype that no CPU kernel takes, the Triton
    # interpreter's included.
    x = keras.ops.zeros((1, 4, 4, 8), "bfloat16")
    if BACKEND == "jax":
        with pytest.raises(ValueError, match="the 'jax' backend has no batch_norm kernel"):
            registry.choose("batch_norm", "fast", inputs=x, gamma=None, beta=None, epsilon=1e-3)
    else:
        with pytest.raises(ValueError, match=r"cannot run the 'window_correlation' op here \(\w+-cpp: it runs "
                                             r"float32/float64"):
            registry.choose("window_correlation", "fast", keys=x, queries=x, kernel_size=3, stride=1, dilation=1,
                            groups=2)


def test_a_kernel_name_goes_to_the_layers_of_its_op():
    from involution.models import create_model

    name = {"torch": "torch-inplace", "tensorflow": "tensorflow-grouped", "jax": "jax-xla"}[BACKEND]
    model = create_model("invnet", implementation=name)
    by_op = {}
    for layer in model._flatten_layers(include_self=False):
        if isinstance(getattr(layer, "implementation", None), str):
            by_op.setdefault(getattr(layer, "KERNEL_OP", None), set()).add(layer.implementation)
    assert by_op["apply"] == {name}
    assert all(values == {"auto"} for op, values in by_op.items() if op != "apply"), by_op
    x = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype("float32")
    reference = create_model("invnet", implementation="reference")
    reference.set_weights(model.get_weights())
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(x)), keras.ops.convert_to_numpy(reference(x)),
                               rtol=1e-4, atol=1e-4)


def test_exportable_switch_keeps_compiled_kernels_out(rng):
    arguments = apply_arguments(rng)
    with config.exportable():
        assert config.exportable_enabled()
        chosen = registry.choose("apply", "auto", **arguments)
        # Only forms whose artifacts need nothing of this package.
        expected = {"torch": None, "tensorflow": "tensorflow-grouped", "jax": "jax-xla"}[BACKEND]
        assert (chosen.name if chosen else None) == expected
        output = involution_apply(**arguments)
    assert not config.exportable_enabled()
    np.testing.assert_allclose(keras.ops.convert_to_numpy(output),
                               keras.ops.convert_to_numpy(involution_apply_reference(**arguments)),
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="Received: enabled=1"):
        config.set_exportable(1)


def test_build_switch_shows_in_the_doctor():
    """A kernel that could not be built says so (the build switch stands in for no compiler)."""
    variable = {"torch": "INVOLUTION_TORCH_EXTENSION", "tensorflow": "INVOLUTION_TF_NATIVE",
                "jax": "INVOLUTION_JAX_FFI"}[BACKEND]
    done = subprocess.run([sys.executable, "-m", "involution", "doctor", "--json"], capture_output=True, text=True,
                          timeout=600, env=dict(os.environ, KERAS_BACKEND=BACKEND, **{variable: "0"}))
    assert done.returncode == 0, done.stderr[-2000:]
    import json

    report = json.loads(done.stdout)
    assert report["backend"] == BACKEND and report["keras"] == keras.__version__
    compiled = [row for row in report["kernels"] if row["name"].endswith(("-cpp", "-ffi"))]
    assert compiled and all(not row["available"] and "could not be built" in row["reason"] for row in compiled)
    # GPU kernels run on the CPU only in their interpreters.
    gpu = [row for row in report["kernels"] if row["devices"] == ["gpu"]]
    assert all(row["available"] or "interpret" in row["reason"] for row in gpu), gpu
    others = [row for row in report["kernels"]
              if row not in compiled + gpu and row["name"] != "tensorflow-transposed"]
    assert others and all(row["available"] for row in others)


def test_doctor_lists_every_kernel_of_the_backend():
    import involution_cli

    output = io.StringIO()
    with redirect_stdout(output):
        assert involution_cli.main(["doctor", "--backend", BACKEND]) == 0
    text = output.getvalue()
    assert f"backend {BACKEND}" in text and "compiled kernels:" in text
    for entry in registry.entries(backend=BACKEND):
        assert entry.name in text
    config.set_fast_path("pool", False)
    report = config.explain()
    pool = [row for row in report["kernels"] if row["op"] == "pool"]
    assert pool and all("switched off (INVOLUTION_FAST_POOL=0" in row["reason"] for row in pool)


# === The package's structure ===


def _module_imports(root):
    """{module: the package's modules it imports, anywhere in its code}."""
    modules = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    graph = {}
    for name, path in modules.items():
        edges = set()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).strip(".")
                for alias in node.names:  # `from package import module` imports the module
                    edges.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
        graph[name] = {edge for edge in edges if edge in modules and edge != name}
    return graph


def test_no_import_cycles():
    src = Path(involution.__file__).parents[1]
    graph = {**_module_imports(src / "involution"), **_module_imports(src / "involution_cli")}
    state, cycles = {}, []

    def visit(module, stack):
        state[module] = "open"
        for other in graph[module]:
            if state.get(other) == "open":
                cycles.append(stack[stack.index(other):] + [other])
            elif other not in state:
                visit(other, stack + [other])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, cycles


def test_the_library_imports_neither_the_zoo_nor_the_app():
    script = ("import sys, involution, involution.config; "
              "print(sorted(m for m in sys.modules if m.startswith(('involution.models', 'involution.app'))))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, KERAS_BACKEND=BACKEND))
    assert done.returncode == 0 and done.stdout.strip().splitlines()[-1] == "[]", done.stderr[-2000:]
    assert not {"BatchNormalization", "Conv2D", "MaxPooling2D", "Dense", "RedNet"} & set(dir(involution))


def test_old_registered_names_load_as_the_renamed_layers():
    from involution.convolution import PortableConv2D
    from involution.dense import PortableDense
    from involution.normalization import FusedBatchNormalization, PortableLayerNormalization
    from involution.pooling import FusedMaxPooling2D

    renamed = {"BatchNormalization": FusedBatchNormalization, "LayerNormalization": PortableLayerNormalization,
               "Conv2D": PortableConv2D, "MaxPooling2D": FusedMaxPooling2D, "Dense": PortableDense}
    for old, cls in renamed.items():
        layer = cls(**({"filters": 4, "kernel_size": 1} if cls is PortableConv2D else
                       {"units": 4} if cls is PortableDense else {}))
        serialized = keras.saving.serialize_keras_object(layer)
        assert serialized["registered_name"] == f"involution>{cls.__name__}"
        serialized["registered_name"] = f"involution>{old}"
        serialized["class_name"] = old
        restored = keras.saving.deserialize_keras_object(serialized)
        # A class of the old name, so that the old files' weight paths match.
        assert type(restored).__name__ == old and isinstance(restored, cls)
        assert restored.get_config() == layer.get_config()
        assert keras.saving.serialize_keras_object(restored)["registered_name"] == f"involution>{old}"


def test_a_model_saved_with_the_old_names_loads_with_its_weights(tmp_path, rng):
    """A `.keras` file of an earlier release: the old registered names and weight paths."""
    from involution.normalization import FusedBatchNormalization

    inputs = keras.Input((6, 6, 4))
    # Built from the load-only class: what a model of that release saved.
    old_class = keras.saving.get_custom_objects()["involution>BatchNormalization"]
    outputs = old_class(name="norm")(keras.layers.Dense(4, name="mix")(inputs))
    model = keras.Model(inputs, outputs)
    model.set_weights([rng.normal(size=w.shape).astype("float32") for w in model.weights])
    path = tmp_path / "old.keras"
    model.save(path)
    import zipfile

    with zipfile.ZipFile(path) as archive:
        assert '"involution>BatchNormalization"' in archive.read("config.json").decode()
    restored = keras.saving.load_model(path)
    assert isinstance(restored.get_layer("norm"), FusedBatchNormalization)
    x = rng.normal(size=(2, 6, 6, 4)).astype("float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(restored(x)), keras.ops.convert_to_numpy(model(x)),
                               rtol=1e-6, atol=1e-6)
