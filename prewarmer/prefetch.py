"""`prefetch(array, i)` / `prefetch2(array, i, j)`: ask the CPU to start loading an element's cache line now,
from compiled code.

The engine handles each request in turn, and each touches its function's rows, scattered over memory when
there are many functions: much of its time is spent waiting for those lines. Prefetching the rows of a
request a few places ahead in the arrival order overlaps those waits (the hybrid histogram's idle-time
samples likewise). A hint only: no result changes.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


def _codegen():
    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        idx = [context.cast(builder, a, t, types.intp) for a, t in zip(args[1:], signature.args[1:], strict=True)]
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, idx, wraparound=False)
        i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                                            "llvm.prefetch.p0")
        # read (0), keep in all cache levels (3), data cache (1)
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()
    return codegen


@intrinsic
def prefetch(typingctx, arr, i):
    """`llvm.prefetch` of arr[i] (1-D; no bounds check: an address past the end is a hint the CPU ignores)."""
    if not (isinstance(arr, types.Array) and arr.ndim == 1 and isinstance(i, types.Integer)):
        return None
    return types.void(arr, i), _codegen()


@intrinsic
def prefetch2(typingctx, arr, i, j):
    """`llvm.prefetch` of arr[i, j] (2-D)."""
    if not (isinstance(arr, types.Array) and arr.ndim == 2 and isinstance(i, types.Integer)
            and isinstance(j, types.Integer)):
        return None
    return types.void(arr, i, j), _codegen()
