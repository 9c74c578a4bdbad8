"""JAX backend: an executor of the one algorithm in spec/ (layout.md), under ``jax.jit``.

The forms are the specification's, run with ``jax.numpy`` (an array-API namespace). This module
supplies only what differs by framework:

- the loop over chunks and tokens: ``lax.scan`` over the spec's step function, so the chunked and
  recurrent forms compile once, whatever the sequence length (compile time flat in T for a fixed chunk
  size); the parallel form's row blocks stay a Python loop (one block up to T = 2048);
- compilation: one ``jax.jit`` per call signature, the request's options static, its arrays traced;
- dtypes: the state path in ``request.state_dtype`` (math.md 9); without x64 JAX has no float64, so the
  state path is float32 there and its error follows the condition term of math.md 9; rotary angles
  through the spec's compensated scan.

Everything is differentiable (``jax.grad``) and batches under ``jax.vmap``.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
from jax import lax

from ..spec import Executor, Request, State
from ..spec import run as run_spec
from .jax_group import AxisGroup

DTYPES = ("float16", "bfloat16", "float32", "float64")
SEQUENCE_GROUP = "a mesh axis name, inside jax.shard_map"


def _varying(x: Any) -> frozenset:
    """The mesh axes along which x varies inside ``jax.shard_map`` (empty outside it)."""
    axis_type = getattr(jax.typeof(x), "manual_axis_type", None)
    return frozenset() if axis_type is None else axis_type.varying


def scan(step: Any, carry: Any, xs: Any) -> Any:
    """``lax.scan``, with the initial carry marked as varying along the mesh axes the scanned arrays vary
    along: inside ``jax.shard_map(check_vma=True)`` a carry made of constants (an empty state) would
    otherwise change type in the first step, which lax.scan refuses."""
    axes = frozenset().union(*(_varying(x) for x in jax.tree.leaves(xs)))
    if axes:
        carry = jax.tree.map(lambda c: _cast(c, axes), carry)
    return lax.scan(step, carry, xs)


def _cast(x: Any, axes: frozenset) -> Any:
    missing = tuple(sorted(axes - _varying(x)))
    return lax.pcast(x, missing, to="varying") if missing else x


EXECUTOR = Executor("jax", scan=lambda xp: scan, group=AxisGroup)


def supports(request: Request) -> str | None:
    """None if this backend computes ``request``: every kernel, weight and form, on any JAX device."""
    if str(request.dtype) not in DTYPES:
        return f"dtype {request.dtype} is not one of {list(DTYPES)}"
    group = request.sequence_group
    if group is not None and not isinstance(group, str):
        return f"sequence_group must be {SEQUENCE_GROUP} on jax, got {type(group).__name__}"
    return None


def run(request: Request, form: str) -> tuple[Any, State | None]:
    return forward(request.arrays(), static=request.without_arrays(), form=form)


@partial(jax.jit, static_argnames=("static", "form"))
def forward(arrays: dict[str, Any], *, static: Request, form: str) -> tuple[Any, State | None]:
    """(y in the inputs' dtype, State or None): the spec's ``form`` on ``arrays`` with the options of
    ``static`` (``Request.without_arrays``)."""
    return run_spec(static.with_arrays(arrays), form, EXECUTOR)
