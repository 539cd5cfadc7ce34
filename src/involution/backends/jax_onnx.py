"""ONNX conversions of the JAX primitives, for `model.export(format="onnx")`.

Keras exports a JAX model to ONNX with jax2onnx, which converts a traced
program primitive by primitive through a registry of plugins. This module
adds one plugin per primitive of `jax_backend`: it traces the primitive's
portable form (the XLA path: slices, pads, products and sums) and inlines
that program, so the ONNX graph holds standard operators only and runs
without this package.

jax2onnx is optional: `register()` is called while a model is traced and
does its work only once jax2onnx has been imported (Keras imports it when
an ONNX export starts), so nothing here runs otherwise.
"""

import functools
import sys

import numpy as np


def register(portable_forms):
    """Adds the plugins to jax2onnx's registry, once, if jax2onnx is loaded.

    Args:
        portable_forms: pairs of (primitive, its portable form), the
            function whose program replaces the primitive in ONNX.
    """
    if "jax2onnx" in sys.modules:
        _register(portable_forms)


@functools.lru_cache(maxsize=None)
def _register(portable_forms):
    import warnings

    import jax

    # The nested-program helpers are jax2onnx's own, the ones its plugins
    # for `jit` and `custom_jvp_call` use; they are not part of its
    # documented API, hence the range in the test extra.
    try:
        from jax2onnx.plugins.jax.lax._control_flow_utils import lower_jaxpr_eqns
        from jax2onnx.plugins.plugin_system import (
            PrimitiveLeafPlugin,
            _activate_full_plugin_worlds_for_body,
            register_primitive,
        )
    except ImportError as error:
        warnings.warn(
            f"involution: this jax2onnx cannot take the fused primitives' conversions ({error}); export inside "
            "`involution.config.fast_paths(False)`, or install the version the test extra names.",
            RuntimeWarning,
            stacklevel=4,
        )
        return False

    class PortableForm(PrimitiveLeafPlugin):
        """Lowers a primitive by inlining its portable form's program."""

        portable = None

        def lower(self, ctx, eqn):
            params = {name: value for name, value in eqn.params.items() if name != "path"}
            avals = [var.aval for var in eqn.invars]
            # Traced inside jax2onnx's patches, as its own nested bodies
            # are, so that shape-polymorphic operations (a symbolic batch)
            # take the forms its plugins convert.
            with _activate_full_plugin_worlds_for_body():
                closed = jax.make_jaxpr(lambda a, b: type(self).portable(a, b, **params))(*avals)
            body = closed.jaxpr
            for const_var, const in zip(body.constvars, closed.consts):
                ctx.bind_const_for_var(const_var, np.asarray(const))
            for outer, inner in zip(eqn.invars, body.invars):
                ctx.bind_value_for_var(inner, ctx.get_value_for_var(outer))
            lower_jaxpr_eqns(ctx, body, source=eqn.primitive.name)
            for outer, inner in zip(eqn.outvars, body.outvars):
                ctx.bind_value_for_var(outer, ctx.get_value_for_var(inner))

    for primitive, portable in portable_forms:
        plugin = type(f"Portable_{primitive.name}", (PortableForm,), {"portable": staticmethod(portable)})
        register_primitive(
            jaxpr_primitive=primitive.name,
            jax_doc="involution's fused primitive, exported through its portable form",
            onnx=[],
            since="0",
            context="primitives.involution",
            component=primitive.name,
        )(plugin)
    return True
