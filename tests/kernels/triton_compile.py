"""Compiles the Triton kernels for a GPU that this machine need not have.

Run as a script (Triton's interpreter must be off): for each kernel and
dtype, Triton's whole pipeline down to a cubin for `--arch` (sm_90: H100),
printing one JSON line each with the cubin's size and its shared memory.
"""

import argparse
import json

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from involution.kernels.triton import involution as kernels

SCALARS = ("pixels", "height", "width", "channels", "out_h", "out_w", "group_channels", "stride", "dilation", "pad")


def compile_kernel(function, dtype, arch, kernel_size, block_p, block_c):
    pointer = {"float32": "*fp32", "float16": "*fp16", "bfloat16": "*bf16", "float64": "*fp64"}[dtype]
    names = function.arg_names
    constants = {"KERNEL_SIZE": kernel_size, "ACCUMULATE_FLOAT64": dtype == "float64", "BLOCK_P": block_p,
                 "BLOCK_C": block_c}
    signature = {name: pointer for name in names[:3]}
    signature.update({name: "i32" for name in SCALARS})
    signature.update({name: "constexpr" for name in constants})
    source = ASTSource(fn=function, signature=signature,
                       constexprs={(names.index(name),): value for name, value in constants.items()})
    return triton.compile(source, target=GPUTarget("cuda", arch, 32))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--dtypes", default="float32,bfloat16,float16")
    args = parser.parse_args()
    for name in ("apply_kernel", "input_gradient_kernel", "correlate_kernel"):
        kind = name[: -len("_kernel")]
        for dtype in args.dtypes.split(","):
            # RedNet's first stage: 64 channels in 4 groups, K=7.
            block_p, block_c, _ = kernels.block_sizes(kind, 64 * 56 * 56, 64, 16, interpreted=False)
            compiled = compile_kernel(getattr(kernels, name), dtype, args.arch, 7, block_p, block_c)
            print(json.dumps({"kernel": kind, "dtype": dtype, "cubin_bytes": len(compiled.asm["cubin"]),
                              "shared_bytes": compiled.metadata.shared}), flush=True)


if __name__ == "__main__":
    main()
